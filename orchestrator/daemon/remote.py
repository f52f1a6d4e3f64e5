"""The command line's side of the daemon: ``submit PLAN --daemon URL`` and ``status --daemon URL``.

The plan is checked here first (with its line numbers), then sent as data. A plan with
``fleet.file`` is refused: the daemon never reads files named by a request, so list the phones
under ``fleet.phones`` (or use ``fleet.query``) to submit it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.plan import load_plan
from orchestrator.plan.loader import PLAN_FORMATS
from orchestrator.plan.locate import parse_plan_text

__all__ = ["DaemonRequestError", "fetch_status", "plan_data", "submit_plan"]

TOKEN_ENV = "CPH_DAEMON_TOKEN"
TIMEOUT_S = 30.0


class DaemonRequestError(OrchestratorError):
    """The daemon answered with an error (or could not be reached)."""

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def plan_data(path: Path) -> dict[str, Any]:
    """The plan as data to send, after checking it locally (``PlanError`` if invalid)."""
    loaded = load_plan(path)
    if loaded.plan.fleet.file is not None:
        raise ConfigError(
            f"{path}: a plan with fleet.file cannot be submitted to a daemon (it reads no local"
            " files); list the phones under fleet.phones, or roll it out with `rollout`"
        )
    data, _ = parse_plan_text(
        path.read_text(encoding="utf-8-sig"), PLAN_FORMATS[path.suffix.lower()], str(path)
    )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a plan must be a mapping")
    return data


def _request(url: str, *, method: str = "GET", body: Any = None) -> Any:
    headers = {"Accept": "application/json"}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body, default=str).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        answer = _json_or_text(error.read())
        message = answer.get("error", "") if isinstance(answer, dict) else str(answer)
        raise DaemonRequestError(
            f"daemon answered {error.code}: {message}", status=error.code, body=answer
        ) from error
    except (urllib.error.URLError, OSError) as error:
        raise DaemonRequestError(f"cannot reach the daemon at {url}: {error}") from error


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def submit_plan(base_url: str, path: Path, *, rollout_id: str | None) -> dict[str, Any]:
    """Send the plan; returns the daemon's answer (``{"rollout_id": …}``)."""
    body = plan_data(path)
    if rollout_id:
        body["id"] = rollout_id
    answer: dict[str, Any] = _request(
        f"{base_url.rstrip('/')}/v1/rollouts", method="POST", body=body
    )
    return answer


def fetch_status(base_url: str, rollout_id: str | None) -> Any:
    """One rollout's status, or the list of every rollout."""
    path = f"/v1/rollouts/{rollout_id}" if rollout_id else "/v1/rollouts"
    return _request(base_url.rstrip("/") + path)
