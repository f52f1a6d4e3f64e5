"""The long-running service: an HTTP control API over several concurrent, journaled rollouts.

:mod:`~orchestrator.daemon.server` runs the process, :mod:`~orchestrator.daemon.api` answers
requests, :mod:`~orchestrator.daemon.manager` runs the rollouts on shared budgets,
:mod:`~orchestrator.daemon.metrics` exposes Prometheus metrics, and
:mod:`~orchestrator.daemon.remote` is the ``submit``/``status --daemon`` side.

The package itself imports nothing: ``rollout`` and the other one-shot commands load only
:mod:`~orchestrator.daemon.remote`, not the server's web framework and metrics.
"""
