"""Three counters run concurrently: the total wall time is about 3 s, not 9 s.

Each `count()` sleeps 1 s and then 2 s. `asyncio.gather` runs the three at once, so while one
sleeps the loop runs the others, and the sleeps overlap.
"""

import asyncio
import time


async def count(name: str) -> None:
    print(f"{name}: one")
    await asyncio.sleep(1)
    print(f"{name}: two")
    await asyncio.sleep(2)
    print(f"{name}: three")


async def main() -> None:
    loop_class = type(asyncio.get_running_loop())
    print(f"running on {loop_class.__module__}.{loop_class.__qualname__}")
    await asyncio.gather(count("a"), count("b"), count("c"))


if __name__ == "__main__":
    start = time.perf_counter()
    asyncio.run(main())
    print(f"finished in {time.perf_counter() - start:0.2f} s")
