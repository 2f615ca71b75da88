"""The core: what a task is, how it is framed and signed, who runs next, and what is kept.

Pure logic and data: no sockets, no processes, no threads (the store writes one SQLite file).
Every other layer builds on it; it imports only :mod:`jupyter_plb.errors`.
"""
