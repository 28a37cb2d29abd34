//! The reporter: writes what Python reported (starts, progress,
//! completions, failures, hand-backs) in batches, one statement per kind,
//! each guarded by the lease; once a batch's ends are written their leases
//! end, and the claim rows they emptied are closed.
//!
//! Nothing a job hands back can stop it: a statement the database refuses
//! for its data (CoreError::Refused) is split until the refused reports are
//! found (bisect.rs); each becomes a failure of its job, and the rest is
//! written. Any other error (the database unreachable, a lock timeout)
//! retries what is left of the batch after a doubling delay; meanwhile new
//! reports are still taken off the queue into the backlog (backlog.rs),
//! where progress is coalesced, and the producer claims nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::backlog::Backlog;
use crate::backoff::RetryDelay;
use crate::batch::{Batch, Fail};
use crate::bisect::Bisection;
use crate::db::{Conn, Db};
use crate::errors::CoreError;
use crate::shared::{lock, Sequenced, Shared};
use crate::statements::{write_closes, Row};
use crate::stats::Stat;
use crate::streak::Streak;

/// Reports written per flush at most, to bound statement size.
const MAX_REPORTS_PER_FLUSH: usize = 10_000;

/// How often reports are moved into the backlog while a batch is written
/// or waits for its retry. Not at each report: waking the runtime thread
/// for each would cost the Python thread that sends it a system call.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// The report loop: one batch per wake-up with what the backlog holds,
/// written until it is (what the database refuses is replaced, never
/// retried), then flush() waiters are released up to its last report.
pub async fn report(db: Arc<Db>, queue: mpsc::UnboundedReceiver<Sequenced>) {
    let shared = db.shared();
    let mut inbox = Inbox {
        queue,
        backlog: Backlog::default(),
    };
    let mut streak = Streak::new("writing reports");
    let mut retry = RetryDelay::default();
    let mut stalled = false;
    while inbox.wait().await {
        let (last, reports) = inbox.backlog.take(MAX_REPORTS_PER_FLUSH);
        let mut batch = Batch::build(reports);
        while let Err(e) = inbox.while_receiving(write_batch(&db, &mut batch)).await {
            streak.failed(shared, &e);
            if !stalled {
                stalled = true;
                shared.claim_event(|c| c.set_reports_stalled(true));
            }
            inbox
                .while_receiving(tokio::time::sleep(retry.next_delay()))
                .await;
        }
        retry.reset();
        streak.ok(shared);
        if stalled {
            stalled = false;
            shared.claim_event(|c| c.set_reports_stalled(false));
        }
        shared.stats.add(Stat::Flushes, 1);
        shared.mark_written(last);
    }
}

/// The queue from Python and the backlog it is moved into.
struct Inbox {
    queue: mpsc::UnboundedReceiver<Sequenced>,
    backlog: Backlog,
}

impl Inbox {
    /// Waits until the backlog has something, then moves what is queued
    /// into it; false once the queue is closed and everything written.
    async fn wait(&mut self) -> bool {
        if self.backlog.is_empty() {
            match self.queue.recv().await {
                Some((seq, report)) => self.backlog.push(seq, report),
                None => return false,
            }
        }
        self.drain();
        true
    }

    /// Moves what is queued into the backlog (at most a flush's worth of
    /// reports per call, so a sender faster than this never holds it).
    fn drain(&mut self) {
        for _ in 0..MAX_REPORTS_PER_FLUSH {
            match self.queue.try_recv() {
                Ok((seq, report)) => self.backlog.push(seq, report),
                Err(_) => break,
            }
        }
    }

    /// Runs `work` to its end, moving reports into the backlog every
    /// DRAIN_EVERY meanwhile, so they never pile up uncoalesced in the queue.
    async fn while_receiving<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                _ = tokio::time::sleep(DRAIN_EVERY) => self.drain(),
            }
        }
    }
}

