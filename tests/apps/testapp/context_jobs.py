"""Jobs of the job context's acceptance tests (tests/acceptance/test_context.py): ctx.db, transaction,
query/mutate, dispatch_job, ctx.complete and complete_in_transaction, sync and async.

They write to ctx_effects (created by the tests): one row per write a job means to make once.
"""

import os
import signal
import time

import msgspec

import forge

EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS ctx_effects (
    job_id bigint NOT NULL, attempt int NOT NULL, note text NOT NULL, pid int NOT NULL DEFAULT 0)
"""


class Order(msgspec.Struct):
    note: str = ""
    fail: bool = False  # raise after the writes (inside the mutation / the job's transaction)
    die_at_commit: bool = False  # SIGKILL the worker as soon as its transaction's COMMIT returns
    children: int = 1


class Quiet(msgspec.Struct):
    pass


class OrderFailed(Exception):
    pass


@forge.job
def child(ctx: forge.JobContext, input: Quiet) -> None:
    """A child job: does nothing (its row, parent_id and status are what the tests read)."""


@forge.mutation
def place(db, args):
    """Write the effect and dispatch the children, all in the mutation's transaction."""
    ctx, order = args
    db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, %s)",
               (ctx.job_id, ctx.attempt, order.note))
    ids = [ctx.dispatch_job(child, Quiet()) for _ in range(order.children)]
    if order.fail:
        raise OrderFailed(f"order {order.note} failed after its writes")
    return ids


@forge.query
def count_effects(db, job_id):
    return db.execute("SELECT count(*) FROM ctx_effects WHERE job_id = %s", (job_id,)).fetchone()[0]


def write_effect(db, job_id):
    """Unmarked: a write, which ctx.query refuses (read-only transaction)."""
    db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, 0, 'through query')", (job_id,))


@forge.job(retry=forge.Retry(max_attempts=1))
def mutate_and_query(ctx: forge.JobContext, input: Order) -> dict:
    """A mutation (writes + children), then a query of what it wrote."""
    children = ctx.mutate(place, (ctx, input))
    return {"children": children, "effects": ctx.query(count_effects, ctx.job_id)}


@forge.job(retry=forge.Retry(max_attempts=1))
def write_in_query(ctx: forge.JobContext, input: Quiet) -> None:
    ctx.query(write_effect, ctx.job_id)


@forge.job(retry=forge.Retry(max_attempts=1))
def in_transaction(ctx: forge.JobContext, input: Order) -> int:
    """ctx.transaction(): a write and a child job, committed together or not at all."""
    with ctx.transaction() as db:
        db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, %s)",
                   (ctx.job_id, ctx.attempt, input.note))
        ctx.dispatch_job(child, Quiet(), priority="high")
        if input.fail:
            raise OrderFailed("failed inside the transaction")
    return ctx.query(count_effects, ctx.job_id)


@forge.mutation
async def place_async(db, args):
    ctx, order = args
    await db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, %s)",
                     (ctx.job_id, ctx.attempt, order.note))
    ids = [await ctx.dispatch_job(child, Quiet()) for _ in range(order.children)]
    if order.fail:
        raise OrderFailed(f"order {order.note} failed after its writes")
    return ids


@forge.query
async def count_effects_async(db, job_id):
    cur = await db.execute("SELECT count(*) FROM ctx_effects WHERE job_id = %s", (job_id,))
    return (await cur.fetchone())[0]


async def write_effect_async(db, job_id):
    await db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, 0, 'through query')", (job_id,))


@forge.job(retry=forge.Retry(max_attempts=1))
async def mutate_and_query_async(ctx: forge.AsyncJobContext, input: Order) -> dict:
    children = await ctx.mutate(place_async, (ctx, input))
    async with ctx.transaction() as db:
        await db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, 'in transaction')",
                         (ctx.job_id, ctx.attempt))
    return {"children": children, "effects": await ctx.query(count_effects_async, ctx.job_id)}


@forge.job(retry=forge.Retry(max_attempts=1))
async def write_in_query_async(ctx: forge.AsyncJobContext, input: Quiet) -> None:
    await ctx.query(write_effect_async, ctx.job_id)


@forge.job
def backend(ctx: forge.JobContext, input: Quiet) -> int:
    """The server process of this worker's connection: the same for every job of one worker."""
    return ctx.db.execute("SELECT pg_backend_pid()").fetchone()[0]


@forge.job
async def backend_async(ctx: forge.AsyncJobContext, input: Quiet) -> int:
    cur = await ctx.db.execute("SELECT pg_backend_pid()")
    return (await cur.fetchone())[0]


