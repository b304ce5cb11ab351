"""Turn the collected samples into the markdown report: medians, ratios, machine details."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import textwrap
from dataclasses import dataclass, field

from .loops import BASELINES, NATIVE, PEERS, SUBJECT
from .workloads import Workload


@dataclass
class Samples:
    """Operations per second for each (workload, loop), in the order they were measured."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, workload: str, loop: str, ops_per_sec: float) -> None:
        self.values.setdefault((workload, loop), []).append(ops_per_sec)

    def median(self, workload: str, loop: str) -> float | None:
        found = self.values.get((workload, loop))
        return statistics.median(found) if found else None

    def spread(self, workload: str, loop: str) -> float | None:
        """(max - min) / median: how far apart the rounds landed."""
        found = self.values.get((workload, loop))
        if not found or len(found) < 2:
            return None
        return (max(found) - min(found)) / statistics.median(found)

    def wins(self, workload: str, loop: str, baseline: str) -> tuple[int, int] | None:
        """Rounds in which `loop` beat `baseline`, and rounds compared: each round measures
        every loop once, so the i-th samples ran side by side on the same machine state."""
        ours = self.values.get((workload, loop))
        theirs = self.values.get((workload, baseline))
        if not ours or not theirs:
            return None
        pairs = list(zip(ours, theirs))
        return sum(a > b for a, b in pairs), len(pairs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs), Linux {platform.release()}"


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rate(value: float | None) -> str:
    if value is None:
        return "—"
    for scale, suffix in ((1e6, "M/s"), (1e3, "k/s")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g} /s"


def ratio(subject: float | None, baseline: float | None) -> str:
    if subject is None or baseline is None:
        return "—"
    return f"{subject / baseline:.2f}"


def best_peer(medians: dict[str, float | None]) -> str:
    """`SUBJECT` over the fastest peer that ran the workload, naming that peer."""
    measured = [(median, peer) for peer in PEERS if (median := medians.get(peer)) is not None]
    if not measured or medians.get(SUBJECT) is None:
        return "—"
    fastest, peer = max(measured)
    return f"{ratio(medians[SUBJECT], fastest)} ({peer})"


