"""Jupyter's face: the server extension, the ``%plb`` magics and the ipywidgets.

The top of the stack beside :mod:`jupyter_plb.cluster`: it may use every lower layer.
"""
