"""The example app's jobs: a welcome email, one per user however often it is dispatched (idempotent), recorded
with the account sync it starts in one transaction (ctx.mutate); a flaky sync that retries; a report with
progress that reads the app's table (ctx.query). run.py creates the table, welcome_emails."""

import random
import time

import msgspec
import psycopg

import forge


class Welcome(msgspec.Struct):
    user_id: int
    email: str


class Sync(msgspec.Struct):
    account: str


class Report(msgspec.Struct):
    pages: int


class NetworkError(Exception):
    pass


@forge.mutation
def record_welcome(db: psycopg.Connection, input: Welcome) -> int:
    """The email sent, and the user's account sync dispatched, in one transaction: both or neither."""
    db.execute("INSERT INTO welcome_emails (user_id, email) VALUES (%s, %s) ON CONFLICT DO NOTHING",
               (input.user_id, input.email))
    return forge.dispatch(db, sync_external_service, Sync(account=f"acct-{input.user_id}"))


@forge.query
def welcomes_sent(db: psycopg.Connection, _: None) -> int:
    return db.execute("SELECT count(*) FROM welcome_emails").fetchone()[0]


@forge.job(priority="high", timeout="30s", idempotent="input.user_id")
def send_welcome_email(ctx: forge.JobContext, input: Welcome) -> dict:
    time.sleep(0.05)  # talking to the mail server
    sync = ctx.mutate(record_welcome, input)  # its own transaction on ctx.db, the worker's connection
    ctx.log.info("welcome email sent", to=input.email, sync_job=sync)
    return {"sent_to": input.email, "sync_job": sync}


@forge.job(retry=forge.Retry(max_attempts=4, backoff="exponential", base="1s", on=(NetworkError,)))
def sync_external_service(ctx: forge.JobContext, input: Sync) -> None:
    if ctx.attempt == 1 and random.random() < 0.5:
        raise NetworkError(f"{input.account}: connection reset (will retry)")
    ctx.log.info("synced", account=input.account, attempt=ctx.attempt)


@forge.job(priority="low", timeout="2m")
def generate_report(ctx: forge.JobContext, input: Report) -> dict:
    for page in range(1, input.pages + 1):
        time.sleep(0.1)
        ctx.progress(page * 100 // input.pages, f"page {page}/{input.pages}")
    return {"pages": input.pages, "welcomes_sent": ctx.query(welcomes_sent, None)}  # a read-only transaction
