"""Run CPython's installed `test.test_asyncio` suites on ferroloop and on the standard loop, and
compare the two runs test by test.

    cd tests && python -m conformance.run                       # every suite in SUITES
    cd tests && python -m conformance.run test_events -k call_soon -v
    cd tests && python -m conformance.run --loop ferroloop     # skip the stdlib run (faster)

It uses whichever `ferroloop` the interpreter imports: the installed one, or the dev build with
`PYTHONPATH=/work/main/python`. It exits 1 when a test passes on the standard loop but fails,
errors or never finishes on ferroloop and is not listed in `known_failures` (next to this file,
one `test id  # reason` per line), or when only the ferroloop run's worker crashes (say, at
exit); entries of that list that now pass are reported as stale.

How a run works
---------------
Each (module, loop) pair runs in its own worker process (`worker.py`) in a scratch directory,
with a time budget per module and a watchdog per test. A test that hangs or crashes its worker
is recorded as an error, and a new worker carries on with the tests after it, so one hang costs
one test, not the module. Both runs select exactly the same tests; results are matched by test
id (`test_events.EventLoopTests.test_call_soon`, i.e. unittest's id without `test.test_asyncio.`).

Which tests are loop-generic
----------------------------
A test runs on the loop under test when it obtains its loop through a hook the runner replaces;
in the standard-loop run the same hooks return asyncio's own default loop
(`asyncio.SelectorEventLoop`), so both runs execute identical test code.

1. `create_event_loop()` of a suite's mixin (`Suite.mixins`): the runner generates a TestCase
   class per mixin whose `create_event_loop` returns the loop under test, and drops the suite's
   own concrete classes for the stdlib's loops and selectors (`Suite.superseded`), which the
   generated classes replace. The generated classes use `test_utils.TestCase` as their base and
   not the suites' `UnixEventLoopTestsMixin` or `SubprocessWatcherMixin`, whose only addition
   is a stdlib child watcher, which each loop's default replaces (ferroloop reaps its own
   children). A mixin without a `setUp` of its own (`SubprocessTestsMixin`, `SubprocessMixin`)
   gets `self.loop` built the way `EventLoopTestsMixin` builds it.
2. The event loop policy, which `asyncio.new_event_loop()`, `asyncio.run()`, `asyncio.Runner()`
   and `IsolatedAsyncioTestCase` ask for a loop. In the ferroloop run, ferroloop's policy is both
   the current policy and the interpreter's default policy class (`asyncio.DefaultEventLoopPolicy`),
   so a test that resets the policy, or builds a "default" one, still gets ferroloop loops;
   from 3.13 on `asyncio.EventLoop` (the interpreter's default loop class, which suites pass
   as a `loop_factory` or call) is ferroloop's loop too.
   All of test_ssl (`TestSSL.setUp` and `new_loop` call `asyncio.new_event_loop()`) runs on the
   loop under test this way, and so does test_sslproto's `SslProtoHandshakeTests`: those drive
   the standard library's `sslproto.SSLProtocol` class itself through a mock transport and a mock
   SSL object, and need from the loop only its futures and call_soon/call_later. ferroloop runs
   that same class for TLS (`Loop._make_ssl_transport`), so they run unchanged, on the loop under
   test.
3. `Suite.loop_hooks`: suites that build a mocked `asyncio.BaseEventLoop()` only because they
   need *a* loop (test_runners' `BaseTest.new_loop`, test_pep492's `BaseTest.setUp`); the worker
   hands them a real loop under test instead (see `worker.LOOP_HOOKS`).
4. `Suite.selector_loop_sites`: methods of a suite's concrete classes that build the loop with
   `asyncio.SelectorEventLoop()` themselves — the `new_loop()` of `FunctionalTestCaseMixin`
   suites (test_server, test_buffered_proto, and test_sslproto's functional start_tls tests in
   `SelectorStartTLSTests`), the `setUp` of test_unix_events' signal and Unix socket classes.
   While such a method runs, the name `asyncio.SelectorEventLoop` is the loop factory under test
   (in the standard-loop run it stays asyncio's class). The class keeps its own tests, such as
   test_server's Unix test that only `SelectorStartServerTests` has.

A test that drives the stdlib loop's private machinery through a loop it was handed
(`Suite.internals`, each with its reason) is deselected from both runs. Everything else runs
unchanged in both runs: tests of the stdlib's private classes —
`test_utils.TestLoop` (virtual time via `new_test_loop()`, most of test_tasks and test_futures),
`BaseEventLoop` internals, selectors, mocks of stdlib loops — build their own loop and never touch
ferroloop. They stay in (they are cheap, and a ferroloop import that disturbed asyncio would show
there), and the report says per module how many tests actually constructed the loop under test
("on-loop"): that count, measured, is what tells the two kinds apart.

Scope
-----
`DEFERRED_FEATURES` names, by a pattern on `Class.test_method`, the tests of features that later
issues bring in; a suite lists the ones it still defers in `Suite.deferred`. To widen the
selection when a feature lands, remove it from the suites' `deferred` tuples (and add modules
to SUITES). TLS is in: test_ssl, test_sslproto, and the TLS tests of
test_events, test_streams, test_sendfile and test_unix_events run. Pipes and subprocesses are in:
test_subprocess, and the pipe, pty and subprocess tests of test_events, test_streams and
test_unix_events run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------------
# What runs: the data later issues extend.
# --------------------------------------------------------------------------------------------

DEFERRED_FEATURES: dict[str, str] = {
    # feature: regular expression searched in "Class.test_method". A test is deselected while
    # any feature it matches is deferred; it is counted under the first one, in this order.
    # (none deferred now: TLS, pipes and subprocesses have landed)
}


@dataclass(frozen=True)
class Suite:
    module: str  # a module of test.test_asyncio
    # generated class name -> the suite's mixin it runs, with create_event_loop() = loop under test
    mixins: dict[str, str] = field(default_factory=dict)
    # the suite's own classes for the stdlib's loops, replaced by the generated ones
    superseded: tuple[str, ...] = ()
    # "Class.method" where the suite builds a stdlib loop object as "a loop" (worker.LOOP_HOOKS)
    loop_hooks: tuple[str, ...] = ()
    # "Class.method" that calls asyncio.SelectorEventLoop() to build the loop a test runs on;
    # during the call that name is the loop under test (worker.patch_selector_loop_site)
    selector_loop_sites: tuple[str, ...] = ()
    # features (keys of DEFERRED_FEATURES) whose tests are not selected yet
    deferred: tuple[str, ...] = ()
    # "Class.test_method" -> why: tests that drive the stdlib loop's own private machinery,
    # so they cannot run on another loop; deselected from both runs
    internals: dict[str, str] = field(default_factory=dict)
    timeout: float = 300.0  # seconds for the whole module, restarts after a hang included


_STDLIB_LOOP_CLASSES = (
    "SelectEventLoopTests",
    "EPollEventLoopTests",
    "PollEventLoopTests",
    "KqueueEventLoopTests",
    "ProactorEventLoopTests",
)

SUITES: tuple[Suite, ...] = (
    Suite(
        "test_events",
        # SubprocessTestsMixin's tests live only in the superseded classes, next to a child
        # watcher from UnixEventLoopTestsMixin; its generated class builds the loop as
        # EventLoopTestsMixin does, and each loop reaps children its own way (asyncio's
        # through the policy's default watcher).
        mixins={"EventLoopTests": "EventLoopTestsMixin", "SubprocessTests": "SubprocessTestsMixin"},
        superseded=_STDLIB_LOOP_CLASSES,
        # connect_read_pipe/connect_write_pipe with pipe-like objects (3.13+)
        selector_loop_sites=("UnixPipeObjectSupportTests.setUp",),
        internals={
            "EventLoopTests.test_timeout_rounding": (
                "counts iterations by replacing loop._run_once, which only the stdlib's "
                "run_forever calls through the instance, and reads loop._selector"
            ),
            "EventLoopTests.test_internal_fds": (
                "counts the selector loop's self-pipe (_internal_fds, _ssock, _csock); the test "
                "itself skips on any loop that is not a BaseSelectorEventLoop"
            ),
        },
    ),
    Suite(
        "test_sock_lowlevel",
        mixins={"SockTests": "BaseSockTestsMixin"},
        superseded=_STDLIB_LOOP_CLASSES,
    ),
    Suite("test_server", selector_loop_sites=("SelectorStartServerTests.new_loop",)),
    Suite("test_streams"),
    Suite(
        "test_sendfile",
        mixins={"SendfileTests": "SendfileTestsBase"},
        superseded=_STDLIB_LOOP_CLASSES,
    ),
    Suite("test_buffered_proto", selector_loop_sites=("BufferedProtocolSelectorTests.new_loop",)),
    Suite("test_protocols"),
    Suite(
        "test_unix_events",
        # The sock_sendfile class and TestFunctional get their loop from the policy. The pipe
        # transport and child watcher classes test the standard library's own classes on a
        # TestLoop or mocks: they stay in, off the loop under test, like most of test_tasks.
        selector_loop_sites=(
            "SelectorEventLoopSignalTests.setUp",
            "SelectorEventLoopUnixSocketTests.setUp",
        ),
        internals={
            "SelectorEventLoopSignalTests.test_close_on_finalizing": (
                "fakes interpreter shutdown by patching asyncio.unix_events.sys, the module "
                "global the stdlib's close() reads; ferroloop's Loop.close() has the same "
                "branch (warns, clears the handlers) but reads its own module's sys"
            ),
        },
    ),
    Suite("test_tasks"),
    Suite("test_futures"),
    Suite("test_locks"),
    Suite("test_queues"),
    Suite("test_timeouts"),
    Suite("test_taskgroups"),
    Suite("test_waitfor"),
    Suite(
        "test_runners",
        loop_hooks=("BaseTest.new_loop",),
        internals={
            "RunTests.test_loop_factory_default_event_loop": (
                "asserts that asyncio.EventLoop (3.13+) is the standard library's "
                "SelectorEventLoop; the ferroloop run makes asyncio.EventLoop ferroloop's loop"
            ),
        },
    ),
    Suite("test_context"),
    Suite("test_threads"),
    Suite("test_pep492", loop_hooks=("BaseTest.setUp",)),
    Suite(
        "test_subprocess",
        # SubprocessMixin runs on the loop under test; the suite's own classes pair it with
        # each of the stdlib's child watchers (policy.set_child_watcher) on a policy loop.
        mixins={"SubprocessTests": "SubprocessMixin"},
        superseded=(
            "SubprocessThreadedWatcherTests",
            "SubprocessMultiLoopWatcherTests",
            "SubprocessSafeWatcherTests",
            "SubprocessFastWatcherTests",
            "SubprocessPidfdWatcherTests",
        ),
        internals={
            "GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher": (
                "asserts that the loop asks the policy's child watcher (is_active) before "
                "spawning; ferroloop reaps its own children with a pidfd and never asks the "
                "policy, as asyncio's own loop no longer does from 3.14"
            ),
        },
    ),
    Suite("test_ssl"),
    Suite("test_sslproto", selector_loop_sites=("SelectorStartTLSTests.new_loop",)),
)

LOOPS = ("ferroloop", "stdlib")
TEST_TIMEOUT = 60.0  # seconds one test may take before its worker is stopped
MAX_RESTARTS = 10  # workers started per module after hangs or crashes
HERE = Path(__file__).resolve().parent
KNOWN_FAILURES = HERE / "known_failures"
ID_PREFIX = "test.test_asyncio."
OUTCOMES = ("pass", "fail", "error", "skip")


def short_id(test_id: str) -> str:
    return test_id.removeprefix(ID_PREFIX)


# --------------------------------------------------------------------------------------------
# Running one module on one loop.
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    outcome: str  # one of OUTCOMES
    on_loop: bool  # the test constructed the loop under test
    detail: str = ""  # traceback, skip reason, or why the worker stopped


@dataclass
class ModuleRun:
    loop: str
    results: dict[str, Result] = field(default_factory=dict)
    deselected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # hangs, crashes, load errors
    skipped: str | None = None  # why the whole module skipped itself (unittest.SkipTest)

    def counts(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results.values())

    def on_loop(self) -> int:
        return sum(r.on_loop for r in self.results.values())


_WORKER_BOOT = (
    "import sys; sys.path.append(sys.argv.pop(1)); from conformance.worker import main; sys.exit(main(sys.argv[1:]))"
)


def run_module(suite: Suite, loop: str, match: str | None, test_timeout: float) -> ModuleRun:
    """Run one module on one loop, restarting the worker after a test that hangs or crashes."""
    run = ModuleRun(loop)
    started = time.monotonic()
    deadline = started + suite.timeout
    skip_ids: set[str] = set()
    workdir = Path(tempfile.mkdtemp(prefix=f"conformance-{suite.module}-{loop}-"))
    try:
        for attempt in range(MAX_RESTARTS + 1):
            out = workdir / f"results-{attempt}.jsonl"
            log = workdir / f"log-{attempt}.txt"
            exclude = workdir / f"exclude-{attempt}.txt"
            exclude.write_text("".join(f"{i}\n" for i in sorted(skip_ids)))
            cmd = [
                sys.executable,
                "-c",
                _WORKER_BOOT,
                str(HERE.parent),
                "--module",
                suite.module,
                "--loop",
                loop,
                "--out",
                str(out),
                "--exclude",
                str(exclude),
                "--test-timeout",
                str(test_timeout),
            ]
            if match:
                cmd += ["--match", match]
            returncode = _run_worker(cmd, workdir, log, deadline - time.monotonic())
            plan, finished, pending, done = _read_records(out, run)
            for test_id in plan:  # until a record says otherwise (the budget may run out)
                run.results.setdefault(test_id, Result("error", False, "never ran"))
            if done:
                if returncode not in (0, None):
                    run.problems.append(f"worker exited with {returncode} after its last test\n{_tail(log)}")
                break
            why = "timed out (module budget spent)" if returncode is None else f"worker exited with {returncode}"
            if pending is None:
                run.problems.append(f"{why} outside any test\n{_tail(log)}")
                break
            run.results[pending] = Result("error", False, f"{why} during this test\n{_tail(log)}")
            if returncode is None:
                break
            skip_ids.update(finished)  # carry on after the test that stopped the worker
            skip_ids.add(pending)
        else:
            run.problems.append(f"gave up after {MAX_RESTARTS} restarts")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.seconds = time.monotonic() - started
    return run


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_worker(cmd: list[str], cwd: Path, log: Path, budget: float) -> int | None:
    """Run a worker; its output goes to `log`. Returns its exit code, None if it ran out of time."""
    with open(log, "wb") as log_file:
        # SIGINT at its default in the worker, as from a terminal: the suites' Ctrl-C tests
        # need the interpreter's KeyboardInterrupt handler, which Python does not install
        # when it starts with SIGINT ignored (as a shell starts background jobs).
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        try:
            return proc.wait(timeout=max(budget, 1.0))
        except subprocess.TimeoutExpired:
            # The worker leads its own session: stop it and whatever it started.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def _read_records(path: Path, run: ModuleRun) -> tuple[list[str], set[str], str | None, bool]:
    """Fold a worker's JSON lines into `run`. Returns the planned ids, the finished ids, the test
    that started and never finished (if any), and whether the worker reached its end."""
    plan: list[str] = []
    finished: set[str] = set()
    pending: str | None = None
    done = False
    if not path.exists():
        return plan, finished, pending, done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if "plan" in record:
            plan = record["plan"]
            run.deselected.update(record["deselected"])
            run.skipped = record.get("module_skipped")
        elif "start" in record:
            pending = record["start"]
        elif "outcome" in record:
            run.results[record["id"]] = Result(record["outcome"], record["on_loop"], record["detail"])
            finished.add(record["id"])
            if record["id"] == pending:
                pending = None
        elif "done" in record:
            done = True
    return plan, finished, pending, done


def _tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Comparing.
# --------------------------------------------------------------------------------------------


def read_known_failures(path: Path = KNOWN_FAILURES) -> dict[str, str]:
    """`test id  # reason` per line; blank lines and lines starting with # are ignored."""
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for line in path.read_text().splitlines():
        entry, _, reason = line.partition("#")
        if entry.strip():
            known[entry.strip()] = reason.strip()
    return known


