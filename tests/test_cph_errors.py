"""Error answers are parsed in the official SDK's order and classified for the retry policy."""

from __future__ import annotations

import json

import pytest

from orchestrator.cph.errors import (
    ApiError,
    AuthError,
    PermanentError,
    ThrottledError,
    TransientError,
    error_from_response,
    parse_error_body,
    parse_retry_after,
)


def _classify(status: int, body: object, method: str = "POST", **headers: str) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(
        status=status,
        headers=headers,
        body=raw,
        operation="Op",
        method=method,
        now_epoch_s=1_704_067_200.0,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error_code": "CPS.0004", "error_msg": "bad", "request_id": "r1"},
            ("CPS.0004", "bad", "r1"),
        ),
        ({"errorCode": "X.1", "errorMsg": "camel"}, ("X.1", "camel", "")),
        ({"code": "X.2", "message": "plain"}, ("X.2", "plain", "")),
        ({"error": {"code": "X.3", "message": "nested"}}, ("X.3", "nested", "")),
        ({"error_code": "A", "errorCode": "B", "error_msg": "first wins"}, ("A", "first wins", "")),
    ],
)
def test_error_body_fields_in_sdk_order(body: object, expected: tuple[str, str, str]) -> None:
    assert parse_error_body(json.dumps(body).encode()) == expected


def test_non_json_body_keeps_an_excerpt() -> None:
    code, msg, request_id = parse_error_body(b"<html><h1>502 Bad Gateway</h1></html>")
    assert (code, request_id) == ("", "")
    assert "502 Bad Gateway" in msg


def test_throttled_by_status_or_code_with_retry_after() -> None:
    error = _classify(
        429, {"error_code": "APIG.0308", "error_msg": "limit"}, **{"Retry-After": "3"}
    )
    assert isinstance(error, ThrottledError)
    assert error.retry_after_s == 3.0
    bare = _classify(429, b"Too Many Requests")
    assert isinstance(bare, ThrottledError)
    assert bare.retry_after_s is None
    assert bare.error_code == "429"


def test_retry_after_as_http_date() -> None:
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:05 GMT", now_epoch_s=1_704_067_200.0) == 5.0
    assert parse_retry_after("soon", now_epoch_s=0.0) is None


def test_auth_errors_know_whether_a_new_token_helps() -> None:
    expired = _classify(401, {"error_code": "APIG.0301", "error_msg": "The token must be updated."})
    mismatch = _classify(401, {"error_code": "APIG.0303", "error_msg": "signature"})
    assert isinstance(expired, AuthError)
    assert expired.token_expired
    assert isinstance(mismatch, AuthError)
    assert not mismatch.token_expired


def test_server_errors_are_transient_and_post_outcome_unknown() -> None:
    post = _classify(503, b"<html>down</html>", method="POST", **{"X-Request-Id": "hdr"})
    get = _classify(502, b"", method="GET")
    assert isinstance(post, TransientError)
    assert post.outcome_unknown
    assert post.request_id == "hdr"
    assert isinstance(get, TransientError)
    assert not get.outcome_unknown


def test_other_client_errors_are_permanent_and_say_everything() -> None:
    error = _classify(400, {"error_code": "CPS.0009", "error_msg": "empty", "request_id": "r9"})
    assert isinstance(error, PermanentError)
    assert str(error) == "Op failed with HTTP 400 [CPS.0009] empty (request_id=r9)"
