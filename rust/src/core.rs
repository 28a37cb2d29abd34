//! The Core: the Python-thread side (cheap, non-blocking calls) and the one
//! background thread running a current-thread tokio runtime that does all
//! database I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::batch::Report;
use crate::claim::{ClaimState, Claimed};
use crate::db::Db;
use crate::errors::CoreError;
use crate::heartbeat::InFlight;
use crate::rescue;
use crate::stats::{Stat, Stats};
use crate::tasks;
use crate::wake::Wake;

/// How long close() waits for pending reports to be written.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// How many fork()s separate this process from the one it started as: a
/// child sees one more than a Core it inherited recorded, so the Core knows
/// it is not in its own process. Every call into the Core checks this; an
/// atomic load instead of getpid(), a system call, three times per job.
static FORKS: AtomicU64 = AtomicU64::new(0);
static COUNT_FORKS: Once = Once::new();

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The current fork count, counting from the first call on.
fn fork_generation() -> u64 {
    COUNT_FORKS.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forked_child));
    });
    FORKS.load(Ordering::Relaxed)
}

/// Everything the runtime needs, fixed at construction.
#[derive(Debug)]
pub struct Config {
    pub dsn: String,
    pub owner: Uuid,
    /// What this node's forge_nodes row says about it.
    pub node: NodeInfo,
    pub capabilities: Vec<String>,
    /// The job types this node runs: the only ones it claims.
    pub job_types: Vec<String>,
    pub sql: HashMap<String, String>,
    pub max_batch: u64,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A lease not renewed this long is rescued by the maintenance sweep.
    pub heartbeat_timeout: Duration,
    /// Crash-class endings after which a job is failed whatever its attempts.
    pub max_crashes: i32,
    pub maintenance_interval: Duration,
    /// How long a failed job stays failed before the dead letter queue.
    pub dead_letter_after: Duration,
    /// How long a dead letter is kept when its row sets no retention.
    pub dead_letter_retain: Duration,
}

/// The registration of this supervisor run (its id is Config::owner).
#[derive(Debug)]
pub struct NodeInfo {
    pub hostname: String,
    pub roles: Vec<String>,
    pub workers: i32,
}

/// Bounds of the client-side timeout of every statement round and connect.
const IO_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const IO_TIMEOUT_MAX: Duration = Duration::from_secs(10);
/// Gone nodes' registrations are kept at least this long (the dashboard).
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
#[derive(Debug)]
pub struct Policies {
    pub by_type: HashMap<String, Backoff>,
    pub default: Backoff,
}

impl Policies {
    fn delay_ms(&self, job_type: Option<&str>, attempt: i32) -> f64 {
        let policy = job_type
            .and_then(|t| self.by_type.get(t))
            .unwrap_or(&self.default);
        policy.delay_ms(attempt.max(1) as u32)
    }
}

/// A report with its sequence number, for flush().
pub type Sequenced = (u64, Report);

