"""One conformance worker: runs one module of CPython's `test.test_asyncio` on one loop, in this
process, and streams one JSON line per test to the file it is given.

Started by `conformance.run` (see its docstring for which tests run and which loop each gets);
not meant to be run by hand. Records, in order:

    {"plan": [ids], "deselected": {feature: count}, "module_skipped": reason-or-null}
    {"start": id}  then  {"id": id, "outcome": ..., "on_loop": bool, "seconds": s, "detail": text}
    {"done": true}

A test that outlives `--test-timeout` makes faulthandler dump every thread's stack to the log and
end the process; the runner sees the unfinished "start" and restarts after that test.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import importlib
import json
import re
import time
import traceback
import unittest
from asyncio import selector_events, unix_events
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType, TracebackType
from typing import Any, TextIO

from .run import DEFERRED_FEATURES, SUITES, Suite, short_id

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

SHUTDOWN_TIMEOUT = 30.0  # seconds the interpreter may take to exit after the last test


class LoopCounter:
    """Counts constructions of the loop class under test, so each test reports whether it ran on
    that loop or only on loops of its own making (TestLoop, mocks)."""

    def __init__(self, loop_class: type) -> None:
        self.count = 0
        original_init: Callable[..., None] = loop_class.__init__

        def counting_init(loop: Any, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            original_init(loop, *args, **kwargs)

        loop_class.__init__ = counting_init  # type: ignore[misc]


def prepare_loop(kind: str) -> tuple[LoopFactory, LoopCounter]:
    """Return the factory for the loop under test and a counter of its constructions."""
    if kind == "ferroloop":
        import ferroloop

        # Make ferroloop the interpreter's default, not only the current policy: suites reset the
        # policy (set_event_loop_policy(None)) or build `asyncio.DefaultEventLoopPolicy()`.
        # asyncio builds a fresh default from `unix_events._DefaultEventLoopPolicy`, which
        # 3.14's deprecated `asyncio.DefaultEventLoopPolicy` (a module __getattr__ that warns)
        # and test_asyncio's `utils.DefaultEventLoopPolicy` also name; before 3.14 the public
        # name is a plain attribute of its own.
        policy = ferroloop._EventLoopPolicy
        unix_events._DefaultEventLoopPolicy = policy  # type: ignore[attr-defined]
        for name in ("DefaultEventLoopPolicy", "_DefaultEventLoopPolicy"):
            if name in vars(asyncio):
                setattr(asyncio, name, policy)
        # 3.13+: `asyncio.EventLoop`, the interpreter's default loop class, which suites use as
        # a loop factory (test_taskgroups' classes at import, test_tasks' asyncio.run calls).
        for module in (asyncio, unix_events):
            if hasattr(module, "EventLoop"):
                module.EventLoop = ferroloop.Loop
        ferroloop._install()
        return ferroloop.new_event_loop, LoopCounter(ferroloop.Loop)
    # The interpreter's own default loop on Unix, with its default (epoll) selector.
    return asyncio.SelectorEventLoop, LoopCounter(selector_events.BaseSelectorEventLoop)


# -- hooks where a suite builds a stdlib loop only because it needs a loop ------------------


def _runners_new_loop(module: ModuleType, new_loop: LoopFactory) -> None:
    # test_runners' BaseTest.new_loop builds a BaseEventLoop with a mocked selector, and replaces
    # shutdown_asyncgens with a coroutine that records it ran (tearDown checks the flag). Same
    # record here, on a real loop whose real shutdown_asyncgens still runs.
    def new_runner_loop(self: unittest.TestCase) -> asyncio.AbstractEventLoop:
        loop = new_loop()
        real_shutdown_asyncgens = loop.shutdown_asyncgens
        loop.shutdown_ag_run = False  # type: ignore[attr-defined]

        async def shutdown_asyncgens() -> None:
            loop.shutdown_ag_run = True  # type: ignore[attr-defined]
            await real_shutdown_asyncgens()

        loop.shutdown_asyncgens = shutdown_asyncgens  # type: ignore[method-assign]
        return loop

    module.BaseTest.new_loop = new_runner_loop


def _pep492_setup(module: ModuleType, new_loop: LoopFactory) -> None:
    # test_pep492's BaseTest.setUp builds a BaseEventLoop with a mocked selector as self.loop.
    base = module.BaseTest

    def setUp(self: Any) -> None:
        super(base, self).setUp()
        self.loop = new_loop()
        self.set_event_loop(self.loop)

    base.setUp = setUp


LOOP_HOOKS: dict[str, Callable[[ModuleType, LoopFactory], None]] = {
    "test_runners.BaseTest.new_loop": _runners_new_loop,
    "test_pep492.BaseTest.setUp": _pep492_setup,
}


def patch_selector_loop_site(cls: type, method_name: str, new_loop: LoopFactory) -> None:
    """Make `asyncio.SelectorEventLoop` name `new_loop` while `cls.method_name` runs, so the
    loop that method builds with `asyncio.SelectorEventLoop()` is the loop under test."""
    original: Callable[..., Any] = vars(cls)[method_name]  # KeyError: the suite changed

    @functools.wraps(original)
    def with_loop_under_test(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = asyncio.SelectorEventLoop
        asyncio.SelectorEventLoop = new_loop  # type: ignore[assignment]
        try:
            return original(self, *args, **kwargs)
        finally:
            asyncio.SelectorEventLoop = saved

    setattr(cls, method_name, with_loop_under_test)


# -- selecting tests ------------------------------------------------------------------------


def _generated_class(module: ModuleType, name: str, mixin: str, new_loop: LoopFactory) -> type:
    from test.test_asyncio import utils as test_utils  # type: ignore[import-not-found]

    def create_event_loop(self: unittest.TestCase) -> asyncio.AbstractEventLoop:
        return new_loop()

    namespace: dict[str, Any] = {
        "create_event_loop": create_event_loop,
        "__module__": module.__name__,
        "__qualname__": name,
    }
    mixin_class = getattr(module, mixin)
    if not hasattr(mixin_class, "setUp"):
        # A mixin written to sit next to the one that builds `self.loop` (test_events'
        # SubprocessTestsMixin next to EventLoopTestsMixin, test_subprocess's SubprocessMixin
        # next to SubprocessWatcherMixin): build it the way EventLoopTestsMixin does.
        namespace["setUp"] = _set_up_loop
        namespace["tearDown"] = _tear_down_loop
    return type(name, (mixin_class, test_utils.TestCase), namespace)


def _set_up_loop(self: Any) -> None:
    super(type(self), self).setUp()
    self.loop = self.create_event_loop()
    self.set_event_loop(self.loop)


def _tear_down_loop(self: Any) -> None:
    from test import support  # type: ignore[import-not-found]
    from test.test_asyncio import utils as test_utils

    if not self.loop.is_closed():  # run the callbacks that closing transports scheduled
        test_utils.run_briefly(self.loop)
    self.doCleanups()
    support.gc_collect()
    super(type(self), self).tearDown()


def _flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def select_tests(
    suite: Suite, module: ModuleType, new_loop: LoopFactory, exclude: set[str], match: re.Pattern[str] | None
) -> tuple[list[unittest.TestCase], Counter[str]]:
    loader = unittest.TestLoader()
    candidates = [t for t in _flatten(loader.loadTestsFromModule(module)) if type(t).__name__ not in suite.superseded]
    for name, mixin in suite.mixins.items():
        cls = _generated_class(module, name, mixin, new_loop)
        candidates.extend(_flatten(loader.loadTestsFromTestCase(cls)))
    deferred = {f: re.compile(rx) for f, rx in DEFERRED_FEATURES.items() if f in suite.deferred}
    selected: list[unittest.TestCase] = []
    deselected: Counter[str] = Counter()
    for test in candidates:
        test_id = short_id(test.id())
        local_name = test_id.split(".", 1)[1]  # "Class.test_method"
        feature = next((f for f, rx in deferred.items() if rx.search(local_name)), None)
        if local_name in suite.internals:
            feature = "stdlib-internals"
        if feature is not None:
            deselected[feature] += 1
        elif test_id not in exclude and (match is None or match.search(test_id)):
            selected.append(test)
    return selected, deselected


# -- recording results ----------------------------------------------------------------------

_SEVERITY = {"pass": 0, "skip": 1, "fail": 2, "error": 3}


class StreamingResult(unittest.TestResult):
    """Writes each test's outcome as soon as it is known, with a watchdog on each test."""

    def __init__(self, out: TextIO, counter: LoopCounter, test_timeout: float) -> None:
        super().__init__()
        self._out = out
        self._counter = counter
        self._test_timeout = test_timeout
        self._outcome = "pass"
        self._details: list[str] = []
        self._loops_before = 0
        self._started = 0.0

    def emit(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def _note(self, outcome: str, detail: str) -> None:
        if _SEVERITY[outcome] > _SEVERITY[self._outcome]:
            self._outcome = outcome
        self._details.append(detail)

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._outcome, self._details = "pass", []
        self._loops_before = self._counter.count
        self._started = time.monotonic()
        self.emit({"start": short_id(test.id())})
        faulthandler.dump_traceback_later(self._test_timeout, exit=True)

    def stopTest(self, test: unittest.TestCase) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.emit(
            {
                "id": short_id(test.id()),
                "outcome": self._outcome,
                "on_loop": self._counter.count > self._loops_before,
                "seconds": round(time.monotonic() - self._started, 3),
                "detail": "\n".join(self._details),
            }
        )
        super().stopTest(test)

    def addError(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        if not isinstance(test, unittest.TestCase):
            # A setUpModule/setUpClass/tearDown… fixture: it has no start/stop of its own.
            self.emit(
                {
                    "id": short_id(test.id()),
                    "outcome": "error",
                    "on_loop": False,
                    "seconds": 0.0,
                    "detail": _format(err),
                }
            )
            return
        self._note("error", _format(err))

    def addFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        self._note("fail", _format(err))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._note("skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        self._details.append("expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._note("fail", "unexpected success (the test is marked expectedFailure)")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: ExcInfo | None) -> None:  # type: ignore[override]
        if err is None:
            return
        kind = "fail" if issubclass(err[0], test.failureException) else "error"
        self._note(kind, f"[{subtest.id()}]\n{_format(err)}")


def _format(err: ExcInfo) -> str:
    return "".join(traceback.format_exception(err[1]))


# -- entry point ----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", required=True)
    parser.add_argument("--loop", choices=("ferroloop", "stdlib"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--exclude", help="file of test ids not to run (already run)")
    parser.add_argument("--match")
    parser.add_argument("--test-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    suite = next(s for s in SUITES if s.module == args.module)
    exclude: set[str] = set()
    if args.exclude:
        with open(args.exclude) as f:
            exclude = {line.strip() for line in f if line.strip()}
    match = re.compile(args.match) if args.match else None

    new_loop, counter = prepare_loop(args.loop)
    with open(args.out, "w") as out:
        result = StreamingResult(out, counter, args.test_timeout)
        try:
            module = importlib.import_module(f"test.test_asyncio.{suite.module}")
        except unittest.SkipTest as skip:
            result.emit({"plan": [], "deselected": {}, "module_skipped": str(skip)})
            result.emit({"done": True})
            return 0
        for hook in suite.loop_hooks:
            LOOP_HOOKS[f"{suite.module}.{hook}"](module, new_loop)
        for site in suite.selector_loop_sites:
            class_name, method_name = site.split(".")
            if hasattr(module, class_name):  # not every interpreter's suite has every class
                patch_selector_loop_site(getattr(module, class_name), method_name, new_loop)
        tests, deselected = select_tests(suite, module, new_loop, exclude, match)
        result.emit({"plan": [short_id(t.id()) for t in tests], "deselected": deselected, "module_skipped": None})
        unittest.TestSuite(tests).run(result)
        result.emit({"done": True})
    # Threads or loops a test left behind must not hold the process forever.
    faulthandler.dump_traceback_later(SHUTDOWN_TIMEOUT, exit=True)
    return 0
