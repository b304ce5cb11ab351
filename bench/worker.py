"""One measurement in a fresh process: `python -m bench.worker WORKLOAD LOOP --size N --cpu C`.

Prints one JSON line: {"workload", "loop", "operations", "seconds", "ops_per_sec", "notes"},
or {"workload", "loop", "unsupported"} when the loop raised NotImplementedError for something
the workload needs (rloop 0.5 and TLS, say): the harness notes that and stops measuring the
pair, rather than counting it as a failure every round.

The cyclic garbage collector is off while a workload runs unless `--gc` is given: with 10^5
to 10^6 handles or tasks alive at once, CPython's generational collections otherwise take most
of the time (60-85% here) and swamp what the loops do differently.
"""

from __future__ import annotations

import argparse
import gc
import json

from .loops import unsupported_reason
from .pinning import pin_to
from .workloads import all_workloads


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("workload")
    parser.add_argument("loop")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--gc", action="store_true", help="leave the cyclic GC on")
    args = parser.parse_args()

    workload = all_workloads()[args.workload]
    if not workload.pins_own_cpus:
        pin_to(args.cpu)
    if not args.gc:
        gc.disable()
    try:
        if workload.warm_up:
            workload.measure(args.loop, max(1, args.size // 10))
        gc.collect()
        operations, seconds, notes = workload.measure(args.loop, args.size)
    except NotImplementedError as error:
        unsupported = {"unsupported": unsupported_reason(error)}
        print(json.dumps({"workload": workload.name, "loop": args.loop, **unsupported}))
        return
    print(
        json.dumps(
            {
                "workload": workload.name,
                "loop": args.loop,
                "operations": operations,
                "seconds": seconds,
                "ops_per_sec": operations / seconds,
                "notes": list(notes),
            }
        )
    )


if __name__ == "__main__":
    main()
