"""Timers, half cancelled: `size` call_later with random delays under 5 ms, every other one
cancelled, timed until the survivors have all fired."""

from __future__ import annotations

import asyncio
import random
import time

from ..loops import run_on
from . import Timing, Workload

MAX_DELAY = 0.005


def measure(loop_name: str, size: int) -> Timing:
    # The same delays for every loop, drawn before the clock starts.
    rng = random.Random(size)
    delays = [rng.uniform(0.0, MAX_DELAY) for _ in range(size)]
    survivors = size - (size + 1) // 2

    async def main() -> float:
        loop = asyncio.get_running_loop()
        all_fired = loop.create_future()
        fired = 0

        def on_timer() -> None:
            nonlocal fired
            fired += 1
            if fired == survivors:
                all_fired.set_result(None)

        start = time.perf_counter()
        handles = [loop.call_later(delay, on_timer) for delay in delays]
        for handle in handles[::2]:
            handle.cancel()
        await all_fired
        return time.perf_counter() - start

    return Timing(size, run_on(loop_name, main))


WORKLOAD = Workload(name="timers", unit="timers", size=300_000, quick_size=20_000, measure=measure)