@dataclass
class Comparison:
    regressions: list[tuple[str, Result]] = field(default_factory=list)
    known: list[tuple[str, Result, str]] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)
    skipped_only_here: list[tuple[str, Result]] = field(default_factory=list)
    passes_only_here: list[str] = field(default_factory=list)
    fail_on_both: list[str] = field(default_factory=list)
    # on-loop in the stdlib run but built no ferroloop loop: the test picks asyncio's loop itself
    off_loop_here: list[str] = field(default_factory=list)


def compare(module: str, ferro: ModuleRun, stdlib: ModuleRun | None, known: dict[str, str]) -> Comparison:
    """Without a stdlib run, any ferroloop failure counts as a regression. A worker problem
    (say, a crash at exit) that only the ferroloop run had counts as one too."""
    cmp = Comparison()
    base_problems = {p.splitlines()[0] for p in stdlib.problems} if stdlib is not None else set()
    for problem in ferro.problems:
        if problem.splitlines()[0] not in base_problems:
            cmp.regressions.append((f"{module} (worker)", Result("error", False, problem)))
    for test_id, result in sorted(ferro.results.items()):
        base = stdlib.results.get(test_id) if stdlib is not None else None
        base_passes = base is None or base.outcome == "pass"
        if base is not None and base.on_loop and not result.on_loop:
            cmp.off_loop_here.append(test_id)
        if result.outcome == "pass":
            if test_id in known:
                cmp.stale.append((test_id, known[test_id]))
            if base is not None and base.outcome in ("fail", "error"):
                cmp.passes_only_here.append(test_id)
        elif result.outcome == "skip":
            if base is not None and base.outcome == "pass":
                cmp.skipped_only_here.append((test_id, result))
        elif not base_passes:
            cmp.fail_on_both.append(test_id)
        elif test_id in known:
            cmp.known.append((test_id, result, known[test_id]))
        else:
            cmp.regressions.append((test_id, result))
    if stdlib is not None:
        for test_id, base in sorted(stdlib.results.items()):
            if test_id not in ferro.results and base.outcome == "pass":
                missing = Result("error", False, "did not run on ferroloop")
                if test_id in known:
                    cmp.known.append((test_id, missing, known[test_id]))
                else:
                    cmp.regressions.append((test_id, missing))
    return cmp


