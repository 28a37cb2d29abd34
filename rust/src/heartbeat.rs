//! The heartbeat: renews every lease this node holds and its registration in
//! one pipelined round per heartbeat interval, on its own connection (with
//! the live peers, for announce.rs), moves
//! the lease clock the supervisor fences itself on, and reports the leases
//! found lost, or given up because another session kept their rows locked.
//!
//! A running job's lease is renewed only while the supervisor's loop is seen
//! running (it reads the lease clock every pass): a loop frozen past the
//! fence limit has had its workers killed by the zygote, so its running
//! jobs' leases are left to expire and other nodes rescue them, instead of
//! this thread keeping them held by a node that runs nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::announce::Peer;
use crate::db::Db;
use crate::errors::CoreError;
use crate::leases::{Pairs, Renew};
use crate::shared::{lock, Shared};
use crate::sql;
use crate::stats::Stat;
use crate::streak::Streak;

/// Lost lease ids listed in one log line.
const MAX_IDS_LOGGED: usize = 20;

/// Renews the leases every heartbeat_interval; the first beat is one
/// interval after start since the claim itself set heartbeat_at.
pub async fn heartbeat(db: Arc<Db>) {
    let shared = db.shared();
    let mut streak = Streak::new("heartbeat");
    let mut tick = tokio::time::interval(db.config().heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut watched = Renew::All;
    loop {
        tick.tick().await;
        let unseen = lock(&shared.loop_seen_at).elapsed();
        let renewing = renew(unseen, db.config().fence_after);
        if renewing != watched {
            log_watch(shared, renewing, unseen, db.config().fence_after);
            // claiming stops with the renewals, and resumes with them (within a heartbeat interval)
            shared.claim_event(|c| c.set_loop_unseen(renewing == Renew::Ending));
            watched = renewing;
        }
        match beat(&db, renewing).await {
            Ok(()) => streak.ok(shared),
            Err(e) => streak.failed(shared, &e),
        }
    }
}

/// Which held leases a round renews when the supervisor's loop was last
/// seen `unseen` ago: all while it runs; once that passes the fence limit
/// (the age of the lease clock at which the zygote kills every worker of a
/// frozen loop, supervisor/zygote.py) only the ending ones, whose outcome
/// waits for the reporter, not for a worker.
fn renew(unseen: Duration, fence_after: Duration) -> Renew {
    if unseen > fence_after {
        Renew::Ending
    } else {
        Renew::All
    }
}

/// One line when the loop stops being seen, and one when it is seen again.
fn log_watch(shared: &Shared, renewing: Renew, unseen: Duration, fence_after: Duration) {
    match renewing {
        Renew::Ending => shared.log(
            "error",
            format!(
                "the supervisor's loop has not run for {:.1} s (fence limit {:.1} s): running jobs' \
                 leases are no longer renewed and no job is claimed, so other nodes rescue them",
                unseen.as_secs_f64(),
                fence_after.as_secs_f64()
            ),
        ),
        Renew::All => shared.log(
            "warning",
            "the supervisor's loop runs again: running jobs' leases are renewed, claiming resumes"
                .to_string(),
        ),
    }
}

/// One round: the held leases `renewing` picks, then the node's
/// registration, pipelined. A round that renewed every lease moves the lease
/// clock, to the instant the round was sent (the database's now() is at or
/// after it), whatever became of the registration's (other nodes judge
/// leases by the jobs' rows only); one that left the running leases out
/// does not, and counts as loop_unseen. Leases not renewed leave the
/// in-flight set for Python's lost(), and the wake fd is signalled so the
/// supervisor acts on them at once.
async fn beat(db: &Db, renewing: Renew) -> Result<(), CoreError> {
    let conn = db.heartbeat_client().await?;
    let shared = db.shared();
    let config = db.config();
    let owner = &config.owner;
    let sent_at = Instant::now();
    let sent = lock(&shared.inflight).snapshot(renewing);
    let leases: [&(dyn ToSql + Sync); 3] = [&sent.ids, &sent.attempts, owner];
    let node: [&(dyn ToSql + Sync); 1] = [owner];
    let live_ms = config.heartbeat_timeout.as_secs_f64() * 1000.0;
    let live: [&(dyn ToSql + Sync); 2] = [owner, &live_ms];
    let (rows, node, peers) = tokio::join!(
        db.query(&conn, sql::HEARTBEAT, &leases),
        db.query(&conn, sql::NODE_HEARTBEAT, &node),
        db.query(&conn, sql::PEERS, &live)
    );
    if let Ok(peers) = peers.and_then(|rows| rows.iter().map(peer).collect()) {
        lock(&shared.claim).set_peers(peers);
    }
    let rows = rows?;
    let held = held(&rows)?;
    shared.cancel_requested(cancels(&rows, &sent)?);
    shared.stats.add(Stat::Heartbeats, 1);
    if renewing == Renew::All {
        let mut at = lock(&shared.renewed_at);
        *at = (*at).max(sent_at);
    } else {
        shared.stats.add(Stat::LoopUnseen, 1);
    }
    let given_up: HashSet<i64> = held
        .iter()
        .filter(|(_, age)| {
            matches!(age, Some(age) if give_up(*age, config.heartbeat_interval, config.fence_after))
        })
        .map(|(id, _)| *id)
        .collect();
    let kept: HashSet<i64> = held
        .keys()
        .filter(|id| !given_up.contains(id))
        .copied()
        .collect();
    let lost = lock(&shared.inflight).take_lost(&sent, &kept);
    let (fenced, taken): (Vec<_>, Vec<_>) =
        lost.into_iter().partition(|(id, _)| given_up.contains(id));
    report_lost(
        shared,
        &taken,
        "lease(s) lost (not renewed by the heartbeat)",
    );
    report_lost(
        shared,
        &fenced,
        &format!(
            "lease(s) given up: another session kept their rows locked, so they could not be \
             renewed before the fence limit ({:.1} s)",
            config.fence_after.as_secs_f64()
        ),
    );
    node.map(drop)
}

/// Whether a held lease whose row another session has locked, last renewed
/// `age` ago by the database's clock, must be given up now: by the next
/// round, an interval away, it could be past the fence limit, when the
/// supervisor fences itself and, soon after, another node may rescue it.
fn give_up(age: Duration, interval: Duration, fence_after: Duration) -> bool {
    age + interval >= fence_after
}

/// The renewal's rows, one per lease still held: id -> None when renewed,
/// Some(time since its last renewal) when its row was locked by someone else.
fn held(rows: &[Row]) -> Result<HashMap<i64, Option<Duration>>, CoreError> {
    let bad = |e: tokio_postgres::Error| CoreError::Database(format!("heartbeat row: {e}"));
    let mut held = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id").map_err(bad)?;
        let age = if row.try_get::<_, bool>("renewed").map_err(bad)? {
            None
        } else {
            let ms: f64 = row.try_get("age_ms").map_err(bad)?;
            Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
        };
        held.insert(id, age);
    }
    Ok(held)
}

