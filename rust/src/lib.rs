//! forge._core: the #[pymodule] and thin #[pyclass] wrappers over the
//! pyo3-free modules. Argument conversion and GIL release live here; the
//! logic lives in the modules.

mod backoff;
mod batch;
mod claim;
mod core;
mod db;
mod errors;
mod heartbeat;
mod migrate;
mod pacing;
mod rescue;
mod sql;
mod stats;
mod tasks;
mod wake;

use std::collections::HashMap;
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::backoff::{Backoff, BackoffKind};
use crate::batch::json_text;
use crate::claim::Claimed;
use crate::core::{Config, NodeInfo, Policies};
use crate::errors::CoreError;
use crate::migrate::{MigrateError, Migration};

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

/// The claim loop, batched reporter and lease heartbeat of one supervisor.
#[pyclass(frozen, module = "forge._core")]
struct Core(core::Core);

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (
        dsn, owner, capabilities, policies, engine_sql, *, default_policy, hostname, roles, workers,
        max_batch = 100, poll_interval_ms = 1000, heartbeat_interval_ms = 2000,
        heartbeat_timeout_ms = 30_000, max_crashes = 3, maintenance_interval_ms = 1000,
        dead_letter_after_ms = 0, dead_letter_retain_ms = DEFAULT_DEAD_LETTER_RETAIN_MS
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        dsn: String,
        owner: &str,
        capabilities: Vec<String>,
        policies: Vec<PyRef<'_, JobPolicy>>,
        engine_sql: &str,
        default_policy: PyRef<'_, JobPolicy>,
        hostname: String,
        roles: Vec<String>,
        workers: i64,
        max_batch: i64,
        poll_interval_ms: i64,
        heartbeat_interval_ms: i64,
        heartbeat_timeout_ms: i64,
        max_crashes: i64,
        maintenance_interval_ms: i64,
        dead_letter_after_ms: i64,
        dead_letter_retain_ms: i64,
    ) -> PyResult<Self> {
        let heartbeat_interval = millis(heartbeat_interval_ms, "heartbeat_interval_ms")?;
        let heartbeat_timeout = millis(heartbeat_timeout_ms, "heartbeat_timeout_ms")?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(CoreError::Invalid(format!(
                "heartbeat_timeout_ms ({heartbeat_timeout_ms}) must be greater than \
                 heartbeat_interval_ms ({heartbeat_interval_ms})"
            ))
            .into());
        }
        let config = Config {
            dsn,
            owner: owner
                .parse()
                .map_err(|_| CoreError::Invalid(format!("owner must be a UUID, not {owner:?}")))?,
            node: NodeInfo {
                hostname,
                roles,
                workers: positive_u32(workers, "workers")?
                    .try_into()
                    .map_err(|_| CoreError::Invalid(format!("workers too large: {workers}")))?,
            },
            capabilities,
            job_types: sorted(policies.iter().map(|p| p.job_type.clone()).collect()),
            sql: sql::parse_engine_sql(engine_sql)?,
            max_batch: u64::from(positive_u32(max_batch, "max_batch")?),
            poll_interval: millis(poll_interval_ms, "poll_interval_ms")?,
            heartbeat_interval,
            heartbeat_timeout,
            max_crashes: positive_u32(max_crashes, "max_crashes")?
                .try_into()
                .map_err(|_| CoreError::Invalid(format!("max_crashes too large: {max_crashes}")))?,
            maintenance_interval: millis(maintenance_interval_ms, "maintenance_interval_ms")?,
            dead_letter_after: non_negative_millis(dead_letter_after_ms, "dead_letter_after_ms")?,
            dead_letter_retain: non_negative_millis(
                dead_letter_retain_ms,
                "dead_letter_retain_ms",
            )?,
        };
        let policies = Policies {
            by_type: policies
                .iter()
                .map(|p| (p.job_type.clone(), p.backoff.clone()))
                .collect(),
            default: default_policy.backoff.clone(),
        };
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
        let result = result.map(|r| json_text(r, "result")).transpose()?;
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
        let error = json_text(error, "error")?;
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

    fn lease_age_ms(&self) -> PyResult<u64> {
        Ok(self.0.lease_age_ms()?)
    }

    fn lost(&self) -> PyResult<Vec<(i64, i32)>> {
        Ok(self.0.lost()?)
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
    migrate_sql: &str,
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
    py.detach(|| migrate::migrate(dsn, migrate_sql, &migrations))
        .map_err(|e| {
            let msg = e.to_string();
            match e {
                MigrateError::Invalid(_) => PyValueError::new_err(msg),
                MigrateError::Connect(_) => PyConnectionError::new_err(msg),
                MigrateError::Failed { .. } => PyRuntimeError::new_err(msg),
            }
        })
}

/// A count that must be at least 1 (attempt numbers, batch sizes).
fn positive_u32(n: i64, what: &str) -> Result<u32, CoreError> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| CoreError::Invalid(format!("{what} must be >= 1, not {n}")))
}

fn millis(ms: i64, what: &str) -> Result<Duration, CoreError> {
    Ok(Duration::from_millis(u64::from(positive_u32(ms, what)?)))
}

/// A duration that may be zero (dead_letter_after_ms: at the next sweep).
fn non_negative_millis(ms: i64, what: &str) -> Result<Duration, CoreError> {
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| CoreError::Invalid(format!("{what} must be >= 0, not {ms}")))
}

/// How long dead letters are kept by default: 7 days.
const DEFAULT_DEAD_LETTER_RETAIN_MS: i64 = 7 * 24 * 3600 * 1000;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<JobPolicy>()?;
    m.add_class::<ClaimedJob>()?;
    m.add_class::<Core>()?;
    m.add_function(wrap_pyfunction!(apply_migrations, m)?)?;
    Ok(())
}
