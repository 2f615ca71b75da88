"""Starting things from a terminal or a script: ``startAll``, ``plb …`` commands, hubs over ssh.

The top of the stack beside :mod:`jupyter_plb.jupyter`: it may use every lower layer.
"""
