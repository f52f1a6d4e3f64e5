"""The one exception root of the product, and the exit codes every error family maps to.

Every error the orchestrator raises on purpose derives from :class:`OrchestratorError`, so the
command line turns any of them into one line on stderr and the contract's exit code (its
``exit_code`` attribute), and the daemon turns them into JSON answers. The whole tree, with where
each class lives, its exit code on the command line and its HTTP status in the daemon's API::

    class (module)                              exit  daemon  meaning
    OrchestratorError (errors)                     3   400    root: a message for the operator
    ├── ConfigError (errors)                       3   400    settings, flags, env, output paths
    ├── FencedError (errors)                       4    -     another runner took the rollout
    ├── PlanError (plan.errors)                    3   400    a plan or fleet file (file:line)
    ├── StoreError (store.base)                    3   400    the journal refused; nothing sent
    │   ├── StoreUnavailableError                  3   400    unreadable or unwritable (*)
    │   ├── StoreCorruptError                      3   400    not ours, damaged, or newer
    │   ├── RolloutNotFoundError                   3   404    no such rollout
    │   ├── RolloutExistsError                     3   409    the rollout ID is taken
    │   └── LeaseHeldError                         3   409    another live runner holds it
    │       └── LeaseLostError (+FencedError)      4    -     our lease was taken mid-run
    ├── ApiError (cph.errors)                      4    -     the CPH API or the way to it
    │   ├── ThrottledError                                    429 / APIG.0308: wait, resend
    │   ├── AuthError                                         401 / APIG.0301 / 0303 / IAM
    │   ├── TransientError                                    5xx, timeout, no answer: resend
    │   │   └── MalformedResponseError                        an answer we cannot parse
    │   └── PermanentError                                    any other 4xx: do not resend
    ├── DaemonError (daemon.manager)               -   400    a request the daemon cannot do
    │   ├── InvalidRequestError                        400    bad ID, state filter, paging
    │   ├── NotRunningError                            409    not running in this daemon
    │   └── ShuttingDownError                          503    the daemon is stopping
    └── DaemonRequestError (daemon.remote)         4    -     a call to a daemon failed (**)

    (*) when the journal fails mid-run, the run ends with exit 4 and stays resumable.
    (**) 3 when the daemon answered 4xx: the request itself was wrong.

A rollout that *ran* ends with the exit code of its result (:func:`orchestrator.rollouts.outcome.
exit_code_for`): 0 all succeeded, 1 some phones failed, 2 aborted, 4 stopped by a fatal error
(credentials, the journal, a lost lease, the cloud unreachable), 130 interrupted. Errors outside
this tree are bugs: the command line answers them with one line and exit 4, the traceback going
to the log.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

__all__ = ["ConfigError", "ExitCode", "FencedError", "OrchestratorError"]


class ExitCode(IntEnum):
    """Process exit codes other tools rely on (a contract: see the README)."""

    SUCCEEDED = 0
    FAILED_PHONES = 1
    ABORTED = 2
    INVALID_INPUT = 3
    API_FATAL = 4
    INTERRUPTED = 130


class OrchestratorError(Exception):
    """Something the orchestrator could not do; the message is meant for the operator."""

    exit_code: ClassVar[ExitCode] = ExitCode.INVALID_INPUT
    """What the command line exits with when this error ends a command (nothing was sent)."""


class ConfigError(OrchestratorError):
    """Settings, environment or command-line input is invalid; nothing was sent."""


class FencedError(OrchestratorError):
    """Another runner holds this rollout now: this one must write and send nothing more."""

    exit_code: ClassVar[ExitCode] = ExitCode.API_FATAL
