"""Loading a plan: parse, validate, read the fleet file, render and size-check every phone.

``load_plan`` does all the checking that needs no API call, so ``cph-orchestrator validate`` finds
every mistake up front: the structure (pydantic), property formats (``cph-api.md`` §6), templates
and their placeholders, the fleet file, duplicate phones, and each listed phone's rendered
``property`` against the 7800-byte limit. Phones found by ``fleet.query`` are only known at run
time: the engine resolves the query and passes their IDs to :meth:`LoadedPlan.targets`, which
renders them after the listed ones.

Per-phone properties: the plan's common ``properties`` (string values rendered as templates, see
:mod:`orchestrator.plan.render`), then, for phones from the fleet file, the non-empty cells of
dotted columns, which override the common value of the same name (see :mod:`orchestrator.plan.fleet`).
Every value is checked and normalized by :func:`orchestrator.plan.properties.check_property`.

Plans given as data (the daemon's HTTP API): :func:`load_plan_data`. With no ``base_dir`` such a
plan may not use ``fleet.file`` — a remote caller must not make the daemon read local files; a
caller that trusts the plan passes the directory to resolve it against.
"""

from __future__ import annotations

import difflib
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.cph.models import PropertyTooLargeError, PropertyUpdate
from orchestrator.plan.errors import PlanError, Problems
from orchestrator.plan.fleet import FleetTable, read_fleet_file
from orchestrator.plan.locate import (
    Loc,
    Locator,
    NullLocator,
    PlanFormat,
    format_loc,
    parse_plan_text,
)
from orchestrator.plan.model import (
    PHONE_ID_RULE,
    AbortPolicy,
    Fleet,
    FleetQuery,
    Plan,
    Policy,
    valid_phone_id,
)
from orchestrator.plan.properties import (
    KNOWN_PROPERTIES,
    PropertyFormatError,
    PropertyValue,
    check_property,
    needs_restart,
    show_value,
)
from orchestrator.plan.render import BUILTIN_PLACEHOLDERS, Template, TemplateError, compile_template

__all__ = [
    "PLAN_FORMATS",
    "LoadedPlan",
    "PhoneTarget",
    "load_plan",
    "load_plan_data",
    "load_plan_text",
]

PLAN_FORMATS: Mapping[str, PlanFormat] = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
}
"""Plan file suffixes and the format each one means."""

Where = Callable[[], str]
"""Where a phone is listed, formatted only when a message needs it (fleets are large, errors rare)."""

_MODELS_AT: Mapping[tuple[str, ...], type[BaseModel]] = {
    (): Plan,
    ("fleet",): Fleet,
    ("fleet", "query"): FleetQuery,
    ("policy",): Policy,
    ("policy", "abort"): AbortPolicy,
}


@dataclass(frozen=True, slots=True)
class PhoneTarget:
    """One phone of a rollout: its fleet position, its rendered properties and the wire item."""

    index: int
    phone_id: str
    properties: dict[str, Any]
    update: PropertyUpdate


class _PhoneError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(slots=True)
class _Renderer:
    """Turns (index, phone, row) into a :class:`PhoneTarget`; built once per plan."""

    constants: dict[str, PropertyValue]
    templates: list[tuple[str, Template, str]]
    overrides: list[str]

    def properties(
        self, index: int, phone_id: str, row: Mapping[str, PropertyValue]
    ) -> dict[str, Any]:
        props: dict[str, Any] = dict(self.constants)
        for name, template, defined_at in self.templates:
            if name in row:
                continue
            try:
                props[name] = check_property(name, template.render(index, phone_id, row))
            except (TemplateError, PropertyFormatError) as exc:
                raise _PhoneError(
                    f"properties.{name}", f"phone {phone_id}: {exc} (template at {defined_at})"
                ) from exc
        for name in self.overrides:
            value = row.get(name)
            if value is not None:
                try:
                    props[name] = check_property(name, value)
                except PropertyFormatError as exc:
                    raise _PhoneError(f"column {name}", f"phone {phone_id}: {exc}") from exc
        return props

    def target(self, index: int, phone_id: str, row: Mapping[str, PropertyValue]) -> PhoneTarget:
        props = self.properties(index, phone_id, row)
        try:
            update = PropertyUpdate.build(phone_id, props)
        except PropertyTooLargeError as exc:
            raise _PhoneError("properties", str(exc)) from exc
        return PhoneTarget(index, phone_id, props, update)


