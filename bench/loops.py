"""The candidate event loops, selected by name.

Each name maps to the module whose `new_event_loop` makes that loop; "asyncio" is the
standard library's selector loop. Workers import a loop only when they measure it, so a
missing peer loop costs nothing but a skipped column.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import platform
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# In report order; ferroloop first because every ratio is about it.
KNOWN_LOOPS: tuple[str, ...] = ("ferroloop", "asyncio", "uvloop", "rloop", "rsloop")
#: Not a loop: the native echo server (`bench/echo_client`'s `echo_server`), the limit the
#: server-alone echoes are measured against. Only those workloads run it; chosen with --loops.
NATIVE = "native"
SELECTABLE_LOOPS: tuple[str, ...] = (*KNOWN_LOOPS, NATIVE)
SUBJECT = "ferroloop"
BASELINES: tuple[str, ...] = ("uvloop", "asyncio")
#: The other fast loops: the report's "best peer" column is the fastest of these per workload.
PEERS: tuple[str, ...] = ("uvloop", "rloop", "rsloop")


def loop_factory(name: str) -> LoopFactory:
    if name == NATIVE:
        raise NotImplementedError("the native limit is measured by the server-alone echoes only")
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    if name not in KNOWN_LOOPS:
        raise ValueError(f"unknown loop {name!r}; choose from {', '.join(KNOWN_LOOPS)}")
    factory: LoopFactory = importlib.import_module(name).new_event_loop
    return factory


def loop_version(name: str) -> str:
    """The distribution version, or the module's own `__version__` for a source checkout."""
    if name == "asyncio":
        return f"CPython {platform.python_version()}"
    if name == NATIVE:
        return "bench/echo_client echo_server (Rust, epoll, no loop)"
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        module = importlib.import_module(name)
        return str(getattr(module, "__version__", "source checkout"))


def unsupported_reason(error: NotImplementedError) -> str:
    """What a loop does not support, from the NotImplementedError it raised: the error's
    message, or else the function that raised it and where."""
    if str(error):
        return str(error)
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "NotImplementedError"
    where = frames[-1]
    source = Path(where.filename)
    return f"{where.name}() raised NotImplementedError ({source.parent.name}/{source.name}:{where.lineno})"


def run_on(name: str, main: Callable[[], Coroutine[object, object, T]]) -> T:
    """Run `main()` to completion on a fresh loop of the named kind and return its result."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main())
