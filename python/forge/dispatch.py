"""Dispatching jobs through the caller's own psycopg connection.

The insert runs in the caller's transaction: the job exists, and workers are
woken (NOTIFY), only if that transaction commits. A dispatch_many batch too
big for one statement is sent as several, still in that one transaction.

psycopg is imported on the first dispatch, not with forge: the supervisor
imports the app (and so forge) before forking its zygote, and reaches its
first claim without it (loading it is a large part of a boot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .db.queries import load_queries
from .errors import DispatchError
from .job import PRIORITIES, Job, convert_input
from .keys import check_key
from .units import parse_duration

if TYPE_CHECKING:
    import psycopg

_SQL = load_queries("jobs.sql")

#: Largest encoded input accepted, in bytes: bigger payloads belong in storage, not in the queue.
MAX_INPUT_BYTES = 1024 * 1024
#: Largest part of a dispatch_many batch one statement carries, encoded (a bigger batch takes several statements):
#: PostgreSQL refuses a jsonb array whose elements take over 256 MiB, and an element can take 6 times its JSON
#: text (an array of small numbers), so 128 MiB of text could already be refused. (Set below MAX_INPUT_BYTES, as
#: tests do, an input bigger than it goes in a statement of its own.)
MAX_BATCH_BYTES = 32 * 1024 * 1024

_MAX_ID = 2**63 - 1  # ids are bigint
# Statements one dispatch sends at most while the job holding its key was committed after each one's snapshot
# (jobs.sql insert_job): the second sees it, unless that job was removed and another inserted meanwhile.
_UNSEEN_TRIES = 5
# What msgspec.json.encode raises for a value it cannot write (RecursionError: nested too deep).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)
# How msgspec writes a NUL character: jsonb refuses it (its text cannot hold NUL).
_NUL_ESCAPE = b"\\u0000"
# What _builtins puts where msgspec cannot encode a value; holding NUL, it is no input dispatch accepts.
_UNENCODABLE = "\x00forge: cannot encode this\x00"


def dispatch(
    conn: psycopg.Connection[Any],
    job: Job[Any],
    input: Any,
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
    idempotency_key: str | int | None = None,
) -> int:
    """Insert one job in `conn`'s current transaction and return its id.

    at: run no earlier than this aware datetime; delay: a duration from now
    ("5m", seconds, timedelta); priority overrides the job's own. Everything is
    checked before anything is sent: a refusal is a DispatchError, and leaves
    the transaction as it was. idempotency_key overrides the job's own key
    (@forge.job(idempotent=...)): while a job of this type holds the key, this
    inserts nothing and returns that job's id.
    """
    encoded = _encode(job, input)  # checks that `job` is one, first
    key = _key(job, input, idempotency_key)
    params = (job.name, encoded, *_insert_options(job, at, delay, priority, parent_id), key)
    with _raw_cursor(conn) as cur:
        for _ in range(_UNSEEN_TRIES):
            cur.execute(_SQL["insert_job"], params)
            row = cur.fetchone()
            assert row is not None
            if row[0] is not None:
                return int(row[0])
    raise _unseen(job, key)


def dispatch_many(
    conn: psycopg.Connection[Any],
    job: Job[Any],
    inputs: Iterable[Any],
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> list[int]:
    """Insert many jobs of one type, one round trip per MAX_BATCH_BYTES (32 MiB) encoded; ids in input order.

    Every input is validated first: one bad input raises (naming its index) and inserts nothing. A batch
    sent as several statements is still all in the caller's transaction (on an autocommit connection, in one
    transaction of its own): every job is inserted, or none. With the job's idempotency keys, an input whose key a
    job holds (or an earlier input of the batch has) inserts nothing and gets that job's id.
    """
    batches = _encode_many(job, inputs)
    options = _insert_options(job, at, delay, priority, parent_id)
    ids: list[int] = []
    with _raw_cursor(conn) as cur, _one_transaction(conn, batches):
        for batch in batches:
            for _ in range(_UNSEEN_TRIES):
                cur.execute(*_batch_statement(job, batch, options))
                row = cur.fetchone()
                assert row is not None
                if None not in row[0]:
                    break
            else:
                raise _unseen(job, batch.keys)
            ids.extend(row[0])
    return ids


async def dispatch_async(
    conn: psycopg.AsyncConnection[Any],
    job: Job[Any],
    input: Any,
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
    idempotency_key: str | int | None = None,
) -> int:
    """dispatch() for a psycopg.AsyncConnection."""
    encoded = _encode(job, input)  # checks that `job` is one, first
    key = _key(job, input, idempotency_key)
    params = (job.name, encoded, *_insert_options(job, at, delay, priority, parent_id), key)
    async with _async_raw_cursor(conn) as cur:
        for _ in range(_UNSEEN_TRIES):
            await cur.execute(_SQL["insert_job"], params)
            row = await cur.fetchone()
            assert row is not None
            if row[0] is not None:
                return int(row[0])
    raise _unseen(job, key)


async def dispatch_many_async(
    conn: psycopg.AsyncConnection[Any],
    job: Job[Any],
    inputs: Iterable[Any],
    *,
    at: datetime | None = None,
    delay: Any = None,
    priority: str | None = None,
    parent_id: int | None = None,
) -> list[int]:
    """dispatch_many() for a psycopg.AsyncConnection."""
    batches = _encode_many(job, inputs)
    options = _insert_options(job, at, delay, priority, parent_id)
    ids: list[int] = []
    async with _async_raw_cursor(conn) as cur, _one_async_transaction(conn, batches):
        for batch in batches:
            for _ in range(_UNSEEN_TRIES):
                await cur.execute(*_batch_statement(job, batch, options))
                row = await cur.fetchone()
                assert row is not None
                if None not in row[0]:
                    break
            else:
                raise _unseen(job, batch.keys)
            ids.extend(row[0])
    return ids


def _one_transaction(conn: psycopg.Connection[Any], batches: list[_Batch]) -> AbstractContextManager[Any]:
    """What keeps several statements of one batch all-or-nothing. Without autocommit the caller's own
    transaction already does, and a transaction() here would be a savepoint for nothing or, before the
    caller's first statement, a transaction of its own, committed before the caller decides."""
    return conn.transaction() if conn.autocommit and len(batches) > 1 else nullcontext()