class LoadedPlan:
    """A validated plan, its fleet file read and its listed phones rendered.

    ``warnings`` holds what is suspicious but allowed (undocumented properties, unused columns);
    :meth:`targets` adds to it when the query repeats listed phones.
    """

    __slots__ = (
        "_explicit",
        "_explicit_ids",
        "_label",
        "_renderer",
        "plan",
        "property_names",
        "source",
        "warnings",
    )

    def __init__(
        self,
        plan: Plan,
        *,
        source: Path,
        label: str,
        warnings: list[str],
        renderer: _Renderer,
        explicit: list[PhoneTarget],
        property_names: frozenset[str],
    ) -> None:
        self.plan = plan
        self.source = source
        self.warnings = warnings
        self.property_names = property_names
        """Every property the plan may set: the common ones and the fleet file's dotted columns."""
        self._label = label
        self._renderer = renderer
        self._explicit = explicit
        self._explicit_ids = frozenset(target.phone_id for target in explicit)

    def needs_restart(self) -> bool:
        """True if a property of this plan takes effect only after a restart."""
        return needs_restart(self.property_names)

    def targets(self, queried: Sequence[str] = ()) -> list[PhoneTarget]:
        """Every phone to update, in fleet order: listed phones, file rows, then ``queried``.

        ``queried`` are the IDs ``fleet.query`` resolved to; those already listed keep their listed
        entry (counted in a warning), repeats are dropped. Raises :class:`PlanError` for a query
        phone whose properties cannot be rendered.
        """
        targets = list(self._explicit)
        problems = Problems()
        seen: set[str] = set()
        repeated = 0
        where = f"{self._label}: fleet.query result"
        with _gc_paused():
            for phone_id in queried:
                if phone_id in self._explicit_ids:
                    repeated += 1
                elif phone_id not in seen:
                    seen.add(phone_id)
                    _add_target(self._renderer, targets, phone_id, {}, where, problems)
        problems.raise_if_any()
        if repeated:
            note = (
                f"{self._label}: fleet.query: {repeated} phone(s) found by the query are also listed"
                " in fleet.phones or fleet.file; their listed entries are kept"
            )
            if note not in self.warnings:
                self.warnings.append(note)
        return targets


def _add_target(
    renderer: _Renderer,
    targets: list[PhoneTarget],
    phone_id: str,
    row: Mapping[str, PropertyValue],
    where: str,
    problems: Problems,
) -> None:
    if not valid_phone_id(phone_id):
        problems.add(
            where,
            "phone_id",
            f"{show_value(phone_id)}: not a valid phone ID ({PHONE_ID_RULE})",
        )
        return
    try:
        targets.append(renderer.target(len(targets), phone_id, row))
    except _PhoneError as exc:
        problems.add(where, exc.field, str(exc))


def load_plan(path: Path, *, strict: bool | None = None) -> LoadedPlan:
    """Read and check a plan file (``.yaml``/``.yml``, ``.json`` or ``.toml``) and its fleet file.

    ``strict`` overrides ``policy.strict_properties`` (undocumented properties become errors).
    Any problem raises :class:`PlanError`, naming file, line or row, and field.
    """
    fmt = PLAN_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(PLAN_FORMATS)
        raise PlanError(f"{path}: a plan file must end in one of {known}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: the plan is not UTF-8 text ({exc.reason})") from exc
    return load_plan_text(text, fmt=fmt, source=str(path), base_dir=path.parent, strict=strict)


