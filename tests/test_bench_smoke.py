"""The benchmark harness keeps working: ``python -m orchestrator.benchmark --smoke`` runs end to end.

Only completion and the shape of ``latest.json`` are checked, never a duration: timings belong in
``BENCHMARKS.md``, measured on purpose, not in a test that a busy machine would make flaky.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
)
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
