"""`python -m bench.instrument_cost`: what seeing a run costs (issue 9's cost table).

The same two workloads on ferroloop with its instruments off, off with one idle extra thread
(as any program with an executor has), (statistics are always on, so
"off" and "statistics only" are the same build and the same code path), with the blocking
detector on, with per-task statistics on, and with the full trace recording:

- `sleep0_pingpong`: 1,000 tasks each `await asyncio.sleep(0)`, N switches;
- `protocol_echo`: a `Protocol` echo server and client on one loop over loopback, 1 KiB
  messages, one in flight, N round trips.

Each (workload, mode) is a fresh process pinned to one CPU, modes interleaved round by round;
the report gives the median time per operation and its ratio to "off", as wall time and as the
loop thread's CPU time (which leaves out the time other processes took the CPU, and keeps
this process's page faults and cache misses). The trace's ring is made (and its first 32 MiB
committed) before the clocks start, and copied out after they stop. On a noisy machine use
`--callgrind`, which counts instructions (valgrind) for the marginal cost of N operations: a
run of 2N minus a run of N, so start-up and import cancel out; or `--alternate`, which times
the modes that start no thread taking turns on one loop in one process.

    python -m bench.instrument_cost [--rounds 5] [--size 200000] [--callgrind | --alternate]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("off", "idle_thread", "detector", "task_stats", "trace")
WORKLOADS = ("sleep0_pingpong", "protocol_echo")
ROOT = Path(__file__).resolve().parent.parent
_IDLE = threading.Event()


def _instrument(loop: asyncio.AbstractEventLoop, mode: str) -> None:
    if mode == "idle_thread":
        # the baseline of a program with any other thread (an executor's, `to_thread`'s): glibc
        # then takes its multi-threaded paths, as it does once the detector's watchdog exists
        threading.Thread(target=_IDLE.wait, daemon=True).start()
    elif mode == "detector":
        loop.set_blocking_threshold(0.1)  # type: ignore[attr-defined]
    elif mode == "task_stats":
        loop.set_task_stats(True)  # type: ignore[attr-defined]
    elif mode == "trace":
        loop._trace_start(10_000_000)  # type: ignore[attr-defined]


def _finish(loop: asyncio.AbstractEventLoop, mode: str) -> None:
    if mode == "trace":
        loop._trace_stop()  # type: ignore[attr-defined]  # the recording, not the writing
    if mode in ("trace", "task_stats"):
        loop.set_task_stats(False)  # type: ignore[attr-defined]  # and forget the task records


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """Wall and this thread's CPU seconds since `start`."""
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


