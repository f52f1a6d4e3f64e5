"""``python -m orchestrator.benchmark`` (``make bench``): measure a rollout near the rate-limit bound.

Defaults (the issue's): ``N`` = ``$BENCH_N`` or 100,000 phones; submit limit 50/s, query limit 100/s,
batches of 100, jobs of 1-3 s, so ``T_min`` = N/5000 + 3 s (23 s at 100,000). The SDK peer and our
tool at the peer's N (2,000) run in the same invocation. ``--scaling`` measures N = 10,000, 100,000 and
1,000,000 (the last with 0.1-0.3 s jobs and 500/1000 requests/s limits); ``--smoke`` runs the whole
harness on a few hundred phones in seconds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.benchmark.results import (
    BENCH_MARKER,
    SCALING_MARKER,
    append_rows,
    bench_row,
    headline,
    render_scaling,
    render_table,
    scaling_md_row,
    scaling_row,
    write_json,
)
from orchestrator.benchmark.runs import (
    BenchmarkError,
    RolloutFigures,
    measure_ours,
    measure_sdk_peer,
)
from orchestrator.benchmark.workload import Limits

DEFAULT_N = 100_000
DEFAULT_SDK_N = 2_000
DEFAULT_SUBMIT_RATE_PER_S = 50.0
DEFAULT_QUERY_RATE_PER_S = 100.0
DEFAULT_BATCH = 100
JOB_MIN_S = 1.0
JOB_MAX_S = 3.0
SMOKE_N = 300
SMOKE_SDK_N = 100
SMOKE_LIMITS = Limits(50.0, 200.0, 20, 0.1, 0.3)
SCALING_NS = (10_000, 100_000)
MILLION = 1_000_000
MILLION_LIMITS = Limits(500.0, 1000.0, 100, 0.1, 0.3, timeout_floor_s=900.0)
"""Short jobs and high limits, so a million phones end in minutes (T_min = 20.3 s); 15 min at most."""


@dataclass(frozen=True)
class Setup:
    """What to measure, from the command line."""

    n: int
    sdk_n: int
    limits: Limits
    scaling: bool
    out_dir: Path
    benchmarks_md: Path | None
    command: str


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.benchmark", description=__doc__.splitlines()[0]
    )
    default_n = int(os.environ.get("BENCH_N", DEFAULT_N))
    parser.add_argument("--n", type=int, default=default_n, help="Phones ($BENCH_N or 100000).")
    parser.add_argument("--sdk-n", type=int, default=DEFAULT_SDK_N, help="Phones of the peer.")
    parser.add_argument("--rate", type=float, default=DEFAULT_SUBMIT_RATE_PER_S, help="R, /s.")
    parser.add_argument("--query-rate", type=float, default=DEFAULT_QUERY_RATE_PER_S, help="Q, /s.")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="B, phones a request.")
    parser.add_argument("--scaling", action="store_true", help="Also N = 10k, 100k and 1M.")
    parser.add_argument("--smoke", action="store_true", help="A tiny run of the whole harness.")
    parser.add_argument("--no-append", action="store_true", help="Leave BENCHMARKS.md alone.")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="latest.json dir.")
    parser.add_argument("--benchmarks-md", type=Path, default=Path("BENCHMARKS.md"))
    return parser


def _command(argv: Sequence[str]) -> str:
    prefix = f"BENCH_N={os.environ['BENCH_N']} " if "BENCH_N" in os.environ else ""
    return prefix + shlex.join(["python", "-m", "orchestrator.benchmark", *argv])


def _setup(argv: Sequence[str]) -> Setup:
    args = _parser().parse_args(argv)
    limits = Limits(args.rate, args.query_rate, args.batch, JOB_MIN_S, JOB_MAX_S)
    n, sdk_n = args.n, args.sdk_n
    if args.smoke:
        n, sdk_n, limits = SMOKE_N, SMOKE_SDK_N, SMOKE_LIMITS
    return Setup(
        n=n,
        sdk_n=sdk_n,
        limits=limits,
        scaling=args.scaling,
        out_dir=args.out,
        benchmarks_md=None if args.no_append else args.benchmarks_md,
        command=_command(argv),
    )


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _measure(phones: int, limits: Limits, workdir: Path) -> RolloutFigures:
    _say(f"our rollout of {phones:,} phones ({limits.describe()}) …")
    figures = measure_ours(phones, limits, workdir)
    run = figures.run
    _say(
        f"  done in {run.wall_s:.1f} s (T_min {limits.t_min_s(phones):.1f} s), CPU {run.cpu_s:.1f} s"
        f" ({run.cpu_s / phones * 1e6:.1f} us/phone), peak RSS {run.peak_rss_kib / 1024:.0f} MB"
    )
    phases = figures.phases
    _say(
        f"  setup {phases.setup_s:.2f} s, engine {phases.engine_s:.2f} s"
        f" ({phases.engine_s / limits.t_min_s(phones):.3f} of T_min),"
        f" teardown {phases.teardown_s:.2f} s"
    )
    return figures


def _scaling(setup: Setup, tmp: Path) -> list[tuple[RolloutFigures, Limits]]:
    points = [(_measure(n, setup.limits, tmp / f"n{n}"), setup.limits) for n in SCALING_NS]
    points.append((_measure(MILLION, MILLION_LIMITS, tmp / f"n{MILLION}"), MILLION_LIMITS))
    return points


def _run(setup: Setup, tmp: Path) -> dict[str, Any]:
    points: list[tuple[RolloutFigures, Limits]] = []
    if setup.scaling:
        points = _scaling(setup, tmp)
        ours = next(p for p, limits in points if p.phones == setup.n and limits == setup.limits)
    else:
        ours = _measure(setup.n, setup.limits, tmp / "ours")
    _say(f"SDK peer on {setup.sdk_n:,} phones …")
    peer = measure_sdk_peer(setup.sdk_n, setup.limits, tmp / "peer")
    _say(f"  done in {peer.run.wall_s:.1f} s")
    ours_small = _measure(setup.sdk_n, setup.limits, tmp / "ours-at-sdk-n")
    figures = headline(ours, setup.limits, peer, ours_small, command=setup.command)
    if points:
        figures["scaling"] = [scaling_row(p, limits) for p, limits in points]
    return figures


def _record(setup: Setup, figures: dict[str, Any]) -> None:
    print(render_table(figures))
    if "scaling" in figures:
        print()
        print(render_scaling(figures["scaling"]))
    write_json(setup.out_dir / "latest.json", figures)
    _say(f"figures written to {setup.out_dir / 'latest.json'}")
    if setup.benchmarks_md is None:
        return
    append_rows(setup.benchmarks_md, BENCH_MARKER, [bench_row(figures)])
    if "scaling" in figures:
        rows = [scaling_md_row(figures["date"], r, setup.command) for r in figures["scaling"]]
        append_rows(setup.benchmarks_md, SCALING_MARKER, rows)
    _say(f"rows appended to {setup.benchmarks_md}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print, record; 0 on success, 1 when a measured run did not complete."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup = _setup(argv)
    if setup.scaling and setup.n not in SCALING_NS:
        setup = Setup(**{**setup.__dict__, "n": DEFAULT_N})
    with tempfile.TemporaryDirectory(prefix="cph-bench-") as tmp:
        try:
            figures = _run(setup, Path(tmp))
        except BenchmarkError as error:
            _say(f"error: {error}")
            return 1
    _record(setup, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