/// Starts first (claimed -> running), then the rest pipelined on the one
/// connection. join! polls in order and tokio-postgres sends in poll order,
/// so progress reaches the server before the statements that end a job.
/// Then the failures that replace refused reports, the end of the leases
/// and the claim rows to close. Each written part is cleared, so a retry
/// redoes only the rest.
async fn write_batch(db: &Db, batch: &mut Batch) -> Result<(), CoreError> {
    let conn = db.client().await?;
    let refused = write_part(db, &conn, &mut batch.starts).await?;
    batch.refused.extend(refused);
    let (progress, completes, fails, releases) = tokio::join!(
        write_part(db, &conn, &mut batch.progress),
        write_part(db, &conn, &mut batch.completes),
        write_part(db, &conn, &mut batch.fails),
        write_part(db, &conn, &mut batch.releases),
    );
    let mut failed = None;
    for part in [progress, completes, fails, releases] {
        match part {
            Ok(refused) => batch.refused.extend(refused),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    write_replacements(db, &conn, &mut batch.refused).await?;
    end_leases(db.shared(), batch);
    match write_closes(db, &conn, &mut batch.closes).await {
        Err(CoreError::Refused(why)) => {
            // no job's data is in it; prune_claims deletes the rows later
            db.shared()
                .log("error", format!("closing claim rows: {why}"));
            batch.closes.clear();
            Ok(())
        }
        other => other,
    }
}

/// Writes `rows`; the failures that replace those the database refused.
async fn write_part<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &mut Vec<R>,
) -> Result<Vec<Fail>, CoreError> {
    let refused = write_rows(db, conn, rows).await?;
    let shared = db.shared();
    shared.stats.add(Stat::Refused, refused.len() as u64);
    Ok(refused
        .into_iter()
        .map(|(row, why)| {
            let fail = row.refused(&why);
            shared.log("warning", format!("{}; its job fails", row.refusal(&why)));
            fail
        })
        .collect())
}

/// Writes the failures that replace refused reports; one refused too is
/// dropped: its lease is left to expire, and rescue to take the job back.
async fn write_replacements(db: &Db, conn: &Conn, fails: &mut Vec<Fail>) -> Result<(), CoreError> {
    for (fail, why) in write_rows(db, conn, fails).await? {
        db.shared().log(
            "error",
            format!(
                "{}; dropped: it replaced a refused report",
                fail.refusal(&why)
            ),
        );
    }
    Ok(())
}

/// Writes `rows` in one statement, or, if the database refuses it for its
/// data, in halves until each refused row is alone: those come back, with
/// why, and the others are written. On any other error the rows not yet
/// written stay in `rows`, for the retry.
async fn write_rows<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &mut Vec<R>,
) -> Result<Vec<(R, String)>, CoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let why = match R::write(db, conn, rows).await {
        Ok(()) => {
            rows.clear();
            return Ok(Vec::new());
        }
        Err(CoreError::Refused(why)) => why,
        Err(e) => return Err(e),
    };
    let mut bisection = Bisection::new(rows.len(), why);
    while let Some(range) = bisection.next() {
        match R::write(db, conn, &rows[range.clone()]).await {
            Ok(()) => bisection.written(range),
            Err(CoreError::Refused(why)) => bisection.refused(range, why),
            Err(e) => {
                let mut i = 0;
                rows.retain(|_| {
                    i += 1;
                    !bisection.is_written(i - 1)
                });
                return Err(e);
            }
        }
    }
    let mut refused = bisection.into_refused().into_iter().peekable();
    let mut found = Vec::new();
    for (i, row) in rows.drain(..).enumerate() {
        if let Some((_, why)) = refused.next_if(|(at, _)| *at == i) {
            found.push((row, why));
        }
    }
    Ok(found)
}

/// The batch's ends are written: their leases end, and the claim rows
/// whose last held job they were are to be closed.
fn end_leases(shared: &Shared, batch: &mut Batch) {
    if batch.ended.is_empty() {
        return;
    }
    let mut inflight = lock(&shared.inflight);
    for (id, attempt) in batch.ended.drain(..) {
        if let Some(claim) = inflight.finish(id, attempt) {
            batch.closes.push(claim);
        }
    }
}
