//! The runtime's tasks: producer (claims), reporter (batched reports),
//! heartbeat (leases) and the LISTEN connection keeper.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_postgres::Row;

use crate::backoff::RetryDelay;
use crate::batch::{Batch, Completes, Fails, Pairs, Progresses};
use crate::claim::{Claimed, Decision};
use crate::core::{lock, Sequenced, Shared};
use crate::db::{Conn, Db, Listener};
use crate::errors::CoreError;
use crate::pacing::ConnKind;
use crate::stats::Stat;

/// Reports written per flush at most, to bound statement size.
const MAX_REPORTS_PER_FLUSH: usize = 10_000;
/// Lost lease ids listed in one log line.
const MAX_IDS_LOGGED: usize = 20;

/// Logs the first error of a run of failures and the recovery, not every
/// retry. Connection failures are only counted: the Db logs each outage
/// once for the whole core.
pub struct Streak {
    what: &'static str,
    failing: bool,
}

impl Streak {
    pub fn new(what: &'static str) -> Self {
        Streak {
            what,
            failing: false,
        }
    }

    pub fn failed(&mut self, shared: &Shared, e: &CoreError) {
        shared.stats.add(Stat::Errors, 1);
        if !self.failing && !matches!(e, CoreError::Connect(_)) {
            self.failing = true;
            shared.log("error", format!("{} failed, retrying: {e}", self.what));
        }
    }

    pub fn ok(&mut self, shared: &Shared) {
        if std::mem::take(&mut self.failing) {
            shared.log("info", format!("{} recovered", self.what));
        }
    }
}

/// Keeps the LISTEN connection up: pings it every heartbeat interval (a
/// connection that hangs without closing delivers nothing and never ends)
/// and replaces it when it closes or a ping gets no answer. After a
/// reconnect the Db makes the producer claim once, since notifications sent
/// meanwhile were missed.
pub async fn listen(db: Arc<Db>, mut listener: Listener) {
    let shared = db.shared();
    let mut streak = Streak::new("LISTEN reconnect");
    let every = db.config().heartbeat_interval;
    let timeout = db.config().io_timeout();
    loop {
        loop {
            tokio::select! {
                _ = listener.closed() => break,
                _ = tokio::time::sleep(every) => {
                    if !listener.ping(timeout).await {
                        break;
                    }
                }
            }
        }
        drop(listener);
        db.lost(
            ConnKind::Listen,
            "the connection closed or stopped answering",
        );
        listener = loop {
            match db.listen().await {
                Ok(l) => break l,
                // the connection attempts themselves are paced by the Db
                Err(e) => streak.failed(shared, &e),
            }
        };
        streak.ok(shared);
        db.restored(ConnKind::Listen);
    }
}

/// The claim loop: asks the claim state what to do, claims or sleeps.
pub async fn produce(db: Arc<Db>) {
    let shared = db.shared();
    let mut streak = Streak::new("claim");
    loop {
        let decision = lock(&shared.claim).decide(Instant::now());
        match decision {
            Decision::Wait(until) => wait_for_claim_event(shared, until).await,
            Decision::Claim(n) => {
                let started = Instant::now();
                match claim(&db, n).await {
                    Ok(jobs) => {
                        lock(&shared.claim).claimed(n, jobs.len(), started);
                        shared.deliver(jobs);
                        streak.ok(shared);
                    }
                    Err(e) => {
                        lock(&shared.claim).failed(Instant::now());
                        streak.failed(shared, &e);
                    }
                }
            }
        }
    }
}

async fn wait_for_claim_event(shared: &Shared, until: Option<Instant>) {
    match until {
        Some(at) => {
            let _ = tokio::time::timeout_at(at.into(), shared.claim_wake.notified()).await;
        }
        None => shared.claim_wake.notified().await,
    }
}

async fn claim(db: &Db, n: i64) -> Result<Vec<Claimed>, CoreError> {
    let conn = db.claim_client().await?;
    let config = db.config();
    let rows = db
        .query(
            &conn,
            "claim",
            &[&n, &config.capabilities, &config.owner, &config.job_types],
        )
        .await?;
    db.shared().stats.add(Stat::Claims, 1);
    rows.iter().map(claimed_from_row).collect()
}

fn claimed_from_row(row: &Row) -> Result<Claimed, CoreError> {
    let bad = |e: tokio_postgres::Error| CoreError::Database(format!("claim row: {e}"));
    Ok(Claimed {
        id: row.try_get("id").map_err(bad)?,
        job_type: row.try_get("job_type").map_err(bad)?,
        attempt: row.try_get("attempts").map_err(bad)?,
        max_attempts: row.try_get("max_attempts").map_err(bad)?,
        priority: row.try_get("priority").map_err(bad)?,
        input: row.try_get("input").map_err(bad)?,
        parent_id: row.try_get("parent_id").map_err(bad)?,
        claim: row.try_get("claim_id").map_err(bad)?,
    })
}

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
        .query(conn, "close_claims", &[&*part, &db.config().owner])
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

