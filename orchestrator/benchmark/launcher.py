"""The tiny launcher every measured child is started through, so its peak RSS is its own.

On Linux a child's ``ru_maxrss`` starts at its parent's peak: the kernel carries the old address
space's high-water mark across ``exec``. A rollout spawned straight from the harness, after the harness
listed a million phone IDs (or read a large report), would report the harness's peak, not its own.
Keeping the harness small is a rule every later change would have to remember; starting the child from
a fresh process is not. The harness runs this file with ``python -I -S``, so it begins in a new address
space of about 10 MB, imports nothing but the standard library, spawns the command, reaps it with
:func:`os.wait4` (the child's own CPU and peak RSS, nobody else's) and writes what it measured as one
JSON object to ``--result``. The child inherits the launcher's stdin, stdout, stderr, working
directory and environment, which the harness sets.

Run as ``python -I -S launcher.py --result PATH --timeout-s SECONDS -- COMMAND...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True, help="Where to write the JSON.")
    parser.add_argument("--timeout-s", type=float, required=True, help="Kill the child after.")
    parser.add_argument("command", nargs="+", help="The measured command (after --).")
    return parser.parse_args(argv)


def _kill(pid: int) -> None:
    """The watchdog: a hung child is killed, so it is reaped and reported as killed (-9)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def measure(command: Sequence[str], timeout_s: float) -> dict[str, float | int]:
    """Spawn ``command``, reap it, and return its exit code, start, wall time, CPU and peak RSS.

    ``started_at_s`` is the wall clock just before the spawn, so it can be set beside the timestamps
    the child logs; ``wall_s`` comes from the monotonic clock, so a clock step cannot bend it.
    """
    started_at_s = time.time()
    started_s = time.monotonic()
    pid = os.posix_spawnp(command[0], list(command), os.environ)
    watchdog = threading.Timer(timeout_s, _kill, (pid,))
    watchdog.start()
    try:
        _, status, usage = os.wait4(pid, 0)
    finally:
        watchdog.cancel()
    return {
        "exit_code": os.waitstatus_to_exitcode(status),
        "started_at_s": started_at_s,
        "wall_s": time.monotonic() - started_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_kib": usage.ru_maxrss,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the command and write the figures to ``--result``."""
    args = _parse(argv)
    figures = measure(args.command, args.timeout_s)
    args.result.write_text(json.dumps(figures) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
