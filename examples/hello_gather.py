"""Three counters run concurrently: total wall time is about 3 s, not 9 s."""

import asyncio
import time


async def count(name: str) -> None:
    print(f"{name}: one")
    await asyncio.sleep(1)
    print(f"{name}: two")
    await asyncio.sleep(2)
    print(f"{name}: three")


async def main() -> None:
    await asyncio.gather(count("a"), count("b"), count("c"))


if __name__ == "__main__":
    start = time.perf_counter()
    asyncio.run(main())
    print(f"{type(asyncio.new_event_loop()).__module__}: finished in {time.perf_counter() - start:0.2f} s")
