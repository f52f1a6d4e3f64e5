"""What the operator sees: a live progress bar on a terminal, and a closing summary.

When standard error is not a terminal the bar is left out: the periodic ``rollout.progress`` JSON
events already tell a log reader the same.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from orchestrator.engine.states import PhoneRecord, PhoneState

__all__ = ["ProgressBar", "summary_lines"]

REFRESH_S = 0.25


class ProgressBar:
    """A rich progress bar fed from the engine's snapshots, redrawn a few times a second."""

    def __init__(self, console: Console, total: int, snapshot: Callable[[], Mapping[str, Any]]):
        self._snapshot = snapshot
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[states]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("rollout", total=total, states="", rate="", eta="-")
        self._refresher: asyncio.Task[None] | None = None

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._draw()
        self._progress.stop()

    async def _refresh_forever(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(REFRESH_S)

    def _draw(self) -> None:
        snap = self._snapshot()
        done = snap["succeeded"] + snap["failed"] + snap["cancelled"]
        states = (
            f"ok {snap['succeeded']} · fail {snap['failed']} · run {snap['running']}"
            f" · wait {snap['pending'] + snap['retry_wait'] + snap['submitting']}"
        )
        eta = snap.get("eta_s")
        self._progress.update(
            self._task,
            completed=done,
            states=states,
            rate=f"{snap['phones_per_s']:.0f}/s",
            eta=f"{eta:.0f}s" if eta is not None else "-",
        )


def summary_lines(
    *,
    status: str,
    reason: str | None,
    counts: Mapping[str, int],
    api_calls: Mapping[str, int],
    elapsed_s: float,
    records: Sequence[PhoneRecord],
) -> list[str]:
    """The closing summary: outcome, counts, calls, and the commonest failure codes."""
    lines = [
        f"rollout {status}" + (f": {reason}" if reason else ""),
        "  phones: " + ", ".join(f"{key} {value}" for key, value in counts.items()),
        f"  api calls: submit {api_calls['submit']}, query {api_calls['query']},"
        f" throttled {api_calls['throttled']}",
        f"  elapsed: {elapsed_s:.1f} s",
    ]
    codes = Counter(r.error_code for r in records if r.state is PhoneState.FAILED)
    if codes:
        top = ", ".join(f"{code}: {n}" for code, n in codes.most_common(5))
        lines.append(f"  failures by code: {top}")
    return lines
