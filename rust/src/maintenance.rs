//! The maintenance sweeps every node runs each maintenance interval, on its
//! own connection, one function each: rescue jobs of lost nodes, delete the
//! forge_claims rows that hold nothing any more, move failed jobs to the
//! dead letter queue, prune old dead letters, prune completed, cancelled and
//! discarded rows past their [retention], release the idempotency keys of
//! finished jobs past [retention] idempotency, fail due jobs of types no node has
//! run for unknown_type_grace, and delete registrations of long-gone nodes
//! (remembering when their job types last ran). Each statement is one
//! bounded `FOR UPDATE SKIP LOCKED` batch (engine.sql), so nodes sweeping at
//! once split the work instead of waiting on each other; a batch that came
//! back full makes the next round start at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::db::{Conn, Db};
use crate::errors::CoreError;
use crate::sql;
use crate::stats::Stat;
use crate::streak::Streak;

/// Rows one maintenance statement handles at most (the LIMIT in engine.sql).
pub const BATCH: u64 = 1000;
/// The pause between rounds while batches come back full: the backlog is
/// worked off quickly without monopolising the server.
const CATCH_UP: Duration = Duration::from_millis(50);
/// Windows of the primary key (BATCH rows each) the retention walk looks at
/// in one round at most: 20,000 rows a round, a round every CATCH_UP while
/// the walk is unfinished, well above 10,000 completions a second.
const WALK_WINDOWS: u32 = 20;

/// What one round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Rescued jobs put back in retry.
    pub rescued_retry: u64,
    /// Rescued jobs failed for good (attempts or crash cap exhausted).
    pub rescued_failed: u64,
    /// Rescued jobs their node had claimed but not started: back, uncharged.
    pub rescued_unstarted: u64,
    pub claims_pruned: u64,
    pub dead_lettered: u64,
    pub pruned: u64,
    pub finished: Finished,
    pub keys: Released,
    pub unknown_failed: u64,
    pub nodes_reaped: u64,
}

/// What the retention walk deleted in one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub completed: u64,
    pub cancelled: u64,
    pub discarded: u64,
    /// The walk stopped at WALK_WINDOWS before its end: more may be due.
    pub unfinished: bool,
}

/// What the key walk (release_keys) released in one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub keys: u64,
    /// The walk stopped at WALK_WINDOWS before its end: more may be due.
    pub unfinished: bool,
}

/// Where a walk (prune_finished, release_keys) has got to: the last id it
/// looked at, 0 to start from the first. Each node walks on its own.
#[derive(Debug, Default)]
pub struct Walk {
    after: i64,
}

/// The walks a node keeps going from round to round.
#[derive(Debug, Default)]
pub struct Walks {
    finished: Walk,
    keys: Walk,
}

impl Round {
    /// Whether some statement filled its batch, so more rows are waiting.
    pub fn full(&self) -> bool {
        [
            self.rescued(),
            self.claims_pruned,
            self.dead_lettered,
            self.pruned,
            self.unknown_failed,
            self.nodes_reaped,
        ]
        .iter()
        .any(|n| *n >= BATCH)
            || self.finished.unfinished
            || self.keys.unfinished
    }

    pub fn rescued(&self) -> u64 {
        self.rescued_retry + self.rescued_failed + self.rescued_unstarted
    }
}

/// When the next round runs.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    next: Instant,
}

impl Schedule {
    /// The first round comes after `offset` (a random fraction of the
    /// interval, so nodes started together do not sweep in step).
    pub fn new(interval: Duration, now: Instant, offset: f64) -> Self {
        Schedule {
            interval,
            next: now + interval.mul_f64(offset.clamp(0.0, 1.0)),
        }
    }

    pub fn next(&self) -> Instant {
        self.next
    }

    /// After a round that ended at `now`: at once (after a short pause) if a
    /// batch was full, else one interval later. A failed round waits the
    /// interval too: the connection attempts are paced by the Db anyway.
    pub fn after(&mut self, now: Instant, outcome: Result<Round, ()>) {
        let wait = match outcome {
            Ok(round) if round.full() => CATCH_UP.min(self.interval),
            _ => self.interval,
        };
        self.next = now + wait;
    }
}

