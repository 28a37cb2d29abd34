//! forge._core: the #[pymodule] and thin #[pyclass] wrappers over the
//! pyo3-free modules. Argument conversion and GIL release live here; the
//! logic lives in the modules.

mod announce;
mod awaited;
mod backlog;
mod backoff;
mod batch;
mod bisect;
mod claim;
mod config;
mod core;
mod db;
mod errors;
mod heartbeat;
mod held;
mod leases;
mod listener;
mod maintenance;
mod migrate;
mod node;
mod pacing;
mod producer;
mod reporter;
mod session;
mod shared;
mod sql;
mod statements;
mod stats;
mod storable;
mod streak;
mod wake;

use std::collections::HashMap;
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use crate::backoff::{Backoff, BackoffKind};
use crate::claim::Claimed;
use crate::config::{Config, NodeInfo, Policies, Retention};
use crate::errors::{forge_error, CoreError};
use crate::migrate::{MigrateError, Migration};
use crate::pacing::ConnKind;

/// How one job type is retried.
#[pyclass(frozen, module = "forge._core")]
struct JobPolicy {
    #[pyo3(get)]
    job_type: String,
    backoff: Backoff,
}

#[pymethods]
impl JobPolicy {
    #[new]
    fn new(
        job_type: String,
        backoff: &str,
        base_ms: f64,
        max_ms: Option<f64>,
        jitter: f64,
    ) -> PyResult<Self> {
        let kind: BackoffKind = backoff.parse()?;
        Ok(JobPolicy {
            job_type,
            backoff: Backoff::new(kind, base_ms, max_ms, jitter)?,
        })
    }

    fn delay_ms(&self, attempt: i64) -> PyResult<f64> {
        Ok(self.backoff.delay_ms(positive_u32(attempt, "attempt")?))
    }

    fn __repr__(&self) -> String {
        format!("JobPolicy({:?}, {:?})", self.job_type, self.backoff)
    }
}

/// A job this node holds the lease of.
#[pyclass(frozen, module = "forge._core")]
struct ClaimedJob(Claimed);

#[pymethods]
impl ClaimedJob {
    #[getter]
    fn id(&self) -> i64 {
        self.0.id
    }
    #[getter]
    fn job_type(&self) -> &str {
        &self.0.job_type
    }
    #[getter]
    fn attempt(&self) -> i32 {
        self.0.attempt
    }
    #[getter]
    fn max_attempts(&self) -> i32 {
        self.0.max_attempts
    }
    #[getter]
    fn priority(&self) -> i16 {
        self.0.priority
    }
    #[getter]
    fn input<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.input.as_bytes())
    }
    #[getter]
    fn parent_id(&self) -> Option<i64> {
        self.0.parent_id
    }

    fn __repr__(&self) -> String {
        format!(
            "ClaimedJob(id={}, job_type={:?}, attempt={})",
            self.0.id, self.0.job_type, self.0.attempt
        )
    }
}

/// Everything a Core is made from, validated once (durations in seconds).
#[pyclass(frozen, module = "forge._core")]
struct CoreSettings {
    config: Config,
    policies: Policies,
}

