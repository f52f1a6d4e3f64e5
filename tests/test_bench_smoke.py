"""The benchmark harness keeps working: ``python -m orchestrator.benchmark --smoke`` runs end to end.

Only completion and the shape of ``latest.json`` are checked, never a duration: timings belong in
``BENCHMARKS.md``, measured on purpose, not in a test that a busy machine would make flaky. Two pieces
are checked on their own: a measured child's peak RSS is its own even after the harness grew, and the
split of wall time into setup, engine and teardown is read from the log's timestamps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.benchmark.phases import rollout_phases
from orchestrator.benchmark.processes import run_measured

SMOKE_TIMEOUT_S = 300.0

NUMBER_KEYS = (
    "wall_s",
    "t_min_s",
    "wall_over_t_min",
    "cpu_s",
    "cpu_us_per_phone",
    "peak_rss_mb",
    "bytes_per_phone",
    "query_calls_per_phone",
    "sdk_wall_s",
    "ours_wall_s_at_sdk_n",
    "speedup_vs_sdk",
    "setup_s",
    "engine_s",
    "teardown_s",
    "engine_over_t_min",
)
PHASE_KEYS = ("setup_s", "engine_s", "teardown_s", "engine_over_t_min")
MIB = 1024 * 1024
HARNESS_GROWTH_MIB = 300
SMALL_CHILD_MAX_MIB = 100
"""``python -c pass`` peaks near 10 MB; anything near the harness's growth is the inherited peak."""
COUNT_KEYS = ("n", "submit_calls", "throttled", "sdk_n", "succeeded", "sdk_succeeded")


def test_the_smoke_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    command = [sys.executable, "-m", "orchestrator.benchmark", "--smoke", "--no-append"]
    done = subprocess.run(
        [*command, "--out", str(out_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((out_dir / "latest.json").read_text(encoding="utf-8"))

    for key in NUMBER_KEYS:
        assert isinstance(figures[key], int | float), key
        assert not isinstance(figures[key], bool), key
        if key not in PHASE_KEYS:
            assert figures[key] >= 0, key
    for key in COUNT_KEYS:
        assert isinstance(figures[key], int), key
        assert not isinstance(figures[key], bool), key
    assert figures["journal"] is True
    assert figures["succeeded"] == figures["n"]
    assert figures["sdk_succeeded"] == figures["sdk_n"]
    assert figures["submit_calls"] >= 1
    assert "speed-up vs SDK" in done.stdout
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_a_measured_child_reports_its_own_peak_rss_after_the_harness_grew(tmp_path: Path) -> None:
    ballast = b"\x01" * (HARNESS_GROWTH_MIB * MIB)
    run = run_measured(
        [sys.executable, "-c", "pass"],
        cwd=tmp_path,
        env={},
        stdout_path=tmp_path / "out",
        stderr_path=tmp_path / "err",
        timeout_s=SMOKE_TIMEOUT_S,
    )
    del ballast

    assert run.exit_code == 0, (tmp_path / "err").read_text(encoding="utf-8")
    assert 0 < run.peak_rss_kib < SMALL_CHILD_MAX_MIB * 1024


def test_the_wall_time_splits_at_the_rollout_events() -> None:
    lines = [
        "a warning that is not JSON\n",
        '{"event": "rollout.started", "timestamp": "2026-01-01T00:00:02.500000Z"}\n',
        '{"event": "batch.submitted", "timestamp": "2026-01-01T00:00:03Z"}\n',
        '{"event": "rollout.finished", "timestamp": "2026-01-01T00:00:22.500000Z"}\n',
    ]
    spawned_at_s = 1767225600.0  # 2026-01-01T00:00:00Z

    phases = rollout_phases(lines, started_at_s=spawned_at_s, wall_s=23.0)

    assert (phases.setup_s, phases.engine_s, phases.teardown_s) == (2.5, 20.0, 0.5)


def test_a_log_without_the_finish_event_is_refused() -> None:
    lines = ['{"event": "rollout.started", "timestamp": "2026-01-01T00:00:02Z"}\n']

    with pytest.raises(ValueError, match=r"rollout\.finished"):
        rollout_phases(lines, started_at_s=1767225600.0, wall_s=3.0)
