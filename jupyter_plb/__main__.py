"""``python -m jupyter_plb …`` is the ``plb`` command."""

from jupyter_plb.cluster.cli import main

main()