#[pymethods]
impl CoreSettings {
    #[new]
    #[pyo3(signature = (
        *, dsn, owner, hostname, roles, workers, capabilities, policies, default_policy,
        claim_batch, poll_interval, heartbeat_interval, heartbeat_timeout, fence_after, max_crashes,
        maintenance_interval, dead_letter_after, dead_letter_retain, unknown_type_grace,
        retain_completed, retain_cancelled, retain_discarded, retain_idempotency, job_log_lines
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dsn: String,
        owner: &str,
        hostname: String,
        roles: Vec<String>,
        workers: i64,
        capabilities: Vec<String>,
        policies: Vec<PyRef<'_, JobPolicy>>,
        default_policy: PyRef<'_, JobPolicy>,
        claim_batch: i64,
        poll_interval: f64,
        heartbeat_interval: f64,
        heartbeat_timeout: f64,
        fence_after: f64,
        max_crashes: i64,
        maintenance_interval: f64,
        dead_letter_after: f64,
        dead_letter_retain: f64,
        unknown_type_grace: f64,
        retain_completed: Option<f64>,
        retain_cancelled: Option<f64>,
        retain_discarded: Option<f64>,
        retain_idempotency: Option<f64>,
        job_log_lines: i64,
    ) -> PyResult<Self> {
        let heartbeat_interval = interval(heartbeat_interval, "heartbeat_interval")?;
        let heartbeat_timeout = interval(heartbeat_timeout, "heartbeat_timeout")?;
        let fence_after = interval(fence_after, "fence_after")?;
        shorter(
            heartbeat_interval,
            heartbeat_timeout,
            "heartbeat_interval",
            "heartbeat_timeout",
        )?;
        shorter(
            fence_after,
            heartbeat_timeout,
            "fence_after",
            "heartbeat_timeout",
        )?;
        let config = Config {
            dsn,
            owner: owner
                .parse()
                .map_err(|_| CoreError::Invalid(format!("owner must be a UUID, not {owner:?}")))?,
            node: NodeInfo {
                hostname,
                roles,
                workers: positive_i32(workers, "workers")?,
            },
            capabilities,
            job_types: sorted(policies.iter().map(|p| p.job_type.clone()).collect()),
            claim_batch: u64::from(positive_u32(claim_batch, "claim_batch")?),
            poll_interval: interval(poll_interval, "poll_interval")?,
            heartbeat_interval,
            heartbeat_timeout,
            fence_after,
            max_crashes: positive_i32(max_crashes, "max_crashes")?,
            maintenance_interval: interval(maintenance_interval, "maintenance_interval")?,
            dead_letter_after: span(dead_letter_after, "dead_letter_after")?,
            dead_letter_retain: span(dead_letter_retain, "dead_letter_retain")?,
            unknown_type_grace: span(unknown_type_grace, "unknown_type_grace")?,
            retention: Retention {
                completed: kept(retain_completed, "retain_completed")?,
                cancelled: kept(retain_cancelled, "retain_cancelled")?,
                discarded: kept(retain_discarded, "retain_discarded")?,
            },
            idempotency: kept(retain_idempotency, "retain_idempotency")?,
            job_log_lines: u32::try_from(job_log_lines).map_err(|_| {
                CoreError::Invalid(format!(
                    "job_log_lines must be 0 to {}, not {job_log_lines}",
                    u32::MAX
                ))
            })?,
        };
        let policies = Policies {
            by_type: policies
                .iter()
                .map(|p| (p.job_type.clone(), p.backoff.clone()))
                .collect(),
            default: default_policy.backoff.clone(),
        };
        Ok(CoreSettings { config, policies })
    }

    fn __repr__(&self) -> String {
        format!(
            "CoreSettings(owner={}, job_types={:?}, workers={})",
            self.config.owner, self.config.job_types, self.config.node.workers
        )
    }
}

/// The claim loop, batched reporter and lease heartbeat of one supervisor.
#[pyclass(frozen, module = "forge._core")]
struct Core(core::Core);

#[pymethods]
impl Core {
    #[new]
    fn new(py: Python<'_>, settings: PyRef<'_, CoreSettings>) -> PyResult<Self> {
        let config = settings.config.clone();
        let policies = settings.policies.clone();
        // Connecting takes up to the connect timeout: let other threads run.
        Ok(Core(py.detach(move || core::Core::new(config, policies))?))
    }

    fn fileno(&self) -> PyResult<i32> {
        Ok(self.0.fileno()?)
    }

    fn request(&self, n: i64) -> PyResult<()> {
        let n =
            u64::try_from(n).map_err(|_| CoreError::Invalid(format!("n must be >= 0, not {n}")))?;
        Ok(self.0.request(n)?)
    }

    fn pause(&self) -> PyResult<()> {
        Ok(self.0.pause()?)
    }

    fn take(&self) -> PyResult<Vec<ClaimedJob>> {
        Ok(self.0.take()?.into_iter().map(ClaimedJob).collect())
    }

    fn logs(&self) -> PyResult<Vec<(&'static str, String)>> {
        Ok(self.0.logs()?)
    }

    fn start(&self, id: i64, attempt: i32) -> PyResult<()> {
        Ok(self.0.start(id, attempt)?)
    }

    fn complete(&self, id: i64, attempt: i32, result: Option<Vec<u8>>) -> PyResult<()> {
        Ok(self.0.complete(id, attempt, result)?)
    }

    #[pyo3(signature = (id, attempt, retryable, error, crashed = false))]
    fn fail(
        &self,
        id: i64,
        attempt: i32,
        retryable: bool,
        error: Vec<u8>,
        crashed: bool,
    ) -> PyResult<()> {
        Ok(self.0.fail(id, attempt, retryable, error, crashed)?)
    }

    fn release(&self, id: i64, attempt: i32) -> PyResult<()> {
        Ok(self.0.release(id, attempt)?)
    }

    fn progress(
        &self,
        id: i64,
        attempt: i32,
        percent: i64,
        message: Option<String>,
    ) -> PyResult<()> {
        let percent = i16::try_from(percent)
            .ok()
            .filter(|p| (0..=100).contains(p))
            .ok_or_else(|| CoreError::Invalid(format!("percent must be 0-100, not {percent}")))?;
        Ok(self.0.progress(id, attempt, percent, message)?)
    }

    #[pyo3(signature = (id, attempt, level, message, fields = None))]
    fn log(
        &self,
        id: i64,
        attempt: i32,
        level: &str,
        message: String,
        fields: Option<Vec<u8>>,
    ) -> PyResult<()> {
        Ok(self.0.log(id, attempt, level, message, fields)?)
    }