# --------------------------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------------------------


def _row(module: str, run: ModuleRun) -> str:
    c = run.counts()
    return (
        f"{module:<20} {run.loop:<10}{len(run.results):>6}"
        + "".join(f"{c[o]:>6}" for o in OUTCOMES)
        + f"{run.on_loop():>8}{sum(run.deselected.values()):>11}{run.seconds:>7.1f}s"
    )


def _indent(text: str, lines: int | None) -> str:
    body = text.rstrip().splitlines()
    if lines is not None and len(body) > lines:
        body = ["..."] + body[-lines:]
    return "\n".join("      " + line for line in body)


def report(runs: dict[str, dict[str, ModuleRun]], comparisons: dict[str, Comparison], verbose: bool) -> None:
    print()
    print(
        f"{'module':<20} {'loop':<10}{'tests':>6}"
        + "".join(f"{o:>6}" for o in OUTCOMES)
        + f"{'on-loop':>8}{'deselected':>11}{'time':>8}"
    )
    for module, by_loop in runs.items():
        for i, loop in enumerate(LOOPS):
            if loop in by_loop:
                print(_row(module if i == 0 or "ferroloop" not in by_loop else "", by_loop[loop]))
    print()
    for module, by_loop in runs.items():
        for loop, run in by_loop.items():
            if run.skipped:
                print(f"SKIPPED {module} [{loop}]: {run.skipped}")
            for problem in run.problems:
                print(f"PROBLEM {module} [{loop}]: {problem}")
    sections: list[tuple[str, list[str]]] = [
        (
            "REGRESSIONS: pass on the standard loop, not on ferroloop",
            [
                f"  {i}: {r.outcome}\n{_indent(r.detail, None if verbose else 20)}"
                for c in comparisons.values()
                for i, r in c.regressions
            ],
        ),
        (
            "known failures (known_failures)",
            [f"  {i}: {r.outcome} -- {reason}" for c in comparisons.values() for i, r, reason in c.known],
        ),
        (
            "WARNING stale known_failures entries: these now pass on ferroloop",
            [f"  {i}  # {reason}" for c in comparisons.values() for i, reason in c.stale],
        ),
        (
            "skipped on ferroloop, pass on the standard loop",
            [f"  {i}: {r.detail}" for c in comparisons.values() for i, r in c.skipped_only_here],
        ),
        (
            "pass on ferroloop, fail on the standard loop",
            [f"  {i}" for c in comparisons.values() for i in c.passes_only_here],
        ),
        (
            "fail on both loops (not counted against ferroloop)",
            [f"  {i}" for c in comparisons.values() for i in c.fail_on_both],
        ),
        (
            "built asyncio's own loop in the ferroloop run (the test names the loop class)",
            [f"  {i}" for c in comparisons.values() for i in c.off_loop_here],
        ),
    ]
    for title, lines in sections:
        if lines:
            print(f"{title} ({len(lines)}):")
            print("\n".join(lines))
            print()


