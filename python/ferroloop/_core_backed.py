"""The Python face of a transport whose state and per-event work are a Rust core.

A transport class inherits `ReadSide` and/or `WriteSide` and sets `self._core`; `bind_core`
then puts the core's own methods on the instance, so `transport.write(data)` calls Rust with no
Python frame in between. The methods below are what a reader, a type checker or code that looks
methods up on the class sees; each does exactly what the bound core method does.
"""

from __future__ import annotations

from typing import Any


def bind_core(transport: Any, names: tuple[str, ...]) -> None:
    core = transport._core
    for name in names:
        setattr(transport, name, getattr(core, name))


class CoreBacked:
    _core: Any
    BOUND: tuple[str, ...] = ("close", "is_closing", "set_protocol", "get_protocol")

    def close(self) -> None:
        self._core.close()

    def is_closing(self) -> bool:
        return bool(self._core.is_closing())

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol()

    @property
    def _closing(self) -> bool:
        return bool(self._core._closing)


class ReadSide(CoreBacked):
    BOUND = CoreBacked.BOUND + ("is_reading", "pause_reading", "resume_reading")

    def is_reading(self) -> bool:
        return bool(self._core.is_reading())

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()


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

    def write(self, data: Any) -> None:
        self._core.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._core.writelines(list_of_data)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self._core.abort()

    def get_write_buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    @property
    def _conn_lost(self) -> int:
        return int(self._core._conn_lost)

    @property
    def _protocol_paused(self) -> bool:
        return bool(self._core._protocol_paused)
