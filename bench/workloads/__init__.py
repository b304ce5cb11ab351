"""The workloads, one module each. A workload runs about `size` operations on one loop and
returns how many it ran and the seconds they took; the harness turns that into operations per
second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class Timing(NamedTuple):
    operations: int
    seconds: float
    #: Things the report should mention that do not invalidate the number (a peer loop's
    #: quirk worked around, say).
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Workload:
    name: str
    #: What one operation is, for the table's unit column ("callbacks", "requests", ...).
    unit: str
    #: Operations per measurement in a full run (tuned for ~0.2-1 s on the slowest loop).
    size: int
    #: Operations per measurement under --quick.
    quick_size: int
    #: (loop name, size) -> operations run (size, rounded to the workload's shape) and seconds.
    measure: Callable[[str, int], Timing]
    #: Whether the worker runs a tenth-size round first, untimed. Workloads that warm up on
    #: their own (the echo warms its connections) say no.
    warm_up: bool = True
    #: Whether the workload pins its own processes (the echo puts server and client on
    #: different cores); otherwise the worker pins itself to the CPU it is given.
    pins_own_cpus: bool = False
    #: Payload bytes one operation moves each way (echo message size), so the report can
    #: give MB/s; 0 for workloads that move no data.
    bytes_per_op: int = 0
    #: How the report describes a size, when it is not a count of operations.
    describe_size: Callable[[int], str] = "{:,}".format
    #: None when the workload can run here; otherwise why not (a missing tool or module).
    unavailable: Callable[[], str | None] = lambda: None
    #: Whether a run without `--only` includes it; others run only when named.
    in_default_run: bool = True
    #: Whether the native limit (`bench/echo_client`'s servers, the `native` column) runs it.
    native_limit: bool = False


def all_workloads() -> dict[str, Workload]:
    from . import (
        call_soon,
        datagram_echo,
        datagram_echo_native,
        echo,
        echo_native,
        gather,
        http_keepalive,
        sleep_pingpong,
        subprocesses,
        threadsafe,
        timers,
        tls_echo,
    )

    single_process = (call_soon, timers, gather, sleep_pingpong, threadsafe)
    ordered = [module.WORKLOAD for module in single_process]
    ordered += echo.WORKLOADS
    ordered += echo_native.WORKLOADS
    ordered += tls_echo.WORKLOADS
    ordered += datagram_echo.WORKLOADS
    ordered += datagram_echo_native.WORKLOADS
    ordered.append(http_keepalive.WORKLOAD)
    ordered += subprocesses.WORKLOADS
    return {workload.name: workload for workload in ordered}
