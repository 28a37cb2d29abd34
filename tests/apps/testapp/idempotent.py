"""Jobs of the idempotency and capability tests: the spec's process_payment (deduped by its payment id),
which records each charge in test_events, and a job only nodes with the "media" capability run."""

import time

import msgspec

import forge

from .jobs import record


class PaymentInput(msgspec.Struct):
    payment_id: str
    seconds: float = 0.0  # how long the charge takes


@forge.job(idempotent="input.payment_id")
def process_payment(ctx: forge.JobContext, input: PaymentInput) -> None:
    # Even if this job is dispatched twice, it runs once per payment_id.
    record(ctx, "charged")
    time.sleep(input.seconds)


class Clip(msgspec.Struct):
    n: int


@forge.job(worker_capability="media")
def transcode(ctx: forge.JobContext, input: Clip) -> int:
    return input.n


@forge.job
def general_work(ctx: forge.JobContext, input: Clip) -> int:
    return input.n
