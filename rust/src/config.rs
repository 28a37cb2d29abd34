//! The core's settings, fixed when a Core is made: what the runtime's tasks
//! read (Config), how failed jobs are retried (Policies), and the timeouts
//! derived from them. Built and validated once from Python's CoreSettings
//! (lib.rs); the defaults live in Python's config.py, none here.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::backoff::Backoff;

/// Everything the runtime needs, fixed at construction.
#[derive(Debug, Clone)]
pub struct Config {
    pub dsn: String,
    pub owner: Uuid,
    /// What this node's forge_nodes row says about it.
    pub node: NodeInfo,
    pub capabilities: Vec<String>,
    /// The job types this node runs: the only ones it claims, sorted.
    pub job_types: Vec<String>,
    /// Most rows one claim statement takes.
    pub claim_batch: u64,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A lease not renewed this long is rescued by the maintenance sweep.
    pub heartbeat_timeout: Duration,
    /// A lease not renewed this long is given up by this node (its job's
    /// worker killed) before any other can rescue it: the supervisor's
    /// self-fencing limit, a fraction of heartbeat_timeout (supervisor/lease.py).
    pub fence_after: Duration,
    /// Crash-class endings after which a job is failed whatever its attempts.
    pub max_crashes: i32,
    pub maintenance_interval: Duration,
    /// How long a failed job stays failed before the dead letter queue.
    pub dead_letter_after: Duration,
    /// How long a dead letter is kept when its row sets no retention.
    pub dead_letter_retain: Duration,
    /// How long no node may have run a job type before its due jobs fail.
    pub unknown_type_grace: Duration,
    /// How long finished rows are kept ([retention]).
    pub retention: Retention,
    /// How long a finished job keeps its idempotency key ([retention]
    /// idempotency); None: as long as its row.
    pub idempotency: Option<Duration>,
    /// Most log lines stored per attempt of a job.
    pub job_log_lines: u32,
}

/// How long completed, cancelled and discarded rows are kept before the
/// maintenance sweep deletes them; None keeps them forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub completed: Option<Duration>,
    pub cancelled: Option<Duration>,
    pub discarded: Option<Duration>,
}

impl Retention {
    /// The shortest retention that deletes anything: no row created more
    /// recently than this can be due (None: nothing is ever pruned).
    pub fn shortest(&self) -> Option<Duration> {
        [self.completed, self.cancelled, self.discarded]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The registration of this supervisor run (its id is Config::owner).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub hostname: String,
    pub roles: Vec<String>,
    pub workers: i32,
}

/// Bounds of the client-side timeout of every statement round and connect.
const IO_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const IO_TIMEOUT_MAX: Duration = Duration::from_secs(10);
/// Gone nodes' registrations are kept at least this long, for operators to see.
const REAP_NODES_MIN: Duration = Duration::from_secs(3600);

impl Config {
    /// The client-side timeout of a statement round or a connection
    /// attempt: a third of the heartbeat timeout, within 1-10 s, so a hung
    /// connection is replaced well before this node's leases expire.
    pub fn io_timeout(&self) -> Duration {
        io_timeout(self.heartbeat_timeout)
    }

    /// How long a node must have been silent before its registration is
    /// deleted: 10 heartbeat timeouts, at least an hour.
    pub fn reap_nodes_after(&self) -> Duration {
        (self.heartbeat_timeout * 10).max(REAP_NODES_MIN)
    }
}

pub fn io_timeout(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 3).clamp(IO_TIMEOUT_MIN, IO_TIMEOUT_MAX)
}

/// Retry policies by job type, used when Python reports a failure.
#[derive(Debug, Clone)]
pub struct Policies {
    pub by_type: HashMap<String, Backoff>,
    pub default: Backoff,
}

impl Policies {
    /// The delay before retrying `job_type` after failed attempt `attempt`;
    /// the default policy for a type this node does not know.
    pub fn delay_ms(&self, job_type: Option<&str>, attempt: i32) -> f64 {
        let policy = job_type
            .and_then(|t| self.by_type.get(t))
            .unwrap_or(&self.default);
        policy.delay_ms(attempt.max(1) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::BackoffKind;

    #[test]
    fn io_timeout_is_a_third_of_the_heartbeat_timeout_within_bounds() {
        assert_eq!(io_timeout(Duration::from_secs(30)), Duration::from_secs(10));
        assert_eq!(
            io_timeout(Duration::from_secs(300)),
            Duration::from_secs(10)
        );
        assert_eq!(io_timeout(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(
            io_timeout(Duration::from_millis(900)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_shortest_retention_ignores_the_kept_forever() {
        let hour = Duration::from_secs(3600);
        let day = hour * 24;
        assert_eq!(Retention::default().shortest(), None);
        let retention = Retention {
            completed: None,
            cancelled: Some(day),
            discarded: Some(hour),
        };
        assert_eq!(retention.shortest(), Some(hour));
    }

    #[test]
    fn unknown_types_get_the_default_policy() {
        let fixed = |ms| Backoff::new(BackoffKind::Fixed, ms, None, 0.0).unwrap();
        let policies = Policies {
            by_type: [("email".to_string(), fixed(500.0))].into(),
            default: fixed(1000.0),
        };
        assert_eq!(policies.delay_ms(Some("email"), 1), 500.0);
        assert_eq!(policies.delay_ms(Some("other"), 1), 1000.0);
        assert_eq!(policies.delay_ms(None, 0), 1000.0);
    }
}
