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
Every value is checked by :func:`orchestrator.plan.properties.check_property`, which may change
its JSON type but never its text (:mod:`orchestrator.plan.verbatim`); a value the docs do not
clearly allow is sent with a warning (:func:`~orchestrator.plan.properties.advise_property`), one
per property and place, naming the first phone and counting the others.

Plans given as data (the daemon's HTTP API): :func:`load_plan_data`. With no ``base_dir`` such a
plan may not use ``fleet.file`` — a remote caller must not make the daemon read local files; a
caller that trusts the plan passes the directory to resolve it against.
"""

from __future__ import annotations

import difflib
import gc
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.cph.models import (
    PROPERTY_LIMIT_BYTES,
    PropertyTooLargeError,
    PropertyUpdate,
    encode_property,
)
from orchestrator.plan.errors import PlanError, Problems
from orchestrator.plan.fleet import NO_CELLS, FleetFile, read_fleet_file
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
    advise_property,
    check_property,
    needs_restart,
    show_value,
)
from orchestrator.plan.render import BUILTIN_PLACEHOLDERS, Template, TemplateError, compile_template

__all__ = [
    "NO_PHONES",
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


_JSON_VALUE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Encodes one value exactly as :func:`encode_property` encodes it inside the property object."""


@dataclass(slots=True)
class _Advised:
    """The first phone whose value for one property drew a warning, and every phone that did.

    A set, not a count: :meth:`LoadedPlan.targets` may render the same queried phone again.
    """

    phone_id: str
    message: str
    phone_ids: set[str] = field(default_factory=set)

    def describe(self, where: str, field: str) -> str:
        """The warning: place, field, first phone, message, and how many more phones."""
        others = len(self.phone_ids) - 1
        more = f" (and {others} more phone(s))" if others > 0 else ""
        return f"{where}: {field}: phone {self.phone_id}: {self.message}{more}"


class _Piece(NamedTuple):
    """A template prepared for the fast path: how its value is checked and where it goes."""

    name: str
    template: Template
    normalize: Callable[[PropertyValue], PropertyValue] | None
    """The documented format's check, which is all :func:`check_property` does to a string."""
    key: str
    """The ``property`` text before the value: ``,"name":`` (no comma right after ``{``)."""


@dataclass(slots=True)
class _Renderer:
    """Turns (index, phone, row) into a :class:`PhoneTarget`; built once per plan.

    :meth:`target_by_dict` is the reference: the properties as a dict, checked one by one, then
    :meth:`PropertyUpdate.build` encodes and size-checks them. It costs microseconds per phone, so
    :meth:`target` takes a shorter way for a phone whose row changes no property name (no override
    cell, no column named like a template): the common values are encoded once (:attr:`head`) and
    each template's key and value appended, which is the text :func:`encode_property` gives, since
    it encodes a dict item by item in order. Anything unusual (a value that fails its check, a
    text that is not ASCII or is too long) goes the reference way, which also words the error.
    """

    constants: dict[str, PropertyValue]
    templates: list[tuple[str, Template, str]]
    overrides: list[str] = field(default_factory=list)
    overrides_at: str = ""
    """Where the override columns are named (the fleet file's header line), for warnings."""
    advised: dict[tuple[str, str], _Advised] = field(default_factory=dict)
    """Warnings about rendered values, by (place, field): see :func:`advise_property`."""
    head: str = field(init=False)
    """``encode_property(constants)`` without its closing brace."""
    pieces: list[_Piece] = field(init=False)
    row_names: frozenset[str] = field(init=False)
    """Row cells that change a phone's properties beyond the templates: overrides and shadows."""
    advising: list[tuple[str, str]] = field(init=False)
    """The templates whose values may draw a warning: (name, place)."""

    def __post_init__(self) -> None:
        self.head = encode_property(self.constants)[:-1]
        self.pieces = [
            _Piece(
                name,
                template,
                spec.normalize if (spec := KNOWN_PROPERTIES.get(name)) is not None else None,
                ("," if self.constants or position else "") + _JSON_VALUE.encode(name) + ":",
            )
            for position, (name, template, _) in enumerate(self.templates)
        ]
        self.row_names = frozenset(self.overrides) | {name for name, _, _ in self.templates}
        self.advising = [
            (name, defined_at)
            for name, _, defined_at in self.templates
            if (spec := KNOWN_PROPERTIES.get(name)) is not None and spec.advise is not None
        ]

    def target(self, index: int, phone_id: str, row: Mapping[str, PropertyValue]) -> PhoneTarget:
        """The phone's target, the same as :meth:`target_by_dict` gives, faster."""
        if row and not self.row_names.isdisjoint(row):
            return self.target_by_dict(index, phone_id, row)
        props: dict[str, Any] = self.constants.copy()
        text = self.head
        try:
            for name, template, normalize, key in self.pieces:
                value: PropertyValue = template.render(index, phone_id, row)
                if normalize is not None:
                    value = normalize(value)
                props[name] = value
                text += key + _JSON_VALUE.encode(value)
        except (TemplateError, PropertyFormatError):
            return self.target_by_dict(index, phone_id, row)
        text += "}"
        if not text.isascii() or len(text) > PROPERTY_LIMIT_BYTES:
            return self.target_by_dict(index, phone_id, row)
        for name, defined_at in self.advising:
            self._advise(defined_at, f"properties.{name}", phone_id, name, props[name])
        return PhoneTarget(index, phone_id, props, PropertyUpdate(phone_id, text))

    def target_by_dict(
        self, index: int, phone_id: str, row: Mapping[str, PropertyValue]
    ) -> PhoneTarget:
        """The reference rendering; raises :class:`_PhoneError` naming the field at fault."""
        props = self.properties(index, phone_id, row)
        self._advise_all(phone_id, props, row)
        try:
            update = PropertyUpdate.build(phone_id, props)
        except PropertyTooLargeError as exc:
            raise _PhoneError("properties", str(exc)) from exc
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. "\ud800" in a JSON fleet
            message = f"phone {phone_id}: the properties are not valid Unicode text ({exc.reason})"
            raise _PhoneError("properties", message) from exc
        return PhoneTarget(index, phone_id, props, update)

    def _advise_all(
        self, phone_id: str, props: Mapping[str, Any], row: Mapping[str, PropertyValue]
    ) -> None:
        """Note the warnings for one phone's rendered and overridden values."""
        for name, _, defined_at in self.templates:
            if name not in row:
                self._advise(defined_at, f"properties.{name}", phone_id, name, props[name])
        for name in self.overrides:
            if row.get(name) is not None:
                self._advise(self.overrides_at, f"column {name}", phone_id, name, props[name])

    def _advise(
        self, where: str, field: str, phone_id: str, name: str, value: PropertyValue
    ) -> None:
        message = advise_property(name, value)
        if message is None:
            return
        seen = self.advised.setdefault((where, field), _Advised(phone_id, message))
        seen.phone_ids.add(phone_id)

    def advice(self) -> list[str]:
        """The warnings noted so far, one per property and place."""
        return [seen.describe(where, field) for (where, field), seen in self.advised.items()]

    def properties(
        self, index: int, phone_id: str, row: Mapping[str, PropertyValue]
    ) -> dict[str, Any]:
        """The phone's properties: common values, rendered templates, then its override cells."""
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


class LoadedPlan:
    """A validated plan, its fleet file read and its listed phones rendered.

    ``warnings`` holds what is suspicious but allowed (undocumented properties, unused columns);
    :meth:`targets` adds to it when the query repeats listed phones.
    """

    __slots__ = (
        "_advice",
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
        self._explicit_ids = frozenset(map(attrgetter("phone_id"), explicit))
        self._advice: list[str] = []
        self._note_advice()
        if not explicit and plan.fleet.query is None:
            raise PlanError(f"{label}: fleet: {NO_PHONES}")

    def _note_advice(self) -> None:
        """Bring the renderer's warnings into :attr:`warnings` (their counts grow with the query)."""
        for note in self._advice:
            self.warnings.remove(note)
        self._advice = self._renderer.advice()
        self.warnings.extend(self._advice)

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
                    _add_target(self._renderer, targets, phone_id, NO_CELLS, where, problems)
        self._note_advice()
        problems.raise_if_any()
        if repeated:
            note = (
                f"{self._label}: fleet.query: {repeated} phone(s) found by the query are also listed"
                " in fleet.phones or fleet.file; their listed entries are kept"
            )
            if note not in self.warnings:
                self.warnings.append(note)
        return targets


NO_PHONES = "the fleet has no phones: a rollout of nothing is refused, as `phones: []` is"
"""The refusal of a fleet that resolves to zero phones (an empty file, a query matching none)."""


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
        renderer = replace(
            renderer, overrides=compiler.check_columns(table), overrides_at=f"{table.label}:1"
        )
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
        constants: dict[str, PropertyValue] = {}
        templates: list[tuple[str, Template, str]] = []
        for name, value in properties.items():
            if not isinstance(name, str) or not isinstance(value, int | float | str):
                continue  # reported by the model
            where = _where(self.label, self.locator, ("properties", name))
            field = f"properties.{name}"
            self._note_name(where, field, name)
            try:
                self._compile_one(constants, templates, name, value, where)
            except (TemplateError, PropertyFormatError) as exc:
                self.problems.add(where, field, str(exc))
            else:
                self._advise_constant(constants, name, where)
        return _Renderer(constants, templates)

    def _advise_constant(self, constants: dict[str, PropertyValue], name: str, where: str) -> None:
        message = advise_property(name, constants[name]) if name in constants else None
        if message is not None:
            self.warnings.append(f"{where}: properties.{name}: {message}")

    @staticmethod
    def _compile_one(
        constants: dict[str, PropertyValue],
        templates: list[tuple[str, Template, str]],
        name: str,
        value: PropertyValue,
        where: str,
    ) -> None:
        if isinstance(value, str):
            template = compile_template(value)
            if template.placeholders:
                templates.append((name, template, where))
                return
            value = template.render(0, "", {})
        constants[name] = check_property(name, value)

    def check_columns(self, table: FleetFile) -> list[str]:
        """The dotted columns (per-phone property values), after noting the undocumented ones."""
        dotted = [column for column in table.columns if "." in column]
        for column in dotted:
            self._note_name(f"{table.label}:1", f"column {column}", column)
        return dotted

    def check_placeholders(self, renderer: _Renderer, table: FleetFile | None) -> None:
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
) -> FleetFile | None:
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
        with _gc_paused():
            return read_fleet_file(path, str(path))
    except PlanError as exc:
        problems.extend(exc)
        return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while reading or rendering a fleet.

    Both allocate a few objects per phone and create no cycles, yet each of the collector's
    passes walks the whole growing heap: for 100,000 phones that doubled the time. Both are
    synchronous, so nothing else runs meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _FleetPlaces:
    """Where the phone at a fleet position is listed: ``fleet.phones`` first, then the file's rows.

    Only a message needs the place spelled out, and fleets are large while errors are rare, so
    phones are known by their position and this is asked only when something is wrong.
    """

    label: str
    locator: Locator
    listed: int
    table: FleetFile | None

    def __call__(self, position: int) -> str:
        if position < self.listed or self.table is None:
            line = _where(self.label, self.locator, ("fleet", "phones", position))
            return f"{line} (fleet.phones[{position}])"
        return self.table.where(position - self.listed)


def _render_explicit(
    plan: Plan, table: FleetFile | None, renderer: _Renderer, label: str, locator: Locator
) -> list[PhoneTarget]:
    listed = len(plan.fleet.phones)
    phone_ids = list(plan.fleet.phones)
    rows: list[Mapping[str, PropertyValue]] = [NO_CELLS] * listed
    if table is not None:
        phone_ids += table.phone_ids
        rows += table.rows
    problems = Problems()
    targets: list[PhoneTarget] = []
    with _gc_paused():
        _render_all(
            renderer,
            phone_ids,
            rows,
            _FleetPlaces(label, locator, listed, table),
            targets,
            problems,
        )
    problems.raise_if_any()
    return targets


def _render_all(
    renderer: _Renderer,
    phone_ids: list[str],
    rows: list[Mapping[str, PropertyValue]],
    where: _FleetPlaces,
    targets: list[PhoneTarget],
    problems: Problems,
) -> None:
    """Render each phone listed for the first time; a repeat is a problem naming both places."""
    first_at: dict[str, int] = {}
    for position, (phone_id, row) in enumerate(zip(phone_ids, rows, strict=True)):
        first = first_at.setdefault(phone_id, position)
        if first != position:
            problems.add(
                where(position),
                "phone_id",
                f"{show_value(phone_id)} is listed twice; first at {where(first)}",
            )
            continue
        try:
            targets.append(renderer.target(len(targets), phone_id, row))
        except _PhoneError as exc:
            problems.add(where(position), exc.field, str(exc))
