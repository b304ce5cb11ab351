"""call_soon_threadsafe from 4 threads: each sends `size / 4` callbacks; timed from starting
the threads until the loop has run every callback."""

from __future__ import annotations

import asyncio
import threading
import time

from ..loops import run_on
from . import Timing, Workload

THREADS = 4


def measure(loop_name: str, size: int) -> Timing:
    per_thread = max(1, size // THREADS)
    total = per_thread * THREADS

    async def main() -> float:
        loop = asyncio.get_running_loop()
        all_ran = loop.create_future()
        ran = 0

        def callback() -> None:
            nonlocal ran
            ran += 1
            if ran == total:
                all_ran.set_result(None)

        def send() -> None:
            for _ in range(per_thread):
                loop.call_soon_threadsafe(callback)

        threads = [threading.Thread(target=send) for _ in range(THREADS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        await all_ran
        elapsed = time.perf_counter() - start
        for thread in threads:
            thread.join()
        return elapsed

    return Timing(total, run_on(loop_name, main))


WORKLOAD = Workload(name="threadsafe_4threads", unit="callbacks", size=800_000, quick_size=40_000, measure=measure)
