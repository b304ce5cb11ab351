"""Child processes through `asyncio.create_subprocess_exec`, the API most programs use.

- `subprocess_spawn`: start `size` children of `true` and wait for each to exit, at most
  SPAWN_CONCURRENCY at a time (SPAWN_CONCURRENCY tasks each start a child, `await
  proc.wait()`, and start the next until `size` have been started). No pipes: stdin, stdout
  and stderr are inherited. The children inherit the worker's core, so their fork, exec and
  exit share it with the loop, as on a busy machine. Every exit status must be 0.
- `subprocess_pipe_cat`: one `cat` child with stdin and stdout as pipes (the streams'
  default 64 KiB buffer limit); a writer task writes `size` MB (10^6 bytes) in 64 KiB chunks
  with `await drain()` after each, then closes stdin; a reader task reads stdout in up to
  256 KiB pieces until EOF and counts the bytes, which must equal what was written. The loop
  runs on LOOP_CPU and `cat` is moved to CAT_CPU right after it starts, so the two ends of
  the pipes run side by side as in the echoes. The clock starts once `cat` is running and
  stops when it has exited.

`true` and `cat` are looked up on PATH once, and started by absolute path so that no
loop's PATH search is part of what is timed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable

from ..loops import run_on
from ..pinning import pin_to
from . import Timing, Workload

SPAWN_CONCURRENCY = 50
LOOP_CPU = 0
CAT_CPU = 1
_CPUS_AT_START = frozenset(os.sched_getaffinity(0))
WRITE_CHUNK = 64 * 1024
READ_SIZE = 256 * 1024
MEGABYTE = 1_000_000


def executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH")
    return path


# -- spawn and wait -----------------------------------------------------------------------------


async def spawn_and_wait(true: str, children: int) -> float:
    started = 0

    async def starter() -> None:
        nonlocal started
        while started < children:
            started += 1
            process = await asyncio.create_subprocess_exec(true)
            status = await process.wait()
            if status != 0:
                raise RuntimeError(f"{true} exited with {status}")

    start = time.perf_counter()
    await asyncio.gather(*(starter() for _ in range(min(SPAWN_CONCURRENCY, children))))
    return time.perf_counter() - start


def measure_spawn(loop_name: str, size: int) -> Timing:
    true = executable("true")
    return Timing(size, run_on(loop_name, lambda: spawn_and_wait(true, size)))


# -- 100 MB through cat -------------------------------------------------------------------------


async def pipe_through_cat(cat: str, cat_cpu: int | None, total_bytes: int) -> float:
    process = await asyncio.create_subprocess_exec(cat, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    stdin, stdout = process.stdin, process.stdout
    assert stdin is not None and stdout is not None
    if cat_cpu is not None:
        os.sched_setaffinity(process.pid, {cat_cpu})
    chunk = b"x" * WRITE_CHUNK

    async def write() -> None:
        remaining = total_bytes
        while remaining:
            piece = chunk if remaining >= WRITE_CHUNK else chunk[:remaining]
            stdin.write(piece)
            await stdin.drain()
            remaining -= len(piece)
        stdin.close()
        await stdin.wait_closed()

    async def read() -> int:
        received = 0
        while data := await stdout.read(READ_SIZE):
            received += len(data)
        return received

    start = time.perf_counter()
    _, received = await asyncio.gather(write(), read())
    status = await process.wait()
    seconds = time.perf_counter() - start
    if received != total_bytes:
        raise RuntimeError(f"wrote {total_bytes:,} bytes to cat, read back {received:,}")
    if status != 0:
        raise RuntimeError(f"cat exited with {status}")
    return seconds


def measure_pipe(loop_name: str, size: int) -> Timing:
    cat = executable("cat")
    # From the affinity at import: after the warm-up run this process may only use LOOP_CPU,
    # and reading it now would leave cat on the loop's core for the measured run.
    cat_cpu = CAT_CPU if CAT_CPU in _CPUS_AT_START else None
    pin_to(LOOP_CPU)
    seconds = run_on(loop_name, lambda: pipe_through_cat(cat, cat_cpu, size * MEGABYTE))
    return Timing(size, seconds)


def needs(workload_name: str, program: str) -> Callable[[], str | None]:
    """An `unavailable` check: the workload is skipped when `program` is not on PATH."""

    def unavailable() -> str | None:
        if shutil.which(program) is None:
            return f"{workload_name} skipped: {program} not found on PATH"
        return None

    return unavailable


SPAWN = Workload(
    name="subprocess_spawn",
    unit="children",
    size=500,
    quick_size=100,
    measure=measure_spawn,
    describe_size=lambda children: f"{children:,} children, {SPAWN_CONCURRENCY} at a time",
    unavailable=needs("subprocess_spawn", "true"),
)

PIPE_CAT = Workload(
    name="subprocess_pipe_cat",
    unit="MB",
    size=100,
    quick_size=10,
    measure=measure_pipe,
    pins_own_cpus=True,
    describe_size=lambda megabytes: f"{megabytes:,} MB through cat and back",
    unavailable=needs("subprocess_pipe_cat", "cat"),
)

WORKLOADS = [SPAWN, PIPE_CAT]
