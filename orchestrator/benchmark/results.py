"""Figures from measured runs: the headline dictionary, a readable table, the JSON and the Markdown rows.

``bench-results/latest.json`` carries the keys the issue names (``n``, ``wall_s``, ``t_min_s`` …,
``speedup_vs_sdk``); ``BENCHMARKS.md`` gets one row per run, inserted above a marker comment so the
header and older rows stay as they are. Where the wall time went (``setup_s``, ``engine_s``,
``teardown_s``, ``engine_over_t_min``) is printed and kept in the JSON only: a new table column would
leave every older row with an empty cell.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.benchmark.runs import PeerFigures, RolloutFigures
from orchestrator.benchmark.workload import Limits

__all__ = [
    "BENCH_MARKER",
    "SCALING_MARKER",
    "append_rows",
    "headline",
    "machine",
    "render_table",
    "scaling_row",
    "write_json",
]

BENCH_MARKER = "<!-- bench rows: `make bench` inserts new rows above this line -->"
SCALING_MARKER = "<!-- scaling rows: `--scaling` inserts new rows above this line -->"
BYTES_PER_MB = 1024 * 1024


def machine() -> str:
    """CPU model, core count and Python version of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _rollout_figures(ours: RolloutFigures, limits: Limits) -> dict[str, Any]:
    n = ours.phones
    t_min_s = limits.t_min_s(n)
    rss_bytes = ours.run.peak_rss_kib * 1024
    return {
        "n": n,
        "limits": limits.describe(),
        "wall_s": round(ours.run.wall_s, 3),
        "t_min_s": round(t_min_s, 3),
        "wall_over_t_min": round(ours.run.wall_s / t_min_s, 3),
        "cpu_s": round(ours.run.cpu_s, 3),
        "cpu_us_per_phone": round(ours.run.cpu_s / n * 1e6, 2),
        "peak_rss_mb": round(rss_bytes / BYTES_PER_MB, 1),
        "bytes_per_phone": round(rss_bytes / n, 1),
        "setup_s": round(ours.phases.setup_s, 3),
        "engine_s": round(ours.phases.engine_s, 3),
        "teardown_s": round(ours.phases.teardown_s, 3),
        "engine_over_t_min": round(ours.phases.engine_s / t_min_s, 3),
        "submit_calls": ours.calls.submit,
        "query_calls": ours.calls.query,
        "query_calls_per_phone": round(ours.calls.query / n, 4),
        "throttled": ours.calls.throttled,
        "succeeded": ours.succeeded,
        "exit_code": ours.run.exit_code,
        "report_api_calls": ours.report_api_calls,
        "journal": True,
        "rollout_command": ours.command,
    }


def _peer_figures(peer: PeerFigures, ours_small: RolloutFigures) -> dict[str, Any]:
    return {
        "sdk_n": peer.phones,
        "sdk_wall_s": round(peer.run.wall_s, 3),
        "sdk_script_wall_s": round(peer.script_wall_s, 3),
        "sdk_cpu_s": round(peer.run.cpu_s, 3),
        "sdk_submit_calls": peer.calls.submit,
        "sdk_query_calls": peer.calls.query,
        "sdk_throttled": peer.calls.throttled,
        "sdk_succeeded": peer.succeeded,
        "ours_wall_s_at_sdk_n": round(ours_small.run.wall_s, 3),
        "ours_cpu_s_at_sdk_n": round(ours_small.run.cpu_s, 3),
        "ours_query_calls_at_sdk_n": ours_small.calls.query,
        "ours_throttled_at_sdk_n": ours_small.calls.throttled,
        "speedup_vs_sdk": round(peer.run.wall_s / ours_small.run.wall_s, 2),
        "query_calls_ratio_sdk_over_ours": round(
            peer.calls.query / max(1, ours_small.calls.query), 2
        ),
    }


def headline(
    ours: RolloutFigures,
    limits: Limits,
    peer: PeerFigures,
    ours_small: RolloutFigures,
    *,
    command: str,
) -> dict[str, Any]:
    """Every figure of one benchmark run, under the keys ``latest.json`` promises."""
    figures = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": command,
    }
    figures.update(_rollout_figures(ours, limits))
    figures.update(_peer_figures(peer, ours_small))
    return figures


def scaling_row(ours: RolloutFigures, limits: Limits) -> dict[str, Any]:
    """The figures of one scaling point (no peer)."""
    return _rollout_figures(ours, limits)