/// The held jobs (id, attempt) whose rows say an operator cancelled them.
fn cancels(rows: &[Row], sent: &Pairs) -> Result<Vec<(i64, i32)>, CoreError> {
    let bad = |e: tokio_postgres::Error| CoreError::Database(format!("heartbeat row: {e}"));
    let mut asked = HashSet::new();
    for row in rows {
        if row.try_get::<_, bool>("cancel").map_err(bad)? {
            asked.insert(row.try_get::<_, i64>("id").map_err(bad)?);
        }
    }
    Ok(sent.pairs().filter(|(id, _)| asked.contains(id)).collect())
}

/// A live peer, from the peers statement (kept as it was when that fails).
fn peer(row: &Row) -> Result<Peer, CoreError> {
    let bad = |e: tokio_postgres::Error| CoreError::Database(format!("peers row: {e}"));
    Ok(Peer {
        id: row.try_get("id").map_err(bad)?,
        capabilities: row.try_get("capabilities").map_err(bad)?,
        job_types: row.try_get("job_types").map_err(bad)?,
    })
}

/// Hands leases no longer held to Python's lost(), with one log line saying why.
fn report_lost(shared: &Shared, lost: &[(i64, i32)], why: &str) {
    if lost.is_empty() {
        return;
    }
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
        format!("{} {why}: {}", lost.len(), ids.join(", ")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_leases_are_renewed_only_while_the_loop_was_seen_within_the_fence_limit() {
        let ms = Duration::from_millis;
        let fence = ms(4500);
        assert_eq!(renew(ms(0), fence), Renew::All);
        assert_eq!(renew(ms(4500), fence), Renew::All);
        assert_eq!(renew(ms(4501), fence), Renew::Ending);
        assert_eq!(renew(ms(60_000), fence), Renew::Ending);
    }

    #[test]
    fn a_locked_lease_is_given_up_while_the_next_round_could_still_come_in_time() {
        let ms = Duration::from_millis;
        let (interval, fence) = (ms(1000), ms(4500));
        assert!(!give_up(ms(0), interval, fence));
        assert!(!give_up(ms(3499), interval, fence));
        assert!(give_up(ms(3500), interval, fence)); // the next round would come at 4.5 s
        assert!(give_up(ms(60_000), interval, fence));
    }
}