def _one_async_transaction(conn: psycopg.AsyncConnection[Any], batches: list[_Batch]
                           ) -> AbstractAsyncContextManager[Any]:
    """_one_transaction for an AsyncConnection."""
    return conn.transaction() if conn.autocommit and len(batches) > 1 else nullcontext()


def _encode(job: Job[Any], input: Any) -> str:
    _check_job(job)
    return _encode_input(job, input).decode()


class _Batch(NamedTuple):
    """One statement's inputs: a JSON array (its $2), and their idempotency keys in order, if the job has them."""

    inputs: str
    keys: list[str] | None


def _encode_many(job: Job[Any], inputs: Iterable[Any]) -> list[_Batch]:
    """The inputs as JSON arrays of at most MAX_BATCH_BYTES each, in order, with their keys."""
    _check_job(job)
    values = list(_iterable(inputs))
    batches = _batches_fast(job, values)
    if batches is None:  # one of them may be refused: check each, to name it
        batches = _batches(_encode_each(job, values))
    keys = _keys(job, values)
    result, start = [], 0
    for batch, count in batches:
        result.append(_Batch(batch.decode(), None if keys is None else keys[start:start + count]))
        start += count
    return result


def _batch_statement(job: Job[Any], batch: _Batch, options: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """insert_jobs, or insert_keyed_jobs when the inputs have keys (its dedupe costs the others nothing)."""
    if not batch.keys:
        return _SQL["insert_jobs"], (job.name, batch.inputs, *options)
    return _SQL["insert_keyed_jobs"], (job.name, batch.inputs, *options, msgspec.json.encode(batch.keys).decode())


def _key(job: Job[Any], input: Any, given: object) -> str | None:
    """The idempotency key of one dispatch: `given`, else the job's key of `input`, else None."""
    where = f"job {job.name!r}"
    if given is not None:
        return check_key(given, where)
    return None if job.idempotent is None else check_key(_job_key(job, input), where)


def _keys(job: Job[Any], values: list[Any]) -> list[str] | None:
    if job.idempotent is None:
        return None
    return [check_key(_job_key(job, value), f"job {job.name!r}: inputs[{index}]") for index, value in
            enumerate(values)]


def _job_key(job: Job[Any], value: Any) -> Any:
    assert job.idempotent is not None
    try:
        return job.idempotent(convert_input(job, value))
    except DispatchError:
        raise
    except Exception as exc:  # the job's own key function failed: say whose
        raise DispatchError(f"the idempotency key of job {job.name!r} could not be taken: {exc!r}") from exc


def _unseen(job: Job[Any], key: object) -> DispatchError:
    """What a dispatch raises when the job holding its key stayed out of sight of every try (the key's job
    kept being inserted and removed meanwhile): nothing of it was inserted."""
    return DispatchError(f"job {job.name!r}: the job holding idempotency key {key!r} was committed and gone "
                         f"again {_UNSEEN_TRIES} times while this dispatch looked for it; dispatch again")


def _batches_fast(job: Job[Any], values: list[Any]) -> list[tuple[bytes, int]] | None:
    """The inputs encoded and joined at C speed, or None if one of them may be refused. (Checking each in
    Python, as _encode_each does, made a batch of small inputs cost 2.4 times as much to encode.)"""
    try:
        encoded = [msgspec.json.encode(convert_input(job, value)) for value in values]
    except (DispatchError, *_ENCODE_ERRORS):
        return None
    if max(map(len, encoded), default=0) > MAX_INPUT_BYTES:
        return None
    batches = _batches(encoded)
    return None if any(_NUL_ESCAPE in batch for batch, _ in batches) else batches


def _batches(encoded: list[bytes]) -> list[tuple[bytes, int]]:
    """`encoded` as consecutive JSON arrays of at most MAX_BATCH_BYTES each (one, "[]", for no input), each with
    how many inputs it holds."""
    if sum(map(len, encoded)) + len(encoded) + 1 <= MAX_BATCH_BYTES:  # the usual case, at C speed
        return [(b"[" + b",".join(encoded) + b"]", len(encoded))]
    batches, start, size = [], 0, 1  # size: the array's bytes so far, its "[" and each input with its "," or "]"
    for index, item in enumerate(encoded):
        if index > start and size + len(item) + 1 > MAX_BATCH_BYTES:
            batches.append((b"[" + b",".join(encoded[start:index]) + b"]", index - start))
            start, size = index, 1
        size += len(item) + 1
    batches.append((b"[" + b",".join(encoded[start:]) + b"]", len(encoded) - start))
    return batches


def _encode_each(job: Job[Any], values: list[Any]) -> list[bytes]:
    encoded = []
    for index, value in enumerate(values):
        try:
            encoded.append(_encode_input(job, value))
        except DispatchError as exc:
            raise DispatchError(f"inputs[{index}]: {exc}") from None
    return encoded


def _iterable(inputs: object) -> Iterable[Any]:
    # A str or a mapping is iterable too, but dispatching its characters or keys is never what was meant.
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Iterable):
        raise DispatchError(f"dispatch_many needs an iterable of inputs (a list...), got {type(inputs).__name__}")
    return inputs


