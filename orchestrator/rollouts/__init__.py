"""Rollouts as the command line and the daemon both run them, without printing anything.

- :mod:`~orchestrator.rollouts.prepare`: plan → targets → engine options (and the fleet query).
- :mod:`~orchestrator.rollouts.journaled`: a run held by the journal's lease: create, resume,
  record the end, compact.
- :mod:`~orchestrator.rollouts.execute`: a new, resumed or rerun rollout run to its end here.
- :mod:`~orchestrator.rollouts.status`: a rollout's status row.
- :mod:`~orchestrator.rollouts.report`: the report, built and written.
- :mod:`~orchestrator.rollouts.outputs`: every file a run will write, checked before it sends, and
  the rollout ID rule (IDs name files).
- :mod:`~orchestrator.rollouts.outcome`: the exit code of a finished run.

Nothing here imports the command line, click or rich: the daemon uses this layer too.
"""
