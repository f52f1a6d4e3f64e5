"""Rollout plans: parse, validate and render per-phone properties.

A plan file (YAML, JSON or TOML, chosen by suffix) names the phones (``fleet``: a ``phones`` list,
a CSV/JSON ``file``, a ListCloudPhones ``query``), the properties to write (``properties``, string
values being per-phone templates) and how to proceed (``policy``). See ``config/plans/example.yaml``.

Fleet file columns: every column but ``phone_id`` is a placeholder for the templates (``{msisdn}``);
a column whose name contains a ``.`` (as every CPH property name does) is also that property's value
for the phone, overriding the common value. An empty cell means "not set for this phone".

Fleet order: ``fleet.phones`` first, then the file's rows, then (at run time) the query's phones;
``{index}`` is a phone's 0-based position in that order. A phone listed twice in ``phones``/``file``
is an error; a queried phone that is also listed keeps its listed entry.

Values are sent as typed (:mod:`orchestrator.plan.verbatim`): ``012`` is sent as ``"012"`` and
``1.10`` as ``"1.10"``, never as what a parser made of them; a plan whose value has no text to send
(a null, a TOML integer not in plain decimal) is refused, asking to quote it. A plan held as JSON
text is decoded with :func:`decode_json_plan` before :func:`load_plan_data`, for the same reason.

Every problem raises :class:`PlanError` (an :class:`~orchestrator.errors.OrchestratorError`),
naming the file, the line (or the fleet file's row) and the field; all problems found are reported
together.
"""

from orchestrator.plan.errors import PlanError, PlanProblem
from orchestrator.plan.loader import (
    PLAN_FORMATS,
    LoadedPlan,
    PhoneTarget,
    load_plan,
    load_plan_data,
    load_plan_text,
)
from orchestrator.plan.locate import decode_json_plan
from orchestrator.plan.model import (
    BUSY_ERROR_CODE,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MIN_EXECUTED,
    DEFAULT_RETRY_CODES,
    DEFAULT_WAVES,
    AbortPolicy,
    Fleet,
    FleetQuery,
    Plan,
    Policy,
    RestartAfter,
    wave_sizes,
)
from orchestrator.plan.properties import KNOWN_PROPERTIES, PropertySpec, needs_restart

__all__ = [
    "BUSY_ERROR_CODE",
    "DEFAULT_JOB_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MIN_EXECUTED",
    "DEFAULT_RETRY_CODES",
    "DEFAULT_WAVES",
    "KNOWN_PROPERTIES",
    "PLAN_FORMATS",
    "AbortPolicy",
    "Fleet",
    "FleetQuery",
    "LoadedPlan",
    "PhoneTarget",
    "Plan",
    "PlanError",
    "PlanProblem",
    "Policy",
    "PropertySpec",
    "RestartAfter",
    "decode_json_plan",
    "load_plan",
    "load_plan_data",
    "load_plan_text",
    "needs_restart",
    "wave_sizes",
]
