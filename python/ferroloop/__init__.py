"""ferroloop: an asyncio event loop written in Rust.

    import ferroloop
    ferroloop.run(main())                       # like asyncio.run, on ferroloop
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)  # 3.12+
    asyncio.Runner(loop_factory=ferroloop.new_event_loop)
    ferroloop.install()                         # asyncio's policy hands out ferroloop loops
                                                # (deprecated on 3.14+, as policies are)

Seeing a run: `loop.stats()` and `ferroloop.print_stats(loop)`, `loop.set_blocking_threshold(s)`,
`with ferroloop.trace("run.json"): ...` (or `python -m ferroloop trace script.py`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from asyncio import events, unix_events
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from . import _stdlib

_stdlib.check()  # before anything below uses a private asyncio name: a clear error if one is gone

from ._core import Handle, TimerHandle  # noqa: E402
from ._instrument import DEFAULT_TRACE_EVENTS, format_stats, print_stats  # noqa: E402
from ._loop import Loop  # noqa: E402

if TYPE_CHECKING:
    from ._trace import TraceSession

__all__ = [
    "Loop",
    "Handle",
    "TimerHandle",
    "new_event_loop",
    "install",
    "run",
    "trace",
    "print_stats",
    "format_stats",
]
if sys.version_info < (3, 14):  # deprecated from 3.14 on, as asyncio's policies
    __all__ += ["EventLoopPolicy"]
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
    or events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]
)


def trace(
    path: str | os.PathLike[str],
    *,
    buffer_size: int = DEFAULT_TRACE_EVENTS,
    drop: str = "oldest",
    duration: float | None = None,
    html: bool = True,
) -> TraceSession:
    """Trace the ferroloop loops that run inside a `with` block into `path` (Chrome
    trace-event JSON, for https://ui.perfetto.dev) and, with `html`, a self-contained page
    beside it (`.html`). `buffer_size` bounds the events kept per loop (32 bytes each; the
    memory for the first million is taken when recording starts, a few ms, so that recording
    does not stop at each new page); once it is full, the `drop="oldest"` events are
    overwritten (a server keeps its latest history) or the `"newest"` are not recorded (a
    start-up keeps its beginning), and the trace says how many.
    `duration` stops recording that many seconds after a loop starts being traced. The trace
    is written when the block ends, also if it raises."""
    from ._trace import TraceSession  # json, html and dataclasses load only when tracing

    return TraceSession(path, buffer_size=buffer_size, drop=drop, duration=duration, html=html)


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


# CPython 3.14 deprecated event loop policies (removal planned for 3.16): there, ferroloop's
# policy API warns as asyncio's does, and the policy-free ways (`run`, `asyncio.run(...,
# loop_factory=new_event_loop)`, `asyncio.Runner`) are the ones to use.
_POLICIES_DEPRECATED = sys.version_info >= (3, 14)


def _warn_policy_deprecated(name: str) -> None:
    if _POLICIES_DEPRECATED:
        warnings.warn(
            f"{name!r} is deprecated and slated for removal in Python 3.16 (asyncio's event "
            "loop policies are); use ferroloop.run(main()), asyncio.run(main(), "
            "loop_factory=ferroloop.new_event_loop) or asyncio.Runner(loop_factory=...)",
            DeprecationWarning,
            stacklevel=3,
        )


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc, valid-type]
    """An asyncio event loop policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> Loop:
        return new_event_loop()


# The public name is looked up through __getattr__ (below) so that, on 3.14+, using it warns
# as `asyncio.DefaultEventLoopPolicy` does; ferroloop itself uses the private one.
_EventLoopPolicy = EventLoopPolicy
if not TYPE_CHECKING:
    del EventLoopPolicy


def __getattr__(name: str) -> Any:
    if name == "EventLoopPolicy":
        _warn_policy_deprecated("ferroloop.EventLoopPolicy")
        return _EventLoopPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _install() -> None:
    setter = getattr(events, "_set_event_loop_policy", None)  # 3.14+: the non-deprecated path
    if setter is None:
        setter = asyncio.set_event_loop_policy
    setter(_EventLoopPolicy())


def install() -> None:
    """Make asyncio's global policy hand out ferroloop loops (`asyncio.new_event_loop()`,
    `asyncio.run()`, `asyncio.get_event_loop()` in the main thread). Deprecated on Python
    3.14+, as asyncio's policies are."""
    _warn_policy_deprecated("ferroloop.install")
    _install()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, like `asyncio.run`, and return its result."""
    if events._get_running_loop() is not None:
        # Fail fast, as asyncio.run does: a Runner would first make and then close a new loop,
        # and closing it runs shutdown_asyncgens, whose error would hide this one.
        raise RuntimeError("ferroloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
