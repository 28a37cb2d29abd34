//! This supervisor run's registration in forge_nodes: inserted before the
//! first claim, its stop recorded at the end (the heartbeat keeps it fresh),
//! both on the heartbeat connection, which no report ever waits on.

use std::time::Duration;

use crate::db::Db;
use crate::errors::CoreError;
use crate::sql;

/// The most a stopping supervisor waits to record its stop.
const RECORD_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Inserts this run's forge_nodes row (before the first claim: other nodes
/// judge job types and leases by the registrations they see).
pub async fn register_node(db: &Db) -> Result<(), CoreError> {
    let conn = db.heartbeat_client().await?;
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
    db.query(&conn, sql::REGISTER_NODE, &params).await?;
    Ok(())
}

/// Records a clean stop in this run's row; an error when the database is
/// unreachable (the row then ages out like a lost node's).
pub async fn record_stop(db: &Db) -> Result<(), CoreError> {
    let write = async {
        let conn = db.heartbeat_client().await?;
        db.query(&conn, sql::STOP_NODE, &[&db.config().owner]).await
    };
    match tokio::time::timeout(RECORD_STOP_TIMEOUT, write).await {
        Ok(result) => result.map(drop),
        Err(_) => Err(CoreError::Connect("recording the stop timed out".into())),
    }
}
