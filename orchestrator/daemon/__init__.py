"""The long-running service: an HTTP control API over several concurrent, journaled rollouts.

:mod:`~orchestrator.daemon.server` runs the process, :mod:`~orchestrator.daemon.api` answers
requests, :mod:`~orchestrator.daemon.manager` runs the rollouts on shared budgets,
:mod:`~orchestrator.daemon.metrics` exposes Prometheus metrics, and
:mod:`~orchestrator.daemon.remote` is the ``submit``/``status --daemon`` side.
"""

from orchestrator.daemon.manager import RolloutManager
from orchestrator.daemon.server import Daemon, check_exposure, parse_listen, serve

__all__ = ["Daemon", "RolloutManager", "check_exposure", "parse_listen", "serve"]
