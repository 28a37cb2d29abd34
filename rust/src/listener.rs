//! The LISTEN keeper: holds the connection whose notifications (channel
//! forge_jobs) wake the producer, and replaces it when it closes or stops
//! answering.

use std::sync::Arc;

use crate::db::{Db, Listener};
use crate::pacing::ConnKind;
use crate::streak::Streak;

/// Pings the LISTEN connection every heartbeat interval (a connection that
/// hangs without closing delivers nothing and never ends) and replaces it
/// when it closes or a ping gets no answer. After a reconnect the Db makes
/// the producer claim once, since notifications sent meanwhile were missed.
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
