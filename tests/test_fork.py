"""os.fork() in a program that has a ferroloop loop: the child shares the parent's epoll
instance and eventfd, so the inherited loop refuses to run there and never changes the
parent's registrations; the child runs a loop of its own instead."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(30)


def in_child(action: Any) -> Any:
    """Fork, run `action()` in the child, return what it returned (JSON) to the parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            payload = json.dumps(action()).encode()
            os.write(w, payload)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps({"child failed": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, chunks
    return json.loads(b"".join(chunks))


def outcome(call: Any) -> list[str]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        return [type(exc).__name__, str(exc)]
    return ["ok", ""]


def test_the_inherited_loop_refuses_to_run_and_leaves_the_parents_watchers_alone(
    loop: ferroloop.Loop,
) -> None:
    r, w = os.pipe()
    fired: list[bytes] = []
    loop.add_reader(r, lambda: fired.append(os.read(r, 100)))
    loop.run_until_complete(asyncio.sleep(0))

    def child() -> dict[str, Any]:
        report = {
            "run": outcome(lambda: loop.run_until_complete(asyncio.sleep(0))),
            "add_reader": outcome(lambda: loop.add_reader(w, print)),
            "remove_reader": outcome(lambda: loop.remove_reader(r)),
            "close": outcome(loop.close),
        }
        fresh = ferroloop.new_event_loop()
        try:
            report["fresh loop"] = fresh.run_until_complete(asyncio.sleep(0, "runs"))
        finally:
            fresh.close()
        return report

    report = in_child(child)
    assert report["run"][0] == "RuntimeError" and "fork" in report["run"][1]
    assert report["add_reader"][0] == "RuntimeError"
    assert report["remove_reader"] == ["ok", ""]
    assert report["close"] == ["ok", ""]
    assert report["fresh loop"] == "runs"
    # The parent's registration survived the child's remove_reader and close.
    os.write(w, b"ping")

    async def wait_for_reader() -> None:
        for _ in range(200):
            if fired:
                return
            await asyncio.sleep(0.01)

    loop.run_until_complete(wait_for_reader())
    assert fired == [b"ping"]
    loop.remove_reader(r)
    os.close(r)
    os.close(w)


def test_a_child_can_run_a_new_loop_while_the_parent_has_one_running(loop: ferroloop.Loop) -> None:
    async def fork_from_a_callback() -> Any:
        return in_child(lambda: ferroloop.run(asyncio.sleep(0.01, "child ran")))

    assert loop.run_until_complete(fork_from_a_callback()) == "child ran"
    assert loop.run_until_complete(asyncio.sleep(0, "parent ran")) == "parent ran"
