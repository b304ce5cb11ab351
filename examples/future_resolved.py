"""A Future resolved by another task.

`main` creates a bare Future and waits on it; a second task sets its result half a second
later. Setting the result runs the Future's done callbacks (in the order they were added) and
wakes every coroutine awaiting it.
"""

import asyncio


async def resolve_later(future: asyncio.Future[str], delay: float, value: str) -> None:
    await asyncio.sleep(delay)
    print(f"resolver: setting the result to {value!r}")
    future.set_result(value)


def report(future: asyncio.Future[str]) -> None:
    print(f"done callback: the future now holds {future.result()!r}")


async def main() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    future.add_done_callback(report)
    resolver = asyncio.create_task(resolve_later(future, 0.5, "hello from another task"))
    print(f"main: waiting, future done? {future.done()}")
    value = await future
    print(f"main: got {value!r}")
    await resolver


if __name__ == "__main__":
    asyncio.run(main())