def summary_line(runs: dict[str, dict[str, ModuleRun]], comparisons: dict[str, Comparison]) -> str:
    totals = {loop: Counter[str]() for loop in LOOPS}
    for by_loop in runs.values():
        for loop, run in by_loop.items():
            totals[loop].update(run.counts())
    regressions = sum(len(c.regressions) for c in comparisons.values())
    known = sum(len(c.known) for c in comparisons.values())
    stale = sum(len(c.stale) for c in comparisons.values())
    parts = [f"{loop} " + " ".join(f"{t[o]} {o}" for o in OUTCOMES) for loop, t in totals.items() if t]
    verdict = "OK" if regressions == 0 else f"FAILED ({regressions} regressions)"
    return (
        f"conformance {verdict}: {len(runs)} modules; " + "; ".join(parts) + f"; {known} known failures, {stale} stale"
    )


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help="modules to run (default: all in SUITES)")
    parser.add_argument("-k", dest="match", help="only test ids matching this regex")
    parser.add_argument("--loop", choices=("both", *LOOPS), default="both")
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT)
    parser.add_argument("-v", "--verbose", action="store_true", help="full tracebacks")
    args = parser.parse_args(argv)

    by_name = {s.module: s for s in SUITES}
    unknown = [m for m in args.modules if m not in by_name]
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {sorted(by_name)}")
    suites = [by_name[m] for m in args.modules] if args.modules else list(SUITES)
    if args.match:
        re.compile(args.match)
    loops = LOOPS if args.loop == "both" else (args.loop,)

    # The suites come with the interpreter (some distributions package `test` separately).
    probe = subprocess.run(
        [sys.executable, "-c", "import test.test_asyncio, ferroloop, sys; print(ferroloop.__file__, sys.version)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        print(probe.stderr, file=sys.stderr)
        print("conformance FAILED: cannot import ferroloop or test.test_asyncio", file=sys.stderr)
        return 1
    print(f"conformance: ferroloop {probe.stdout.strip()}", flush=True)

    known = read_known_failures()
    runs: dict[str, dict[str, ModuleRun]] = {}
    comparisons: dict[str, Comparison] = {}
    for suite in suites:
        by_loop = runs.setdefault(suite.module, {})
        for loop in loops:
            print(f"  {suite.module} [{loop}] ...", end=" ", flush=True)
            run = by_loop[loop] = run_module(suite, loop, args.match, args.test_timeout)
            c = run.counts()
            print(", ".join(f"{c[o]} {o}" for o in OUTCOMES) + f" ({run.seconds:.1f}s)", flush=True)
        if "ferroloop" in by_loop:
            comparisons[suite.module] = compare(suite.module, by_loop["ferroloop"], by_loop.get("stdlib"), known)

    report(runs, comparisons, args.verbose)
    print(summary_line(runs, comparisons))
    failed = any(c.regressions for c in comparisons.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