/// The warning line for rescued jobs, if any.
pub fn rescue_message(round: &Round) -> Option<String> {
    (round.rescued() > 0).then(|| {
        format!(
            "rescued {} jobs from lost nodes ({} back in retry, {} failed, \
             {} never started: back uncharged)",
            round.rescued(),
            round.rescued_retry,
            round.rescued_failed,
            round.rescued_unstarted
        )
    })
}

/// The maintenance task: one round per interval, for the core's lifetime.
pub async fn maintain(db: Arc<Db>) {
    let shared = db.shared();
    let mut streak = Streak::new("maintenance");
    let mut schedule = Schedule::new(
        db.config().maintenance_interval,
        Instant::now(),
        fastrand::f64(),
    );
    let mut walks = Walks::default();
    loop {
        tokio::time::sleep_until(schedule.next().into()).await;
        let outcome = sweep(&db, &mut walks).await;
        match &outcome {
            Ok(round) => {
                streak.ok(shared);
                shared.stats.add(Stat::Sweeps, 1);
                if let Some(message) = rescue_message(round) {
                    shared.log("warning", message);
                }
            }
            Err(e) => streak.failed(shared, e),
        }
        schedule.after(Instant::now(), outcome.map_err(|_| ()));
    }
}

/// One round: every sweep in turn, counted as it goes (a failure part-way
/// keeps what was done). A new sweep is a function below and a line here.
async fn sweep(db: &Db, walks: &mut Walks) -> Result<Round, CoreError> {
    let conn = db.maintenance_client().await?;
    let mut round = Round::default();
    (
        round.rescued_retry,
        round.rescued_failed,
        round.rescued_unstarted,
    ) = rescue(db, &conn).await?;
    round.claims_pruned = prune_claims(db, &conn).await?;
    round.dead_lettered = dead_letter(db, &conn).await?;
    round.pruned = prune_dead_letters(db, &conn).await?;
    round.finished = prune_finished(db, &conn, &mut walks.finished).await?;
    round.keys = release_keys(db, &conn, &mut walks.keys).await?;
    round.unknown_failed = fail_unknown_types(db, &conn).await?;
    round.nodes_reaped = reap_nodes(db, &conn).await?;
    Ok(round)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The count in column `name` of a statement's one row (0 without a row).
fn counted(rows: &[Row], name: &str) -> Result<u64, CoreError> {
    let n: i64 = rows
        .first()
        .map(|r| r.try_get(name))
        .transpose()
        .map_err(|e| CoreError::Database(format!("{name} count: {e}")))?
        .unwrap_or(0);
    Ok(n.max(0) as u64)
}

/// Jobs of nodes that stopped renewing their leases: (back in retry,
/// failed for good, never started and back uncharged). Those back wake the
/// idle nodes.
async fn rescue(db: &Db, conn: &Conn) -> Result<(u64, u64, u64), CoreError> {
    let config = db.config();
    let params: [&(dyn ToSql + Sync); 2] = [&ms(config.heartbeat_timeout), &config.max_crashes];
    let rows = db.query(conn, sql::RESCUE, &params).await?;
    let retried = counted(&rows, "retried")?;
    let failed = counted(&rows, "failed")?;
    let unstarted = counted(&rows, "unstarted")?;
    db.shared()
        .stats
        .add(Stat::Rescued, retried + failed + unstarted);
    if retried + unstarted > 0 {
        notify(db, conn).await;
    }
    Ok((retried, failed, unstarted))
}

/// forge_claims rows that hold nothing any more.
async fn prune_claims(db: &Db, conn: &Conn) -> Result<u64, CoreError> {
    let timeout = ms(db.config().heartbeat_timeout);
    let n = db.query(conn, sql::PRUNE_CLAIMS, &[&timeout]).await?.len() as u64;
    db.shared().stats.add(Stat::ClaimsPruned, n);
    Ok(n)
}

/// Failed jobs into the dead letter queue after dead_letter_after.
async fn dead_letter(db: &Db, conn: &Conn) -> Result<u64, CoreError> {
    let after = ms(db.config().dead_letter_after);
    let n = db.query(conn, sql::DEAD_LETTER, &[&after]).await?.len() as u64;
    db.shared().stats.add(Stat::DeadLettered, n);
    Ok(n)
}

/// Dead letters past their retention, deleted.
async fn prune_dead_letters(db: &Db, conn: &Conn) -> Result<u64, CoreError> {
    let retain = ms(db.config().dead_letter_retain);
    let rows = db.query(conn, sql::PRUNE_DEAD_LETTERS, &[&retain]).await?;
    let n = counted(&rows, "pruned")?;
    db.shared().stats.add(Stat::Pruned, n);
    Ok(n)
}

/// Completed, cancelled and discarded rows past their [retention], deleted
/// by walking the primary key one window after another (engine.sql says
/// why), up to WALK_WINDOWS windows a round; the walk goes on from where it
/// stopped next round and starts over once it reaches its end.
async fn prune_finished(db: &Db, conn: &Conn, walk: &mut Walk) -> Result<Finished, CoreError> {
    let retention = db.config().retention;
    let mut finished = Finished::default();
    let Some(shortest) = retention.shortest() else {
        return Ok(finished);
    };
    let kept = |d: Option<Duration>| d.map(ms);
    let (completed, cancelled, discarded) = (
        kept(retention.completed),
        kept(retention.cancelled),
        kept(retention.discarded),
    );
    let shortest = ms(shortest);
    let stats = &db.shared().stats;
    for _ in 0..WALK_WINDOWS {
        let params: [&(dyn ToSql + Sync); 5] =
            [&walk.after, &completed, &cancelled, &discarded, &shortest];
        let rows = db.query(conn, sql::PRUNE_FINISHED, &params).await?;
        let window = (
            counted(&rows, "completed")?,
            counted(&rows, "cancelled")?,
            counted(&rows, "discarded")?,
        );
        finished.completed += window.0;
        finished.cancelled += window.1;
        finished.discarded += window.2;
        stats.add(Stat::PrunedCompleted, window.0);
        stats.add(Stat::PrunedCancelled, window.1);
        stats.add(Stat::PrunedDiscarded, window.2);
        let (last, all) = walked(&rows, "prune_finished")?;
        if all {
            walk.after = 0;
            return Ok(finished);
        }
        walk.after = last;
    }
    finished.unfinished = true;
    Ok(finished)
}

/// Idempotency keys of jobs finished over [retention] idempotency ago,
/// released by walking the keyed rows one window after another (engine.sql
/// says why), up to WALK_WINDOWS windows a round, as prune_finished walks.
async fn release_keys(db: &Db, conn: &Conn, walk: &mut Walk) -> Result<Released, CoreError> {
    let mut released = Released::default();
    let Some(window) = db.config().idempotency.map(ms) else {
        return Ok(released);
    };
    for _ in 0..WALK_WINDOWS {
        let params: [&(dyn ToSql + Sync); 2] = [&walk.after, &window];
        let rows = db.query(conn, sql::RELEASE_KEYS, &params).await?;
        let n = counted(&rows, "released")?;
        released.keys += n;
        db.shared().stats.add(Stat::KeysReleased, n);
        let (last, all) = walked(&rows, "release_keys")?;
        if all {
            walk.after = 0;
            return Ok(released);
        }
        walk.after = last;
    }
    released.unfinished = true;
    Ok(released)
}

/// The last id of a walk's window (statement `what`), and whether the walk
/// is over.
fn walked(rows: &[Row], what: &str) -> Result<(i64, bool), CoreError> {
    let row = rows
        .first()
        .ok_or_else(|| CoreError::Database(format!("{what} returned no row")))?;
    let last = row.try_get("last_id");
    let all = row.try_get("walked_all");
    match (last, all) {
        (Ok(last), Ok(all)) => Ok((last, all)),
        (Err(e), _) | (_, Err(e)) => Err(CoreError::Database(format!("{what}: {e}"))),
    }
}

/// Due jobs of types no node has run for unknown_type_grace, failed with
/// the reason.
async fn fail_unknown_types(db: &Db, conn: &Conn) -> Result<u64, CoreError> {
    let config = db.config();
    let params: [&(dyn ToSql + Sync); 3] = [
        &ms(config.unknown_type_grace),
        &ms(config.heartbeat_timeout),
        &config.owner,
    ];
    let n = db
        .query(conn, sql::FAIL_UNKNOWN_TYPES, &params)
        .await?
        .len() as u64;
    let shared = db.shared();
    shared.stats.add(Stat::UnknownFailed, n);
    if n > 0 {
        shared.log(
            "warning",
            format!(
                "failed {n} due jobs of types no node has run for {:.0} s",
                config.unknown_type_grace.as_secs_f64()
            ),
        );
    }
    Ok(n)
}

/// Registrations of nodes long gone, deleted.
async fn reap_nodes(db: &Db, conn: &Conn) -> Result<u64, CoreError> {
    let after = ms(db.config().reap_nodes_after());
    let n = db.query(conn, sql::REAP_NODES, &[&after]).await?.len() as u64;
    db.shared().stats.add(Stat::NodesReaped, n);
    Ok(n)
}

/// Rescued jobs are claimable at once: wake idle nodes (this one included,
/// through its LISTEN). Only a hint (nodes also poll), so a failure is
/// counted, not fatal.
async fn notify(db: &Db, conn: &Conn) {
    if db.query(conn, sql::NOTIFY, &[]).await.is_err() {
        db.shared().stats.add(Stat::Errors, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(1000);

    #[test]
    fn first_round_is_spread_over_one_interval() {
        let now = Instant::now();
        assert_eq!(Schedule::new(INTERVAL, now, 0.0).next(), now);
        assert_eq!(
            Schedule::new(INTERVAL, now, 0.25).next(),
            now + Duration::from_millis(250)
        );
        assert_eq!(Schedule::new(INTERVAL, now, 7.0).next(), now + INTERVAL);
    }

    #[test]
    fn rounds_follow_the_interval_and_catch_up_on_full_batches() {
        let now = Instant::now();
        let mut s = Schedule::new(INTERVAL, now, 0.0);
        s.after(now, Ok(Round::default()));
        assert_eq!(s.next(), now + INTERVAL);
        let full = Round {
            dead_lettered: BATCH,
            ..Round::default()
        };
        s.after(now, Ok(full));
        assert_eq!(s.next(), now + CATCH_UP);
        s.after(now, Err(()));
        assert_eq!(s.next(), now + INTERVAL);
        let short = Schedule::new(Duration::from_millis(10), now, 0.0);
        let mut short = short;
        short.after(now, Ok(full));
        assert_eq!(short.next(), now + Duration::from_millis(10));
    }

    #[test]
    fn a_round_is_full_when_any_statement_filled_its_batch() {
        assert!(!Round::default().full());
        let rescue_split = Round {
            rescued_retry: 500,
            rescued_failed: 300,
            rescued_unstarted: 200,
            ..Round::default()
        };
        assert!(rescue_split.full());
        let partial = Round {
            pruned: 999,
            nodes_reaped: 3,
            ..Round::default()
        };
        assert!(!partial.full());
        let walking = Round {
            finished: Finished {
                unfinished: true,
                ..Finished::default()
            },
            ..Round::default()
        };
        assert!(walking.full());
        let releasing = Round {
            keys: Released {
                keys: 20_000,
                unfinished: true,
            },
            ..Round::default()
        };
        assert!(releasing.full());
    }

    #[test]
    fn rescues_are_logged_only_when_there_are_some() {
        assert_eq!(rescue_message(&Round::default()), None);
        let r = Round {
            rescued_retry: 2,
            rescued_failed: 1,
            rescued_unstarted: 4,
            ..Round::default()
        };
        assert_eq!(
            rescue_message(&r).unwrap(),
            "rescued 7 jobs from lost nodes (2 back in retry, 1 failed, \
             4 never started: back uncharged)"
        );
        let unstarted = Round {
            rescued_unstarted: 1,
            ..Round::default()
        };
        assert!(rescue_message(&unstarted).is_some());
    }
}
