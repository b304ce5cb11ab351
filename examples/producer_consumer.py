"""Producers and consumers over an `asyncio.Queue`.

Three producers put items into a small bounded queue (a full queue makes `put` wait), two
consumers take them out and "work" on each. `queue.join()` waits until every item has been
marked done; then the consumers, which loop forever, are cancelled.
"""

import asyncio


async def produce(name: str, count: int, queue: asyncio.Queue[str]) -> None:
    for i in range(count):
        item = f"{name}/item-{i}"
        await queue.put(item)
        print(f"{name} put {item}")
        await asyncio.sleep(0.01)


async def consume(name: str, queue: asyncio.Queue[str], processed: list[str]) -> None:
    while True:
        item = await queue.get()
        await asyncio.sleep(0.02)  # the work
        print(f"{name} processed {item}")
        processed.append(item)
        queue.task_done()


async def main() -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=2)
    processed: list[str] = []
    consumers = [
        asyncio.create_task(consume(f"consumer-{i}", queue, processed)) for i in range(2)
    ]
    await asyncio.gather(*(produce(f"producer-{i}", 3, queue) for i in range(3)))
    await queue.join()
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    print(f"done: {len(processed)} items processed, queue empty: {queue.empty()}")


if __name__ == "__main__":
    asyncio.run(main())
