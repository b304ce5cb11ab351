"""The benchmark report's throughput table: a column per loop measured, ferroloop over the
fastest peer (uvloop, rloop, rsloop) of each workload, naming it, and over the native limit
where that ran."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Samples, table  # noqa: E402
from bench.workloads import Timing, Workload  # noqa: E402


def _workload(name: str) -> Workload:
    def measure(loop: str, size: int) -> Timing:
        raise AssertionError("the report never measures")

    return Workload(name=name, unit="requests", size=1, quick_size=1, measure=measure)


def _rows(samples: Samples, loops: list[str], names: list[str]) -> list[list[str]]:
    text = table(samples, [_workload(n) for n in names], loops)
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]


def test_best_peer_column_names_the_fastest_peer_of_each_workload() -> None:
    samples = Samples()
    for loop, value in {"ferroloop": 150.0, "asyncio": 50.0, "uvloop": 100.0, "rloop": 120.0, "rsloop": 90.0}.items():
        samples.add("echo", loop, value)
    for loop, value in {"ferroloop": 80.0, "uvloop": 100.0, "rloop": 60.0, "rsloop": 160.0}.items():
        samples.add("call_soon", loop, value)
    loops = ["ferroloop", "asyncio", "uvloop", "rloop", "rsloop"]
    header, _, echo, call_soon = _rows(samples, loops, ["echo", "call_soon"])
    assert header[2:7] == loops
    assert header[-1] == "ferroloop/best peer"
    assert echo[-1] == "1.25 (rloop)"
    assert call_soon[-1] == "0.50 (rsloop)"
    assert call_soon[3] == "—"  # asyncio did not run it


def test_best_peer_skips_peers_that_did_not_run_and_is_absent_without_peers() -> None:
    samples = Samples()
    samples.add("echo", "ferroloop", 100.0)
    samples.add("echo", "uvloop", 200.0)
    _, _, echo = _rows(samples, ["ferroloop", "uvloop", "rsloop"], ["echo"])
    assert echo[-1] == "0.50 (uvloop)"
    samples.add("lonely", "ferroloop", 100.0)
    _, _, lonely = _rows(samples, ["ferroloop", "uvloop", "rsloop"], ["lonely"])
    assert lonely[-1] == "—"
    header, _, _ = _rows(samples, ["ferroloop", "asyncio"], ["echo"])
    assert not any("best peer" in cell for cell in header)


def test_native_column_is_the_ratio_to_the_native_limit_where_it_ran() -> None:
    samples = Samples()
    for loop, value in {"ferroloop": 90.0, "uvloop": 80.0, "native": 100.0}.items():
        samples.add("echo_native", loop, value)
    samples.add("call_soon", "ferroloop", 5.0)
    samples.add("call_soon", "uvloop", 4.0)
    header, _, echo, call_soon = _rows(samples, ["ferroloop", "uvloop", "native"], ["echo_native", "call_soon"])
    assert header[-2:] == ["ferroloop/best peer", "ferroloop/native"]
    assert echo[-1] == "0.90"
    assert call_soon[-1] == "—"  # the native limit runs the server-alone echoes only
    header, _, _ = _rows(samples, ["ferroloop", "uvloop"], ["echo_native"])
    assert "ferroloop/native" not in header
