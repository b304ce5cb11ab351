"""ferroloop: an asyncio event loop written in Rust.

    import ferroloop
    ferroloop.run(main())                       # like asyncio.run, on ferroloop
    asyncio.Runner(loop_factory=ferroloop.new_event_loop)
    ferroloop.install()                         # make asyncio's policy hand out ferroloop loops
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import events, unix_events
from typing import Any, Coroutine, TypeVar

from ._core import Handle, TimerHandle
from ._loop import Loop

__all__ = ["Loop", "Handle", "TimerHandle", "new_event_loop", "EventLoopPolicy", "install", "run"]
__version__ = "0.1.0"

_T = TypeVar("_T")

# The standard Unix policy, so that ferroloop's keeps its whole API: on 3.11-3.13 that includes
# get_child_watcher()/set_child_watcher(), which programs (and CPython's tests) call through
# `asyncio.set_child_watcher()` whatever policy is installed.
# The Unix default policy (child watchers on 3.11-3.13); its name has been stable, but fall back
# to the generic base should a future release drop it.
_BasePolicy: type = (
    getattr(unix_events, "_UnixDefaultEventLoopPolicy", None)
    or getattr(events, "BaseDefaultEventLoopPolicy", None)
    or getattr(events, "_BaseDefaultEventLoopPolicy")
)


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """An asyncio event loop policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> Loop:
        return new_event_loop()


def install() -> None:
    """Make asyncio's global policy hand out ferroloop loops (`asyncio.new_event_loop()`,
    `asyncio.run()`, `asyncio.get_event_loop()` in the main thread)."""
    setter = getattr(events, "_set_event_loop_policy", None)  # 3.14+: the non-deprecated path
    if setter is None:
        setter = asyncio.set_event_loop_policy
    setter(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, like `asyncio.run`, and return its result."""
    if events._get_running_loop() is not None:
        # Fail fast, as asyncio.run does: a Runner would first make and then close a new loop,
        # and closing it runs shutdown_asyncgens, whose error would hide this one.
        raise RuntimeError("ferroloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
