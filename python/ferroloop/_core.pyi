"""Type stubs for `ferroloop._core`, the Rust extension (src/event_loop.rs, src/handles.rs).

`LoopCore` is the per-event half of `ferroloop.Loop`; the underscore names are the loop's
internal interface, used by `ferroloop.Loop` and by the standard-library methods it borrows.
"""

import asyncio
from _typeshed import FileDescriptorLike
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from traceback import StackSummary
from typing import Any, Self, TypeVar, TypeVarTuple, Unpack, final

from typing_extensions import disjoint_base

__all__ = ["LoopCore", "Handle", "TimerHandle", "RecvWaiter"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

@disjoint_base
class Handle:
    """What `call_soon` and the fd watchers return; not constructible from Python."""

    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> Context: ...
    @property
    def _callback(self) -> Callable[..., object]: ...
    @property
    def _args(self) -> tuple[Any, ...]: ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _context(self) -> Context: ...
    @property
    def _source_traceback(self) -> StackSummary | None:
        """Where the handle was made; set in debug mode only."""

    @property
    def _scheduled(self) -> bool:
        """True while a TimerHandle sits in its loop's timer heap."""

@final
class TimerHandle(Handle):
    """What `call_later` and `call_at` return; ordered by `when()` like asyncio's."""

    def when(self) -> float: ...
    @property
    def _when(self) -> float: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    def __lt__(self, other: TimerHandle, /) -> bool: ...
    def __le__(self, other: TimerHandle, /) -> bool: ...
    def __gt__(self, other: TimerHandle, /) -> bool: ...
    def __ge__(self, other: TimerHandle, /) -> bool: ...

@final
class RecvWaiter:
    """The reader callback of a `sock_recv` that had to wait (made by `_sock_recv_wait`)."""

    def __call__(self) -> None: ...

@disjoint_base
class LoopCore:
    """The ready queue, the timer heap, the fd table, the poller and `run_once`."""

    def __new__(cls, *args: object, **kwargs: object) -> Self: ...

    # -- lifecycle ---------------------------------------------------------------------
    def run_forever(self) -> None: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def is_closed(self) -> bool: ...
    def _check_closed(self) -> None:
        """Raise RuntimeError('Event loop is closed') if the loop is closed."""

    def _run_once(self) -> None:
        """One iteration: wait for I/O or the next timer, queue what is due, run it."""

    def _close_core(self) -> None:
        """Drop queued callbacks, timers and watchers; close the epoll fd and the waker."""

    @property
    def _closed(self) -> bool: ...
    @property
    def _stopping(self) -> bool: ...

    # -- debug mode --------------------------------------------------------------------
    def get_debug(self) -> bool: ...
    @property
    def _debug(self) -> bool: ...
    @_debug.setter
    def _debug(self, value: object) -> None: ...

    # -- callbacks and timers ----------------------------------------------------------
    def time(self) -> float: ...
    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> Handle: ...
    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> Handle: ...
    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> TimerHandle: ...
    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: Context | None = None,
    ) -> TimerHandle: ...
    def _add_callback(self, handle: Handle | asyncio.Handle) -> None:
        """Queue an existing handle unless it is cancelled."""

    def _add_callback_signalsafe(self, handle: Handle | asyncio.Handle) -> None:
        """`_add_callback`, then wake the loop if it waits in the poller."""

    def _write_to_self(self) -> None:
        """Wake the loop through its eventfd."""

    def _scheduled_count(self) -> int:
        """Timers in the heap, cancelled ones included."""

    def _ready_count(self) -> int: ...

    # -- futures and tasks -------------------------------------------------------------
    def create_future(self) -> asyncio.Future[Any]: ...
    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[_T]: ...
    @property
    def _task_factory(self) -> Callable[..., Any] | None: ...
    @_task_factory.setter
    def _task_factory(self, factory: Callable[..., Any] | None) -> None: ...

    # -- file-descriptor watchers (the public add_reader & co. live in ferroloop.Loop) ----
    def _add_reader(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def _add_writer(
        self, fd: FileDescriptorLike, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> Handle: ...
    def _remove_reader(self, fd: FileDescriptorLike) -> bool: ...
    def _remove_writer(self, fd: FileDescriptorLike) -> bool: ...
    def _has_watcher(self, fd: int, write: bool = False) -> bool: ...

    # -- socket operations (the coroutines live in ferroloop.Loop) -----------------------
    def _sock_recv_now(self, fd: int, n: int) -> bytes | None:
        """One non-blocking recv: the data, or None if the socket has nothing to read yet."""

    def _sock_recv_wait(self, fd: int, n: int, future: asyncio.Future[bytes]) -> Handle:
        """Install a RecvWaiter as fd's reader: it receives into `future` once fd is readable."""
