"""Log lines are JSON with the event name, bound context, and never a secret."""

from __future__ import annotations

import io
import json

import structlog
from pydantic import SecretStr

from orchestrator.logging import REDACTED, configure_logging


def test_json_lines_carry_context_and_hide_secrets() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    structlog.contextvars.bind_contextvars(rollout_id="r-1")
    try:
        structlog.get_logger().info(
            "auth.token_refreshed",
            password="hunter2",
            auth_token="tok",
            sk=SecretStr("sk-value"),
            headers={"X-Auth-Token": "abc"},
            username="alice",
        )
        structlog.get_logger().debug("hidden.at.info")
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "auth.token_refreshed"
    assert record["rollout_id"] == "r-1"
    assert record["username"] == "alice"
    assert record["password"] == record["auth_token"] == record["sk"] == REDACTED
    assert record["headers"]["X-Auth-Token"] == REDACTED
    assert "hunter2" not in lines[0]
    assert "sk-value" not in lines[0]