@forge.job
def no_db(ctx: forge.JobContext, input: Quiet) -> int:
    """Never touches ctx.db: its worker opens no connection."""
    return os.getpid()


def die_at_commit(db) -> None:
    """SIGKILL this worker the moment the COMMIT of the transaction open on `db` returns: a NOTIFY to itself,
    which PostgreSQL delivers only once the transaction committed, and psycopg hands to this handler then."""
    db.add_notify_handler(lambda _: os.kill(os.getpid(), signal.SIGKILL))
    db.execute("LISTEN ctx_test_commit")
    db.execute("NOTIFY ctx_test_commit")


@forge.job(complete_in_transaction=True, retry=forge.Retry(max_attempts=3, base="100ms"))
def charge_once(ctx: forge.JobContext, input: Order) -> dict:
    """The whole body in one transaction, its completion written in it (complete_in_transaction)."""
    ctx.db.execute("INSERT INTO ctx_effects (job_id, attempt, note, pid) VALUES (%s, %s, %s, %s)",
                   (ctx.job_id, ctx.attempt, input.note, os.getpid()))
    ctx.dispatch_job(child, Quiet())
    if input.die_at_commit:
        die_at_commit(ctx.db)
    if input.fail:
        raise OrderFailed(f"charge {input.note} failed after its write (attempt {ctx.attempt})")
    return {"charged": input.note}


@forge.job(retry=forge.Retry(max_attempts=3, base="100ms"))
def complete_then_die(ctx: forge.JobContext, input: Order) -> dict:
    """ctx.complete() inside ctx.transaction(); the worker dies right after the commit, before any report."""
    with ctx.transaction() as db:
        db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, %s)",
                   (ctx.job_id, ctx.attempt, input.note))
        ctx.complete({"completed": input.note})
    os.kill(os.getpid(), signal.SIGKILL)
    return {"never": "returned"}


@forge.job(complete_in_transaction=True, retry=forge.Retry(max_attempts=3, base="100ms"))
async def charge_once_async(ctx: forge.AsyncJobContext, input: Order) -> dict:
    await ctx.db.execute("INSERT INTO ctx_effects (job_id, attempt, note, pid) VALUES (%s, %s, %s, %s)",
                         (ctx.job_id, ctx.attempt, input.note, os.getpid()))
    if input.die_at_commit:
        ctx.db.add_notify_handler(lambda _: os.kill(os.getpid(), signal.SIGKILL))
        await ctx.db.execute("LISTEN ctx_test_commit")
        await ctx.db.execute("NOTIFY ctx_test_commit")
    return {"charged": input.note}


class Linger(msgspec.Struct):
    seconds: float


@forge.job(retry=forge.Retry(max_attempts=1))
def complete_then_linger(ctx: forge.JobContext, input: Linger) -> dict:
    """Completes in its transaction, then works on for a while (heartbeats meanwhile must not take it for lost)."""
    with ctx.transaction():
        ctx.complete({"completed": True})
    time.sleep(input.seconds)
    return {"returned": True}


@forge.job(retry=forge.Retry(max_attempts=1))
def complete_then_raise(ctx: forge.JobContext, input: Quiet) -> None:
    """Raises after its completion committed: it stays completed, with the committed result."""
    with ctx.transaction():
        ctx.complete({"completed": "before the raise"})
    raise OrderFailed("raised after the commit")


@forge.job(retry=forge.Retry(max_attempts=1))
def leave_open(ctx: forge.JobContext, input: Order) -> str:
    """Begins a transaction on ctx.db by hand, writes, and returns without ending it."""
    ctx.db.execute("BEGIN")
    ctx.db.execute("INSERT INTO ctx_effects (job_id, attempt, note) VALUES (%s, %s, %s)",
                   (ctx.job_id, ctx.attempt, input.note))
    return str(ctx.db.info.transaction_status.name)


@forge.job(retry=forge.Retry(max_attempts=1))
def transaction_status(ctx: forge.JobContext, input: Quiet) -> str:
    return str(ctx.db.info.transaction_status.name)


@forge.job(retry=forge.Retry(max_attempts=1))
def dispatch_keyed(ctx: forge.JobContext, input: Order) -> list[int]:
    """ctx.dispatch_job with an idempotency key, input.children times: every call returns the one child's id."""
    return [ctx.dispatch_job(child, Quiet(), idempotency_key=f"child-of-{ctx.job_id}") for _ in range(input.children)]
