"""The CPH client's error tree and the one place where error answers are parsed.

``ApiError`` (a :class:`~orchestrator.errors.OrchestratorError`) carries what the operator and the
retry policy need: HTTP status, ``error_code``, ``error_msg``, ``request_id`` and the call it answered.
Subclasses tell the engine what to do next; per-phone errors inside a 200 answer are *data*, not
exceptions (see :mod:`orchestrator.cph.models`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from orchestrator.errors import ExitCode, OrchestratorError

__all__ = [
    "THROTTLE_CODES",
    "ApiError",
    "AuthError",
    "MalformedResponseError",
    "PermanentError",
    "ThrottledError",
    "TransientError",
    "error_from_response",
    "parse_error_body",
    "parse_retry_after",
]

THROTTLE_CODES = frozenset({"APIG.0308", "APIGW.0308"})
AUTH_CODES = frozenset({"APIG.0301", "APIGW.0301", "APIG.0303", "APIGW.0303"})
TOKEN_EXPIRED_CODES = frozenset({"APIG.0301", "APIGW.0301"})
_BODY_EXCERPT_CHARS = 200


class ApiError(OrchestratorError):
    """The CPH API (or the network in front of it) did not do what was asked."""

    exit_code: ClassVar[ExitCode] = ExitCode.API_FATAL

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        error_code: str = "",
        error_msg: str = "",
        request_id: str = "",
        operation: str = "",
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id
        self.operation = operation
        super().__init__(message or self._default_message())

    def _default_message(self) -> str:
        parts = [self.operation or "CPH call", "failed"]
        if self.status is not None:
            parts.append(f"with HTTP {self.status}")
        if self.error_code:
            parts.append(f"[{self.error_code}]")
        if self.error_msg:
            parts.append(f"{self.error_msg}")
        if self.request_id:
            parts.append(f"(request_id={self.request_id})")
        return " ".join(parts)

    def log_fields(self) -> dict[str, Any]:
        """Flat fields for an ``api.error`` log event."""
        return {
            "operation": self.operation,
            "status": self.status,
            "error_code": self.error_code,
            "error_msg": self.error_msg,
            "request_id": self.request_id,
            "error_class": type(self).__name__,
        }


class ThrottledError(ApiError):
    """429 / ``APIG.0308``: the gateway's rate limit. Wait (``retry_after_s`` when given), resend."""

    def __init__(self, message: str = "", *, retry_after_s: float | None = None, **kw: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kw)


class AuthError(ApiError):
    """Credentials were refused (401 ``APIG.0301``/``APIG.0303``, IAM failures)."""

    @property
    def token_expired(self) -> bool:
        """True when a fresh token may fix it (``APIG.0301``), false for signature mismatches."""
        return self.error_code in TOKEN_EXPIRED_CODES


class TransientError(ApiError):
    """5xx, timeouts, dropped connections: resending may work.

    ``outcome_unknown`` is true when the request may have taken effect (a POST whose answer was
    lost). ``unreachable`` is true when no HTTP answer came back at all (connection refused, DNS,
    a timeout or a connection closed before the answer): the cloud may not be reachable.
    """

    def __init__(
        self,
        message: str = "",
        *,
        outcome_unknown: bool = False,
        unreachable: bool = False,
        **kw: Any,
    ) -> None:
        self.outcome_unknown = outcome_unknown
        self.unreachable = unreachable
        super().__init__(message, **kw)


class MalformedResponseError(TransientError):
    """The server answered something we could not understand; the body excerpt is in the message."""


class PermanentError(ApiError):
    """Any other 4xx: resending the same request will fail the same way."""


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


def _code_and_message(body: Mapping[str, Any]) -> tuple[str, str] | None:
    for code_key, msg_key in (
        ("error_code", "error_msg"),
        ("errorCode", "errorMsg"),
        ("code", "message"),
    ):
        if body.get(code_key):
            return _as_text(body[code_key]), _as_text(body.get(msg_key))
    return None


_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def _excerpt(text: str) -> str:
    """One readable line from a body that is not JSON: an HTML page's title, else its text."""
    title = _HTML_TITLE.search(text)
    plain = title.group(1) if title else _TAG.sub(" ", text)
    return " ".join(plain.split())[:_BODY_EXCERPT_CHARS]


def parse_error_body(raw: bytes) -> tuple[str, str, str]:
    """``(error_code, error_msg, request_id)`` from an error body, in the official SDK's order.

    Tries ``error_code``/``error_msg``, ``errorCode``/``errorMsg``, ``code``/``message``, then the same
    one level down (``{"error": {"code": …}}``). A body that is not JSON gives ``("", excerpt, "")``.
    """
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return "", _excerpt(text), ""
    if not isinstance(body, dict):
        return "", _excerpt(text), ""
    request_id = _as_text(body.get("request_id"))
    found = _code_and_message(body)
    if found is None:
        nested = (v for v in body.values() if isinstance(v, dict))
        found = next((f for f in map(_code_and_message, nested) if f is not None), None)
    code, msg = found or ("", _excerpt(text))
    return code, msg, request_id


def parse_retry_after(value: str | None, *, now_epoch_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - datetime.fromtimestamp(now_epoch_s, UTC).timestamp())


def error_from_response(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    operation: str,
    method: str,
    now_epoch_s: float,
) -> ApiError:
    """Classify an HTTP error answer (status >= 400) into the error tree."""
    code, msg, body_request_id = parse_error_body(body)
    fields: dict[str, Any] = {
        "status": status,
        "error_code": code or str(status),
        "error_msg": msg,
        "request_id": body_request_id or headers.get("X-Request-Id", ""),
        "operation": operation,
    }
    if status == 429 or code in THROTTLE_CODES:
        retry_after = parse_retry_after(headers.get("Retry-After"), now_epoch_s=now_epoch_s)
        return ThrottledError(retry_after_s=retry_after, **fields)
    if status in (401, 403) and (code in AUTH_CODES or status == 401):
        return AuthError(**fields)
    if status >= 500:
        return TransientError(outcome_unknown=method.upper() != "GET", **fields)
    return PermanentError(**fields)
