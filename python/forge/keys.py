"""Idempotency keys: what @forge.job(idempotent=...) becomes (a function from a job's input to its key), and
the check every key passes before it is stored (dispatch's idempotency_key= too).

A dotted path ("input.payment_id") is checked against the input type where it can be: a msgspec Struct, a
dataclass or a TypedDict names its fields, so a path through one to a field it lacks is refused at definition.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .errors import DispatchError, JobDefinitionError

__all__ = ["check_key", "key_function"]

#: Longest key stored, in bytes: it is a unique index's entry (a btree entry takes at most about 2,700 bytes).
MAX_KEY_BYTES = 1024


def key_function(option: str | Callable[[Any], Any] | None, input_type: Any) -> Callable[[Any], Any] | None:
    """The key of an input, as `option` says: a dotted path from "input", a function of the input, or None."""
    if option is None or (callable(option) and not isinstance(option, str)):
        return option
    if not isinstance(option, str):
        raise JobDefinitionError(f"idempotent={option!r}: must be a dotted path such as 'input.payment_id', "
                                 "or a function of the input")
    head, *names = option.split(".")
    if head != "input" or not names or not all(name.isidentifier() for name in names):
        raise JobDefinitionError(f"idempotent={option!r}: must be a dotted path into the input, "
                                 "such as 'input.payment_id'")
    _check_path(option, names, input_type)
    return lambda value: _follow(value, names, option)


def check_key(key: object, where: str) -> str:
    """`key` as stored: a non-empty string (or an int, written in decimal) that PostgreSQL's text holds."""
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    if not isinstance(key, str) or not key:
        raise DispatchError(f"{where}: the idempotency key must be a non-empty string or an int, got {key!r}")
    if "\x00" in key:
        raise DispatchError(f"{where}: the idempotency key {key!r} holds a NUL character")
    try:
        size = len(key.encode())
    except UnicodeEncodeError as exc:
        raise DispatchError(f"{where}: the idempotency key {key!r} is not valid UTF-8 ({exc.reason})") from None
    if size > MAX_KEY_BYTES:
        raise DispatchError(f"{where}: the idempotency key is {size} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def _check_path(option: str, names: list[str], input_type: Any) -> None:
    """Refuse a path naming a field its type lacks, as far as the types say (Any, a dict...: not checkable)."""
    current = input_type
    for depth, name in enumerate(names):
        fields = _fields(current)
        if fields is None:
            return
        if name not in fields:
            where = ".".join(["input", *names[:depth]])
            raise JobDefinitionError(f"idempotent={option!r}: {where} ({_type_name(current)}) has no field "
                                     f"{name!r}; its fields are {', '.join(fields) or 'none'}")
        current = fields[name]


def _fields(tp: Any) -> dict[str, Any] | None:
    """The fields of a Struct, dataclass or TypedDict type and their types; None for any other type."""
    if not isinstance(tp, type):
        return None
    if issubclass(tp, msgspec.Struct):
        return {field.name: field.type for field in msgspec.structs.fields(tp)}
    if not (dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)):
        return None
    try:
        hints = typing.get_type_hints(tp)
    except Exception:  # an unresolvable annotation: the names are still known, their types are not
        hints = {}
    names = [field.name for field in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else list(
        tp.__annotations__)
    return {name: hints.get(name, Any) for name in names}


def _follow(value: Any, names: list[str], option: str) -> Any:
    for name in names:
        try:
            value = value[name] if isinstance(value, Mapping) else getattr(value, name)
        except (KeyError, AttributeError, TypeError):
            raise DispatchError(f"idempotent={option!r}: the input has no {name!r}") from None
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)
