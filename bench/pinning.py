"""Pin the current process to one CPU, so a measurement does not migrate between cores."""

from __future__ import annotations

import os
import sys


def pin_to(cpu: int) -> bool:
    """Pin to `cpu` if this process may run there; otherwise leave the affinity alone."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    if cpu not in os.sched_getaffinity(0):
        print(f"bench: cpu {cpu} is not available; not pinning", file=sys.stderr)
        return False
    os.sched_setaffinity(0, {cpu})
    return True
