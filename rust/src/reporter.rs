//! The reporter: writes what Python reported (starts, progress, log lines,
//! completions, failures, hand-backs) in batches, one statement per kind,
//! each guarded by the lease; once a batch's ends are written their leases
//! end, and the claim rows they emptied are closed.
//!
//! Nothing a job hands back can stop it: a statement the database refuses
//! for its data (CoreError::Refused) is split until the refused reports are
//! found (bisect.rs); each becomes a failure of its job, and the rest is
//! written. Nor can a row lock another session holds: a statement that
//! waits for one longer than REPORT_LOCK_WAIT (CoreError::Locked) is
//! written again without the locked rows, whose reports are set aside and
//! tried again without waiting (held.rs), so a locked row delays only its
//! own job's reports. Any other error (the database unreachable) retries
//! what is left of the batch after a doubling delay; meanwhile new reports
//! are still taken off the queue into the backlog (backlog.rs), where
//! progress is coalesced, and the producer claims nothing.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::backlog::Backlog;
use crate::backoff::RetryDelay;
use crate::batch::{Batch, Fail, Report};
use crate::bisect::Bisection;
use crate::db::{Conn, Db};
use crate::errors::CoreError;
use crate::held::Held;
use crate::shared::{lock, Sequenced, Shared};
use crate::statements::{busy_jobs, write_closes, Row};
use crate::stats::Stat;
use crate::streak::Streak;

/// Reports written per flush at most, to bound statement size.
const MAX_REPORTS_PER_FLUSH: usize = 10_000;

/// How often reports are moved into the backlog while a batch is written
/// or waits for its retry. Not at each report: waking the runtime thread
/// for each would cost the Python thread that sends it a system call.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// How a report statement meets a row lock another session holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Locks {
    /// Waits for it up to the connection's lock_timeout, then writes
    /// around it: reports not known to meet one.
    Wait,
    /// Writes around the locked rows at once: reports set aside because
    /// their rows were locked a moment ago.
    Skip,
}

/// The report loop: one batch per wake-up with what the backlog holds,
/// written until it is (what the database refuses is replaced, never
/// retried), then the reports set aside, when due; flush() waiters are
/// released up to the last report once nothing is set aside.
pub async fn report(db: Arc<Db>, queue: mpsc::UnboundedReceiver<Sequenced>) {
    let mut reporter = Reporter {
        inbox: Inbox {
            queue,
            backlog: Backlog::default(),
            closed: false,
        },
        held: Held::default(),
        streak: Streak::new("writing reports"),
        retry: RetryDelay::default(),
        stalled: false,
        db,
    };
    while reporter.inbox.wait(reporter.held.due()).await {
        let (last, reports) = reporter.inbox.backlog.take(MAX_REPORTS_PER_FLUSH);
        let free = reporter.held.split(reports, Instant::now());
        reporter.write(Batch::build(free), Locks::Wait).await;
        let again = reporter.held.take_due(Instant::now());
        if !again.is_empty() {
            reporter.write(Batch::build(again), Locks::Skip).await;
        }
        if reporter.held.is_empty() {
            reporter.db.shared().mark_written(last);
        }
    }
}

struct Reporter {
    db: Arc<Db>,
    inbox: Inbox,
    held: Held,
    streak: Streak,
    retry: RetryDelay,
    /// Whether the producer was told that reports cannot be written.
    stalled: bool,
}

impl Reporter {
    /// Writes `batch` until it is, retrying after a doubling delay while
    /// the database cannot take it; what it sets aside is held.
    async fn write(&mut self, mut batch: Batch, locks: Locks) {
        let shared = self.db.shared();
        while let Err(e) = self
            .inbox
            .while_receiving(write_batch(&self.db, &mut batch, locks))
            .await
        {
            self.streak.failed(shared, &e);
            if !self.stalled {
                self.stalled = true;
                shared.claim_event(|c| c.set_reports_stalled(true));
            }
            self.inbox
                .while_receiving(tokio::time::sleep(self.retry.next_delay()))
                .await;
        }
        self.retry.reset();
        self.streak.ok(shared);
        if self.stalled {
            self.stalled = false;
            shared.claim_event(|c| c.set_reports_stalled(false));
        }
        shared.stats.add(Stat::Flushes, 1);
        self.held.hold(batch.busy, Instant::now());
    }
}

/// The queue from Python and the backlog it is moved into.
struct Inbox {
    queue: mpsc::UnboundedReceiver<Sequenced>,
    backlog: Backlog,
    /// Whether the queue is closed (the core closes).
    closed: bool,
}

