"""Log set-up shared by the supervisor, the zygote and the workers: one line per record on stderr, as text or as
one JSON object (`[log] format`, for journald or Loki).

Only the supervisor calls configure; the zygote, forked from it, and the workers, forked from the zygote,
inherit its handler and formatter, so the format reaches every process (a worker only sets its level from
WorkerSettings). No record makes a formatter raise: a field that cannot be encoded is written as its repr.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import msgspec

__all__ = ["configure", "safe_repr"]

#: The keys every JSON line has; a ctx.log field of the same name is written as "field.<name>".
JSON_KEYS = ("time", "level", "logger", "pid", "message")


class _Formatter(logging.Formatter):
    """Appends the structured fields of job logs (ctx.log) as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "forge_fields", None)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_value(v)}" for k, v in fields.items())
        return f"{line} {pairs}"


def _value(value: object) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    try:
        return msgspec.json.encode(value).decode()
    except Exception:  # TypeError for a type JSON has not, OverflowError for a huge int, ...
        return safe_repr(value)


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, pid, message, the traceback if any
    (`exception`), and the structured fields of job logs (ctx.log) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": _message(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        fields = getattr(record, "forge_fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                name = str(key)
                entry[f"field.{name}" if name in entry else name] = value
        try:
            return msgspec.json.encode(entry, enc_hook=safe_repr).decode()
        except Exception:  # a huge int, a cycle, ...: each value that cannot be encoded written as its repr
            return msgspec.json.encode({k: _encodable(v) for k, v in entry.items()}, enc_hook=safe_repr).decode()


def _encodable(value: object) -> object:
    """`value` if it encodes as JSON (objects of other types as their repr), else its repr."""
    try:
        msgspec.json.encode(value, enc_hook=safe_repr)
    except Exception:
        return safe_repr(value)
    return value


def _message(record: logging.LogRecord) -> str:
    """The record's message; a message whose arguments do not fit its format is written with them, unformatted."""
    try:
        return record.getMessage()
    except Exception:
        return f"{safe_repr(record.msg)} {safe_repr(record.args)}"


def safe_repr(value: object) -> str:
    """repr(value), or a placeholder naming its type and what its repr() raised (job code may make it raise
    anything): what a log line shows of a value it cannot encode, in the stream and in forge_job_logs."""
    try:
        return repr(value)
    except BaseException as exc:
        return f"<{type(value).__name__} object: repr() raised {type(exc).__name__}>"


def configure(level: str, format: str = "text") -> None:
    """Log `level` and above to stderr: lines of time, level, logger and pid, or JSON objects (`format` "json")."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
