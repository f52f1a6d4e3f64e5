"""The processes a benchmark drives: the simulator, and a measured child (rollout or SDK script).

Readiness is read from the simulator's "listening" line, never waited for by a fixed sleep. A measured
child is started and reaped with :func:`os.wait4` by a fresh launcher process
(:mod:`~orchestrator.benchmark.launcher`), which gives its own CPU time and peak RSS (``ru_maxrss``, KiB
on Linux) without counting the harness, the launcher or the simulator.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.benchmark import launcher as launcher_module

__all__ = [
    "PROJECT_ID",
    "SIM_TOKEN",
    "MeasuredRun",
    "SimulatorProcess",
    "clean_env",
    "run_measured",
    "stop_process",
]

PROJECT_ID = "proj123"
SIM_TOKEN = "bench-token"
STARTUP_TIMEOUT_S = 180.0
"""A million-phone fleet takes several seconds to generate on a small machine."""
LIST_PAGE = 200
"""ListCloudPhones' largest page."""
THROTTLED_WAIT_S = 0.2
"""How long to wait before asking again when listing the fleet is throttled (429)."""
HTTP_TIMEOUT_S = 30.0
LAUNCHER_GRACE_S = 30.0
"""How long past the measured timeout the launcher itself may take before it is killed as hung."""

LISTENING = re.compile(r"simulator listening on (http://[\d.]+:\d+)")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The harness's environment without any CPH or Huawei Cloud setting, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CPH_", "HUAWEICLOUD_"))
    }
    env.update(extra or {})
    return env


def _drain(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Read a child's pipe to its end so the child never blocks on a full pipe."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass
    lines.put(None)


def _wait_for_listening(lines: queue.Queue[str | None], timeout_s: float) -> str:
    deadline_s = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline_s - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"the simulator did not listen within {timeout_s} s") from None
        if line is None:
            raise RuntimeError("the simulator exited before listening")
        found = LISTENING.search(line)
        if found is not None:
            return found.group(1)


class SimulatorProcess:
    """``cph-orchestrator simulator`` in its own process, with the benchmark's limits.

    Use as a context manager: the process is started on entry (once it says it listens) and stopped
    on exit. It accepts the static token :data:`SIM_TOKEN` and, when given, AK/SK signatures too.
    """

    def __init__(self, args: Sequence[str], *, log_path: Path) -> None:
        self._args = list(args)
        self._log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SimulatorProcess:
        command = [sys.executable, "-m", "orchestrator", "simulator", "--port", "0"]
        command += ["--token", SIM_TOKEN, *self._args]
        with self._log_path.open("w", encoding="utf-8") as log:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, env=clean_env()
            )
        assert self._proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_drain, args=(self._proc.stdout, lines), daemon=True).start()
        try:
            self.url = _wait_for_listening(lines, STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Terminate (then kill) the simulator and reap it."""
        if self._proc is not None:
            stop_process(self._proc)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"X-Auth-Token": SIM_TOKEN})
        while True:
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as error:
                if error.code != 429:
                    raise
                error.close()
                time.sleep(THROTTLED_WAIT_S)

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats?phones=0``: request counts, throttled answers, job counts."""
        body: dict[str, Any] = self._get("/_sim/stats?phones=0")
        return body

    def reset_stats(self) -> None:
        """Zero the simulator's counters, so the fleet listing is not counted in the run."""
        request = urllib.request.Request(self.url + "/_sim/reset-stats", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
            answer.read()

    def phone_ids(self) -> list[str]:
        """Every phone of the fleet, through ListCloudPhones pages (throttled pages are asked again)."""
        found: list[str] = []
        while True:
            path = f"/v1/{PROJECT_ID}/cloud-phone/phones?offset={len(found)}&limit={LIST_PAGE}"
            page = self._get(path)["phones"]
            found.extend(phone["phone_id"] for phone in page)
            if len(page) < LIST_PAGE:
                return found


@dataclass(frozen=True)
class MeasuredRun:
    """What one child process cost, measured from outside it by :mod:`~orchestrator.benchmark.launcher`."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_kib: int
    started_at_s: float
    """Wall clock (Unix epoch) just before the child was spawned; its log timestamps share this clock."""


def _launcher_command(command: Sequence[str], result_path: Path, timeout_s: float) -> list[str]:
    """``python -I -S launcher.py``: a fresh, stdlib-only interpreter, small whatever the harness holds."""
    launcher = [sys.executable, "-I", "-S", launcher_module.__file__]
    return [*launcher, "--result", str(result_path), "--timeout-s", str(timeout_s), "--", *command]


def _wait_for_launcher(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Reap the launcher; on a hang past its own watchdog, or Ctrl-C, kill its session (it and its child)."""
    wait_s = timeout_s + LAUNCHER_GRACE_S
    try:
        proc.wait(timeout=wait_s)
    except BaseException as error:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(error, subprocess.TimeoutExpired):
            raise RuntimeError(f"the launcher did not exit within {wait_s} s") from error
        raise


def run_measured(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout_path: Path,
    stderr_path: Path,
    timeout_s: float,
) -> MeasuredRun:
    """Run ``command`` to its end through the launcher; its wall time, CPU and peak RSS by ``wait4``.

    The launcher, not the harness, spawns and reaps the command, so ``ru_maxrss`` is the command's own
    even after the harness has grown (see :mod:`~orchestrator.benchmark.launcher`).
    """
    result_path = stdout_path.resolve().with_name(stdout_path.name + ".measured.json")
    result_path.unlink(missing_ok=True)
    launcher = _launcher_command(command, result_path, timeout_s)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            launcher, cwd=cwd, env=dict(env), stdout=out, stderr=err, start_new_session=True
        )
        _wait_for_launcher(proc, timeout_s)
    try:
        figures = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RuntimeError(f"the launcher exited with {proc.returncode} and no result") from error
    return MeasuredRun(
        exit_code=int(figures["exit_code"]),
        wall_s=float(figures["wall_s"]),
        cpu_s=float(figures["cpu_s"]),
        peak_rss_kib=int(figures["peak_rss_kib"]),
        started_at_s=float(figures["started_at_s"]),
    )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Terminate (then kill) a child we started, reap it, and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
