//! The producer: claims due jobs for this node when the claim state says
//! so (credits held and a reason to look), and hands them to Python.

use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Row;

use crate::claim::{Claimed, Decision};
use crate::db::Db;
use crate::errors::CoreError;
use crate::shared::{lock, Shared};
use crate::sql;
use crate::stats::Stat;
use crate::streak::Streak;

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
    let tell_peers = lock(&db.shared().claim).tells_peers();
    let rows = db
        .query(
            &conn,
            sql::CLAIM,
            &[
                &n,
                &config.capabilities,
                &config.owner,
                &config.job_types,
                &tell_peers,
            ],
        )
        .await?;
    db.shared().stats.add(Stat::Claims, 1);
    rows.iter()
        .filter(|r| !no_job(r))
        .map(claimed_from_row)
        .collect()
}

/// The claim statement returns one row of nulls when it took nothing (so
/// that it always runs its cleared notice, see engine.sql).
fn no_job(row: &Row) -> bool {
    matches!(row.try_get::<_, Option<i64>>("id"), Ok(None))
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
