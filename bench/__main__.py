"""`python -m bench`: run every workload on every candidate loop, alternating, and report.

Each measurement is a fresh `python -m bench.worker` process. Within a round every workload
is measured once on every loop, the loops in a rotated order each round, so slow drift in
the machine's load spreads over all candidates instead of landing on one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .loops import KNOWN_LOOPS, loop_version
from .report import Samples, render
from .workloads import Workload, all_workloads

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEV_PACKAGE_DIR = REPO_ROOT / "python"

INSTALL_HINTS = {
    "rsloop": "pip install rsloop (on CPython 3.11 only an sdist exists; it needs a nightly Rust)",
    "rloop": "pip install rloop",
    "uvloop": "pip install uvloop",
    "ferroloop": "pip install . or scripts/dev-build",
}


def parse_args() -> argparse.Namespace:
    workload_names = ",".join(all_workloads())
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round (smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, or 1 with --quick)")
    parser.add_argument("--only", help=f"comma-separated workloads (of {workload_names})")
    parser.add_argument("--loops", default=",".join(KNOWN_LOOPS), help="comma-separated loops")
    parser.add_argument("--cpu", type=int, default=0, help="CPU for single-process workloads")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every workload's size by this"
    )
    parser.add_argument(
        "--gc", action="store_true", help="keep the cyclic GC on while workloads run"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per measurement")
    parser.add_argument("--output", type=Path, help="markdown report path")
    return parser.parse_args()


def worker_environment() -> dict[str, str]:
    """The workers' environment: ferroloop as importable as here, falling back to the
    in-tree dev build (scripts/dev-build) when it is not installed."""
    env = dict(os.environ)
    try:
        importlib.import_module("ferroloop")
    except ImportError:
        sys.path.insert(0, str(DEV_PACKAGE_DIR))
        paths = [str(DEV_PACKAGE_DIR), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def available_loops(requested: list[str], notes: list[str]) -> list[str]:
    found = []
    for name in requested:
        if name not in KNOWN_LOOPS:
            sys.exit(f"unknown loop {name!r}; choose from {', '.join(KNOWN_LOOPS)}")
        try:
            importlib.import_module(name)
        except ImportError as exc:
            note = f"{name} skipped: not importable ({exc}); {INSTALL_HINTS.get(name, '')}"
            print(note, file=sys.stderr)
            notes.append(note)
            continue
        found.append(name)
    return found


def select_workloads(only: str | None) -> list[Workload]:
    workloads = all_workloads()
    if only is None:
        return list(workloads.values())
    chosen = []
    for name in only.split(","):
        if name not in workloads:
            sys.exit(f"unknown workload {name!r}; choose from {', '.join(workloads)}")
        chosen.append(workloads[name])
    return chosen


def measure_once(
    workload: Workload, loop: str, size: int, args: argparse.Namespace, env: dict[str, str]
) -> float:
    """Run one worker; returns operations per second or raises RuntimeError."""
    command = [sys.executable, "-m", "bench.worker", workload.name, loop]
    command += ["--size", str(size), "--cpu", str(args.cpu)]
    if args.gc:
        command.append("--gc")
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {args.timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit status {done.returncode}: {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["ops_per_sec"])


def main() -> None:
    args = parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    notes: list[str] = []
    env = worker_environment()
    loops = available_loops(args.loops.split(","), notes)
    workloads = select_workloads(args.only)
    sizes = {
        w.name: max(1, int((w.quick_size if args.quick else w.size) * args.scale))
        for w in workloads
    }
    samples = Samples()

    started = time.monotonic()
    for round_index in range(rounds):
        for workload in workloads:
            shift = round_index % len(loops)
            for loop in loops[shift:] + loops[:shift]:
                try:
                    ops_per_sec = measure_once(workload, loop, sizes[workload.name], args, env)
                except RuntimeError as exc:
                    failure = f"round {round_index + 1}, {workload.name} on {loop}: {exc}"
                    print(failure, file=sys.stderr)
                    samples.failures.append(failure)
                    continue
                samples.add(workload.name, loop, ops_per_sec)
                print(
                    f"[round {round_index + 1}/{rounds}] {workload.name:<20} {loop:<10} "
                    f"{ops_per_sec:>14,.0f} {workload.unit}/s",
                    file=sys.stderr,
                )
    notes.append(f"Run took {time.monotonic() - started:.0f} s.")
    if "ferroloop" in loops:
        location = Path(importlib.import_module("ferroloop").__file__ or "?").parent
        notes.append(f"ferroloop imported from {location}.")

    versions = {loop: loop_version(loop) for loop in loops}
    gc_state = "on" if args.gc else "off while workloads run (--gc to keep it on)"
    report = render(samples, workloads, loops, versions, sizes, rounds, gc_state, notes)
    print(report)
    output = args.output or BENCH_DIR / "results" / ("quick.md" if args.quick else "latest.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    raw = {f"{w}/{loop}": values for (w, loop), values in samples.values.items()}
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(f"written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