def _encode_input(job: Job[Any], value: Any) -> bytes:
    """`value` as the JSON text its row will hold; DispatchError for anything msgspec or PostgreSQL refuses."""
    converted = convert_input(job, value)
    try:
        encoded = msgspec.json.encode(converted)
    except _ENCODE_ERRORS as exc:
        where = _path_of(_builtins(converted), _unencodable)
        raise DispatchError(f"input for job {job.name!r} cannot be encoded as JSON{where}: {exc}") from None
    if len(encoded) > MAX_INPUT_BYTES:
        raise DispatchError(
            f"input for job {job.name!r} is {len(encoded)} bytes encoded; the limit is {MAX_INPUT_BYTES}"
        )
    # The escape's bytes also appear after an escaped backslash ("\\u0000", no NUL): decode to be sure.
    if _NUL_ESCAPE in encoded and (where := _path_of(msgspec.json.decode(encoded), _has_nul)):
        raise DispatchError(
            f"input for job {job.name!r} holds a NUL character{where}, which PostgreSQL cannot store in JSON"
        )
    return encoded


def _builtins(value: Any) -> Any:
    """`value` as msgspec sees it (Structs as dicts...), with what it cannot encode replaced by _UNENCODABLE."""
    try:
        return msgspec.to_builtins(value, enc_hook=lambda _: _UNENCODABLE)
    except Exception:  # only to name where encoding failed (e.g. a dict with tuple keys fails here too)
        return None


