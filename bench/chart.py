"""The PNG chart of the report: ferroloop's throughput ratio to each baseline, per workload."""

from __future__ import annotations

import math
from pathlib import Path

from .loops import BASELINES, SUBJECT
from .report import Samples
from .workloads import Workload

COLOURS = {"uvloop": "#1f77b4", "asyncio": "#ff7f0e"}


def write_chart(
    samples: Samples,
    workloads: list[Workload],
    loops: list[str],
    path: Path,
    subtitle: str,
) -> str | None:
    """Write the chart to `path`; returns None, or why no chart was written."""
    baselines = [b for b in BASELINES if b in loops]
    if SUBJECT not in loops or not baselines:
        return f"no chart: it needs {SUBJECT} and at least one of {', '.join(BASELINES)}"
    try:
        import matplotlib
    except ImportError:
        return "no chart: matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")  # no display; and must precede the pyplot import
    import matplotlib.pyplot as plt

    names = [w.name for w in workloads]
    ratios: dict[str, list[float | None]] = {}
    for baseline in baselines:
        row: list[float | None] = []
        for name in names:
            subject, other = samples.median(name, SUBJECT), samples.median(name, baseline)
            row.append(subject / other if subject and other else None)
        ratios[baseline] = row
    found = [r for row in ratios.values() for r in row if r is not None]
    if not found:
        return "no chart: no ratio could be computed"

    bar_height = 0.8 / len(baselines)
    figure, axes = plt.subplots(figsize=(10, 1.4 + 0.3 * len(names) * len(baselines)))
    for index, baseline in enumerate(baselines):
        offsets = [i + (index - (len(baselines) - 1) / 2) * bar_height for i in range(len(names))]
        values = [r if r is not None else math.nan for r in ratios[baseline]]
        # Bars grow from 1x: rightwards where ferroloop is faster, leftwards where slower.
        bars = axes.barh(
            offsets,
            [v - 1.0 for v in values],
            height=bar_height,
            left=1.0,
            color=COLOURS.get(baseline),
            label=f"{SUBJECT} / {baseline}",
        )
        for bar, value in zip(bars, values):
            if not math.isnan(value):
                faster = value >= 1.0
                axes.annotate(
                    f"{value:.2f}",
                    (value, bar.get_y() + bar.get_height() / 2),
                    xytext=(3 if faster else -3, 0),
                    textcoords="offset points",
                    ha="left" if faster else "right",
                    va="center",
                    fontsize=8,
                )
    # Ratios are multiplicative: a log axis draws 0.5x and 2x the same length from 1.
    axes.set_xscale("log", base=2)
    low = min(0.5, min(found) / 1.4)
    high = max(2.0, max(found) * 1.35)
    ticks = [2.0**k for k in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)]
    axes.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    axes.set_xlim(low, high)  # after the ticks, which would otherwise widen it
    axes.axvline(1.0, color="black", linewidth=1)
    axes.axvspan(low, 1.0, color="#d62728", alpha=0.06, zorder=0)  # ferroloop slower
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()  # first workload at the top, as in the table
    axes.grid(axis="x", which="major", alpha=0.3)
    axes.set_xlabel(f"throughput ratio (right of 1×: {SUBJECT} faster)")
    axes.set_title(f"{SUBJECT} throughput relative to {' and '.join(baselines)}\n{subtitle}", fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
