//! The Core façade: the Python-thread side (cheap, non-blocking calls that
//! queue reports and read what the runtime delivered) and the one background
//! thread running a current-thread tokio runtime with the core's tasks
//! (producer, reporter, heartbeat, listener, maintenance), which does all
//! database I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::announce::Peer;
use crate::awaited::Awaited;
use crate::batch::{Complete, Fail, LogLine, Progress, Release, Report, Start};
use crate::claim::{ClaimState, Claimed};
use crate::config::{Config, Policies};
use crate::db::Db;
use crate::errors::CoreError;
use crate::leases::Ending;
use crate::shared::{lock, Sequenced, Shared};
use crate::stats::Stat;
use crate::storable::{error_text, log_fields, log_message, result_text};
use crate::wake::Wake;
use crate::{heartbeat, listener, maintenance, node, producer, reporter};

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

/// The report queue's sending end and the last sequence number handed out;
/// one lock so sequence order is queue order even with several Python threads.
struct Reporter {
    seq: u64,
    tx: mpsc::UnboundedSender<Sequenced>,
}

pub struct Core {
    shared: Arc<Shared>,
    policies: Policies,
    /// Most log lines queued per attempt ([node] job_log_lines).
    log_lines: u32,
    reporter: Mutex<Reporter>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// fork_generation() when made: another value means a forked child.
    forks: u64,
}

