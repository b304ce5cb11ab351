"""Set-up and entry points: new_event_loop, Loop, EventLoopPolicy, install, run, asyncio.Runner,
asyncio.run(loop_factory=...), `python -m ferroloop script.py`, type stubs."""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ferroloop
from ferro_helpers import run_python


async def running_loop_type() -> type:
    return type(asyncio.get_running_loop())


# -- the public names -------------------------------------------------------------------------


def test_new_event_loop_returns_a_ferroloop_loop_that_is_an_abstract_event_loop() -> None:
    event_loop = ferroloop.new_event_loop()
    try:
        assert type(event_loop) is ferroloop.Loop
        assert isinstance(event_loop, asyncio.AbstractEventLoop)
        assert not event_loop.is_running()
        assert not event_loop.is_closed()
    finally:
        event_loop.close()


def test_each_new_event_loop_is_a_new_loop() -> None:
    first, second = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    try:
        assert first is not second
    finally:
        first.close()
        second.close()


def test_public_names_are_exported() -> None:
    for name in ("Loop", "new_event_loop", "install", "run", "Handle", "TimerHandle"):
        assert name in ferroloop.__all__
        assert hasattr(ferroloop, name)
    # Like asyncio.DefaultEventLoopPolicy: still there, but out of `import *` once deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert hasattr(ferroloop, "EventLoopPolicy")
    assert ("EventLoopPolicy" in ferroloop.__all__) == (sys.version_info < (3, 14))


# -- ferroloop.run ----------------------------------------------------------------------------


def test_run_returns_the_coroutine_result_on_a_ferroloop_loop() -> None:
    async def main() -> tuple[type, int]:
        await asyncio.sleep(0.001)
        return await running_loop_type(), 42

    assert ferroloop.run(main()) == (ferroloop.Loop, 42)


def test_run_raises_the_coroutine_exception() -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        ferroloop.run(main())


def test_run_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())

    ferroloop.run(main())
    assert loops[0].is_closed()


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug_argument_sets_debug_mode(debug: bool) -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=debug) is debug


def test_run_refuses_a_non_coroutine_like_asyncio_run() -> None:
    # asyncio.run's own refusal is the oracle: ValueError before 3.14, TypeError (it takes any
    # awaitable) from 3.14 on.
    with pytest.raises(Exception) as expected:
        asyncio.run(1)  # type: ignore[arg-type]
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        ferroloop.run(1)  # type: ignore[arg-type]


def test_run_inside_a_running_loop_raises_runtime_error(loop: ferroloop.Loop) -> None:
    async def inner() -> None:
        pass

    async def main() -> None:
        coro = inner()
        try:
            ferroloop.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        loop.run_until_complete(main())


def test_run_cancels_leftover_tasks_and_finalizes_async_generators() -> None:
    events: list[str] = []
    suspended_generators: list[object] = []  # alive past main(), so only the runner closes them

    async def agen() -> object:
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("task cancelled")
            raise

    async def main() -> None:
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        gen = agen()
        await gen.__anext__()
        suspended_generators.append(gen)

    ferroloop.run(main())
    assert sorted(events) == ["agen closed", "task cancelled"]


# -- asyncio.Runner and asyncio.run(loop_factory=...) -----------------------------------------


def test_asyncio_runner_with_ferroloop_factory_reuses_one_loop() -> None:
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner_loop = runner.get_loop()
        assert type(runner_loop) is ferroloop.Loop
        assert runner.run(running_loop_type()) is ferroloop.Loop
        assert runner.run(asyncio.sleep(0, "again")) == "again"
        assert runner.get_loop() is runner_loop
    assert runner_loop.is_closed()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_loop_factory() -> None:
    result = asyncio.run(  # type: ignore[call-arg]
        running_loop_type(), loop_factory=ferroloop.new_event_loop
    )
    assert result is ferroloop.Loop


# -- EventLoopPolicy and install() ------------------------------------------------------------


@pytest.fixture
def restore_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # policies are deprecated on 3.14
        saved = asyncio.get_event_loop_policy()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(saved)


