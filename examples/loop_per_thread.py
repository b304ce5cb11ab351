"""One event loop per thread.

An event loop belongs to the thread that runs it. Each worker thread here calls `asyncio.run`,
which gives the thread a loop of its own (a ferroloop loop under `python -m ferroloop`, whose
policy hands out ferroloop loops in every thread) and closes it at the end. The main thread
joins the workers and checks that no two threads shared a loop.
"""

import asyncio
import threading


async def work(name: str, delay: float) -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    loop_class = type(loop)
    print(f"{name}: slept {delay} s on {loop_class.__module__}.{loop_class.__qualname__}")
    return loop


def thread_main(name: str, delay: float, loops: list[asyncio.AbstractEventLoop]) -> None:
    loops.append(asyncio.run(work(name, delay)))


def main() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    threads = [
        threading.Thread(target=thread_main, args=(f"thread-{i}", delay, loops))
        for i, delay in enumerate((0.1, 0.2, 0.3), start=1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    distinct = len({id(loop) for loop in loops})  # the loops are all alive: ids are unique
    print(f"{len(threads)} threads ran {distinct} distinct event loops")


if __name__ == "__main__":
    main()
