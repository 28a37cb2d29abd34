//! The report statements, one per kind of row: its columns built from a
//! slice of a batch's rows (any slice: the reporter writes halves when the
//! database refuses a statement), what it changed counted in stats, and the
//! failure recorded for its job when the database refuses one row (none for
//! a log line: it is dropped, and its job goes on).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;

use crate::batch::{ms_ago, Complete, Fail, Key, LogLine, Progress, Release, Report, Start};
use crate::db::{Conn, Db};
use crate::errors::CoreError;
use crate::shared::Shared;
use crate::sql;
use crate::stats::Stat;

/// A row of one report statement.
pub trait Row: Sized {
    /// What the report is, in "the database refused the {KIND} of job 7".
    const KIND: &'static str;
    fn key(&self) -> Key;
    /// Back to the report it came from, to be set aside (held.rs).
    fn report(self) -> Report;
    /// Writes `rows` in one statement.
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError>;
    /// When the job started and when this report's event happened, for the
    /// failure that replaces it (now, for a report that ends nothing).
    fn times(&self) -> (Option<Instant>, Instant);

    /// What happened to this report, refused for `why`.
    fn refusal(&self, why: &str) -> String {
        let (id, attempt) = self.key();
        format!(
            "the database refused the {} of job {id} (attempt {attempt}): {why}",
            Self::KIND
        )
    }

    /// The failure recorded in place of this report, refused for `why`: not
    /// retried, since the same job would hand back the same data. None: the
    /// report is dropped and its job goes on.
    fn refused(&self, why: &str) -> Option<Fail> {
        let (id, attempt) = self.key();
        let (started, at) = self.times();
        Some(Fail::not_storable(
            id,
            attempt,
            &self.refusal(why),
            started,
            at,
        ))
    }
}

/// Counts what a report statement changed, and the rest as fenced.
fn count(shared: &Shared, stat: Stat, sent: usize, changed: usize) {
    shared.stats.add(stat, changed as u64);
    shared
        .stats
        .add(Stat::Fenced, sent.saturating_sub(changed) as u64);
}

impl Row for Start {
    const KIND: &'static str = "start";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Start(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (Some(self.at), Instant::now())
    }
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let now = Instant::now();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let ago: Vec<f64> = rows.iter().map(|r| ms_ago(now, r.at)).collect();
        let params: [&(dyn ToSql + Sync); 4] = [&ids, &attempts, &db.config().owner, &ago];
        let changed = db.query(conn, sql::START, &params).await?.len();
        count(db.shared(), Stat::Started, rows.len(), changed);
        Ok(())
    }
}

impl Row for Progress {
    const KIND: &'static str = "progress";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Progress(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (None, Instant::now())
    }
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let percents: Vec<i16> = rows.iter().map(|r| r.percent).collect();
        let messages: Vec<Option<&str>> = rows.iter().map(|r| r.message.as_deref()).collect();
        let params: [&(dyn ToSql + Sync); 5] =
            [&ids, &attempts, &percents, &messages, &db.config().owner];
        let changed = db.query(conn, sql::PROGRESS, &params).await?.len();
        count(db.shared(), Stat::Progress, rows.len(), changed);
        Ok(())
    }
}

impl Row for LogLine {
    const KIND: &'static str = "log line";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Log(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (None, self.at)
    }
    /// A line is not worth its job: one the database refuses is dropped.
    fn refused(&self, _why: &str) -> Option<Fail> {
        None
    }
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let now = Instant::now();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let levels: Vec<&str> = rows.iter().map(|r| r.level).collect();
        let messages: Vec<&str> = rows.iter().map(|r| r.message.as_str()).collect();
        let fields: Vec<Option<&str>> = rows.iter().map(|r| r.fields.as_deref()).collect();
        let ago: Vec<f64> = rows.iter().map(|r| ms_ago(now, r.at)).collect();
        let params: [&(dyn ToSql + Sync); 7] = [
            &ids,
            &attempts,
            &levels,
            &messages,
            &fields,
            &ago,
            &db.config().owner,
        ];
        let written: i64 = db
            .query(conn, sql::LOG_LINES, &params)
            .await?
            .first()
            .map(|row| row.try_get("written"))
            .transpose()
            .map_err(|e| CoreError::Database(format!("log_lines row: {e}")))?
            .unwrap_or(0);
        count(db.shared(), Stat::Logged, rows.len(), written as usize);
        Ok(())
    }
}

/// The columns every statement that ends a job takes: its lease, and how
/// long ago (ms) the job started and ended, measured at one instant.
struct Ended {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    started: Vec<Option<f64>>,
    ended: Vec<f64>,
}

impl Ended {
    fn of<R: Row>(rows: &[R]) -> Ended {
        let now = Instant::now();
        let mut columns = Ended {
            ids: Vec::with_capacity(rows.len()),
            attempts: Vec::with_capacity(rows.len()),
            started: Vec::with_capacity(rows.len()),
            ended: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let ((id, attempt), (started, at)) = (row.key(), row.times());
            columns.ids.push(id);
            columns.attempts.push(attempt);
            columns.started.push(started.map(|t| ms_ago(now, t)));
            columns.ended.push(ms_ago(now, at));
        }
        columns
    }
}

