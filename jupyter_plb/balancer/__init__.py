"""The Load Balancer service and its Health Check.

:class:`Balancer` owns the sockets and the pump; the policy it applies lives in
:mod:`jupyter_plb.core`.
"""

from jupyter_plb.balancer.service import Balancer
from jupyter_plb.balancer.state import function_digest

__all__ = ["Balancer", "function_digest"]
