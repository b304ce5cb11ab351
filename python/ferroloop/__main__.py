"""`python -m ferroloop script.py [args...]`: run any asyncio program on ferroloop.

The script runs as `__main__` with its own `sys.argv` and `sys.path[0]`, as if started with
`python script.py`; `-m module` runs a module instead. Its exit status is kept.
"""

from __future__ import annotations

import os
import runpy
import sys

import ferroloop

USAGE = "usage: python -m ferroloop script.py [args...] | -m module [args...]"


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    ferroloop._install()  # the policy is how an unchanged program gets the loop
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            raise SystemExit(2)
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