def table(samples: Samples, workloads: list[Workload], loops: list[str]) -> str:
    baselines = [b for b in BASELINES if b in loops and SUBJECT in loops]
    with_peers = SUBJECT in loops and any(p in loops for p in PEERS)
    with_native = SUBJECT in loops and NATIVE in loops
    header = ["workload", "unit", *loops, *(f"{SUBJECT}/{b}" for b in baselines)]
    header += [f"{SUBJECT}/best peer"] if with_peers else []
    header += [f"{SUBJECT}/{NATIVE}"] if with_native else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for w in workloads:
        medians = {loop: samples.median(w.name, loop) for loop in loops}
        cells = [w.name, f"{w.unit}/s", *(rate(medians[loop]) for loop in loops)]
        cells += [ratio(medians[SUBJECT], medians[b]) for b in baselines]
        cells += [best_peer(medians)] if with_peers else []
        cells += [ratio(medians[SUBJECT], medians[NATIVE])] if with_native else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def megabytes_table(samples: Samples, workloads: list[Workload], loops: list[str]) -> str:
    """Payload throughput of the workloads that move data: requests/s x message bytes, one
    way (the echo moves as much back again)."""
    lines = ["| workload | " + " | ".join(loops) + " |", "|" + "---|" * (len(loops) + 1)]
    for w in workloads:
        if not w.bytes_per_op:
            continue
        cells = []
        for loop in loops:
            median = samples.median(w.name, loop)
            cells.append("—" if median is None else f"{median * w.bytes_per_op / 1e6:,.0f}")
        lines.append(f"| {w.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_table(samples: Samples, workloads: list[Workload], loops: list[str]) -> str:
    lines = ["| workload | " + " | ".join(loops) + " |", "|" + "---|" * (len(loops) + 1)]
    for w in workloads:
        cells = []
        for loop in loops:
            spread = samples.spread(w.name, loop)
            cells.append("—" if spread is None else f"{spread:.0%}")
        lines.append(f"| {w.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins_table(samples: Samples, workloads: list[Workload], loops: list[str]) -> str:
    baselines = [b for b in BASELINES if b in loops and SUBJECT in loops]
    header = ["workload", *(f"{SUBJECT} faster than {b}" for b in baselines)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for w in workloads:
        cells = []
        for baseline in baselines:
            won = samples.wins(w.name, SUBJECT, baseline)
            cells.append("—" if won is None else f"{won[0]} of {won[1]}")
        lines.append(f"| {w.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(
    samples: Samples,
    workloads: list[Workload],
    loops: list[str],
    versions: dict[str, str],
    sizes: dict[str, int],
    rounds: int,
    gc_state: str,
    notes: list[str],
    date: str,
) -> str:
    loop_list = ", ".join(f"{loop} {versions[loop]}" for loop in loops)
    size_list = ", ".join(f"{w.name} {w.describe_size(sizes[w.name])}" for w in workloads)
    parts = [
        "# ferroloop benchmarks",
        "",
        f"- Date: {date}",
        f"- Machine: {machine()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
        f"- Loops: {loop_list}",
        f"- Rounds: {rounds} (candidates alternate within each round; medians shown)",
        f"- Operations per measurement: {size_list}",
        f"- Cyclic GC: {gc_state}",
        "",
        f"Throughput, median over rounds (higher is better). A ratio above 1.00 means {SUBJECT} is faster.",
        "",
        table(samples, workloads, loops),
        "",
    ]
    if any(w.bytes_per_op for w in workloads):
        parts += [
            "Echo payload throughput, MB/s (requests/s × message size; as much again flows back):",
            "",
            megabytes_table(samples, workloads, loops),
            "",
        ]
    parts += [
        "Spread between rounds, (max − min) / median:",
        "",
        spread_table(samples, workloads, loops),
    ]
    if rounds > 1 and SUBJECT in loops and any(b in loops for b in BASELINES):
        parts += [
            "",
            f"Rounds in which {SUBJECT} was faster (the loops alternate within a round, so "
            "each round compares them under the same machine load):",
            "",
            wins_table(samples, workloads, loops),
        ]
    if notes or samples.failures:
        parts += ["", "Notes:", ""]
        parts += [f"- {note}" for note in notes + samples.failures]
    return "\n".join(parts) + "\n"


README_HEADING = "## Benchmarks"


def readme_section(
    samples: Samples,
    workloads: list[Workload],
    loops: list[str],
    versions: dict[str, str],
    rounds: int,
    date: str,
    chart: str | None,
    report: str,
) -> str:
    """The README's benchmark section: the chart and the throughput tables, dated, with the
    machine; the full report (spreads, notes) is linked. Paths are relative to the repo."""
    loop_list = ", ".join(f"{loop} {versions[loop]}" for loop in loops)
    intro = (
        f"Measured {date} on {machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"{loop_list}. Median of {rounds} rounds of `python -m bench` "
        "(what each workload does: [bench/README.md](bench/README.md); spreads and notes: "
        f"[{report}]({report})). A ratio above 1.00 means {SUBJECT} is faster."
    )
    wrapped = textwrap.fill(intro, width=95, break_long_words=False, break_on_hyphens=False)
    parts = [README_HEADING, "", wrapped, ""]
    if chart is not None:
        parts += [f"![{SUBJECT} throughput ratios]({chart})", ""]
    parts += [table(samples, workloads, loops), ""]
    if any(w.bytes_per_op for w in workloads):
        parts += ["Echo payload, MB/s each way:", "", megabytes_table(samples, workloads, loops), ""]
    return "\n".join(parts)


def replace_readme_section(readme: str, section: str) -> str:
    """`readme` with its benchmark section (from the heading to the next `## ` heading or the
    end) replaced by `section`, or with `section` appended when it has none."""
    lines = readme.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == README_HEADING), None)
    if start is None:
        return readme.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    following = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + following if following else "")
