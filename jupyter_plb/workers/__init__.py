"""Worker hubs and their worker processes (ipykernel-free), and how a local hub is spawned.

A hub and its workers import only this package, :mod:`~jupyter_plb.transport` and
:mod:`~jupyter_plb.core`, so a worker starts without loading the balancer or Jupyter.
"""
