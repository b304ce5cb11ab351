"""The workloads, one module each. A workload runs about `size` operations on one loop and
returns how many it ran and the seconds they took; the harness turns that into operations per
second."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple


class Timing(NamedTuple):
    operations: int
    seconds: float


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


def all_workloads() -> dict[str, Workload]:
    from . import call_soon, gather, sleep_pingpong, sock_echo, threadsafe, timers

    ordered = (call_soon, timers, gather, sleep_pingpong, threadsafe, sock_echo)
    return {module.WORKLOAD.name: module.WORKLOAD for module in ordered}
