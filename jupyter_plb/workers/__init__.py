"""Worker hubs and their worker processes (ipykernel-free), and how a local hub is spawned.

In a hub: ``hub`` (WorkerHub: seed API, options, life cycle), ``supervisor`` (its worker
processes), ``link`` (its conversation with the balancer), ``resources`` (CPUs, memory). In a
worker: ``worker`` (the process, its socket and task queue), ``execution`` (running a task),
``cache`` (functions and broadcast objects). ``spawn`` starts a local hub.

A hub and its workers import only this package, :mod:`~jupyter_plb.transport` and
:mod:`~jupyter_plb.core`, so a worker starts without loading the balancer or Jupyter.
"""
