//! Counters the core keeps for stats(), updated from any thread without locks.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy)]
pub enum Stat {
    /// Jobs claimed.
    Claimed,
    /// Claim statements that returned rows or not.
    Claims,
    Started,
    Completed,
    /// Failed for good (no retry left, or not retryable).
    Failed,
    /// Failed attempts put back in retry.
    Retried,
    Released,
    /// Progress rows written.
    Progress,
    /// Job log lines written.
    Logged,
    /// Job log lines dropped over [node] job_log_lines (never queued).
    LogDropped,
    /// Reports the lease guard rejected (late, duplicate or lost lease).
    Fenced,
    /// Report batches written.
    Flushes,
    /// Statements run, of every kind.
    Statements,
    Heartbeats,
    /// Held leases a heartbeat did not renew.
    Lost,
    /// Database errors of any task.
    Errors,
    /// Jobs failed for good because the crash cap (max_crashes) stopped a
    /// retry they would otherwise have had (by this node's reports).
    Poisoned,
    /// Jobs of lost nodes the maintenance sweep put back in retry or failed.
    Rescued,
    /// Failed jobs moved to the dead letter queue.
    DeadLettered,
    /// Dead letters deleted after their retention.
    Pruned,
    /// Completed rows deleted after [retention] completed.
    PrunedCompleted,
    /// Cancelled rows deleted after [retention] cancelled.
    PrunedCancelled,
    /// Discarded rows deleted after [retention] discarded.
    PrunedDiscarded,
    /// Due jobs failed because no live node runs their type.
    UnknownFailed,
    /// forge_nodes rows of long-gone nodes deleted.
    NodesReaped,
    /// Maintenance rounds completed.
    Sweeps,
    /// Connection attempts (all connections, the first ones included).
    Connects,
    /// forge_claims rows this node deleted once their jobs had all ended.
    ClaimsClosed,
    /// forge_claims rows the maintenance sweep deleted (see prune_claims).
    ClaimsPruned,
    /// Reports the database refused (each recorded as its job's failure).
    Refused,
    /// Reports set aside because another session held their job's row
    /// locked (counted once, when their statement first met the lock).
    Held,
    /// Heartbeat rounds that renewed no running job's lease because the
    /// supervisor's loop had not been seen for the fence limit (heartbeat.rs).
    LoopUnseen,
    /// Held jobs an operator cancelled whose end this node wrote (0007's
    /// trigger made it cancelled).
    Cancelled,
    /// Idempotency keys of finished jobs released after [retention]
    /// idempotency.
    KeysReleased,
}

const NAMES: [&str; 34] = [
    "claimed",
    "claims",
    "started",
    "completed",
    "failed",
    "retried",
    "released",
    "progress",
    "logged",
    "log_dropped",
    "fenced",
    "flushes",
    "statements",
    "heartbeats",
    "lost",
    "errors",
    "poisoned",
    "rescued",
    "dead_lettered",
    "pruned",
    "pruned_completed",
    "pruned_cancelled",
    "pruned_discarded",
    "unknown_failed",
    "nodes_reaped",
    "sweeps",
    "connects",
    "claims_closed",
    "claims_pruned",
    "refused",
    "held",
    "loop_unseen",
    "cancelled",
    "keys_released",
];

#[derive(Debug)]
pub struct Stats {
    counters: [AtomicU64; NAMES.len()],
}

impl Default for Stats {
    /// By hand: the standard library derives Default for arrays of at most 32.
    fn default() -> Self {
        Stats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Stats {
    pub fn add(&self, stat: Stat, n: u64) {
        self.counters[stat as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        NAMES
            .iter()
            .zip(&self.counters)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name() {
        let s = Stats::default();
        s.add(Stat::Claimed, 3);
        s.add(Stat::Errors, 1);
        let snap = s.snapshot();
        assert_eq!(snap[0], ("claimed", 3));
        assert_eq!(snap[Stat::Errors as usize], ("errors", 1));
        assert_eq!(snap.len(), NAMES.len());
        s.add(Stat::Connects, 2);
        assert_eq!(s.snapshot()[Stat::Connects as usize], ("connects", 2));
        s.add(Stat::ClaimsPruned, 4);
        assert_eq!(
            s.snapshot()[Stat::ClaimsPruned as usize],
            ("claims_pruned", 4)
        );
        s.add(Stat::Refused, 1);
        assert_eq!(s.snapshot()[Stat::Refused as usize], ("refused", 1));
        s.add(Stat::Held, 2);
        assert_eq!(s.snapshot()[Stat::Held as usize], ("held", 2));
        s.add(Stat::LoopUnseen, 1);
        assert_eq!(s.snapshot()[Stat::LoopUnseen as usize], ("loop_unseen", 1));
        s.add(Stat::LogDropped, 5);
        assert_eq!(s.snapshot()[Stat::LogDropped as usize], ("log_dropped", 5));
        s.add(Stat::Cancelled, 1);
        assert_eq!(s.snapshot()[Stat::Cancelled as usize], ("cancelled", 1));
    }
}
