"""Helpers for tests that run the command line and the simulator as real processes.

The simulator runs as ``python -m orchestrator simulator --port 0`` and is ready once it prints its
"listening" line; commands run as ``python -m orchestrator …`` with a clean environment carrying only
the token under test. Nothing here waits a fixed time: readiness and progress are read from the
processes' output, and every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from orchestrator.benchmark.processes import stop_process

__all__ = [
    "BATCH_SUBMITTED",
    "JOBS_FINISHED",
    "PROJECT_ID",
    "RUN_TIMEOUT_S",
    "STARTUP_TIMEOUT_S",
    "TOKEN",
    "LineReader",
    "Simulator",
    "clean_env",
    "json_lines",
    "orchestrator_command",
    "plan_json",
    "read_report",
    "run_cli",
    "running_simulator",
    "start_cli",
    "stop_process",
    "write_settings",
]

TOKEN = "sim-token"
PROJECT_ID = "proj123"
STARTUP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 90.0
LIST_PAGE = 200

LISTENING = re.compile(r"simulator listening on (http://[\d.]+:\d+)")
BATCH_SUBMITTED = re.compile(r'"event": *"batch\.submitted"')
JOBS_FINISHED = re.compile(r'"event": *"jobs\.finished"')


class LineReader:
    """Drains a text pipe on a thread so the child never blocks; lines are handed over by a queue."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.lines.append(line)
                self._queue.put(line)
        self._queue.put(None)

    def next_match(self, pattern: re.Pattern[str], *, timeout_s: float) -> re.Match[str] | None:
        """The next line (from now on) matching ``pattern``; None at EOF; fails after the timeout."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline_s - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern!r} within {timeout_s} s")
            if line is None:
                self._queue.put(None)  # later calls see the end too
                return None
            found = pattern.search(line)
            if found is not None:
                return found

    def wait_for(self, pattern: re.Pattern[str], *, timeout_s: float) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; fails at EOF or after the timeout."""
        found = self.next_match(pattern, timeout_s=timeout_s)
        if found is None:
            pytest.fail(f"stream ended before a line matching {pattern.pattern!r}")
        return found

    def count_to(self, pattern: re.Pattern[str], count: int, *, timeout_s: float) -> int:
        """Read until ``count`` more lines matched (or the stream ended); returns how many did."""
        deadline_s = time.monotonic() + timeout_s
        seen = 0
        while seen < count:
            left_s = max(0.0, deadline_s - time.monotonic())
            if self.next_match(pattern, timeout_s=left_s) is None:
                break
            seen += 1
        return seen

    def join(self) -> list[str]:
        """Every line read, once the stream has ended."""
        self._thread.join(timeout=RUN_TIMEOUT_S)
        return self.lines

    def text(self) -> str:
        """Everything read so far, as one string."""
        return "".join(self.lines)


def clean_env(token: str | None = TOKEN) -> dict[str, str]:
    """The parent's environment without any CPH setting, plus the token under test."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CPH_", "HUAWEICLOUD_"))
    }
    if token is not None:
        env["CPH_AUTH_TOKEN"] = token
    return env


@dataclass
class Simulator:
    """A simulator process and what it says it saw."""

    url: str
    proc: subprocess.Popen[str]

    def stats(self, *, phones: bool = False) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        with urllib.request.urlopen(
            f"{self.url}/_sim/stats?phones={int(phones)}", timeout=10
        ) as answer:
            body: dict[str, Any] = json.load(answer)
        return body

    def requests(self, operation: str | None = None) -> int:
        """Requests received so far, of one operation or in all."""
        stats = self.stats()
        if operation is None:
            return int(stats["requests_total"])
        return int(stats["requests"].get(operation, 0))

    def phone_ids(self) -> list[str]:
        """Every phone of the simulated fleet, read through ListCloudPhones."""
        found: list[str] = []
        while True:
            request = urllib.request.Request(
                f"{self.url}/v1/{PROJECT_ID}/cloud-phone/phones"
                f"?offset={len(found)}&limit={LIST_PAGE}",
                headers={"X-Auth-Token": TOKEN},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                page = json.load(answer)["phones"]
            found.extend(phone["phone_id"] for phone in page)
            if len(page) < LIST_PAGE:
                return found


@contextlib.contextmanager
def running_simulator(*args: str, stderr_path: Path) -> Iterator[Simulator]:
    """Start ``orchestrator simulator --port 0 ARGS`` and yield it once it says it listens."""
    command = [sys.executable, "-m", "orchestrator", "simulator", "--port", "0"]
    command += ["--token", TOKEN, *args]
    with stderr_path.open("w", encoding="utf-8") as stderr:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env(None)
        )
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout)
        url = reader.wait_for(LISTENING, timeout_s=STARTUP_TIMEOUT_S).group(1)
        yield Simulator(url, proc)
    finally:
        stop_process(proc)


def orchestrator_command(*args: str | Path) -> list[str]:
    """``python -m orchestrator ARGS`` as an argument list."""
    return [sys.executable, "-m", "orchestrator", *map(str, args)]


def run_cli(
    *args: str | Path, cwd: Path, token: str | None = TOKEN, timeout_s: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGS`` to its end, output captured."""
    return subprocess.run(
        orchestrator_command(*args),
        cwd=cwd,
        env=clean_env(token),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def start_cli(
    *args: str | Path, cwd: Path, stdout: IO[str], token: str | None = TOKEN
) -> tuple[subprocess.Popen[str], LineReader]:
    """Start ``python -m orchestrator ARGS`` with stdout to a file and stderr read line by line."""
    proc = subprocess.Popen(
        orchestrator_command(*args),
        cwd=cwd,
        env=clean_env(token),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    return proc, LineReader(proc.stderr)


def write_settings(directory: Path, sim_url: str, **rollout: float | str) -> Path:
    """A settings file pointing at the simulator, with fast polling and the runs in ``directory``."""
    values: dict[str, float | str] = {
        "first_poll_s": 0.05,
        "submit_rate_per_s": 50.0,
        "query_rate_per_s": 50.0,
        "runs_dir": str(directory / "runs"),
    }
    values.update(rollout)
    lines = [
        "[cph]",
        f'endpoint = "{sim_url}"',
        f'project_id = "{PROJECT_ID}"',
        'auth = "token"',
        "timeout_s = 10.0",
        "",
        "[rollout]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = directory / "settings.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plan_json(
    name: str,
    phone_ids: Sequence[str],
    *,
    properties: Mapping[str, Any],
    policy: Mapping[str, Any] | None = None,
) -> str:
    """A plan (JSON, which is YAML too) listing ``phone_ids`` explicitly."""
    return json.dumps(
        {
            "name": name,
            "fleet": {"phones": list(phone_ids)},
            "properties": dict(properties),
            "policy": dict(policy or {"waves": ["100%"]}),
        },
        indent=1,
    )


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report."""
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of ``text`` that are JSON objects (log lines), parsed."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        assert isinstance(event, dict), line
        events.append(event)
    return events


@dataclass
class PhonePool:
    """Hands out phones of a shared simulator, each to one test only."""

    ids: list[str]
    taken: int = 0

    def take(self, count: int) -> list[str]:
        """``count`` phones no other test uses."""
        start, self.taken = self.taken, self.taken + count
        assert self.taken <= len(self.ids), "the shared simulator's fleet is too small"
        return self.ids[start : self.taken]
