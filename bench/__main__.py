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
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from .chart import write_chart
from .loops import NATIVE, SELECTABLE_LOOPS, loop_version
from .report import Samples, machine, readme_section, render, replace_readme_section, utc_now
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
    parser.add_argument("--loops", default=",".join(SELECTABLE_LOOPS), help="comma-separated loops")
    parser.add_argument("--cpu", type=int, default=0, help="CPU for single-process workloads")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's size by this")
    parser.add_argument("--gc", action="store_true", help="keep the cyclic GC on while workloads run")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--output", type=Path, help="markdown report path (the chart and raw JSON go beside it)")
    parser.add_argument(
        "--ferroloop-from",
        choices=("auto", "tree", "installed"),
        default="auto",
        help="which ferroloop to measure: the in-tree dev build, the installed package, or "
        "auto (the tree's if it is built)",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also rewrite the README's Benchmarks section with this run (not with --quick)",
    )
    args = parser.parse_args()
    if args.readme and args.quick:
        parser.error("--readme takes a full run, not --quick")
    return args


def worker_environment(ferroloop_from: str) -> dict[str, str]:
    """The workers' environment. ferroloop comes from the in-tree dev build
    (scripts/dev-build) when that is built and `ferroloop_from` is "auto" or "tree", else
    from the installed package: an installed copy can be older than the tree being worked on,
    and the tree is what a benchmark run from it is meant to measure."""
    env = dict(os.environ)
    tree_built = any((DEV_PACKAGE_DIR / "ferroloop").glob("_core.*.so"))
    if ferroloop_from == "tree" and not tree_built:
        sys.exit("no in-tree build of ferroloop; run scripts/dev-build first")
    if ferroloop_from == "tree" or (ferroloop_from == "auto" and tree_built):
        sys.path.insert(0, str(DEV_PACKAGE_DIR))
        paths = [str(DEV_PACKAGE_DIR), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    elif ferroloop_from == "installed":
        # Drop the tree from the path in case PYTHONPATH put it there.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != DEV_PACKAGE_DIR]
        paths = env.get("PYTHONPATH", "").split(os.pathsep)
        kept = [p for p in paths if p and Path(p).resolve() != DEV_PACKAGE_DIR]
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def available_loops(requested: list[str], notes: list[str]) -> list[str]:
    found = []
    for name in requested:
        if name not in SELECTABLE_LOOPS:
            sys.exit(f"unknown loop {name!r}; choose from {', '.join(SELECTABLE_LOOPS)}")
        if name == NATIVE:
            found.append(name)
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            note = f"{name} skipped: not importable ({exc}); {INSTALL_HINTS.get(name, '')}"
            print(note, file=sys.stderr)
            notes.append(note)
            continue
        found.append(name)
    return found


def select_workloads(only: str | None, notes: list[str]) -> list[Workload]:
    workloads = all_workloads()
    if only is None:
        requested = [w for w in workloads.values() if w.in_default_run]
    else:
        requested = []
        for name in only.split(","):
            if name not in workloads:
                sys.exit(f"unknown workload {name!r}; choose from {', '.join(workloads)}")
            requested.append(workloads[name])
    chosen = []
    for workload in requested:
        reason = workload.unavailable()
        if reason is not None:
            print(reason, file=sys.stderr)
            notes.append(reason)
            continue
        chosen.append(workload)
    return chosen


class Unsupported(Exception):
    """The loop raised NotImplementedError for something the workload needs."""


def measure_once(
    workload: Workload, loop: str, size: int, args: argparse.Namespace, env: dict[str, str]
) -> tuple[float, list[str]]:
    """Run one worker; returns operations per second and the worker's notes, or raises
    RuntimeError, or Unsupported.

    The worker gets a process group of its own, so a timeout (or ^C) also ends the servers
    and load generators it started, not just the worker."""
    command = [sys.executable, "-m", "bench.worker", workload.name, loop]
    command += ["--size", str(size), "--cpu", str(args.cpu)]
    if args.gc:
        command.append("--gc")
    worker = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = worker.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {args.timeout:.0f} s") from None
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()
    if worker.returncode != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit status {worker.returncode}: {last}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if "unsupported" in result:
        raise Unsupported(result["unsupported"])
    return float(result["ops_per_sec"]), list(result.get("notes", []))


def summarise_notes(worker_notes: dict[str, int], rounds: int) -> list[str]:
    return [f"{note} ({count} of {rounds} rounds)" if rounds > 1 else note for note, count in worker_notes.items()]


def main() -> None:
    args = parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    notes: list[str] = []
    env = worker_environment(args.ferroloop_from)
    loops = available_loops(args.loops.split(","), notes)
    workloads = select_workloads(args.only, notes)
    if not loops or not workloads:
        sys.exit("nothing to measure")
    sizes = {w.name: max(1, int((w.quick_size if args.quick else w.size) * args.scale)) for w in workloads}
    samples = Samples()
    worker_notes: dict[str, int] = {}  # note -> rounds it came up in
    unsupported: set[tuple[str, str]] = set()  # (workload, loop) not measured after round 1

    started = time.monotonic()
    for round_index in range(rounds):
        for workload in workloads:
            shift = round_index % len(loops)
            for loop in loops[shift:] + loops[:shift]:
                if (workload.name, loop) in unsupported or (loop == NATIVE and not workload.native_limit):
                    continue
                try:
                    ops_per_sec, found = measure_once(workload, loop, sizes[workload.name], args, env)
                except Unsupported as exc:
                    note = f"{workload.name} on {loop}: not measured, unsupported: {exc}"
                    print(note, file=sys.stderr)
                    notes.append(note)
                    unsupported.add((workload.name, loop))
                    continue
                except RuntimeError as exc:
                    failure = f"round {round_index + 1}, {workload.name} on {loop}: {exc}"
                    print(failure, file=sys.stderr)
                    samples.failures.append(failure)
                    continue
                samples.add(workload.name, loop, ops_per_sec)
                for note in found:
                    key = f"{workload.name} on {loop}: {note}"
                    worker_notes[key] = worker_notes.get(key, 0) + 1
                print(
                    f"[round {round_index + 1}/{rounds}] {workload.name:<20} {loop:<10} "
                    f"{ops_per_sec:>14,.0f} {workload.unit}/s",
                    file=sys.stderr,
                )
    notes += summarise_notes(worker_notes, rounds)
    notes.append(f"Run took {time.monotonic() - started:.0f} s.")
    if "ferroloop" in loops:
        location = Path(importlib.import_module("ferroloop").__file__ or "?").parent
        notes.append(f"ferroloop imported from {location}{tree_state(location)}.")

    versions = {loop: loop_version(loop) for loop in loops}
    gc_state = "on" if args.gc else "off while workloads run (--gc to keep it on)"
    date = utc_now()
    output = args.output or BENCH_DIR / "results" / ("quick.md" if args.quick else "latest.md")
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    chart_path = output.with_suffix(".png")
    subtitle = (
        f"{date} · {machine()} · {platform.python_implementation()} "
        f"{platform.python_version()} · median of {rounds} round{'s' if rounds > 1 else ''}"
    )
    chart_problem = write_chart(samples, workloads, loops, chart_path, subtitle)
    if chart_problem is not None:
        print(chart_problem, file=sys.stderr)
        notes.append(chart_problem)
    report = render(samples, workloads, loops, versions, sizes, rounds, gc_state, notes, date)
    print(report)
    output.write_text(report)
    raw = {f"{w}/{loop}": values for (w, loop), values in samples.values.items()}
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    written = [output] + ([chart_path] if chart_problem is None else [])
    print("written to " + ", ".join(str(p) for p in written), file=sys.stderr)

    if args.readme:
        readme = REPO_ROOT / "README.md"
        section = readme_section(
            samples,
            workloads,
            loops,
            versions,
            rounds,
            date,
            None if chart_problem else relative_to_repo(chart_path),
            relative_to_repo(output),
        )
        readme.write_text(replace_readme_section(readme.read_text(), section))
        print(f"updated the {readme.name} benchmark section", file=sys.stderr)


def tree_state(location: Path) -> str:
    """For an in-tree ferroloop, the commit it was built on and whether the tree had changes."""
    if not location.resolve().is_relative_to(REPO_ROOT):
        return ""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty=, with uncommitted changes"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f" (git {described.stdout.strip()})" if described.returncode == 0 else ""


def relative_to_repo(path: Path) -> str:
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


if __name__ == "__main__":
    main()
