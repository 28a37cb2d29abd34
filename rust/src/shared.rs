//! The state the Python thread and the runtime thread share: claimed jobs
//! and log lines waiting for Python, the leases in flight (and those lost or
//! asked to stop), the claim state,
//! the lease clock, when the Python loop was last seen and the report
//! sequence that flush() waits on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::batch::Report;
use crate::claim::{ClaimState, Claimed};
use crate::leases::InFlight;
use crate::stats::{Stat, Stats};
use crate::wake::Wake;

/// A report with its sequence number, for flush().
pub type Sequenced = (u64, Report);

/// Locks ignoring poisoning: the guarded data stays consistent because no
/// code path panics while holding these locks mid-update.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Shared {
    pub wake: Wake,
    pub jobs: Mutex<Vec<Claimed>>,
    pub logs: Mutex<Vec<(&'static str, String)>>,
    pub stats: Stats,
    pub inflight: Mutex<InFlight>,
    /// Leases the heartbeat found lost, until Python's lost().
    pub lost: Mutex<Vec<(i64, i32)>>,
    /// Held jobs an operator asked to stop (a notice, or the heartbeat
    /// renewal's cancel column), until Python's cancels().
    pub cancels: Mutex<Vec<(i64, i32)>>,
    /// When the last heartbeat round that renewed everything was sent (the
    /// core's start before the first one).
    pub renewed_at: Mutex<Instant>,
    /// When the supervisor's loop last read the lease clock (lease_age_ms(),
    /// every pass): its proof of life, which the heartbeat renews running
    /// jobs' leases by (the core's start before the first pass).
    pub loop_seen_at: Mutex<Instant>,
    pub claim: Mutex<ClaimState>,
    /// Wakes the producer: credits granted, NOTIFY, retry scheduled.
    pub claim_wake: Notify,
    /// Sequence number of the last report written, and its waiters.
    written: Mutex<u64>,
    written_cv: Condvar,
    /// Whether the runtime recorded the node's clean stop before ending.
    stop_recorded: AtomicBool,
}

impl Shared {
    pub fn new(wake: Wake, claim: ClaimState) -> Self {
        Shared {
            wake,
            jobs: Mutex::default(),
            logs: Mutex::default(),
            stats: Stats::default(),
            inflight: Mutex::default(),
            lost: Mutex::default(),
            cancels: Mutex::default(),
            renewed_at: Mutex::new(Instant::now()),
            loop_seen_at: Mutex::new(Instant::now()),
            claim: Mutex::new(claim),
            claim_wake: Notify::new(),
            written: Mutex::new(0),
            written_cv: Condvar::new(),
            stop_recorded: AtomicBool::new(false),
        }
    }

    pub fn log(&self, level: &'static str, message: String) {
        lock(&self.logs).push((level, message));
        self.wake.signal();
    }

    /// Jobs (id, attempt) to stop for an operator's cancel: wakes the
    /// supervisor's loop, which kills their workers or drops them unstarted.
    pub fn cancel_requested(&self, jobs: impl IntoIterator<Item = (i64, i32)>) {
        let mut cancels = lock(&self.cancels);
        let before = cancels.len();
        cancels.extend(jobs);
        if cancels.len() > before {
            drop(cancels);
            self.wake.signal();
        }
    }

    /// Changes the claim state and wakes the producer to re-decide.
    pub fn claim_event(&self, change: impl FnOnce(&mut ClaimState)) {
        change(&mut lock(&self.claim));
        self.claim_wake.notify_one();
    }

    /// Hands claimed jobs to Python: leases first, so a fail() right after
    /// take() finds the job's type.
    pub fn deliver(&self, jobs: Vec<Claimed>) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut inflight = lock(&self.inflight);
            for j in &jobs {
                inflight.add(j.id, j.attempt, j.job_type.clone(), j.claim);
            }
        }
        self.stats.add(Stat::Claimed, jobs.len() as u64);
        lock(&self.jobs).extend(jobs);
        self.wake.signal();
    }

    /// Reports up to `seq` are in the database: wake flush() waiters.
    pub fn mark_written(&self, seq: u64) {
        *lock(&self.written) = seq;
        self.written_cv.notify_all();
    }

    /// Waits until reports up to `seq` are written; false at the deadline.
    pub fn wait_written(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut written = lock(&self.written);
        while *written < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            written = self
                .written_cv
                .wait_timeout(written, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    pub fn set_stop_recorded(&self, recorded: bool) {
        self.stop_recorded.store(recorded, Ordering::Relaxed);
    }

    pub fn stop_recorded(&self) -> bool {
        self.stop_recorded.load(Ordering::Relaxed)
    }
}
