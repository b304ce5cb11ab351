"""`await asyncio.sleep(0)` ping-pong: 1,000 tasks each yield to the loop `size / 1000` times,
so every iteration of the loop steps all of them once."""

from __future__ import annotations

import asyncio
import time

from ..loops import run_on
from . import Timing, Workload

TASKS = 1_000


async def yield_repeatedly(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


def measure(loop_name: str, size: int) -> Timing:
    per_task = max(1, size // TASKS)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(yield_repeatedly(per_task)) for _ in range(TASKS)]
        start = time.perf_counter()
        await asyncio.gather(*tasks)
        return time.perf_counter() - start

    return Timing(per_task * TASKS, run_on(loop_name, main))


WORKLOAD = Workload(name="sleep0_pingpong", unit="switches", size=500_000, quick_size=20_000, measure=measure)
