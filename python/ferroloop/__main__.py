"""`python -m ferroloop [--stats] script.py [args...]`: run any asyncio program on ferroloop.
`python -m ferroloop trace [options] script.py [args...]`: the same, recording a trace.

The script runs as `__main__` with its own `sys.argv` and `sys.path[0]`, as if started with
`python script.py`; `-m module` runs a module instead. Its exit status is kept. `--stats`
prints each loop's statistics (per-task ones included) when it closes. `trace` writes a
Chrome trace-event JSON file (open it in https://ui.perfetto.dev) and an HTML page beside it,
also when the script raises or exits.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

import ferroloop

from ._instrument import DEFAULT_TRACE_EVENTS, runner

USAGE = (
    "usage: python -m ferroloop [--stats] script.py [args...] | -m module [args...]\n"
    "       python -m ferroloop trace [--output PATH] [--buffer-size N] [--drop oldest|newest]\n"
    "                                 [--duration S] [--no-html] [--stats] script.py [args...]"
)


def _run_target(argv: list[str]) -> None:
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _trace_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ferroloop trace",
        description="Run an asyncio program on ferroloop and record what its loop did.",
    )
    p.add_argument(
        "--output",
        "-o",
        default="ferroloop-trace.json",
        help="trace file (Chrome trace-event JSON); the HTML page goes beside it",
    )
    p.add_argument(
        "--buffer-size",
        type=_positive_int,
        default=DEFAULT_TRACE_EVENTS,
        help="events kept per loop; when full, events are dropped (and counted)",
    )
    p.add_argument(
        "--drop",
        choices=("oldest", "newest"),
        default="oldest",
        help="which events a full buffer drops: the oldest (keep the latest history, the "
        "default) or the newest (keep the beginning)",
    )
    p.add_argument(
        "--duration",
        type=_positive_seconds,
        default=None,
        help="stop recording this many seconds after each loop starts being traced",
    )
    p.add_argument("--no-html", action="store_true", help="write only the JSON trace")
    p.add_argument("--stats", action="store_true", help="also print statistics at loop close")
    p.add_argument("target", nargs=argparse.REMAINDER, help="script.py [args...] | -m module [args...]")
    return p


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    ferroloop._install()  # the policy is how an unchanged program gets the loop
    if argv[0] == "trace":
        options = _trace_parser().parse_args(argv[1:])
        if not options.target:
            _trace_parser().error("the script to run is missing")
        runner.stats_at_close = options.stats
        output = os.path.abspath(options.output)
        if not os.path.isdir(os.path.dirname(output)):
            _trace_parser().error(f"the directory of --output does not exist: {options.output}")
        session = ferroloop.trace(
            output,
            buffer_size=options.buffer_size,
            drop=options.drop,
            duration=options.duration,
            html=not options.no_html,
        )
        try:
            with session:
                _run_target(options.target)
        finally:
            written = [output] + ([session.html_path] if session.html_path else [])
            print(f"ferroloop: trace written to {', '.join(written)}", file=sys.stderr)
        return
    if argv[0] == "--stats":
        runner.stats_at_close = True
        argv = argv[1:]
        if not argv:
            print(USAGE, file=sys.stderr)
            raise SystemExit(2)
    _run_target(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
