"""The standard library functions `ferroloop.Loop` borrows call back into methods that ferroloop
defines itself (`_make_socket_transport`, `_add_reader`, `create_task`, ...). CPython changes
those calls between releases (3.15 added `context=` to the transport factories and to
`create_task`), so every call the running interpreter's borrowed code makes must fit the
signature ferroloop gives the method it calls."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import ferroloop
from ferroloop import _stdlib

BORROWED = {name for names in _stdlib.BORROWED_LOOP_METHODS.values() for name in names}


def _borrowed_functions() -> Iterator[tuple[str, Any]]:
    for (module, class_name), names in _stdlib.BORROWED_LOOP_METHODS.items():
        cls = _stdlib.resolve(module, class_name)
        for name in names:
            method = _stdlib.borrowed_method(cls, name)
            if method is not None:
                yield f"{class_name}.{name}", method


def _calls_into_ferroloop() -> Iterator[tuple[str, str, int, tuple[str, ...], bool]]:
    """(where, method, positional count, keyword names, has **kwargs) for each `self.m(...)`
    in borrowed code where `m` is ferroloop's own method."""
    for where, function in _borrowed_functions():
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
            ):
                continue
            method = node.func.attr
            if method in BORROWED or not hasattr(ferroloop.Loop, method):
                continue
            starred = any(isinstance(a, ast.Starred) for a in node.args)
            keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
            if starred:
                continue  # *args: any count fits a method that takes *args; checked below
            yield where, method, len(node.args), keywords, any(k.arg is None for k in node.keywords)


CALLS = sorted(set(_calls_into_ferroloop()))


def test_borrowed_code_calls_into_ferroloop() -> None:
    # The walk finds the calls it is meant to check (a walk that found none would pass anything).
    methods = {method for _, method, *_ in CALLS}
    assert {"_make_socket_transport", "_make_ssl_transport", "_add_reader", "create_task"} <= methods


@pytest.mark.parametrize(
    ("where", "method", "npos", "keywords", "has_kwargs"),
    CALLS,
    ids=[f"{c[0]}->{c[1]}/{c[2]}{''.join(',' + k for k in c[3])}" for c in CALLS],
)
def test_each_call_fits_ferroloops_signature(
    where: str, method: str, npos: int, keywords: tuple[str, ...], has_kwargs: bool
) -> None:
    signature = inspect.signature(getattr(ferroloop.Loop, method))
    # Bound as the unbound function: `self` is the first positional argument.
    signature.bind(*([None] * (npos + 1)), **dict.fromkeys(keywords))
