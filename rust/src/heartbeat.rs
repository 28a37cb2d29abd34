//! The heartbeat: renews this node's registration and every lease it holds
//! in one pipelined round per heartbeat interval, moves the lease clock the
//! supervisor fences itself on, and reports the leases found lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tokio::time::MissedTickBehavior;

use crate::db::Db;
use crate::errors::CoreError;
use crate::shared::lock;
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
        db.query(&conn, sql::HEARTBEAT, &[&sent.ids, &sent.attempts, owner])
            .await
    };
    let node_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [owner];
    let (rows, node) = tokio::join!(leases, db.query(&conn, sql::NODE_HEARTBEAT, &node_params));
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
