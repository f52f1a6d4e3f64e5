"""Per-phone property templates, compiled once and rendered fast.

A template is a string property value with placeholders in Python's format syntax: ``{index}``
(the phone's 0-based position in the fleet), ``{phone_id}``, and any column of the fleet file, each
with an optional conversion and format spec (``{index:04d}``, ``{name!r}``). ``{{`` and ``}}`` are
literal braces. A placeholder's name is looked up as written, dots included, so a dotted column
such as ``{sys.prop.writephonenum}`` works; there is no attribute or item access.

Templates are parsed once with :class:`string.Formatter` and rendered by one :meth:`str.format`
call with positional arguments (a phone costs well under a microsecond). The placeholder-by-placeholder
loop is kept as the reference: it runs only when the fast call fails, to raise the precise error.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.plan.properties import PropertyValue

__all__ = [
    "BUILTIN_PLACEHOLDERS",
    "MissingPlaceholderError",
    "Template",
    "TemplateError",
    "compile_template",
]

BUILTIN_PLACEHOLDERS = frozenset({"index", "phone_id"})
_CONVERSIONS: dict[str, Callable[[object], str]] = {"s": str, "r": repr, "a": ascii}
_SAMPLES: dict[str, object] = {"index": 0, "phone_id": "a7f3a1c5"}


class TemplateError(ValueError):
    """A template cannot be rendered (or even parsed); the message says why."""


class MissingPlaceholderError(TemplateError):
    """A placeholder has no value for this phone (no such column, or an empty cell)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"placeholder {{{name}}} has no value for this phone")
        self.name = name


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text, then a placeholder (name, conversion, spec), repeatedly."""

    text: str
    parts: tuple[tuple[str, str | None, str | None, str], ...]
    placeholders: frozenset[str]
    pattern: str
    """The template for :meth:`str.format` with arguments ``(index, phone_id, *columns)``."""
    columns: tuple[str, ...]
    """The fleet columns the template reads, in the order :attr:`pattern` numbers them."""

    def render(self, index: int, phone_id: str, row: Mapping[str, PropertyValue]) -> str:
        """The text for one phone; raises :class:`MissingPlaceholderError` or :class:`TemplateError`.

        ``str.format`` applies the same conversions and ``format(value, spec)`` calls as
        :meth:`render_by_parts`, so when it succeeds it gives the same text; when it cannot (a
        missing value, a spec the value refuses) the reference loop runs and says why.
        """
        try:
            if not self.columns:
                return self.pattern.format(index, phone_id)
            values = [row.get(name) for name in self.columns]
            if None not in values:
                return self.pattern.format(index, phone_id, *values)
        except Exception:  # whatever it was, the reference loop raises it as it always has
            pass
        return self.render_by_parts(index, phone_id, row)

    def render_by_parts(self, index: int, phone_id: str, row: Mapping[str, PropertyValue]) -> str:
        """The reference rendering, one placeholder at a time; :meth:`render` gives the same text."""
        out: list[str] = []
        for literal, name, conversion, spec in self.parts:
            out.append(literal)
            if name is None:
                continue
            value: object
            if name == "index":
                value = index
            elif name == "phone_id":
                value = phone_id
            else:
                value = row.get(name)
                if value is None:
                    raise MissingPlaceholderError(name)
            out.append(_format(value, conversion, spec, name))
        return "".join(out)


def _format(value: object, conversion: str | None, spec: str, name: str) -> str:
    if conversion is not None:
        value = _CONVERSIONS[conversion](value)
    try:
        return format(value, spec)
    except (ValueError, TypeError, OverflowError) as exc:  # Overflow: a huge int as a float
        raise TemplateError(
            f"placeholder {{{name}}} cannot be formatted with {spec!r}: {exc}"
        ) from exc


def compile_template(text: str) -> Template:
    """Parse a template once; raises :class:`TemplateError` if it is malformed.

    A text without placeholders renders to a constant (``{{``/``}}`` still become single braces);
    ``Template.placeholders`` is then empty. Format specs of ``{index}`` and ``{phone_id}`` are
    tried at once, so ``{phone_id:04d}`` fails here rather than once per phone.
    """
    parts: list[tuple[str, str | None, str | None, str]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(
            f"{text!r} is not a valid template: {exc} (write {{{{ and }}}} for braces)"
        ) from exc
    for literal, name, spec, conversion in parsed:
        if name is not None:
            _check_placeholder(name, spec or "", conversion)
        parts.append((literal, name, conversion, spec or ""))
    names = frozenset(name for _, name, _, _ in parts if name is not None)
    columns = tuple(sorted(names - BUILTIN_PLACEHOLDERS))
    return Template(text, tuple(parts), names, _format_pattern(parts, columns), columns)


def _format_pattern(
    parts: list[tuple[str, str | None, str | None, str]], columns: tuple[str, ...]
) -> str:
    """The parts as a :meth:`str.format` pattern numbering its fields: names may hold dots."""
    numbers = {"index": 0, "phone_id": 1} | {name: 2 + i for i, name in enumerate(columns)}
    out: list[str] = []
    for literal, name, conversion, spec in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            out.append("{" + str(numbers[name]))
            out.append(f"!{conversion}" if conversion is not None else "")
            out.append(f":{spec}}}" if spec else "}")
    return "".join(out)


def _check_placeholder(name: str, spec: str, conversion: str | None) -> None:
    if not name:
        raise TemplateError("an empty placeholder {} has no name (write {{}} for literal braces)")
    if "{" in spec or "}" in spec:
        raise TemplateError(
            f"placeholder {{{name}}}: nested placeholders in a format spec are not supported"
        )
    if conversion is not None and conversion not in _CONVERSIONS:
        raise TemplateError(f"placeholder {{{name}}}: unknown conversion !{conversion}")
    if name in _SAMPLES:
        _format(_SAMPLES[name], conversion, spec, name)
