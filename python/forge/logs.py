"""Log set-up shared by the supervisor, the zygote and the workers: one line per record on stderr."""

from __future__ import annotations

import logging
import sys

import msgspec


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
    except Exception:  # not encodable (TypeError), a surrogate (UnicodeEncodeError): its repr, which may raise too
        try:
            return repr(value)
        except Exception as exc:
            return f"<repr() raised {type(exc).__name__}>"


def configure(level: str) -> None:
    """Log `level` and above to stderr with time, level, logger and pid."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
