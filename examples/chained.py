"""Chained coroutines: the second step of each chain uses the result of the first.

Within a chain the steps run one after the other (`await` waits for the result); the three
chains run concurrently, so the whole program takes about as long as the slowest chain.
"""

import asyncio
import time


async def fetch_user(user_id: int) -> str:
    await asyncio.sleep(0.2 * user_id)  # stands in for a slow lookup
    name = f"user-{user_id}"
    print(f"step 1: fetched {name}")
    return name


async def fetch_greeting(name: str) -> str:
    await asyncio.sleep(0.05)
    greeting = f"hello, {name}"
    print(f"step 2: made a greeting for {name}")
    return greeting


async def chain(user_id: int) -> str:
    start = time.perf_counter()
    name = await fetch_user(user_id)
    greeting = await fetch_greeting(name)
    print(f"chain {user_id} -> {greeting!r} (took {time.perf_counter() - start:0.2f} s)")
    return greeting


async def main() -> None:
    greetings = await asyncio.gather(*(chain(user_id) for user_id in (1, 2, 3)))
    print(f"all chains done: {greetings}")


if __name__ == "__main__":
    start = time.perf_counter()
    asyncio.run(main())
    print(f"finished in {time.perf_counter() - start:0.2f} s")