LABELS: Sequence[tuple[str, str]] = (
    ("n", "phones (N)"),
    ("limits", "simulator limits"),
    ("wall_s", "wall time, s"),
    ("t_min_s", "T_min = N/(R·B) + D_max, s"),
    ("wall_over_t_min", "wall / T_min (target ≤ 1.10)"),
    ("setup_s", "  setup: start → rollout.started, s"),
    ("engine_s", "  engine: rollout.started → rollout.finished, s"),
    ("teardown_s", "  teardown: rollout.finished → exit, s"),
    ("engine_over_t_min", "engine / T_min"),
    ("cpu_s", "our CPU (user+sys), s"),
    ("cpu_us_per_phone", "our CPU per phone, µs (target ≤ 30)"),
    ("peak_rss_mb", "peak RSS, MB (target ≤ 250 at 100k)"),
    ("bytes_per_phone", "peak RSS per phone, bytes"),
    ("submit_calls", "submit calls"),
    ("query_calls_per_phone", "query calls per phone (target ≤ 0.05)"),
    ("throttled", "throttled answers (429)"),
    ("succeeded", "phones succeeded"),
    ("sdk_n", "SDK peer: phones"),
    ("sdk_wall_s", "SDK peer: wall time, s"),
    ("sdk_query_calls", "SDK peer: query calls"),
    ("sdk_throttled", "SDK peer: throttled answers"),
    ("ours_wall_s_at_sdk_n", "ours at the peer's N: wall time, s"),
    ("ours_query_calls_at_sdk_n", "ours at the peer's N: query calls"),
    ("speedup_vs_sdk", "speed-up vs SDK (target ≥ 20)"),
    ("query_calls_ratio_sdk_over_ours", "query calls, SDK / ours"),
)


def render_table(figures: dict[str, Any]) -> str:
    """The figures as aligned ``label  value`` lines."""
    width = max(len(label) for _, label in LABELS)
    lines = [f"{label:<{width}}  {figures[key]}" for key, label in LABELS if key in figures]
    return "\n".join(lines)


def render_scaling(rows: Sequence[dict[str, Any]]) -> str:
    """The scaling points as aligned columns."""
    header = f"{'N':>9}  {'wall s':>8}  {'wall/Tmin':>9}  {'setup s':>8}  {'engine s':>8}  "
    header += f"{'teardown s':>10}  {'CPU µs/phone':>12}  "
    header += f"{'RSS MB':>7}  {'B/phone':>8}  {'queries/phone':>13}  limits"
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['n']:>9}  {row['wall_s']:>8}  {row['wall_over_t_min']:>9}  "
            f"{row['setup_s']:>8}  {row['engine_s']:>8}  {row['teardown_s']:>10}  "
            f"{row['cpu_us_per_phone']:>12}  {row['peak_rss_mb']:>7}  {row['bytes_per_phone']:>8}  "
            f"{row['query_calls_per_phone']:>13}  {row['limits']}"
        )
    return "\n".join(lines)


def write_json(path: Path, figures: dict[str, Any]) -> None:
    """Write ``figures`` as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def bench_row(figures: dict[str, Any]) -> str:
    """One Markdown row of the main table."""
    cells = [
        figures["date"],
        figures["machine"],
        f"{figures['n']:,}",
        figures["limits"],
        figures["wall_s"],
        figures["t_min_s"],
        figures["wall_over_t_min"],
        figures["cpu_s"],
        figures["cpu_us_per_phone"],
        figures["peak_rss_mb"],
        figures["bytes_per_phone"],
        figures["submit_calls"],
        figures["query_calls_per_phone"],
        figures["throttled"],
        f"{figures['sdk_n']:,}",
        figures["sdk_wall_s"],
        figures["ours_wall_s_at_sdk_n"],
        f"{figures['sdk_query_calls']} / {figures['ours_query_calls_at_sdk_n']}",
        figures["speedup_vs_sdk"],
        f"`{figures['command']}`",
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def scaling_md_row(date: str, row: dict[str, Any], command: str) -> str:
    """One Markdown row of the scaling table."""
    cells = [
        date,
        f"{row['n']:,}",
        row["limits"],
        row["wall_s"],
        row["wall_over_t_min"],
        row["cpu_s"],
        row["cpu_us_per_phone"],
        row["peak_rss_mb"],
        row["bytes_per_phone"],
        row["query_calls_per_phone"],
        row["throttled"],
        f"`{command}`",
    ]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def append_rows(path: Path, marker: str, rows: Sequence[str]) -> None:
    """Insert ``rows`` just above ``marker`` in the Markdown file (the marker must be there)."""
    text = path.read_text(encoding="utf-8")
    if marker not in text:
        raise ValueError(f"{path} has no line {marker!r} to insert rows above")
    block = "".join(f"{row}\n" for row in rows)
    path.write_text(text.replace(marker, block + marker, 1), encoding="utf-8")
