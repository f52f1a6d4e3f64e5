"""The CPH phone properties we know: their documented format and whether they need a restart.

A plan may set any property; the ones in :data:`KNOWN_PROPERTIES` are checked against Huawei's
property list before anything is sent, so that a typo fails one plan instead of thousands of jobs.
A local check must never be stricter than the cloud: a rule is enforced only where the docs state
it, and where they are unclear (the characters of a Wi-Fi SSID, the form of a country code) a
value outside the documented form is sent with a warning (:func:`advise_property`).

Values keep the text the plan gave them (:mod:`orchestrator.plan.verbatim`), and a check never
changes that text, only its JSON type: the docs are loose (examples use integers for flags, user
code sends strings), so ``"1"`` is accepted for an Integer flag and sent as ``1``, and a number
written for a String property such as ``com.cph.bandwidth_limit`` is sent as a string of the same
characters. Unknown property names pass unchanged (the loader warns about them, or refuses them
when ``strict_properties`` is on).

Sources, named beside each rule: the property list (``cph_api_appendix_03``) in Chinese,
https://support.huaweicloud.com/api-cph/cph_api_appendix_03.html, and in English,
https://support.huaweicloud.com/intl/en-us/api-cph/cph_api_appendix_03.html; and the user
guide's pages on the AOSP features ("使用AOSP功能"), which say when a property takes effect. Which
properties need a restart is known only where the user guide says so; change ``needs_restart`` in
the table when more is learnt.
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
    "advise_property",
    "check_property",
    "needs_restart",
    "show_value",
]

PropertyValue = int | float | str | bool
"""A value a plan may give a property (the API wants a JSON object of such values)."""

_SHOWN_VALUE_CHARS = 60
_DECIMAL = re.compile(r"-?[0-9]{1,20}")
_TEXT_OF_BOOL = {True: "true", False: "false"}

Check = Callable[[PropertyValue], PropertyValue]
"""A documented format's check: the value to send, or :class:`PropertyFormatError`."""
Advice = Callable[[PropertyValue], str | None]
"""A check for what the docs leave unclear: a warning to give, or None."""


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


