"""How a rollout ended, as the exit code other tools rely on.

The codes are a contract (see README): 0 all succeeded, 1 finished with failed phones, 2 aborted,
3 invalid plan, settings or input (nothing sent), 4 fatal API or auth error, 130 interrupted. They
live beside the rollouts rather than in the command line so that anything that runs a rollout
(the command line, the daemon) reports its end in the same terms.
"""

from __future__ import annotations

from orchestrator.engine.runner import RolloutResult, RolloutStatus
from orchestrator.errors import ExitCode

__all__ = ["ExitCode", "exit_code_for"]


def exit_code_for(result: RolloutResult) -> ExitCode:
    """The contract's exit code for a finished run."""
    if result.fatal:
        return ExitCode.API_FATAL
    return {
        RolloutStatus.SUCCEEDED: ExitCode.SUCCEEDED,
        RolloutStatus.COMPLETED_WITH_FAILURES: ExitCode.FAILED_PHONES,
        RolloutStatus.ABORTED: ExitCode.ABORTED,
        RolloutStatus.INTERRUPTED: ExitCode.INTERRUPTED,
    }[result.status]
