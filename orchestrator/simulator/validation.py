"""Request validation as the cloud does it: whole-request 400s versus per-item errors in a 200.

The split matters to clients: a whole-request 400 (empty list, too many phones, a bad ``property``
string, duplicates) rejects every phone of the batch and must be bisected by the caller, while a
malformed or unknown ``phone_id`` fails only its own item. Pure functions over parsed JSON.

The values inside ``property`` are not checked: any JSON object is accepted, numbers and strings
alike for every property (user code sends ``"1"`` where the docs show ``1``). The simulator must be
at least as permissive as the cloud is documented to be, so that it never fails a plan the cloud
would take; the orchestrator's own checks of the documented formats live with the plan.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.simulator.wire import (
    BAD_PAGING_ERROR_CODE,
    BATCH_TOO_LARGE_ERROR_CODE,
    EMPTY_LIST_ERROR_CODE,
    INVALID_PARAMETER_ERROR_CODE,
    Rejection,
)

__all__ = [
    "MAX_PROPERTY_BYTES",
    "BatchItem",
    "parse_paging",
    "property_size_bytes",
    "valid_phone_id",
    "validate_batch",
]

MAX_PROPERTY_BYTES = 7800
"""``property`` + ``custom_property`` together must not exceed this (cph-api.md §1.3)."""

_PHONE_ID = re.compile(r"[0-9a-zA-Z]{1,32}")


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One phone of a valid batch request; ``properties`` is the decoded ``property`` object."""

    phone_id: str
    properties: dict[str, Any] | None
    custom_property: dict[str, str] | None


def valid_phone_id(phone_id: str) -> bool:
    """≤32 bytes of ``[0-9a-zA-Z]``; anything else is answered per item with CPS.0004."""
    return _PHONE_ID.fullmatch(phone_id) is not None


def property_size_bytes(raw_property: str | None, custom: dict[str, str] | None) -> int:
    """Bytes counted against :data:`MAX_PROPERTY_BYTES`.

    The docs do not say how ``custom_property`` is measured; the simulator counts its compact JSON
    encoding (UTF-8) plus the UTF-8 bytes of the ``property`` string, a conservative reading.
    """
    size = len(raw_property.encode()) if raw_property is not None else 0
    if custom:
        size += len(json.dumps(custom, separators=(",", ":"), ensure_ascii=False).encode())
    return size


def _invalid(field: str, why: str, violation: str = "malformed_request") -> Rejection:
    return Rejection(
        400, INVALID_PARAMETER_ERROR_CODE, f"Parameter: {field} is invalid: {why}.", violation
    )


def validate_batch(
    body: Any, *, max_batch: int, property_required: bool
) -> list[BatchItem] | Rejection:
    """Check a batch-update-property / batch-restart body; a :class:`Rejection` rejects all of it."""
    if not isinstance(body, dict) or not isinstance(body.get("phones"), list):
        return _invalid("phones", "the body must be an object with a phones list")
    phones: list[Any] = body["phones"]
    if not phones:
        return Rejection(400, EMPTY_LIST_ERROR_CODE, "The phone list is empty.", "empty_batch")
    if len(phones) > max_batch:
        msg = f"Parameter: phones holds {len(phones)} phones, more than the maximum {max_batch}."
        return Rejection(400, BATCH_TOO_LARGE_ERROR_CODE, msg, "batch_too_large")
    items: list[BatchItem] = []
    for position, raw in enumerate(phones):
        item = _validate_item(raw, position, property_required)
        if isinstance(item, Rejection):
            return item
        items.append(item)
    return _reject_duplicates(items) or items


def _validate_item(raw: Any, position: int, property_required: bool) -> BatchItem | Rejection:
    where = f"phones[{position}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("phone_id"), str):
        return _invalid(f"{where}.phone_id", "a phone_id string is required")
    phone_id: str = raw["phone_id"]
    raw_property = raw.get("property")
    if raw_property is None and property_required:
        return _invalid(f"{where}.property", f"required for phone {phone_id}", "invalid_property")
    properties = _decode_property(raw_property)
    if isinstance(properties, str):
        return _invalid(f"{where}.property", f"{properties} (phone {phone_id})", "invalid_property")
    custom = raw.get("custom_property")
    if custom is not None and not _is_str_map(custom):
        why = f"must map strings to strings (phone {phone_id})"
        return _invalid(f"{where}.custom_property", why, "invalid_property")
    size = property_size_bytes(raw_property, custom)
    if size > MAX_PROPERTY_BYTES:
        why = f"property and custom_property hold {size} bytes, over {MAX_PROPERTY_BYTES} (phone {phone_id})"
        return _invalid(f"{where}.property", why, "invalid_property")
    return BatchItem(phone_id=phone_id, properties=properties, custom_property=custom)


def _decode_property(raw_property: Any) -> dict[str, Any] | str | None:
    """The decoded object, ``None`` when absent, or a reason string when unusable."""
    if raw_property is None:
        return None
    if not isinstance(raw_property, str):
        return "must be a string holding a JSON object"
    try:
        decoded = json.loads(raw_property)
    except ValueError:
        return "not valid JSON"
    if not isinstance(decoded, dict):
        return "must encode a JSON object"
    return decoded


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _reject_duplicates(items: list[BatchItem]) -> Rejection | None:
    seen: set[str] = set()
    for item in items:
        if item.phone_id in seen:
            msg = f"Parameter: phones lists phone {item.phone_id} more than once."
            return Rejection(400, INVALID_PARAMETER_ERROR_CODE, msg, "duplicate_phone_in_request")
        seen.add(item.phone_id)
    return None


def parse_paging(
    query: dict[str, str], *, max_limit: int, default_limit: int
) -> tuple[int, int] | Rejection:
    """``offset`` ≥ 0 and ``limit`` in 1..max_limit, else 400 CPS.0002 (a client paging bug)."""
    try:
        offset = int(query.get("offset", "0"))
        limit = int(query.get("limit", str(default_limit)))
    except ValueError:
        offset, limit = -1, -1
    if offset < 0 or not 1 <= limit <= max_limit:
        msg = f"Parameter: offset or limit is invalid (offset>=0, 1<=limit<={max_limit})."
        return Rejection(400, BAD_PAGING_ERROR_CODE, msg, "bad_paging")
    return offset, limit
