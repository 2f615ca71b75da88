"""``python probed.py ROLE plb-arguments…``: the ``plb`` command with the stage probes installed.

ROLE is ``balancer`` or ``hub`` (a hub's workers are started with the ``worker`` probes).
Records go to ``$PLB_PROBE_DIR`` (see probes.py); used by ``run.py --profile``.
"""

from __future__ import annotations

import sys

import probes

if __name__ == "__main__":
    probes.install(sys.argv[1])
    from jupyter_plb.cluster.cli import main

    main(sys.argv[2:])
