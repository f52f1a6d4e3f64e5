"""What you typed is what is sent: a property value reaches the phone as the characters written.

Parsers turn the text of a value into a number or a boolean and forget the text: YAML 1.1 reads
``012`` as 10, ``no`` as false and ``1:20`` as 80; YAML, JSON and TOML all read ``1.10`` as 1.1.
Every phone property is text on the phone, so a plan must not change what it says on the way. The
rule, the same for YAML, JSON and TOML plans and for fleet files:

* A value written as a number or a boolean stays one only if JSON writes it back exactly as it was
  typed: ``1``, ``-7``, ``1.5``, ``true``, ``false``. Anything else is sent as a JSON string of
  the characters typed: ``012``, ``0o12``, ``0x1F``, ``1_000``, ``1:20``, ``1.10``, ``1e3``,
  ``.5``, ``+1``, ``-0``, ``.inf``, ``.nan``, ``yes``, ``no``, ``on``, ``True``. Either way the
  text inside the ``property`` JSON is the text of the plan.
* Where nothing was typed (YAML ``~``, ``null`` or an empty value, JSON ``null``), or the parser
  keeps no text to send (a TOML integer not written in plain decimal), the plan is refused,
  naming file, line and property, and asking to quote the value.
* Quoted values are strings and are sent as they are, except that braces in a string are template
  placeholders (:mod:`orchestrator.plan.render`).

:func:`value_from_text` is the rule; the parsers apply it to property values
(:mod:`orchestrator.plan.locate`) and to fleet file cells (:mod:`orchestrator.plan.fleet`).
"""

from __future__ import annotations

import math
import re

from orchestrator.plan.properties import PropertyValue

__all__ = ["NO_VALUE_HINT", "NumberText", "value_from_text"]

NO_VALUE_HINT = 'give one, or quote it ("null", "~", "") to send that text'
"""The advice given when a property is null: YAML reads ``~``, ``null`` and nothing as no value."""

_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


class NumberText(str):
    """The source text of a number, as a JSON or TOML parser hook hands it over.

    A marker: the parsing code turns it into a property value with :func:`value_from_text` under
    ``properties``, and into the plain number everywhere else.
    """

    __slots__ = ()

    def as_number(self) -> int | float:
        """The number JSON or TOML means by this text (for fields that are not properties)."""
        return int(self) if _PLAIN_INT.fullmatch(self) else float(self)


def value_from_text(text: str) -> PropertyValue:
    """The value to send for a number or boolean written as ``text``: typed only if JSON writes it alike.

    ``"1"`` gives 1 and ``"1.5"`` gives 1.5, whose JSON is the same text; ``"012"``, ``"1.10"``,
    ``"1e3"``, ``"-0"`` or ``"no"`` give the string itself. An integer too long for Python to
    convert stays text too.
    """
    if text in ("true", "false"):
        return text == "true"
    if _PLAIN_INT.fullmatch(text):
        if text == "-0":
            return text
        try:
            return int(text)
        except ValueError:  # more digits than int() converts: still sent, as text
            return text
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) and repr(number) == text else text