async def sleep0_pingpong(size: int, mode: str) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    _instrument(loop, mode)

    async def yield_repeatedly(times: int) -> None:
        for _ in range(times):
            await asyncio.sleep(0)

    start = _clocks()
    await asyncio.gather(*(yield_repeatedly(size // 1000) for _ in range(1000)))
    elapsed = _since(start)
    _finish(loop, mode)
    return elapsed


async def protocol_echo(size: int, mode: str) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    message = b"x" * 1024

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.left = size
            self.got = 0
            self.done = loop.create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got < len(message):
                return
            self.got = 0
            self.left -= 1
            if self.left:
                self.transport.write(message)  # type: ignore[attr-defined]
            else:
                self.done.set_result(None)

    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(Client, "127.0.0.1", port)
    _instrument(loop, mode)
    start = _clocks()
    transport.write(message)
    await client.done
    elapsed = _since(start)
    _finish(loop, mode)
    transport.close()
    server.close()
    await server.wait_closed()
    return elapsed


# The modes `--alternate` takes turns with: no extra thread, which would leave glibc on its
# multi-threaded paths for the rest of the process, "off" included.
ALTERNATING_MODES = ("off", "task_stats", "trace")
WORKLOAD_FUNCS = {"sleep0_pingpong": sleep0_pingpong, "protocol_echo": protocol_echo}


def alternating(rounds: int, size: int) -> dict[tuple[str, str, str], list[float]]:
    """In this process, on one loop: each workload with the modes taking turns, round by round
    (after one round to warm up); seconds per operation by (clock, workload, mode). Leaves out
    the differences between processes (heap and hash layouts, where the kernel put things)."""
    import gc

    import ferroloop

    async def run_all() -> dict[tuple[str, str, str], list[float]]:
        samples: dict[tuple[str, str, str], list[float]] = {}
        for workload in WORKLOADS:
            for r in range(rounds + 1):
                order = ALTERNATING_MODES[r % 3 :] + ALTERNATING_MODES[: r % 3]
                for mode in order:
                    wall, cpu = await WORKLOAD_FUNCS[workload](size, mode)
                    if r:
                        samples.setdefault(("wall", workload, mode), []).append(wall / size)
                        samples.setdefault(("cpu", workload, mode), []).append(cpu / size)
        return samples

    gc.disable()
    return ferroloop.run(run_all())


def measure(workload: str, mode: str, size: int) -> tuple[float, float]:
    """In the worker process: wall and CPU seconds for `size` operations."""
    import gc

    import ferroloop

    gc.disable()
    return ferroloop.run(WORKLOAD_FUNCS[workload](size, mode))


def _worker_cmd(workload: str, mode: str, size: int, cpu: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "bench.instrument_cost", "--worker", workload, mode, str(size)]
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "python"), str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run, for callgrind
    env.pop("FERROLOOP_BLOCKING_THRESHOLD", None)
    return env


def timed(rounds: int, size: int, cpu: int | None) -> dict[tuple[str, str, str], list[float]]:
    """Seconds per operation by (clock, workload, mode), clock "wall" or "cpu"."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds):
        for workload in WORKLOADS:
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                out = subprocess.run(
                    _worker_cmd(workload, mode, size, cpu),
                    capture_output=True,
                    text=True,
                    env=_env(),
                    cwd=ROOT,
                    check=True,
                ).stdout
                result = json.loads(out)
                for clock in ("wall", "cpu"):
                    samples.setdefault((clock, workload, mode), []).append(result[clock] / size)
    return samples


def callgrind(size: int) -> dict[tuple[str, str], float]:
    """Instructions per operation: (run of 2*size) - (run of size), divided by size."""
    result: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in WORKLOADS:
            for mode in MODES:
                counts = []
                for n in (size, 2 * size):
                    proc = subprocess.run(
                        [
                            "valgrind",
                            "--tool=callgrind",
                            f"--callgrind-out-file={tmp}/cg.out",
                            *_worker_cmd(workload, mode, n, None),
                        ],
                        capture_output=True,
                        text=True,
                        env=_env(),
                        cwd=ROOT,
                        check=True,
                    )
                    counts.append(int(re.search(r"Collected : (\d+)", proc.stderr).group(1)))  # type: ignore[union-attr]
                result[(workload, mode)] = (counts[1] - counts[0]) / size
    return result


def report(values: dict[tuple[str, str], float], unit: str, modes: tuple[str, ...] = MODES) -> str:
    lines = ["| workload | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for workload in WORKLOADS:
        base = values[(workload, "off")]
        cells = [
            f"{values[(workload, m)]:.4g} {unit} ({values[(workload, m)] / base - 1:+.1%})"
            if m != "off"
            else f"{base:.4g} {unit}"
            for m in modes
        ]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrument_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead of timing")
    parser.add_argument(
        "--alternate",
        action="store_true",
        help=f"time {', '.join(ALTERNATING_MODES)} taking turns in this one process (pin it with taskset)",
    )
    parser.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        workload, mode, size = args.worker
        wall, cpu = measure(workload, mode, int(size))
        print(json.dumps({"wall": wall, "cpu": cpu}))
        return
    if args.callgrind:
        print(report(callgrind(args.size), "instr/op"))
        return
    modes = ALTERNATING_MODES if args.alternate else MODES
    samples = alternating(args.rounds, args.size) if args.alternate else timed(args.rounds, args.size, args.cpu)
    for clock in ("wall", "cpu"):
        medians = {k[1:]: statistics.median(v) * 1e9 for k, v in samples.items() if k[0] == clock}
        print(f"{clock} time, median of {args.rounds}:")
        print(report(medians, "ns/op", modes))


if __name__ == "__main__":
    main()
