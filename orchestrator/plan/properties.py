"""The CPH phone properties we know (``cph-api.md`` §6): their documented format and restart needs.

A plan may set any property; the ones in :data:`KNOWN_PROPERTIES` are checked against the
documented format before anything is sent, so that a typo fails one plan instead of thousands of
jobs. Values are *normalized to the documented type*: the docs are loose (examples use integers for
flags, user code sends strings), so ``"1"`` is accepted for an Integer flag and sent as ``1``, and
``1000`` is accepted for a String such as ``com.cph.bandwidth_limit`` and sent as ``"1000"``.
Unknown property names pass unchanged (the loader warns about them, or refuses them when
``strict_properties`` is on).

Which properties need a phone restart is mostly UNCONFIRMED in the docs; only ``com.cph.mainkeys``
(and its deprecated alias ``qemu.hw.mainkeys``) is documented to. Change ``needs_restart`` in the
table below when more is learnt.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "KNOWN_PROPERTIES",
    "PropertyFormatError",
    "PropertySpec",
    "PropertyValue",
    "check_property",
    "needs_restart",
    "show_value",
]

PropertyValue = int | float | str | bool
"""A value a plan may give a property (the API wants a JSON object of such values)."""

_SHOWN_VALUE_CHARS = 60
_INTEGER = re.compile(r"-?[0-9]+")


class PropertyFormatError(ValueError):
    """A property value does not have its documented format; the message says what it must be."""


def show_value(value: object) -> str:
    """A value as an operator would write it in JSON (strings quoted), shortened if long."""
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > _SHOWN_VALUE_CHARS:
        shown = shown[: _SHOWN_VALUE_CHARS - 1] + "…"
    return shown


def _as_int(value: PropertyValue) -> int | None:
    """An int, or a string of decimal digits read as one; anything else (bools too) gives None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _flag(*allowed: int) -> Callable[[PropertyValue], PropertyValue]:
    choices = ", ".join(str(a) for a in allowed[:-1])
    choices = f"{choices} or {allowed[-1]}" if choices else str(allowed[-1])

    def check(value: PropertyValue) -> PropertyValue:
        number = _as_int(value)
        if number is None or number not in allowed:
            raise PropertyFormatError(f"{show_value(value)} must be {choices}")
        return number

    return check


def _digits(max_len: int) -> Callable[[PropertyValue], PropertyValue]:
    pattern = re.compile(f"[0-9]{{1,{max_len}}}")

    def check(value: PropertyValue) -> PropertyValue:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not pattern.fullmatch(text):
            raise PropertyFormatError(
                f"{show_value(value)} must be at most {max_len} decimal digits"
            )
        return text

    return check


def _text(
    max_len: int, charset: str, described: str, *, min_len: int = 1
) -> Callable[[PropertyValue], PropertyValue]:
    pattern = re.compile(f"[{charset}]{{{min_len},{max_len}}}")
    length = f"{min_len} to {max_len}" if min_len < max_len else str(max_len)

    def check(value: PropertyValue) -> PropertyValue:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not pattern.fullmatch(text):
            raise PropertyFormatError(
                f"{show_value(value)} must be {length} characters of {described}"
            )
        return text

    return check


def _int_string(low: int, high: int, *extra: int) -> Callable[[PropertyValue], PropertyValue]:
    also = "".join(f", or {e}" for e in extra)

    def check(value: PropertyValue) -> PropertyValue:
        number = _as_int(value)
        if number is None or not (low <= number <= high or number in extra):
            raise PropertyFormatError(
                f"{show_value(value)} must be an integer from {low} to {high}{also}"
            )
        return str(number)

    return check


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """What the docs say about one property; ``normalize`` raises :class:`PropertyFormatError`."""

    name: str
    doc_type: Literal["Integer", "String"]
    normalize: Callable[[PropertyValue], PropertyValue]
    needs_restart: bool = False
    replaced_by: str | None = None
    """Set on deprecated aliases: the property to use instead."""


_ZERO_ONE = _flag(0, 1)
_ONE = _flag(1)
_LETTERS_DIGITS_DASH = "letters, digits and '-'"
_SSID_CHARS = "letters, digits, '_', '-', '.' and spaces"
_PATH_CHARS = "letters, digits, '/', '_', '-' and '.'"

KNOWN_PROPERTIES: Mapping[str, PropertySpec] = {
    spec.name: spec
    for spec in (
        PropertySpec("com.cph.mainkeys", "Integer", _ZERO_ONE, needs_restart=True),
        PropertySpec(
            "qemu.hw.mainkeys",
            "Integer",
            _ZERO_ONE,
            needs_restart=True,
            replaced_by="com.cph.mainkeys",
        ),
        PropertySpec("disable.status.bar", "Integer", _ZERO_ONE),
        PropertySpec("ro.permission.changed", "Integer", _ONE),
        PropertySpec("ro.install.auto", "Integer", _ONE),
        PropertySpec("ro.com.cph.non_root", "Integer", _ZERO_ONE),
        PropertySpec("ro.com.cph.notification_disable", "Integer", _ONE),
        PropertySpec("ro.com.cph.toast_enable", "Integer", _ONE),
        PropertySpec("com.cph.disable_fb_permission", "Integer", _ONE),
        PropertySpec("com.cph.bandwidth_limit", "String", _int_string(1, 99_999_999, -1)),
        # The docs say "restricted charset" without listing it; this is a conservative reading.
        PropertySpec(
            "com.cph.cam_local_pic_path", "String", _text(90, r"A-Za-z0-9/_.\-", _PATH_CHARS)
        ),
        PropertySpec(
            "persist.sys.locale", "String", _text(64, r"A-Za-z0-9\-", _LETTERS_DIGITS_DASH)
        ),
        PropertySpec("sys.prop.writeimsi", "String", _digits(15)),
        PropertySpec("sys.prop.writephonenum", "String", _digits(20)),
        # "Restricted charset" again; the default value is cloudphone_wifi.
        PropertySpec("sys.prop.writewifissid", "String", _text(64, r"A-Za-z0-9_.\- ", _SSID_CHARS)),
        PropertySpec(
            "gsm.sim.operator.iso-country", "String", _text(2, "A-Za-z", "letters", min_len=2)
        ),
    )
}
"""Properties whose format the docs give; everything else is sent as written."""


def check_property(name: str, value: PropertyValue) -> PropertyValue:
    """The value normalized to the property's documented type; raises :class:`PropertyFormatError`.

    Unknown properties pass unchanged, except that no property may be a non-finite number (the
    API takes JSON, which has no NaN or infinity).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise PropertyFormatError(f"{value} is not a number JSON can carry")
    spec = KNOWN_PROPERTIES.get(name)
    return value if spec is None else spec.normalize(value)


def needs_restart(property_names: Iterable[str]) -> bool:
    """True if any of these properties only takes effect after a restart (``restart_after: when_needed``)."""
    return any(
        spec.needs_restart
        for spec in (KNOWN_PROPERTIES.get(name) for name in property_names)
        if spec is not None
    )
