"""The rollout engine: sends a rollout's phones to the CPH batch API and follows each to its end.

The rules are pure and tested on their own: the per-phone state machine
(:mod:`~orchestrator.engine.states`), retry, backoff, the meaning of a failed submit and the abort
gate (:mod:`~orchestrator.engine.policy`), the send queues (:mod:`~orchestrator.engine.queues`),
poll timing (:mod:`~orchestrator.engine.polling`) and the adaptive rate
(:mod:`~orchestrator.engine.rate`). The asyncio loop applies them: the
:class:`~orchestrator.engine.submitter.Submitter` sends batches under the submit budget, the
:class:`~orchestrator.engine.tracker.Tracker` polls jobs under the query budget, and
:class:`RolloutEngine` (:mod:`~orchestrator.engine.runner`) runs both for one rollout, from set-up
to its :class:`RolloutResult`. The engine speaks to the cloud only through
:class:`~orchestrator.cph.api.CphApi`, and records what it does through
:class:`~orchestrator.engine.journal.Journal`.
"""

from orchestrator.engine.journal import Journal, MemoryJournal
from orchestrator.engine.options import EngineOptions, RestartMode
from orchestrator.engine.policy import AbortThresholds, RetryPolicy
from orchestrator.engine.runner import (
    Budgets,
    RolloutEngine,
    RolloutResult,
    RolloutStatus,
    Target,
)
from orchestrator.engine.states import (
    LIVE_STATES,
    TERMINAL_STATES,
    PhoneRecord,
    PhoneState,
    Stage,
    StateTable,
)

__all__ = [
    "LIVE_STATES",
    "TERMINAL_STATES",
    "AbortThresholds",
    "Budgets",
    "EngineOptions",
    "Journal",
    "MemoryJournal",
    "PhoneRecord",
    "PhoneState",
    "RestartMode",
    "RetryPolicy",
    "RolloutEngine",
    "RolloutResult",
    "RolloutStatus",
    "Stage",
    "StateTable",
    "Target",
]