def _warns_deprecated(action: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def test_the_policy_api_warns_where_asyncios_does(restore_policy: None) -> None:
    # asyncio's policy functions are deprecated from 3.14 on; ferroloop's follow the running
    # interpreter's asyncio, not a version number.
    asyncio_deprecates = bool(_warns_deprecated(lambda: asyncio.set_event_loop_policy(None)))
    assert asyncio_deprecates == (sys.version_info >= (3, 14))
    install_warnings = _warns_deprecated(ferroloop.install)
    policy_warnings = _warns_deprecated(lambda: ferroloop.EventLoopPolicy)
    if asyncio_deprecates:
        assert len(install_warnings) == 1 and "'ferroloop.install' is deprecated" in install_warnings[0]
        assert "ferroloop.run(main())" in install_warnings[0]  # says what to use instead
        assert len(policy_warnings) == 1
        assert "'ferroloop.EventLoopPolicy' is deprecated" in policy_warnings[0]
    else:
        assert install_warnings == [] and policy_warnings == []
    # The policy-free ways never warn.
    assert _warns_deprecated(lambda: ferroloop.run(running_loop_type())) == []
    assert _warns_deprecated(ferroloop.new_event_loop().close) == []


def test_event_loop_policy_makes_ferroloop_loops(restore_policy: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.14+
        policy = ferroloop.EventLoopPolicy()
        assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    event_loop = policy.new_event_loop()
    try:
        assert type(event_loop) is ferroloop.Loop
        policy.set_event_loop(event_loop)
        assert policy.get_event_loop() is event_loop
    finally:
        policy.set_event_loop(None)
        event_loop.close()


def test_install_makes_asyncio_hand_out_ferroloop_loops(restore_policy: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.14+
        ferroloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    event_loop = asyncio.new_event_loop()
    try:
        assert type(event_loop) is ferroloop.Loop
    finally:
        event_loop.close()
    assert asyncio.run(running_loop_type()) is ferroloop.Loop


# -- python -m ferroloop ----------------------------------------------------------------------

SCRIPT = """
import asyncio, sys

async def main():
    await asyncio.sleep(0)
    print("name", __name__)
    print("argv", sys.argv)
    loop_type = type(asyncio.get_running_loop())
    print("loop", loop_type.__module__, loop_type.__name__)
    import sibling
    print("sibling", sibling.VALUE)
    return int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0

if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "sibling.py").write_text("VALUE = 'found next to the script'\n")
    return path


def test_dash_m_ferroloop_runs_script_as_main_with_its_argv_on_ferroloop(script: Path) -> None:
    proc = run_python("-m", "ferroloop", str(script), "--flag", "value", "0", cwd="/")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "name __main__"
    assert lines[1] == f"argv {[str(script), '--flag', 'value', '0']!r}"
    assert lines[2] == "loop ferroloop._loop Loop"
    assert lines[3] == "sibling found next to the script"


@pytest.mark.parametrize("status", [0, 3, 7])
def test_dash_m_ferroloop_keeps_the_exit_status(script: Path, status: int) -> None:
    proc = run_python("-m", "ferroloop", str(script), str(status))
    assert proc.returncode == status, proc.stderr


def test_dash_m_ferroloop_uncaught_exception_exits_1_with_traceback(tmp_path: Path) -> None:
    path = tmp_path / "fails.py"
    path.write_text("import asyncio\nasync def main():\n    raise KeyError('lost')\nasyncio.run(main())\n")
    proc = run_python("-m", "ferroloop", str(path))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "KeyError: 'lost'" in proc.stderr


def test_dash_m_ferroloop_exit_with_message_prints_it_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "message.py"
    path.write_text("import sys\nsys.exit('fatal: no input')\n")
    proc = run_python("-m", "ferroloop", str(path))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "fatal: no input"


def test_dash_m_ferroloop_without_arguments_prints_usage_and_exits_2() -> None:
    proc = run_python("-m", "ferroloop")
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_dash_m_ferroloop_help_exits_0() -> None:
    proc = run_python("-m", "ferroloop", "--help")
    assert proc.returncode == 0
    assert "usage" in proc.stdout.lower()


def test_dash_m_ferroloop_dash_m_module(tmp_path: Path) -> None:
    (tmp_path / "appmod.py").write_text(
        "import asyncio, sys\n"
        "async def main():\n"
        "    print(__name__, sys.argv[1:], type(asyncio.get_running_loop()).__name__)\n"
        "asyncio.run(main())\n"
    )
    proc = run_python("-m", "ferroloop", "-m", "appmod", "x", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "__main__ ['x'] Loop"


# -- packaging --------------------------------------------------------------------------------


def test_package_ships_py_typed_and_type_stubs() -> None:
    package_dir = Path(ferroloop.__file__).parent
    assert (package_dir / "py.typed").is_file()
    stubs = {p.name for p in package_dir.glob("*.pyi")}
    assert "_core.pyi" in stubs, f"no stub for the compiled module, found {sorted(stubs)}"
