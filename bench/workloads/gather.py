"""create_task + gather of `size` trivial coroutines (the issue asks for 100,000)."""

from __future__ import annotations

import asyncio
import time

from ..loops import run_on
from . import Timing, Workload


async def trivial() -> None:
    pass


def measure(loop_name: str, size: int) -> Timing:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        await asyncio.gather(*[loop.create_task(trivial()) for _ in range(size)])
        return time.perf_counter() - start

    return Timing(size, run_on(loop_name, main))


WORKLOAD = Workload(name="gather", unit="tasks", size=100_000, quick_size=10_000, measure=measure)
