"""Where a forge.toml goes wrong, in words: key paths turned into 'FILE:LINE', msgspec's validation errors
and TOML syntax errors rewritten into one ConfigError naming the key, the line and the offending value, with
a suggestion for a mistyped key. config.py parses and validates; this module only words its errors."""

from __future__ import annotations

import difflib
import re
import tomllib
from typing import Any, Literal

import msgspec

from .errors import ConfigError


def dotted(at: tuple[str | int, ...]) -> str:
    """('alerts', 0, 'name') -> 'alerts[0].name'."""
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _split_path(msgspec_path: str) -> tuple[str | int, ...]:
    """'$.alerts[0].name' -> ('alerts', 0, 'name')."""
    parts: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", msgspec_path):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _lookup(data: Any, at: tuple[str | int, ...]) -> Any:
    for part in at:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _struct_at(root: type[msgspec.Struct], at: tuple[str | int, ...]) -> type[msgspec.Struct] | None:
    """The Struct type that validates the table at `at` of a `root` file (list indexes skipped), or None."""
    struct = root
    for part in at:
        if isinstance(part, int):
            continue
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(struct)}
        kind: Any = fields.get(part)  # an annotation: a Struct, list[...], a scalar type...
        while getattr(kind, "__origin__", None) is list:
            kind = kind.__args__[0]
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            return None
        struct = kind
    return struct


def _suggest(root: type[msgspec.Struct], field: str, at: tuple[str | int, ...]) -> str:
    kind = _struct_at(root, at)
    if kind is None:
        return ""
    names = [f.encode_name for f in msgspec.structs.fields(kind)]
    close = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"


_MISSING_HINTS = {
    "app": '; add an [app] section with modules = ["myapp.jobs"]',
    "app.modules": '; list the modules defining your jobs, e.g. modules = ["myapp.jobs"]',
}


class Source:
    """The file's name and text, to turn key paths into 'at FILE:LINE'; `root` is the Struct of the whole file."""

    _TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
    _ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(?:#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")

    def __init__(self, name: str, text: str, root: type[msgspec.Struct]) -> None:
        self.name = name
        self.root = root
        self.lines = self._key_lines(text)

    @classmethod
    def _key_lines(cls, text: str) -> dict[tuple[str | int, ...], int]:
        """Map each table and key path to the line defining it (best effort; quoted keys ignored)."""
        lines: dict[tuple[str | int, ...], int] = {}
        counts: dict[tuple[str, ...], int] = {}
        table: tuple[str | int, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if match := cls._ARRAY_TABLE.match(line):
                name = tuple(p.strip() for p in match.group(1).split("."))
                counts[name] = counts.get(name, -1) + 1
                table = (*name, counts[name])
                lines.setdefault(name, number)
            elif match := cls._TABLE.match(line):
                table = tuple(p.strip() for p in match.group(1).split("."))
            elif match := cls._KEY.match(line):
                table_key = (*table, *(p.strip() for p in match.group(1).split(".")))
                lines.setdefault(table_key, number)
                continue
            else:
                continue
            lines.setdefault(table, number)
        return lines

    def line_of(self, at: tuple[str | int, ...]) -> int | None:
        """Line of `at`, or of its nearest enclosing key or table that has one."""
        for end in range(len(at), 0, -1):
            if (line := self.lines.get(at[:end])) is not None:
                return line
        return None

    def where(self, at: tuple[str | int, ...]) -> str:
        line = self.line_of(at)
        return f" at {self.name}:{line}" if line is not None else f" in {self.name}"

    def syntax_error(self, exc: tomllib.TOMLDecodeError) -> ConfigError:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match is None:
            return ConfigError(f"invalid TOML in {self.name}: {message}")
        detail = message[: match.start()]
        return ConfigError(f"invalid TOML at {self.name}:{match.group(1)} (column {match.group(2)}): {detail}")

    def validation_error(self, message: str, data: Any) -> ConfigError:
        """Rewrite a msgspec ValidationError ('Detail - at `$.a.b`') into a message naming the key."""
        detail, _, path = message.partition(" - at `")
        at = _split_path(path.rstrip("`"))
        if match := re.fullmatch(r"Object contains unknown field `(.+)`", detail):
            key = (*at, match.group(1))
            suggestion = _suggest(self.root, match.group(1), at)
            return ConfigError(f"unknown key {dotted(key)!r}{self.where(key)}{suggestion}")
        if match := re.fullmatch(r"Object missing required field `(.+)`", detail):
            key = (*at, match.group(1))
            hint = _MISSING_HINTS.get(dotted(key), "")
            return ConfigError(f"missing required key {dotted(key)!r}{self.where(at)}{hint}")
        named = dotted(at) or "(top level)"
        return ConfigError(f"invalid value for {named!r}{self.where(at)}: {_detail(self.root, detail, at, data)}")


def _detail(root: type[msgspec.Struct], detail: str, at: tuple[str | int, ...], data: Any) -> str:
    """msgspec's detail made to read as a sentence that shows the offending value."""
    value = _lookup(data, at)
    shown = repr(value) if len(repr(value)) <= 60 else type(value).__name__
    if detail.startswith("Invalid enum value") and (choices := _choices(root, at)):
        return f"expected one of {', '.join(map(repr, choices))}, got {shown}"
    detail = detail[:1].lower() + detail[1:]
    if ", got `" in detail:
        return f"{detail} {shown}"
    if ", got" not in detail and at:
        return f"{detail}, got {shown}"
    return detail


def _choices(root: type[msgspec.Struct], at: tuple[str | int, ...]) -> tuple[Any, ...]:
    """The allowed values of a Literal-typed key, else ()."""
    kind = _struct_at(root, at[:-1])
    if kind is None or not at or isinstance(at[-1], int):
        return ()
    fields = {f.encode_name: f.type for f in msgspec.structs.fields(kind)}
    field = fields.get(at[-1])
    return tuple(getattr(field, "__args__", ())) if getattr(field, "__origin__", None) is Literal else ()