def _unencodable(item: Any) -> bool:
    if isinstance(item, (dict, list, tuple)):
        return False
    if isinstance(item, str) and item == _UNENCODABLE:
        return True
    try:  # a value of a supported type can still fail: a lone surrogate, an int of over 4300 digits
        msgspec.json.encode(item)
    except _ENCODE_ERRORS:
        return True
    return False


def _has_nul(item: Any) -> bool:
    return isinstance(item, str) and "\x00" in item


def _path_of(tree: Any, bad: Callable[[Any], bool]) -> str:
    """Where in `tree` (dicts, lists, scalars) the first item that is `bad` or has a `bad` key is:
    " at $.a[0]", or "" if there is none."""
    stack: list[tuple[str, Any]] = [("$", tree)]
    while stack:
        path, item = stack.pop()
        if bad(item):
            return f" at {path}"
        if isinstance(item, dict):
            entries = [(_key_path(path, key), key, child) for key, child in item.items()]
            for child_path, key, _ in entries:
                if bad(key):
                    return f" at {child_path}"
            stack.extend((child_path, child) for child_path, _, child in reversed(entries))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return ""


def _key_path(path: str, key: object) -> str:
    return f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{key!r}]"


def _insert_options(
    job: Job[Any],
    at: datetime | None,
    delay: Any,
    priority: str | None,
    parent_id: int | None,
) -> tuple[Any, ...]:
    if at is not None and delay is not None:
        raise DispatchError("give at= or delay=, not both")
    rank = job.priority_rank if priority is None else _rank(priority)
    resources = None if job.resources is None else msgspec.json.encode(job.resources.to_json()).decode()
    return (  # $3 to $11 of insert_job and insert_jobs, after the job type and the input; $12 is the key
        rank,
        job.retry.max_attempts,
        None if at is None else _check_at(at),
        None if delay is None else _check_delay(delay),
        job.capability,
        resources,
        _check_parent(parent_id),
        job.dead_letter_retain,
        job.dead_letter_after,
    )


# A job's schedule is read back as a Python datetime (psycopg, forge's CLI), and those end with the year 9999.
def _check_at(at: object) -> datetime:
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise DispatchError(f"at={at!r}: must be a timezone-aware datetime")
    try:
        return at.astimezone(timezone.utc)
    except OverflowError:
        raise DispatchError(f"at={at!r}: must fall between the years 1 and 9999 in UTC") from None


def _check_delay(delay: object) -> float:
    try:
        seconds = parse_duration(delay, what="delay")
        datetime.now(timezone.utc) + timedelta(seconds=seconds)  # only to see that it does not overflow
    except ValueError as exc:
        raise DispatchError(str(exc)) from None
    except OverflowError:
        raise DispatchError(f"delay={delay!r}: too far ahead; a job must be due before the year 10000") from None
    return seconds


def _check_parent(parent_id: object) -> int | None:
    if parent_id is None or (
        isinstance(parent_id, int) and not isinstance(parent_id, bool) and 1 <= parent_id <= _MAX_ID
    ):
        return parent_id
    raise DispatchError(f"parent_id={parent_id!r}: must be a job id, an integer from 1 to {_MAX_ID}")


def _rank(priority: object) -> int:
    rank = PRIORITIES.get(priority) if isinstance(priority, str) else None
    if rank is None:
        raise DispatchError(f"priority={priority!r}: must be one of {', '.join(PRIORITIES)}")
    return rank


def _check_job(job: Any) -> None:
    if not isinstance(job, Job):
        raise DispatchError(f"{job!r} is not a job: pass the function decorated with @forge.job")


def _raw_cursor(conn: Any) -> psycopg.RawCursor[Any]:
    """A $n-parameter cursor on the caller's connection, once it is known to be a sync one."""
    import psycopg

    if isinstance(conn, psycopg.AsyncConnection):
        raise DispatchError("this is an AsyncConnection: use forge.dispatch_async / dispatch_many_async")
    if not isinstance(conn, psycopg.Connection):
        raise DispatchError(f"dispatch needs a psycopg.Connection, got {type(conn).__name__}")
    return psycopg.RawCursor(conn)


def _async_raw_cursor(conn: Any) -> psycopg.AsyncRawCursor[Any]:
    import psycopg

    if not isinstance(conn, psycopg.AsyncConnection):
        raise DispatchError(f"dispatch_async needs a psycopg.AsyncConnection, got {type(conn).__name__}")
    return psycopg.AsyncRawCursor(conn)