impl Row for Complete {
    const KIND: &'static str = "completion";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Complete(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (self.started, self.at)
    }
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let Ended {
            ids,
            attempts,
            started,
            ended,
        } = Ended::of(rows);
        let results: Vec<Option<&str>> = rows.iter().map(|r| r.result.as_deref()).collect();
        let params: [&(dyn ToSql + Sync); 6] = [
            &ids,
            &attempts,
            &results,
            &db.config().owner,
            &started,
            &ended,
        ];
        let changed = db.query(conn, sql::COMPLETE, &params).await?.len();
        count(db.shared(), Stat::Completed, rows.len(), changed);
        Ok(())
    }
}

impl Row for Fail {
    const KIND: &'static str = "failure";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Fail(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (self.started, self.at)
    }
    /// Rows back in retry get a due timer at now + their delay, so this node
    /// claims them when due without waiting for the poll interval.
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let Ended {
            ids,
            attempts,
            started,
            ended,
        } = Ended::of(rows);
        let retryable: Vec<bool> = rows.iter().map(|r| r.retryable).collect();
        let delays: Vec<f64> = rows.iter().map(|r| r.delay_ms).collect();
        let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
        let crashed: Vec<bool> = rows.iter().map(|r| r.crashed).collect();
        let config = db.config();
        let params: [&(dyn ToSql + Sync); 10] = [
            &ids,
            &attempts,
            &retryable,
            &delays,
            &errors,
            &crashed,
            &config.owner,
            &config.max_crashes,
            &started,
            &ended,
        ];
        let changed = db.query(conn, sql::FAIL, &params).await?;
        let delay_of: HashMap<i64, f64> = rows.iter().map(|r| (r.id, r.delay_ms)).collect();
        let written = Instant::now();
        let shared = db.shared();
        let mut due = Vec::new();
        let mut poisoned = 0;
        let mut cancelled = 0;
        for row in &changed {
            let bad = |e: tokio_postgres::Error| CoreError::Database(format!("fail row: {e}"));
            let id: i64 = row.try_get("id").map_err(bad)?;
            let status: &str = row.try_get("status").map_err(bad)?;
            if row.try_get::<_, bool>("poisoned").map_err(bad)? {
                poisoned += 1;
            }
            match status {
                "retry" => {
                    let delay = delay_of.get(&id).copied().unwrap_or(0.0);
                    due.push(written + Duration::from_secs_f64(delay.max(0.0) / 1000.0));
                }
                "cancelled" => cancelled += 1,
                _ => {}
            }
        }
        shared.stats.add(Stat::Retried, due.len() as u64);
        shared.stats.add(Stat::Poisoned, poisoned);
        shared.stats.add(Stat::Cancelled, cancelled);
        shared
            .stats
            .add(Stat::Failed, (changed.len() - due.len()) as u64 - cancelled);
        shared.stats.add(
            Stat::Fenced,
            rows.len().saturating_sub(changed.len()) as u64,
        );
        if !due.is_empty() {
            shared.claim_event(|c| due.into_iter().for_each(|at| c.schedule(at)));
        }
        Ok(())
    }
}

impl Row for Release {
    const KIND: &'static str = "hand-back";
    fn key(&self) -> Key {
        (self.id, self.attempt)
    }
    fn report(self) -> Report {
        Report::Release(self)
    }
    fn times(&self) -> (Option<Instant>, Instant) {
        (None, Instant::now())
    }
    /// Released jobs are claimable at once: NOTIFY so other nodes wake too.
    /// The notify is only a wake-up hint (nodes also poll), so its failure
    /// is counted but does not fail the batch.
    async fn write(db: &Db, conn: &Conn, rows: &[Self]) -> Result<(), CoreError> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
        let params: [&(dyn ToSql + Sync); 3] = [&ids, &attempts, &db.config().owner];
        let changed = db.query(conn, sql::RELEASE, &params).await?;
        let mut cancelled = 0;
        for row in &changed {
            let status: &str = row
                .try_get("status")
                .map_err(|e| CoreError::Database(format!("release row: {e}")))?;
            cancelled += usize::from(status == "cancelled");
        }
        let shared = db.shared();
        shared.stats.add(Stat::Cancelled, cancelled as u64);
        let released = changed.len() - cancelled;
        count(shared, Stat::Released, rows.len() - cancelled, released);
        if released > 0 && db.query(conn, sql::NOTIFY, &[]).await.is_err() {
            db.shared().stats.add(Stat::Errors, 1);
        }
        Ok(())
    }
}

/// Claim rows whose jobs have all ended, once the reports that ended them
/// are written (close_claims keeps a row that still lists a held job).
pub async fn write_closes(db: &Db, conn: &Conn, closes: &mut Vec<i64>) -> Result<(), CoreError> {
    if closes.is_empty() {
        return Ok(());
    }
    let rows = db
        .query(conn, sql::CLOSE_CLAIMS, &[&*closes, &db.config().owner])
        .await?;
    db.shared().stats.add(Stat::ClaimsClosed, rows.len() as u64);
    closes.clear();
    Ok(())
}

/// The jobs of `rows` whose row another session holds a lock on now.
pub async fn busy_jobs<R: Row>(
    db: &Db,
    conn: &Conn,
    rows: &[R],
) -> Result<HashSet<i64>, CoreError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.key().0).collect();
    let busy = db.query(conn, sql::BUSY_JOBS, &[&ids]).await?;
    busy.iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()
        .map_err(|e| CoreError::Database(format!("busy_jobs row: {e}")))
}