impl Core {
    /// Starts the runtime thread and waits for both connections (blocking).
    pub fn new(config: Config, policies: Policies) -> Result<Core, CoreError> {
        let wake = Wake::new().map_err(|e| CoreError::Internal(format!("eventfd: {e}")))?;
        let me = Peer {
            id: config.owner,
            capabilities: config.capabilities.clone(),
            job_types: config.job_types.clone(),
        };
        let log_lines = config.job_log_lines;
        let claim = ClaimState::new(config.claim_batch, config.poll_interval, Awaited::new(me));
        let shared = Arc::new(Shared::new(wake, claim));
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let runtime_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("forge-core".into())
            .spawn(move || run_thread(config, runtime_shared, rx, stop_rx, ready_tx))
            .map_err(|e| CoreError::Internal(format!("cannot start the core thread: {e}")))?;
        let ready = ready_rx.recv().unwrap_or(Err(CoreError::Closed));
        if let Err(e) = ready {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Core {
            shared,
            policies,
            log_lines,
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
        self.check()?;
        let at = Instant::now();
        lock(&self.shared.inflight).started(id, attempt, at);
        self.send(Report::Start(Start { id, attempt, at }))
    }

    /// Queues the report that ends (id, attempt), built by `make` from what
    /// the lease knows (None when this attempt is not held), after a log
    /// line saying how many of the attempt's lines were dropped, if any
    /// (unless the cap is 0: no line at all is stored then).
    /// The lease is kept, and renewed, until the reporter has written that
    /// report.
    fn end(
        &self,
        id: i64,
        attempt: i32,
        make: impl FnOnce(Option<Ending>) -> Report,
    ) -> Result<(), CoreError> {
        self.check()?;
        let (dropped, report) = {
            let mut inflight = lock(&self.shared.inflight);
            let lease = inflight.end(id, attempt);
            (lease.as_ref().map_or(0, |l| l.dropped), make(lease))
        };
        if dropped > 0 && self.log_lines > 0 {
            let line = self.dropped_line(id, attempt, dropped, Instant::now());
            self.send(Report::Log(line))?;
        }
        self.send(report)
    }

    /// The log line that ends an attempt that logged more than the cap.
    fn dropped_line(&self, id: i64, attempt: i32, dropped: u32, at: Instant) -> LogLine {
        LogLine {
            id,
            attempt,
            level: "warn",
            message: format!(
                "{dropped} more log line(s) of this attempt dropped: {} at most are kept \
                 ([node] job_log_lines)",
                self.log_lines
            ),
            fields: Some(format!("{{\"dropped\": {dropped}}}")),
            at,
        }
    }

    /// Queues a line of a running job's log (ctx.log), made storable and
    /// cut (storable.rs), unless its attempt already has the cap's worth
    /// (then it is only counted: stats log_dropped, and a last line at the
    /// end) or is not held here (counted fenced). `level` is one of debug,
    /// info, warn, error (anything else is taken as info). Never refuses a
    /// line for its data.
    pub fn log(
        &self,
        id: i64,
        attempt: i32,
        level: &str,
        message: String,
        fields: Option<Vec<u8>>,
    ) -> Result<(), CoreError> {
        self.check()?;
        let at = Instant::now();
        match lock(&self.shared.inflight).log_line(id, attempt, self.log_lines) {
            Some(true) => {}
            Some(false) => {
                self.shared.stats.add(Stat::LogDropped, 1);
                return Ok(());
            }
            None => {
                self.shared.stats.add(Stat::Fenced, 1);
                return Ok(());
            }
        }
        let level = match level {
            "debug" => "debug",
            "warn" => "warn",
            "error" => "error",
            _ => "info",
        };
        self.send(Report::Log(LogLine {
            id,
            attempt,
            level,
            message: log_message(message),
            fields: fields.map(log_fields),
            at,
        }))
    }

    /// `result` is the JSON of the return value. One that cannot be stored
    /// (storable.rs) fails the job instead, for good: the same code would
    /// return the same value again.
    pub fn complete(
        &self,
        id: i64,
        attempt: i32,
        result: Option<Vec<u8>>,
    ) -> Result<(), CoreError> {
        let at = Instant::now();
        let result = result.map(result_text).transpose();
        self.end(id, attempt, |lease| {
            let started = lease.and_then(|l| l.started);
            match result {
                Ok(result) => Report::Complete(Complete {
                    id,
                    attempt,
                    result,
                    started,
                    at,
                }),
                Err(why) => self.not_storable(id, attempt, &why, started, at),
            }
        })
    }

    /// The failure, logged, of a job whose result cannot be stored.
    fn not_storable(
        &self,
        id: i64,
        attempt: i32,
        why: &str,
        started: Option<Instant>,
        at: Instant,
    ) -> Report {
        let message = format!("the result of job {id} (attempt {attempt}) cannot be stored: {why}");
        self.shared.log("warning", message.clone());
        Report::Fail(Fail::not_storable(id, attempt, &message, started, at))
    }

    /// The retry delay comes from the policy of the job's type, known from
    /// its claim; a job this core does not hold gets the default policy (the
    /// statement's lease guard fences it anyway). Never refuses `error`: an
    /// error the database refuses is replaced when written (reporter.rs).
    pub fn fail(
        &self,
        id: i64,
        attempt: i32,
        retryable: bool,
        error: Vec<u8>,
        crashed: bool,
    ) -> Result<(), CoreError> {
        let at = Instant::now();
        let error = error_text(error);
        self.end(id, attempt, |lease| {
            Report::Fail(Fail {
                id,
                attempt,
                retryable,
                delay_ms: self
                    .policies
                    .delay_ms(lease.as_ref().map(|l| l.job_type), attempt),
                error,
                crashed,
                started: lease.and_then(|l| l.started),
                at,
            })
        })
    }

    pub fn release(&self, id: i64, attempt: i32) -> Result<(), CoreError> {
        self.end(id, attempt, |_| Report::Release(Release { id, attempt }))
    }

    pub fn progress(
        &self,
        id: i64,
        attempt: i32,
        percent: i16,
        message: Option<String>,
    ) -> Result<(), CoreError> {
        self.send(Report::Progress(Progress {
            id,
            attempt,
            percent,
            message,
        }))
    }

    /// Milliseconds since the last heartbeat round that renewed the running
    /// jobs' leases was sent. Reading it is also the supervisor loop's proof
    /// of life: the loop reads it every pass to fence itself on, and the
    /// heartbeat renews running jobs' leases only while it does.
    pub fn lease_age_ms(&self) -> Result<u64, CoreError> {
        self.check()?;
        *lock(&self.shared.loop_seen_at) = Instant::now();
        let at = *lock(&self.shared.renewed_at);
        Ok(at.elapsed().as_millis() as u64)
    }

    /// The (id, attempt) leases the heartbeat found lost since the last call.
    pub fn lost(&self) -> Result<Vec<(i64, i32)>, CoreError> {
        self.check()?;
        Ok(std::mem::take(&mut *lock(&self.shared.lost)))
    }

    /// The (id, attempt) held jobs an operator cancelled since the last
    /// call (a job may come again while it has not ended).
    pub fn cancels(&self) -> Result<Vec<(i64, i32)>, CoreError> {
        self.check()?;
        Ok(std::mem::take(&mut *lock(&self.shared.cancels)))
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
        Ok(self.shared.stop_recorded())
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
            let _ = ready.send(Err(CoreError::Internal(format!("tokio runtime: {e}"))));
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
        if let Err(e) = node::register_node(&db).await {
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        tokio::spawn(listener::listen(db.clone(), listener));
        tokio::spawn(producer::produce(db.clone()));
        tokio::spawn(reporter::report(db.clone(), reports));
        tokio::spawn(heartbeat::heartbeat(db.clone()));
        tokio::spawn(maintenance::maintain(db.clone()));
        let _ = stop.await;
        shared.set_stop_recorded(node::record_stop(&db).await.is_ok());
    });
}