def load_plan_text(
    text: str,
    *,
    fmt: PlanFormat,
    source: str = "<request>",
    base_dir: Path | None = None,
    strict: bool | None = None,
) -> LoadedPlan:
    """Check plan text in the given format; ``source`` names it in messages (see :func:`load_plan`)."""
    data, locator = parse_plan_text(text, fmt, source)
    return _build(data, locator, source, base_dir, strict)


def load_plan_data(
    data: Any,
    *,
    source: str = "<request>",
    base_dir: Path | None = None,
    strict: bool | None = None,
) -> LoadedPlan:
    """Check a plan given as data (a JSON object); ``fleet.file`` needs ``base_dir`` (see the module doc)."""
    return _build(data, NullLocator(), source, base_dir, strict)


def _where(label: str, locator: Locator, loc: Loc) -> str:
    line = locator.line(loc)
    return f"{label}:{line}" if line is not None else label


def _build(
    data: Any, locator: Locator, label: str, base_dir: Path | None, strict: bool | None
) -> LoadedPlan:
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PlanError(
            f"{label}: a plan must be a mapping with name, fleet, properties and policy; this is {kind}"
        )
    problems = Problems()
    warnings: list[str] = []
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        _structure_problems(exc, locator, label, problems)
        raw = data.get("properties")
        if isinstance(raw, dict):
            _Compiler(label, locator, problems, warnings, strict=False).compile(raw)
        problems.raise_if_any()
        raise  # unreachable: a ValidationError always has errors
    strict = plan.policy.strict_properties if strict is None else strict
    compiler = _Compiler(label, locator, problems, warnings, strict=strict)
    renderer = compiler.compile(plan.properties)
    table = _read_table(plan, label, locator, base_dir, problems)
    if table is not None:
        renderer.overrides = compiler.check_columns(table)
    compiler.check_placeholders(renderer, table)
    problems.raise_if_any()
    explicit = _render_explicit(plan, table, renderer, label, locator)
    names = frozenset(plan.properties) | frozenset(renderer.overrides)
    return LoadedPlan(
        plan,
        source=Path(label),
        label=label,
        warnings=warnings,
        renderer=renderer,
        explicit=explicit,
        property_names=names,
    )


def _structure_problems(
    exc: ValidationError, locator: Locator, label: str, problems: Problems
) -> None:
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        problems.add(_where(label, locator, loc), format_loc(loc), _explain(error, loc))


def _explain(error: ErrorDetails, loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _MODELS_AT.get(tuple(str(part) for part in loc[:-1]))
        allowed = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(allowed)})"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    return f"{show_value(error['input'])}: {error['msg']}"


class _Compiler:
    """Checks the plan's common properties and the fleet file's columns; builds the renderer."""

    def __init__(
        self, label: str, locator: Locator, problems: Problems, warnings: list[str], *, strict: bool
    ) -> None:
        self.label = label
        self.locator = locator
        self.problems = problems
        self.warnings = warnings
        self.strict = strict

    def _note_name(self, where: str, field: str, name: str) -> None:
        spec = KNOWN_PROPERTIES.get(name)
        if spec is None:
            message = "not a documented CPH property"
            if self.strict:
                self.problems.add(where, field, f"{message} (strict_properties is on)")
            else:
                self.warnings.append(f"{where}: {field}: {message}; sent as written")
        elif spec.replaced_by:
            self.warnings.append(f"{where}: {field}: deprecated; use {spec.replaced_by}")

    def compile(self, properties: Mapping[Any, Any]) -> _Renderer:
        renderer = _Renderer({}, [], [])
        for name, value in properties.items():
            if not isinstance(name, str) or not isinstance(value, int | float | str):
                continue  # reported by the model
            where = _where(self.label, self.locator, ("properties", name))
            field = f"properties.{name}"
            self._note_name(where, field, name)
            try:
                self._compile_one(renderer, name, value, where)
            except (TemplateError, PropertyFormatError) as exc:
                self.problems.add(where, field, str(exc))
        return renderer

    @staticmethod
    def _compile_one(renderer: _Renderer, name: str, value: PropertyValue, where: str) -> None:
        if isinstance(value, str):
            template = compile_template(value)
            if template.placeholders:
                renderer.templates.append((name, template, where))
                return
            value = template.render(0, "", {})
        renderer.constants[name] = check_property(name, value)

    def check_columns(self, table: FleetTable) -> list[str]:
        """The dotted columns (per-phone property values), after noting the undocumented ones."""
        dotted = [column for column in table.columns if "." in column]
        for column in dotted:
            self._note_name(f"{table.label}:1", f"column {column}", column)
        return dotted

    def check_placeholders(self, renderer: _Renderer, table: FleetTable | None) -> None:
        columns = set(table.columns) if table is not None else set()
        used: set[str] = set()
        for name, template, where in renderer.templates:
            used |= template.placeholders
            for placeholder in sorted(template.placeholders - BUILTIN_PLACEHOLDERS - columns):
                source = (
                    f"a column of {table.label}"
                    if table is not None
                    else "a fleet file column (there is no fleet.file)"
                )
                self.problems.add(
                    where,
                    f"properties.{name}",
                    f"placeholder {{{placeholder}}} is not index, phone_id or {source}",
                )
        if table is not None:
            for column in table.columns:
                if "." not in column and column not in used:
                    self.warnings.append(
                        f"{table.label}:1: column {column}: not used by any property template"
                    )