    fn lease_age_ms(&self) -> PyResult<u64> {
        Ok(self.0.lease_age_ms()?)
    }

    fn lost(&self) -> PyResult<Vec<(i64, i32)>> {
        Ok(self.0.lost()?)
    }

    fn cancels(&self) -> PyResult<Vec<(i64, i32)>> {
        Ok(self.0.cancels()?)
    }

    fn in_flight(&self) -> PyResult<usize> {
        Ok(self.0.in_flight()?)
    }

    fn flush(&self, py: Python<'_>, timeout_ms: i64) -> PyResult<bool> {
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        Ok(py.detach(|| self.0.flush(timeout))?)
    }

    fn stats(&self) -> PyResult<HashMap<&'static str, u64>> {
        Ok(self.0.stats()?.into_iter().collect())
    }

    fn close(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(py.detach(|| self.0.close())?)
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Applies the pending migrations, given as (version, name, file name, SQL)
/// in any order, in one transaction under the advisory lock; the versions
/// applied. The GIL is released meanwhile.
#[pyfunction]
#[pyo3(name = "migrate")]
fn apply_migrations(
    py: Python<'_>,
    dsn: &str,
    migrations: Vec<(i32, String, String, String)>,
) -> PyResult<Vec<i32>> {
    let migrations: Vec<Migration> = migrations
        .into_iter()
        .map(|(version, name, file, sql)| Migration {
            version,
            name,
            file,
            sql,
        })
        .collect();
    py.detach(|| migrate::migrate(dsn, &migrations))
        .map_err(|e| match e {
            MigrateError::Internal(e) => e.into(),
            MigrateError::Connect(_) => PyConnectionError::new_err(e.to_string()),
            MigrateError::Newer { .. } => {
                static SCHEMA_TOO_NEW: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                forge_error(&SCHEMA_TOO_NEW, "SchemaTooNew", e.to_string())
            }
            MigrateError::Failed { .. } => PyRuntimeError::new_err(e.to_string()),
        })
}

/// The named statements of a `-- name:` SQL file (sql.rs has the format);
/// ValueError naming `source` and the line on a duplicate or empty block.
#[pyfunction]
fn parse_sql(text: &str, source: &str) -> PyResult<HashMap<String, String>> {
    Ok(sql::parse_blocks(text, source)?)
}

/// The planner settings of the core's `connection` ("claim", "main",
/// "heartbeat" or "maintenance"), as a libpq options string.
#[pyfunction]
fn planner_options(connection: &str) -> PyResult<String> {
    let kind = ConnKind::named(connection)
        .filter(|k| *k != ConnKind::Listen)
        .ok_or_else(|| {
            CoreError::Invalid(format!(
                "connection must be claim, main, heartbeat or maintenance, not {connection:?}"
            ))
        })?;
    Ok(session::planner_options(kind))
}

/// A count that must be at least 1 (attempt numbers, batch sizes).
fn positive_u32(n: i64, what: &str) -> Result<u32, CoreError> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| CoreError::Invalid(format!("{what} must be >= 1, not {n}")))
}

fn positive_i32(n: i64, what: &str) -> Result<i32, CoreError> {
    i32::try_from(positive_u32(n, what)?)
        .map_err(|_| CoreError::Invalid(format!("{what} too large: {n}")))
}

/// The shortest interval the core's loops run at.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// A duration a loop waits for: at least 1 ms.
fn interval(seconds: f64, what: &str) -> Result<Duration, CoreError> {
    let d = span(seconds, what)?;
    if d < MIN_INTERVAL {
        return Err(CoreError::Invalid(format!(
            "{what} must be at least 1 ms, not {seconds} s"
        )));
    }
    Ok(d)
}

/// `short` must be less than `long` (both settings named for the error).
fn shorter(
    short: Duration,
    long: Duration,
    short_name: &str,
    long_name: &str,
) -> Result<(), CoreError> {
    if short >= long {
        return Err(CoreError::Invalid(format!(
            "{long_name} ({long:?}) must be greater than {short_name} ({short:?})"
        )));
    }
    Ok(())
}

/// A duration that may be zero (dead_letter_after: at the next sweep).
fn span(seconds: f64, what: &str) -> Result<Duration, CoreError> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| CoreError::Invalid(format!("{what} must be >= 0 s, not {seconds}")))
}

/// A retention: a duration, or None for forever.
fn kept(seconds: Option<f64>, what: &str) -> Result<Option<Duration>, CoreError> {
    seconds.map(|s| span(s, what)).transpose()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<JobPolicy>()?;
    m.add_class::<ClaimedJob>()?;
    m.add_class::<CoreSettings>()?;
    m.add_class::<Core>()?;
    m.add_function(wrap_pyfunction!(apply_migrations, m)?)?;
    m.add_function(wrap_pyfunction!(parse_sql, m)?)?;
    m.add_function(wrap_pyfunction!(planner_options, m)?)?;
    Ok(())
}
