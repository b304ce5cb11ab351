"""The Python face of a transport whose state and per-event work are a Rust core.

A transport class inherits `ReadSide` and/or `WriteSide` and sets `self._core`; `bind_core`
then puts the core's own methods on the instance, so `transport.write(data)` calls Rust with no
Python frame in between. On the class, each of those names is a `CoreMethod`: looked up there
(by code that reads methods off the class, or before `bind_core` ran) it still gives the core's
method, and it says so in its repr. There is no Python body that could drift from the Rust one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class CoreMethod:
    """`transport.<name>` is `transport._core.<name>`: the Rust core's method of that name."""

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, transport: Any, owner: type | None = None) -> Any:
        if transport is None:
            return self
        return getattr(transport._core, self.name)

    def __repr__(self) -> str:
        return f"<served by the Rust core's {self.name}()>"


def bind_core(transport: Any, names: tuple[str, ...]) -> None:
    core = transport._core
    for name in names:
        setattr(transport, name, getattr(core, name))


class CoreBacked:
    _core: Any
    BOUND: tuple[str, ...] = ("close", "is_closing", "set_protocol", "get_protocol")

    if TYPE_CHECKING:

        def close(self) -> None: ...
        def is_closing(self) -> bool: ...
        def set_protocol(self, protocol: Any) -> None: ...
        def get_protocol(self) -> Any: ...

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return bool(self._core._closing)


class ReadSide(CoreBacked):
    BOUND = CoreBacked.BOUND + ("is_reading", "pause_reading", "resume_reading")

    if TYPE_CHECKING:

        def is_reading(self) -> bool: ...
        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...


class WriteSide(CoreBacked):
    BOUND = CoreBacked.BOUND + (
        "write",
        "writelines",
        "write_eof",
        "abort",
        "get_write_buffer_size",
        "get_write_buffer_limits",
        "set_write_buffer_limits",
    )

    if TYPE_CHECKING:

        def write(self, data: Any) -> None: ...
        def writelines(self, list_of_data: Any) -> None: ...
        def write_eof(self) -> None: ...
        def abort(self) -> None: ...
        def get_write_buffer_size(self) -> int: ...
        def get_write_buffer_limits(self) -> tuple[int, int]: ...
        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    @property
    def _conn_lost(self) -> int:
        return int(self._core._conn_lost)

    @property
    def _protocol_paused(self) -> bool:
        return bool(self._core._protocol_paused)


if not TYPE_CHECKING:  # the names each side serves from its core, declared above for type checkers
    for _side in (CoreBacked, ReadSide, WriteSide):
        for _name in _side.BOUND:
            if not isinstance(getattr(_side, _name, None), CoreMethod):
                setattr(_side, _name, CoreMethod(_name))
    del _side, _name