def _as_text(value: PropertyValue) -> str:
    """The characters of a value as the plan wrote them (a number's JSON is the text typed)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return _TEXT_OF_BOOL[value]
    return repr(value)


def _flag(*allowed: int) -> Check:
    """An Integer property with a few values, given as a number or as a string of its digits."""
    choices = ", ".join(str(a) for a in allowed[:-1])
    choices = f"{choices} or {allowed[-1]}" if choices else str(allowed[-1])
    texts = {str(a): a for a in allowed}

    def check(value: PropertyValue) -> PropertyValue:
        number = texts.get(value) if isinstance(value, str) else None
        if type(value) is int and value in allowed:
            number = value
        if number is None:
            raise PropertyFormatError(f"{show_value(value)} must be {choices}")
        return number

    return check


def _text(max_len: int, charset: str, described: str) -> Check:
    """A String property of 1 to ``max_len`` characters from ``charset`` (a regex class body)."""
    pattern = re.compile(f"[{charset}]{{1,{max_len}}}")

    def check(value: PropertyValue) -> PropertyValue:
        text = _as_text(value)
        if not pattern.fullmatch(text):
            raise PropertyFormatError(
                f"{show_value(value)} must be 1 to {max_len} characters of {described}"
            )
        return text

    return check


def _digits(max_len: int) -> Check:
    """A String property of at most ``max_len`` decimal digits."""
    pattern = re.compile(f"[0-9]{{0,{max_len}}}")

    def check(value: PropertyValue) -> PropertyValue:
        text = _as_text(value)
        if not pattern.fullmatch(text):
            raise PropertyFormatError(
                f"{show_value(value)} must be at most {max_len} decimal digits"
            )
        return text

    return check


def _int_text(low: int, high: int, *extra: int) -> Check:
    """A String property holding an integer in a range, sent with the digits as written."""
    also = "".join(f", or {e}" for e in extra)

    def check(value: PropertyValue) -> PropertyValue:
        text = _as_text(value)
        number = int(text) if _DECIMAL.fullmatch(text) else None
        if number is None or not (low <= number <= high or number in extra):
            raise PropertyFormatError(
                f"{show_value(value)} must be an integer from {low} to {high}{also}"
            )
        return text

    return check


def _max_length(max_len: int) -> Check:
    """A String property of at most ``max_len`` characters; what they may be is left to advice."""

    def check(value: PropertyValue) -> PropertyValue:
        text = _as_text(value)
        if len(text) > max_len:
            raise PropertyFormatError(
                f"{show_value(value)} has {len(text)} characters, more than {max_len}"
            )
        return text

    return check


def _any_text(value: PropertyValue) -> PropertyValue:
    """A String property whose form the docs do not give: any value, sent as its text."""
    return _as_text(value)


def _unless(charset: str, described: str) -> Advice:
    """Advice for a text the docs do not clearly allow: non-empty, of ``charset`` characters."""
    pattern = re.compile(f"[{charset}]+")

    def advise(value: PropertyValue) -> str | None:
        text = _as_text(value)
        if pattern.fullmatch(text):
            return None
        what = "is empty" if not text else f"is not {described}"
        return f"{show_value(value)} {what} as the docs show it; sent as written, the cloud may refuse it"

    return advise


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """What the docs say about one property.

    ``normalize`` raises :class:`PropertyFormatError` for a value the docs rule out; ``advise``
    words a warning for one they do not clearly allow.
    """

    name: str
    doc_type: Literal["Integer", "String"]
    normalize: Check
    needs_restart: bool = False
    replaced_by: str | None = None
    """Set on deprecated aliases: the property to use instead."""
    advise: Advice | None = None


_ZERO_ONE = _flag(0, 1)
_LETTERS = "A-Za-z"
_DIGITS = "0-9"
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f"
"""Chinese characters and punctuation (CJK ideographs, symbols, full-width forms)."""
_PIC_PATH_CHARS = f"{_LETTERS}{_DIGITS}{_CJK}@#:/._ \\-"
_SSID_CHARS = _PIC_PATH_CHARS

# Property list, zh and en: https://support.huaweicloud.com/api-cph/cph_api_appendix_03.html and
# https://support.huaweicloud.com/intl/en-us/api-cph/cph_api_appendix_03.html ("appendix" below).
KNOWN_PROPERTIES: Mapping[str, PropertySpec] = {
    spec.name: spec
    for spec in (
        # appendix: 0 shows the navigation keys, 1 hides them; user guide "隐藏虚拟按键": 重启生效.
        PropertySpec("com.cph.mainkeys", "Integer", _ZERO_ONE, needs_restart=True),
        # appendix: the deprecated alias of com.cph.mainkeys.
        PropertySpec(
            "qemu.hw.mainkeys",
            "Integer",
            _ZERO_ONE,
            needs_restart=True,
            replaced_by="com.cph.mainkeys",
        ),
        # appendix: 0 shows the status bar, 1 hides it; user guide "隐藏状态栏": 重启生效.
        PropertySpec("disable.status.bar", "Integer", _ZERO_ONE, needs_restart=True),
        # appendix: 0 or 1; user guide "自动对App授权": 设置立即生效.
        PropertySpec("ro.permission.changed", "Integer", _ZERO_ONE),
        # appendix: 0 or 1; user guide "自动安装App": takes effect at once.
        PropertySpec("ro.install.auto", "Integer", _ZERO_ONE),
        # appendix: 1 non-root (the default), 0 root.
        PropertySpec("ro.com.cph.non_root", "Integer", _ZERO_ONE),
        # appendix: 0 or 1 (1 disables notifications).
        PropertySpec("ro.com.cph.notification_disable", "Integer", _ZERO_ONE),
        # appendix: 0 or 1 (with ro.com.cph.non_root=1, 1 enables toasts).
        PropertySpec("ro.com.cph.toast_enable", "Integer", _ZERO_ONE),
        # appendix: 0 or 1 (1 allows screenshots of protected screens).
        PropertySpec("com.cph.disable_fb_permission", "Integer", _ZERO_ONE),
        # appendix: 1 to 99999999 kbit/s, -1 for no limit.
        PropertySpec("com.cph.bandwidth_limit", "String", _int_text(1, 99_999_999, -1)),
        # appendix (zh): non-empty, at most 90 characters: digits, letters, '-', '_', Chinese
        # characters, '@', '#', '.', ':', '/' and spaces.
        PropertySpec(
            "com.cph.cam_local_pic_path",
            "String",
            _text(90, _PIC_PATH_CHARS, "letters, digits, Chinese, spaces and @#:/._-"),
        ),
        # appendix: non-empty, at most 64 characters: digits, letters and '-'.
        PropertySpec(
            "persist.sys.locale", "String", _text(64, "A-Za-z0-9\\-", "letters, digits and '-'")
        ),
        # appendix: at most 15 decimal digits.
        PropertySpec("sys.prop.writeimsi", "String", _digits(15)),
        # appendix: at most 20 decimal digits.
        PropertySpec("sys.prop.writephonenum", "String", _digits(20)),
        # appendix: at most 64 characters; the older English list allows '@', '#', ':' and '/',
        # the pages disagree on the rest, so other characters (and an empty SSID) only warn.
        PropertySpec(
            "sys.prop.writewifissid",
            "String",
            _max_length(64),
            advise=_unless(_SSID_CHARS, "made of letters, digits, Chinese, spaces and @#:/._-"),
        ),
        # appendix (older English list): the SIM's country, default "cn"; no format is given.
        PropertySpec(
            "gsm.sim.operator.iso-country",
            "String",
            _any_text,
            advise=_unless(_LETTERS, "a country code of letters such as cn"),
        ),
    )
}
"""Properties whose format the docs give; everything else is sent as written."""


def check_property(name: str, value: PropertyValue) -> PropertyValue:
    """The value with its documented JSON type; raises :class:`PropertyFormatError`.

    Unknown properties pass unchanged, except that no property may be a non-finite number (the
    API takes JSON, which has no NaN or infinity).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise PropertyFormatError(f"{value} is not a number JSON can carry")
    spec = KNOWN_PROPERTIES.get(name)
    return value if spec is None else spec.normalize(value)


def advise_property(name: str, value: PropertyValue) -> str | None:
    """A warning for a checked value the docs do not clearly allow (sent all the same), or None."""
    spec = KNOWN_PROPERTIES.get(name)
    return None if spec is None or spec.advise is None else spec.advise(value)


def needs_restart(property_names: Iterable[str]) -> bool:
    """True if any of these properties only takes effect after a restart (``restart_after: when_needed``)."""
    return any(
        spec.needs_restart
        for spec in (KNOWN_PROPERTIES.get(name) for name in property_names)
        if spec is not None
    )
