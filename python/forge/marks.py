"""@forge.query and @forge.mutation: marks on the functions a job runs through ctx.query and ctx.mutate.

A mark changes nothing about the function (it is returned as it is, callable
anywhere); it only says what the function is for, so that the context refuses
it where it does not belong: ctx.query refuses a @forge.mutation (it would
fail on its first write, inside a read-only transaction), and ctx.mutate
refuses a @forge.query (whoever marked it read-only did not mean it to write,
nor to commit anything). Plain, unmarked functions are taken by both.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, TypeVar

from .errors import ForgeError

F = TypeVar("F", bound=Callable[..., Any])

Kind = Literal["query", "mutation"]

_ATTRIBUTE = "__forge_kind__"


def query(fn: F) -> F:
    """Mark `fn(db, arg)` as a read-only query: ctx.query runs it, ctx.mutate refuses it."""
    return _mark(fn, "query")


def mutation(fn: F) -> F:
    """Mark `fn(db, arg)` as a mutation: ctx.mutate runs it, ctx.query refuses it."""
    return _mark(fn, "mutation")


def check(fn: Callable[..., Any], runner: Kind) -> None:
    """Refuse `fn` for ctx.query (runner "query") or ctx.mutate ("mutation") if it is marked as the other kind."""
    kind = getattr(fn, _ATTRIBUTE, None)
    if kind is not None and kind != runner:
        method = "query" if runner == "query" else "mutate"
        raise ForgeError(
            f"ctx.{method}({_name(fn)}, ...): {_name(fn)} is marked @forge.{kind}; "
            f"run it with ctx.{'query' if kind == 'query' else 'mutate'}"
        )


def _mark(fn: F, kind: Kind) -> F:
    if not callable(fn):
        raise ForgeError(f"@forge.{kind} marks a function, not {fn!r}")
    setattr(fn, _ATTRIBUTE, kind)
    return fn


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
