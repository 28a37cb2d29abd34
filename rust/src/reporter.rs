//! The reporter: writes what Python reported (starts, progress,
//! completions, failures, hand-backs, claim rows to close) in batches, one
//! statement per kind, each guarded by the lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use crate::backoff::RetryDelay;
use crate::batch::{Batch, Completes, Fails, Pairs, Progresses};
use crate::db::{Conn, Db};
use crate::errors::CoreError;
use crate::shared::{Sequenced, Shared};
use crate::sql::{self, Query};
use crate::stats::Stat;
use crate::streak::Streak;

/// Reports written per flush at most, to bound statement size.
const MAX_REPORTS_PER_FLUSH: usize = 10_000;

/// The report loop: one batch per wake-up with everything queued, written
/// until it succeeds (reports are never dropped), then flush() waiters
/// are released up to its last sequence number.
pub async fn report(db: Arc<Db>, mut queue: mpsc::UnboundedReceiver<Sequenced>) {
    let shared = db.shared();
    let mut streak = Streak::new("writing reports");
    let mut retry = RetryDelay::default();
    while let Some((mut last, first)) = queue.recv().await {
        let mut reports = vec![first];
        while reports.len() < MAX_REPORTS_PER_FLUSH {
            match queue.try_recv() {
                Ok((seq, report)) => {
                    last = seq;
                    reports.push(report);
                }
                Err(_) => break,
            }
        }
        let mut batch = Batch::build(reports);
        while let Err(e) = write_batch(&db, &mut batch).await {
            streak.failed(shared, &e);
            tokio::time::sleep(retry.next_delay()).await;
        }
        retry.reset();
        streak.ok(shared);
        shared.stats.add(Stat::Flushes, 1);
        shared.mark_written(last);
    }
}

/// Starts first (claimed -> running), then the rest pipelined on the one
/// connection. join! polls in order and tokio-postgres sends in poll order,
/// so progress reaches the server before the statements that end a job.
/// Claim rows are closed only after all of those are written. Each written
/// part is cleared, so a retry redoes only the rest.
async fn write_batch(db: &Db, batch: &mut Batch) -> Result<(), CoreError> {
    let conn = db.client().await?;
    write_starts(db, &conn, &mut batch.starts).await?;
    let (progress, completes, fails, releases) = tokio::join!(
        write_progress(db, &conn, &mut batch.progress),
        write_completes(db, &conn, &mut batch.completes),
        write_fails(db, &conn, &mut batch.fails),
        write_releases(db, &conn, &mut batch.releases),
    );
    progress.and(completes).and(fails).and(releases)?;
    write_closes(db, &conn, &mut batch.closes).await
}

/// Claim rows whose jobs have all ended, once the reports that ended them
/// are written (close_claims keeps a row that still lists a held job).
async fn write_closes(db: &Db, conn: &Conn, part: &mut Vec<i64>) -> Result<(), CoreError> {
    if part.is_empty() {
        return Ok(());
    }
    let rows = db
        .query(conn, sql::CLOSE_CLAIMS, &[&*part, &db.config().owner])
        .await?;
    db.shared().stats.add(Stat::ClaimsClosed, rows.len() as u64);
    part.clear();
    Ok(())
}

/// Counts what a report statement changed, and the rest as fenced.
fn count(shared: &Shared, stat: Stat, sent: usize, rows: usize) {
    shared.stats.add(stat, rows as u64);
    shared
        .stats
        .add(Stat::Fenced, sent.saturating_sub(rows) as u64);
}

/// A statement over ($1 ids, $2 attempts, $3 owner): how many rows it changed.
async fn write_pairs(
    db: &Db,
    conn: &Conn,
    q: Query,
    stat: Stat,
    part: &mut Pairs,
) -> Result<usize, CoreError> {
    if part.is_empty() {
        return Ok(0);
    }
    let params: [&(dyn ToSql + Sync); 3] = [&part.ids, &part.attempts, &db.config().owner];
    let rows = db.query(conn, q, &params).await?.len();
    count(db.shared(), stat, part.len(), rows);
    *part = Pairs::default();
    Ok(rows)
}

async fn write_starts(db: &Db, conn: &Conn, part: &mut Pairs) -> Result<(), CoreError> {
    write_pairs(db, conn, sql::START, Stat::Started, part)
        .await
        .map(drop)
}

async fn write_progress(db: &Db, conn: &Conn, part: &mut Progresses) -> Result<(), CoreError> {
    if part.ids.is_empty() {
        return Ok(());
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
        &part.ids,
        &part.attempts,
        &part.percents,
        &part.messages,
        &db.config().owner,
    ];
    let rows = db.query(conn, sql::PROGRESS, &params).await?;
    count(db.shared(), Stat::Progress, part.ids.len(), rows.len());
    *part = Progresses::default();
    Ok(())
}

async fn write_completes(db: &Db, conn: &Conn, part: &mut Completes) -> Result<(), CoreError> {
    if part.ids.is_empty() {
        return Ok(());
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&part.ids, &part.attempts, &part.results, &db.config().owner];
    let rows = db.query(conn, sql::COMPLETE, &params).await?;
    count(db.shared(), Stat::Completed, part.ids.len(), rows.len());
    *part = Completes::default();
    Ok(())
}

/// Rows back in retry get a due timer at now + their delay, so this node
/// claims them when due without waiting for the poll interval.
async fn write_fails(db: &Db, conn: &Conn, part: &mut Fails) -> Result<(), CoreError> {
    if part.ids.is_empty() {
        return Ok(());
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &part.ids,
        &part.attempts,
        &part.retryable,
        &part.delay_ms,
        &part.errors,
        &part.crashed,
        &db.config().owner,
        &db.config().max_crashes,
    ];
    let rows = db.query(conn, sql::FAIL, &params).await?;
    let now = Instant::now();
    let shared = db.shared();
    let mut due = Vec::new();
    let mut poisoned = 0;
    for row in &rows {
        let bad = |e: tokio_postgres::Error| CoreError::Database(format!("fail row: {e}"));
        let id: i64 = row.try_get("id").map_err(bad)?;
        let status: &str = row.try_get("status").map_err(bad)?;
        if row.try_get::<_, bool>("poisoned").map_err(bad)? {
            poisoned += 1;
        }
        if status == "retry" {
            let delay = part.delay_of(id).unwrap_or(0.0);
            due.push(now + Duration::from_secs_f64(delay.max(0.0) / 1000.0));
        }
    }
    shared.stats.add(Stat::Retried, due.len() as u64);
    shared.stats.add(Stat::Poisoned, poisoned);
    shared
        .stats
        .add(Stat::Failed, (rows.len() - due.len()) as u64);
    shared.stats.add(
        Stat::Fenced,
        part.ids.len().saturating_sub(rows.len()) as u64,
    );
    if !due.is_empty() {
        shared.claim_event(|c| due.into_iter().for_each(|at| c.schedule(at)));
    }
    *part = Fails::default();
    Ok(())
}

/// Released jobs are claimable at once: NOTIFY so other nodes wake too. The
/// notify is only a wake-up hint (nodes also poll), so its failure is
/// counted but does not fail the batch.
async fn write_releases(db: &Db, conn: &Conn, part: &mut Pairs) -> Result<(), CoreError> {
    let released = write_pairs(db, conn, sql::RELEASE, Stat::Released, part).await?;
    if released > 0 && db.query(conn, sql::NOTIFY, &[]).await.is_err() {
        db.shared().stats.add(Stat::Errors, 1);
    }
    Ok(())
}