async fn write_starts(db: &Db, conn: &Conn, part: &mut Pairs) -> Result<(), CoreError> {
    if part.is_empty() {
        return Ok(());
    }
    let rows = db
        .query(
            conn,
            "start",
            &[&part.ids, &part.attempts, &db.config().owner],
        )
        .await?;
    count(db.shared(), Stat::Started, part.len(), rows.len());
    *part = Pairs::default();
    Ok(())
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
    let rows = db.query(conn, "progress", &params).await?;
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
    let rows = db.query(conn, "complete", &params).await?;
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
    let rows = db.query(conn, "fail", &params).await?;
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
    if part.is_empty() {
        return Ok(());
    }
    let rows = db
        .query(
            conn,
            "release",
            &[&part.ids, &part.attempts, &db.config().owner],
        )
        .await?;
    count(db.shared(), Stat::Released, part.len(), rows.len());
    *part = Pairs::default();
    if !rows.is_empty() && db.query(conn, "notify", &[]).await.is_err() {
        db.shared().stats.add(Stat::Errors, 1);
    }
    Ok(())
}

/// Renews the leases every heartbeat_interval; the first beat is one
/// interval after start since the claim itself set heartbeat_at.
/// The most a stopping supervisor waits to record its stop.
const RECORD_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Inserts this run's forge_nodes row (before the first claim: other nodes
/// judge job types and leases by the registrations they see).
pub async fn register_node(db: &Db) -> Result<(), CoreError> {
    let conn = db.client().await?;
    let config = db.config();
    let node = &config.node;
    let pid = std::process::id() as i32;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &config.owner,
        &node.hostname,
        &pid,
        &node.roles,
        &config.capabilities,
        &node.workers,
        &config.job_types,
    ];
    db.query(&conn, "register_node", &params).await?;
    Ok(())
}

/// Records a clean stop in this run's row; an error when the database is
/// unreachable (the row then ages out like a lost node's).
pub async fn record_stop(db: &Db) -> Result<(), CoreError> {
    let write = async {
        let conn = db.client().await?;
        db.query(&conn, "stop_node", &[&db.config().owner]).await
    };
    match tokio::time::timeout(RECORD_STOP_TIMEOUT, write).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(CoreError::Connect("recording the stop timed out".into())),
    }
}

pub async fn heartbeat(db: Arc<Db>) {
    let shared = db.shared();
    let mut streak = Streak::new("heartbeat");
    let mut tick = tokio::time::interval(db.config().heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match beat(&db).await {
            Ok(()) => streak.ok(shared),
            Err(e) => streak.failed(shared, &e),
        }
    }
}

/// One round: the node's registration and every held lease, pipelined.
/// Only a round where both were written moves the lease clock, to the
/// instant the round was sent (the database's now() is at or after it).
/// Leases not renewed leave the in-flight set for Python's lost(), and the
/// wake fd is signalled so the supervisor acts on them at once.
async fn beat(db: &Db) -> Result<(), CoreError> {
    let conn = db.client().await?;
    let shared = db.shared();
    let owner = &db.config().owner;
    let sent_at = Instant::now();
    let sent = lock(&shared.inflight).snapshot();
    let leases = async {
        if sent.is_empty() {
            return Ok(Vec::new());
        }
        db.query(&conn, "heartbeat", &[&sent.ids, &sent.attempts, owner])
            .await
    };
    let node_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [owner];
    let (rows, node) = tokio::join!(leases, db.query(&conn, "node_heartbeat", &node_params));
    node?;
    let renewed = rows?
        .iter()
        .map(|r| r.try_get::<_, i64>(0))
        .collect::<Result<HashSet<i64>, _>>()
        .map_err(|e| CoreError::Database(format!("heartbeat row: {e}")))?;
    shared.stats.add(Stat::Heartbeats, 1);
    {
        let mut at = lock(&shared.renewed_at);
        *at = (*at).max(sent_at);
    }
    let lost = lock(&shared.inflight).take_lost(&sent, &renewed);
    if !lost.is_empty() {
        shared.stats.add(Stat::Lost, lost.len() as u64);
        let ids: Vec<String> = lost
            .iter()
            .take(MAX_IDS_LOGGED)
            .map(|(id, a)| format!("{id}/{a}"))
            .collect();
        lock(&shared.lost).extend(lost.iter().copied());
        // log() signals the wake fd too
        shared.log(
            "warning",
            format!(
                "{} lease(s) lost (not renewed by the heartbeat): {}",
                lost.len(),
                ids.join(", ")
            ),
        );
    }
    Ok(())
}
