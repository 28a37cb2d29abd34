//! The core's one error type, and the one place it becomes a Python exception.

use std::fmt;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{Py, PyErr, Python};

/// Every failure the core reports to Python or logs.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// The database could not be reached or the connection broke.
    Connect(String),
    /// The server answered a statement with an error.
    Database(String),
    /// The server refused the data of a statement: a value it cannot store
    /// (SQLSTATE class 22), a constraint (23), a size limit (54) or a
    /// trigger (P0). The same data is refused again, so it is never retried
    /// as it is (the reporter isolates the report and fails its job).
    Refused(String),
    /// A statement waited for a row lock another session holds longer than
    /// its lock_timeout (SQLSTATE 55P03): nothing was written, the
    /// connection is usable, and the same statement without the locked rows
    /// would pass (the reporter sets those rows' reports aside).
    Locked(String),
    /// An argument from Python is out of range or malformed.
    Invalid(String),
    /// The core itself failed: its runtime, thread or eventfd could not be
    /// made, or its compiled-in SQL does not fit its callers.
    Internal(String),
    /// The Core was closed, or its runtime thread is gone.
    Closed,
    /// The Core is used in a process other than the one that created it (a fork).
    WrongProcess,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Connect(m) => write!(f, "database connection failed: {m}"),
            CoreError::Database(m) => write!(f, "database error: {m}"),
            CoreError::Refused(m) => write!(f, "the database refused the data: {m}"),
            CoreError::Locked(m) => write!(f, "a row lock held too long: {m}"),
            CoreError::Invalid(m) => write!(f, "{m}"),
            CoreError::Internal(m) => write!(f, "internal error of the core: {m}"),
            CoreError::Closed => write!(f, "the Core is closed"),
            CoreError::WrongProcess => {
                write!(
                    f,
                    "the Core was created in another process (fork); create a new one"
                )
            }
        }
    }
}

impl std::error::Error for CoreError {}

impl From<tokio_postgres::Error> for CoreError {
    /// A server-side error (SQLSTATE) leaves the connection usable; anything
    /// else (I/O, closed socket, protocol) means the connection is gone.
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if !e.is_closed() => {
                let code = db.code().code();
                let text = format!("{} {code}: {}", db.severity(), db.message());
                if refuses_the_data(code) {
                    CoreError::Refused(text)
                } else if code == LOCK_NOT_AVAILABLE {
                    CoreError::Locked(text)
                } else {
                    CoreError::Database(text)
                }
            }
            _ => CoreError::Connect(describe(&e)),
        }
    }
}

/// The SQLSTATE of a lock_timeout (and of NOWAIT).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Whether a SQLSTATE says the data itself was refused (see Refused); any
/// other server error (a lock or statement timeout, a missing privilege, a
/// server shutting down) may pass, so the statement is retried as it is.
fn refuses_the_data(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("22" | "23" | "54" | "P0"))
}

/// An error with its causes: tokio-postgres keeps the server's message and
/// the I/O error in the source chain, not in its own Display ("db error").
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// ConnectionError for the database, ValueError for a bad argument, and
/// forge.errors.CoreError (a RuntimeError) for everything else.
impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        let msg = e.to_string();
        match e {
            CoreError::Connect(_) => PyConnectionError::new_err(msg),
            CoreError::Invalid(_) => PyValueError::new_err(msg),
            CoreError::Database(_)
            | CoreError::Refused(_)
            | CoreError::Locked(_)
            | CoreError::Internal(_)
            | CoreError::Closed
            | CoreError::WrongProcess => {
                static CORE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                forge_error(&CORE_ERROR, "CoreError", msg)
            }
        }
    }
}

/// forge.errors.`name`(msg), the class imported once into `class`
/// (RuntimeError if forge.errors cannot be imported: only a broken install
/// lands there).
pub fn forge_error(
    class: &'static PyOnceLock<Py<PyType>>,
    name: &'static str,
    msg: String,
) -> PyErr {
    Python::attach(|py| match class.import(py, "forge.errors", name) {
        Ok(kind) => PyErr::from_type(kind.clone(), msg),
        Err(_) => PyRuntimeError::new_err(msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that says only what failed, its cause in source(), like
    /// tokio-postgres's "db error".
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn std::error::Error + 'static>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn describe_includes_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cause = Layer("error connecting to server", Some(Box::new(io)));
        let e = Layer("db error", Some(Box::new(cause)));
        assert_eq!(
            describe(&e),
            "db error: error connecting to server: refused"
        );
        assert_eq!(describe(&CoreError::Closed), "the Core is closed");
    }

    #[test]
    fn only_data_sqlstates_are_refusals() {
        for code in ["22021", "22P05", "23514", "54000", "P0001"] {
            assert!(refuses_the_data(code), "{code}");
        }
        for code in [
            "55P03", "57014", "40001", "42501", "53100", "08006", "XX000", "",
        ] {
            assert!(!refuses_the_data(code), "{code}");
        }
    }

    #[test]
    fn messages_name_the_failure() {
        let e = CoreError::Connect("refused".into());
        assert_eq!(e.to_string(), "database connection failed: refused");
        assert_eq!(CoreError::Invalid("bad".into()).to_string(), "bad");
        assert!(CoreError::WrongProcess.to_string().contains("fork"));
    }
}
