"""Benchmark runs in processes of their own (inside `salloc`, `flux start`): the run
prints `RESULT <json>` (`result`), the driver collects the runs (`run_apart`) and prints
them and their medians (`report`)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable


def case_parser(doc: str | None, cases: Iterable[str]) -> argparse.ArgumentParser:
    """The command line of a benchmark whose runs go apart: CASE ..., --runs, and the
    hidden --inside CASE that each run is started with."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(cases)}")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    return parser


def result(figures: dict[str, float]) -> None:
    print("RESULT " + json.dumps(figures), flush=True)


def run_apart(argv: list[str], name: str, timeout: float = 1800) -> dict[str, float]:
    """Run `argv` (a run of case `name`) and return its figures; exit if it failed."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{name}: the run failed:\n{out.stdout}\n{out.stderr}")
    figures: dict[str, float] = json.loads(lines[-1].removeprefix("RESULT "))
    return figures


def report(name: str, runs: list[dict[str, float]], unit: str,
           summary: Callable[[dict[str, float]], float], what: str) -> None:
    """Each run, then the medians and the median of `summary` over the runs."""
    for run in runs:
        print(f"  {name}: " + ", ".join(f"{k} {v:,.3f}" for k, v in run.items())
              + f" ({unit}); {summary(run):.3f} {what}", flush=True)
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{name}: medians " + ", ".join(f"{k} {v:,.3f}" for k, v in medians.items())
          + f" ({unit}); {statistics.median(summary(r) for r in runs):.3f} {what}",
          flush=True)
