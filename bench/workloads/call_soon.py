"""call_soon throughput: schedule `size` callbacks from one callback, then run them all."""

from __future__ import annotations

import asyncio
import time

from ..loops import run_on
from . import Timing, Workload


def measure(loop_name: str, size: int) -> Timing:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        all_ran = loop.create_future()
        ran = 0

        def callback() -> None:
            nonlocal ran
            ran += 1
            if ran == size:
                all_ran.set_result(None)

        start = time.perf_counter()
        for _ in range(size):
            loop.call_soon(callback)
        await all_ran
        return time.perf_counter() - start

    return Timing(size, run_on(loop_name, main))


WORKLOAD = Workload(name="call_soon", unit="callbacks", size=1_000_000, quick_size=50_000, measure=measure)