def _read_table(
    plan: Plan, label: str, locator: Locator, base_dir: Path | None, problems: Problems
) -> FleetTable | None:
    file = plan.fleet.file
    if file is None:
        return None
    if base_dir is None:
        problems.add(
            _where(label, locator, ("fleet", "file")),
            "fleet.file",
            "not allowed in a plan that is not read from a file: list the phones instead",
        )
        return None
    path = base_dir / file
    if not path.is_file():
        problems.add(
            _where(label, locator, ("fleet", "file")),
            "fleet.file",
            f"cannot read the fleet file {path}: no such file",
        )
        return None
    try:
        return read_fleet_file(path, str(path))
    except PlanError as exc:
        problems.extend(exc)
        return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while rendering a fleet.

    Rendering allocates a few objects per phone and creates no cycles, yet each of the collector's
    passes walks the whole growing heap: for 100,000 phones that doubled the time. Rendering is
    synchronous, so nothing else runs meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _phones_where(label: str, locator: Locator, position: int) -> str:
    return f"{_where(label, locator, ('fleet', 'phones', position))} (fleet.phones[{position}])"


def _render_explicit(
    plan: Plan, table: FleetTable | None, renderer: _Renderer, label: str, locator: Locator
) -> list[PhoneTarget]:
    problems = Problems()
    targets: list[PhoneTarget] = []
    first_at: dict[str, Where] = {}
    with _gc_paused():
        _render_all(plan, table, renderer, label, locator, targets, first_at, problems)
    problems.raise_if_any()
    return targets


def _render_all(
    plan: Plan,
    table: FleetTable | None,
    renderer: _Renderer,
    label: str,
    locator: Locator,
    targets: list[PhoneTarget],
    first_at: dict[str, Where],
    problems: Problems,
) -> None:
    for i, phone_id in enumerate(plan.fleet.phones):
        where = partial(_phones_where, label, locator, i)
        _add_unique(renderer, targets, first_at, phone_id, {}, where, problems)
    if table is not None:
        for i, phone_id in enumerate(table.phone_ids):
            where = partial(table.where, i)
            _add_unique(renderer, targets, first_at, phone_id, table.rows[i], where, problems)


def _add_unique(
    renderer: _Renderer,
    targets: list[PhoneTarget],
    first_at: dict[str, Where],
    phone_id: str,
    row: Mapping[str, PropertyValue],
    where: Where,
    problems: Problems,
) -> None:
    first = first_at.setdefault(phone_id, where)
    if first is not where:
        problems.add(
            where(), "phone_id", f"{show_value(phone_id)} is listed twice; first at {first()}"
        )
        return
    try:
        targets.append(renderer.target(len(targets), phone_id, row))
    except _PhoneError as exc:
        problems.add(where(), exc.field, str(exc))
