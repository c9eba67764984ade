"""Run every benchmark against real NATS and Docker, print and record the results.

Usage: `.venv/bin/python -m bench [--quick | --full] [--no-docs]`. Each figure
is a median over repetitions beside a floor measured in the same run, because
the machine may be busy with other work. Unless `--no-docs` is given, the run
rewrites docs/benchmarks.md and the plots in docs/benchmarks/.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import events, jobs, logs
from .common import Result, Sizes
from .profile import profile_one_step
from .report import machine_facts, plot, plot_absolute, table_rows
from .write_docs import write_page

ROOT = Path(__file__).resolve().parent.parent


async def run_all(
    sizes: Sizes, preset: str, profile_jobs: int
) -> tuple[list[Result], list[str], float]:
    """Run every benchmark in turn; return results, profile lines and seconds."""
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="stasis-bench-") as tmp_name:
        tmp = Path(tmp_name)
        steps: list[tuple[str, Callable[[], Awaitable[list[Result] | Result]]]] = [
            ("one-step job and pickup", lambda: jobs.one_step_and_pickup(sizes, tmp)),
            ("jobs per second", lambda: jobs.jobs_per_second(sizes, tmp)),
            ("log rate and latency", lambda: logs.log_rate_and_latency(sizes, tmp)),
            ("projection and appends", lambda: events.stream_benchmarks(sizes, tmp)),
            ("SSE fan-out", lambda: logs.sse_fan_out(sizes, tmp)),
            ("projection memory", lambda: events.memory_per_job(sizes)),
        ]
        for title, benchmark in steps:
            step_started = time.perf_counter()
            print(f"running: {title} ({preset})", file=sys.stderr, flush=True)
            outcome = await benchmark()
            results.extend(outcome if isinstance(outcome, list) else [outcome])
            took = time.perf_counter() - step_started
            print(f"  done in {took:.1f}s", file=sys.stderr, flush=True)
        profile = await profile_one_step(profile_jobs, tmp) if profile_jobs else []
    return results, profile, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the suite, print the table and write the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    size.add_argument("--full", action="store_true", help="the sizes of the targets")
    parser.add_argument(
        "--no-docs", action="store_true", help="print only; leave docs/ as it is"
    )
    parser.add_argument(
        "--docs-dir", type=Path, default=ROOT / "docs", help="where the page goes"
    )
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full" if args.full else "default"
    sizes = Sizes.preset(preset)
    profile_jobs = 0 if args.quick else 10
    results, profile, seconds = asyncio.run(run_all(sizes, preset, profile_jobs))

    rows = table_rows(results)
    print("\n".join(rows))
    for result in results:
        for note in result.notes:
            print(f"  {result.name}: {note}")
    if not args.no_docs:
        plots = args.docs_dir / "benchmarks"
        plots.mkdir(parents=True, exist_ok=True)
        plot(results, plots / "ratios.png")
        plot_absolute(results, plots / "absolute.png")
        write_page(
            args.docs_dir / "benchmarks.md",
            results,
            rows,
            machine_facts(),
            profile,
            preset,
            seconds,
        )
    return 0