impl Inbox {
    /// Waits until the backlog has something or `until` (when set aside
    /// reports are due), then moves what is queued into the backlog; false
    /// once the queue is closed and nothing is left to write.
    async fn wait(&mut self, until: Option<Instant>) -> bool {
        if self.backlog.is_empty() {
            let due = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = self.queue.recv(), if !self.closed => match received {
                    Some((seq, report)) => self.backlog.push(seq, report),
                    None => {
                        self.closed = true;
                        if until.is_none() {
                            return false;
                        }
                    }
                },
                _ = due => {}
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
/// so progress and log lines reach the server before the statements that
/// end a job (after which their lease guard would drop them).
/// Then the failures that replace refused reports, the end of the leases
/// and the claim rows to close. Each written part is cleared, so a retry
/// redoes only the rest.
async fn write_batch(db: &Db, batch: &mut Batch, locks: Locks) -> Result<(), CoreError> {
    let conn = db.client().await?;
    let starts = write_part(db, &conn, &mut batch.starts, locks).await?;
    batch.refused.extend(starts.refused);
    batch.set_aside(starts.busy);
    let (progress, logs, completes, fails, releases) = tokio::join!(
        write_part(db, &conn, &mut batch.progress, locks),
        write_part(db, &conn, &mut batch.logs, locks),
        write_part(db, &conn, &mut batch.completes, locks),
        write_part(db, &conn, &mut batch.fails, locks),
        write_part(db, &conn, &mut batch.releases, locks),
    );
    let mut failed = None;
    for part in [progress, logs, completes, fails, releases] {
        match part {
            Ok(written) => {
                batch.refused.extend(written.refused);
                batch.set_aside(written.busy);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    write_replacements(db, &conn, batch, locks).await?;
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

/// What became of a part's reports besides those written.
struct Written {
    /// The failures that replace the reports the database refused.
    refused: Vec<Fail>,
    /// The reports whose job row another session holds locked.
    busy: Vec<Report>,
}

/// Writes `rows`; the failures that replace those the database refused,
/// and the reports it set aside.
async fn write_part<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &mut Vec<R>,
    locks: Locks,
) -> Result<Written, CoreError> {
    let (refused, busy) = write_minding_locks(db, conn, rows, locks).await?;
    let shared = db.shared();
    shared.stats.add(Stat::Refused, refused.len() as u64);
    let refused = refused
        .into_iter()
        .filter_map(|(row, why)| {
            let fail = row.refused(&why);
            let then = if fail.is_some() {
                "its job fails"
            } else {
                "dropped"
            };
            shared.log("warning", format!("{}; {then}", row.refusal(&why)));
            fail
        })
        .collect();
    Ok(Written {
        refused,
        busy: busy.into_iter().map(Row::report).collect(),
    })
}

/// Writes the failures that replace refused reports; one refused too is
/// dropped: its lease is left to expire, and rescue to take the job back.
async fn write_replacements(
    db: &Db,
    conn: &Conn,
    batch: &mut Batch,
    locks: Locks,
) -> Result<(), CoreError> {
    let (dropped, busy) = write_minding_locks(db, conn, &mut batch.refused, locks).await?;
    batch.set_aside(busy.into_iter().map(Row::report).collect());
    for (fail, why) in dropped {
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

/// Writes `rows` as write_rows does, meeting row locks as `locks` says:
/// also returns the rows set aside because their job row is locked.
async fn write_minding_locks<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &mut Vec<R>,
    locks: Locks,
) -> Result<(Vec<(R, String)>, Vec<R>), CoreError> {
    if locks == Locks::Wait {
        match write_rows(db, conn, rows).await {
            Err(CoreError::Locked(why)) => {
                let (refused, busy) = write_around_locks(db, conn, rows).await?;
                let ids: Vec<i64> = busy.iter().map(|r| r.key().0).collect();
                db.shared().stats.add(Stat::Held, busy.len() as u64);
                db.shared().log(
                    "warning",
                    format!(
                        "the {} of jobs {ids:?} waits: another session holds their rows \
                         locked ({why}); the node's other reports are written meanwhile",
                        R::KIND
                    ),
                );
                return Ok((refused, busy));
            }
            other => return other.map(|refused| (refused, Vec::new())),
        }
    }
    write_around_locks(db, conn, rows).await
}

/// Writes `rows` but those whose job row another session holds locked,
/// which come back second; the refused ones come back first, as in
/// write_rows. A lock taken between looking and writing is looked for
/// again. On any other error every row not written stays in `rows`.
async fn write_around_locks<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &mut Vec<R>,
) -> Result<(Vec<(R, String)>, Vec<R>), CoreError> {
    let mut busy = Vec::new();
    let written = loop {
        if rows.is_empty() {
            break Ok(Vec::new());
        }
        let locked: HashSet<i64> = match busy_jobs(db, conn, rows).await {
            Ok(locked) => locked,
            Err(e) => break Err(e),
        };
        let (now_busy, free): (Vec<R>, Vec<R>) = std::mem::take(rows)
            .into_iter()
            .partition(|r| locked.contains(&r.key().0));
        busy.extend(now_busy);
        *rows = free;
        match write_rows(db, conn, rows).await {
            Err(CoreError::Locked(_)) => continue,
            other => break other,
        }
    };
    match written {
        Ok(refused) => Ok((refused, busy)),
        Err(e) => {
            rows.append(&mut busy);
            Err(e)
        }
    }
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