/// State shared by the Python thread and the runtime thread.
#[derive(Debug)]
pub struct Shared {
    pub wake: Wake,
    pub jobs: Mutex<Vec<Claimed>>,
    pub logs: Mutex<Vec<(&'static str, String)>>,
    pub stats: Stats,
    pub inflight: Mutex<InFlight>,
    /// Leases the heartbeat found lost, until Python's lost().
    pub lost: Mutex<Vec<(i64, i32)>>,
    /// When the last heartbeat round that renewed everything was sent (the
    /// core's start before the first one).
    pub renewed_at: Mutex<Instant>,
    pub claim: Mutex<ClaimState>,
    /// Wakes the producer: credits granted, NOTIFY, retry scheduled.
    pub claim_wake: Notify,
    /// Sequence number of the last report written, and its waiters.
    written: Mutex<u64>,
    written_cv: Condvar,
    /// Whether the runtime recorded the node's clean stop before ending.
    stop_recorded: AtomicBool,
}

/// Locks ignoring poisoning: the guarded data stays consistent because no
/// code path panics while holding these locks mid-update.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn log(&self, level: &'static str, message: String) {
        lock(&self.logs).push((level, message));
        self.wake.signal();
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
    fn wait_written(&self, seq: u64, timeout: Duration) -> bool {
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
}

/// The report queue's sending end and the last sequence number handed out;
/// one lock so sequence order is queue order even with several Python threads.
struct Reporter {
    seq: u64,
    tx: mpsc::UnboundedSender<Sequenced>,
}

pub struct Core {
    shared: Arc<Shared>,
    policies: Policies,
    reporter: Mutex<Reporter>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// fork_generation() when made: another value means a forked child.
    forks: u64,
}

impl Core {
    /// Starts the runtime thread and waits for both connections (blocking).
    pub fn new(config: Config, policies: Policies) -> Result<Core, CoreError> {
        let wake = Wake::new().map_err(|e| CoreError::Invalid(format!("eventfd: {e}")))?;
        let shared = Arc::new(Shared {
            wake,
            jobs: Mutex::default(),
            logs: Mutex::default(),
            stats: Stats::default(),
            inflight: Mutex::default(),
            lost: Mutex::default(),
            renewed_at: Mutex::new(Instant::now()),
            claim: Mutex::new(ClaimState::new(config.max_batch, config.poll_interval)),
            claim_wake: Notify::new(),
            written: Mutex::new(0),
            written_cv: Condvar::new(),
            stop_recorded: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let runtime_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("forge-core".into())
            .spawn(move || run_thread(config, runtime_shared, rx, stop_rx, ready_tx))
            .map_err(|e| CoreError::Invalid(format!("cannot start the core thread: {e}")))?;
        let ready = ready_rx.recv().unwrap_or(Err(CoreError::Closed));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Core {
            shared,
            policies,
            reporter: Mutex::new(Reporter { seq: 0, tx }),
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
            forks: fork_generation(),
        })
    }

    /// Not a forked child of the process that made this Core.
    fn in_own_process(&self) -> bool {
        FORKS.load(Ordering::Relaxed) == self.forks
    }

    /// Every method starts here: same process, not closed.
    fn check(&self) -> Result<(), CoreError> {
        if !self.in_own_process() {
            return Err(CoreError::WrongProcess);
        }
        if lock(&self.stop).is_none() {
            return Err(CoreError::Closed);
        }
        Ok(())
    }

    pub fn fileno(&self) -> Result<i32, CoreError> {
        self.check()?;
        Ok(self.shared.wake.fd())
    }

    pub fn request(&self, n: u64) -> Result<(), CoreError> {
        self.check()?;
        self.shared.claim_event(|c| c.grant(n));
        Ok(())
    }

    pub fn pause(&self) -> Result<(), CoreError> {
        self.check()?;
        self.shared.claim_event(|c| c.pause());
        Ok(())
    }

    /// Resets the fd before draining so a push after the drain signals again;
    /// re-signals when logs are still waiting, so the fd stays readable while
    /// either queue has something.
    pub fn take(&self) -> Result<Vec<Claimed>, CoreError> {
        self.check()?;
        self.shared.wake.reset();
        let jobs = std::mem::take(&mut *lock(&self.shared.jobs));
        if !lock(&self.shared.logs).is_empty() {
            self.shared.wake.signal();
        }
        Ok(jobs)
    }

    /// Like take(), for the log lines.
    pub fn logs(&self) -> Result<Vec<(&'static str, String)>, CoreError> {
        self.check()?;
        self.shared.wake.reset();
        let logs = std::mem::take(&mut *lock(&self.shared.logs));
        if !lock(&self.shared.jobs).is_empty() {
            self.shared.wake.signal();
        }
        Ok(logs)
    }

    fn send(&self, report: Report) -> Result<(), CoreError> {
        self.check()?;
        let mut reporter = lock(&self.reporter);
        let seq = reporter.seq + 1;
        reporter
            .tx
            .send((seq, report))
            .map_err(|_| CoreError::Closed)?;
        reporter.seq = seq;
        Ok(())
    }

    pub fn start(&self, id: i64, attempt: i32) -> Result<(), CoreError> {
        self.send(Report::Start { id, attempt })
    }

    /// Ends the lease of (id, attempt) with the report `make` builds from
    /// the job's type (None when this attempt is not held), then, if it was
    /// the last held job of its claim, queues the claim row's close after
    /// that report, so the close is written after it.
    fn end(
        &self,
        id: i64,
        attempt: i32,
        make: impl FnOnce(Option<&str>) -> Report,
    ) -> Result<(), CoreError> {
        self.check()?;
        let ended = lock(&self.shared.inflight).remove(id, attempt);
        self.send(make(ended.as_ref().map(|e| e.job_type.as_str())))?;
        match ended.and_then(|e| e.closes) {
            Some(claim) => self.send(Report::CloseClaim { claim }),
            None => Ok(()),
        }
    }

    pub fn complete(&self, id: i64, attempt: i32, result: Option<String>) -> Result<(), CoreError> {
        self.end(id, attempt, |_| Report::Complete {
            id,
            attempt,
            result,
        })
    }

    /// The retry delay comes from the policy of the job's type, known from
    /// its claim; a job this core does not hold gets the default policy (the
    /// statement's lease guard fences it anyway).
    pub fn fail(
        &self,
        id: i64,
        attempt: i32,
        retryable: bool,
        error: String,
        crashed: bool,
    ) -> Result<(), CoreError> {
        self.end(id, attempt, |job_type| Report::Fail {
            id,
            attempt,
            retryable,
            delay_ms: self.policies.delay_ms(job_type, attempt),
            error,
            crashed,
        })
    }

    pub fn release(&self, id: i64, attempt: i32) -> Result<(), CoreError> {
        self.end(id, attempt, |_| Report::Release { id, attempt })
    }

    pub fn progress(
        &self,
        id: i64,
        attempt: i32,
        percent: i16,
        message: Option<String>,
    ) -> Result<(), CoreError> {
        self.send(Report::Progress {
            id,
            attempt,
            percent,
            message,
        })
    }

    /// Milliseconds since the last heartbeat round that succeeded was sent.
    pub fn lease_age_ms(&self) -> Result<u64, CoreError> {
        self.check()?;
        let at = *lock(&self.shared.renewed_at);
        Ok(at.elapsed().as_millis() as u64)
    }

    /// The (id, attempt) leases the heartbeat found lost since the last call.
    pub fn lost(&self) -> Result<Vec<(i64, i32)>, CoreError> {
        self.check()?;
        Ok(std::mem::take(&mut *lock(&self.shared.lost)))
    }

    pub fn in_flight(&self) -> Result<usize, CoreError> {
        self.check()?;
        Ok(lock(&self.shared.inflight).len())
    }

    /// Blocks (the caller releases the GIL) until every report sent before
    /// the call is written.
    pub fn flush(&self, timeout: Duration) -> Result<bool, CoreError> {
        self.check()?;
        let target = lock(&self.reporter).seq;
        Ok(self.shared.wait_written(target, timeout))
    }

    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, CoreError> {
        self.check()?;
        Ok(self.shared.stats.snapshot())
    }

    /// Flushes (bounded), stops the runtime and joins its thread. Closing
    /// twice is a no-op.
    pub fn close(&self) -> Result<bool, CoreError> {
        if !self.in_own_process() {
            return Err(CoreError::WrongProcess);
        }
        if lock(&self.stop).is_some() {
            let target = lock(&self.reporter).seq;
            self.shared.wait_written(target, CLOSE_FLUSH);
            self.shutdown();
        }
        Ok(self.shared.stop_recorded.load(Ordering::Relaxed))
    }

    /// Signals the runtime to stop and joins it. In a forked child the thread
    /// does not exist, so this must not be reached there (see Drop).
    fn shutdown(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Core {
    /// In a forked child the runtime thread does not exist: its handle and
    /// the channel ends (whose drop would wake the parent's runtime through
    /// inherited fds) are leaked instead of joined or closed.
    fn drop(&mut self) {
        if self.in_own_process() {
            self.shutdown();
            return;
        }
        std::mem::forget(lock(&self.thread).take());
        std::mem::forget(lock(&self.stop).take());
        let (tx, _) = mpsc::unbounded_channel();
        std::mem::forget(std::mem::replace(&mut lock(&self.reporter).tx, tx));
    }
}

/// The runtime thread: connect, report readiness, run the tasks until stopped.
/// Dropping the runtime at the end cancels the tasks and closes the sockets.
fn run_thread(
    config: Config,
    shared: Arc<Shared>,
    reports: mpsc::UnboundedReceiver<Sequenced>,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<(), CoreError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(CoreError::Invalid(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let config = Arc::new(config);
        let db = match Db::new(config.clone(), shared.clone()) {
            Ok(db) => Arc::new(db),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let listener = match tokio::try_join!(db.claim_client(), db.client(), db.listen()) {
            Ok((_, _, listener)) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Err(e) = tasks::register_node(&db).await {
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        tokio::spawn(tasks::listen(db.clone(), listener));
        tokio::spawn(tasks::produce(db.clone()));
        tokio::spawn(tasks::report(db.clone(), reports));
        tokio::spawn(tasks::heartbeat(db.clone()));
        tokio::spawn(rescue::maintain(db.clone()));
        let _ = stop.await;
        let recorded = tasks::record_stop(&db).await.is_ok();
        shared.stop_recorded.store(recorded, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
