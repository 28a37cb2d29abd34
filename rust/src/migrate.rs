//! Schema migrations: the pending ones applied in version order, all in one
//! transaction under a transaction-level advisory lock, each recorded in
//! forge_migrations; running it again, or from two processes at once,
//! applies nothing twice. The statements are migrate.sql's (sql.rs).
//!
//! This is the one implementation, used by `forge migrate` and by the
//! supervisor at boot, which therefore needs no Python database driver
//! before its first claim. It runs on a runtime of the calling thread.

use std::fmt;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::errors::{describe, CoreError};
use crate::sql::{self, Statements};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    /// The file name, for errors.
    pub file: String,
    pub sql: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MigrateError {
    /// The migrator itself failed (its runtime, its compiled-in SQL).
    Internal(CoreError),
    /// The database could not be reached.
    Connect(String),
    /// The database has migrations this code does not know (a newer Forge
    /// migrated it): nothing is applied, and nothing may run on it.
    Newer { unknown: Vec<i32>, known: i32 },
    /// A statement failed: the transaction was rolled back, nothing applied.
    Failed {
        file: Option<String>,
        detail: String,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Internal(e) => write!(f, "{e}"),
            MigrateError::Connect(m) => {
                write!(f, "cannot connect to the database to migrate it: {m}")
            }
            MigrateError::Newer { unknown, known } => {
                let listed: Vec<String> = unknown.iter().map(|v| format!("{v:04}")).collect();
                write!(
                    f,
                    "the database's schema is newer than this Forge: it has migration(s) {} that \
                     this version does not know (it knows up to {known:04}); run the Forge that \
                     migrated it, or a newer one",
                    listed.join(", ")
                )
            }
            MigrateError::Failed { file, detail } => {
                let during = file
                    .as_ref()
                    .map(|f| format!(" while applying {f}"))
                    .unwrap_or_default();
                write!(f, "migration failed{during}, nothing was applied: {detail}")
            }
        }
    }
}

impl std::error::Error for MigrateError {}

/// Applies the pending `migrations` to the database at `dsn`; the versions
/// applied, in order (empty when there were none).
pub fn migrate(dsn: &str, migrations: &[Migration]) -> Result<Vec<i32>, MigrateError> {
    let statements = sql::migrations().map_err(MigrateError::Internal)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MigrateError::Internal(CoreError::Internal(format!("tokio runtime: {e}"))))?;
    runtime.block_on(apply(dsn, statements, migrations))
}

async fn apply(
    dsn: &str,
    sql: &Statements,
    migrations: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    let mut pg: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e: tokio_postgres::Error| MigrateError::Connect(describe(&e)))?;
    pg.connect_timeout(CONNECT_TIMEOUT).keepalives(true);
    let (mut client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| MigrateError::Connect(describe(&e)))?;
    let driver = tokio::spawn(connection);
    let result = run(&mut client, sql, migrations).await;
    drop(client);
    let _ = driver.await;
    result
}

/// The one transaction: lock, ledger, every pending migration, commit.
async fn run(
    client: &mut tokio_postgres::Client,
    sql: &Statements,
    migrations: &[Migration],
) -> Result<Vec<i32>, MigrateError> {
    let outside = |e| failed(None, e);
    let tx = client.transaction().await.map_err(outside)?;
    tx.batch_execute(sql.get(sql::MIGRATE_LOCK))
        .await
        .map_err(outside)?;
    tx.batch_execute(sql.get(sql::MIGRATE_CREATE_TABLE))
        .await
        .map_err(outside)?;
    let done: Vec<i32> = tx
        .query(sql.get(sql::MIGRATE_APPLIED), &[])
        .await
        .map_err(outside)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(newer) = newer_than(migrations, &done) {
        return Err(newer); // the transaction rolls back as it is dropped
    }
    let mut applied = Vec::new();
    for m in pending(migrations, &done) {
        let during = |e| failed(Some(m), e);
        tx.batch_execute(&m.sql).await.map_err(during)?;
        tx.execute(sql.get(sql::MIGRATE_RECORD), &[&m.version, &m.name])
            .await
            .map_err(during)?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(outside)?;
    Ok(applied)
}

fn failed(during: Option<&Migration>, e: tokio_postgres::Error) -> MigrateError {
    let detail = match CoreError::from(e) {
        CoreError::Database(m) | CoreError::Connect(m) => m,
        other => other.to_string(),
    };
    MigrateError::Failed {
        file: during.map(|m| m.file.clone()),
        detail,
    }
}

/// The refusal when `done` has versions `migrations` does not know, by version.
fn newer_than(migrations: &[Migration], done: &[i32]) -> Option<MigrateError> {
    let mut unknown: Vec<i32> = done
        .iter()
        .copied()
        .filter(|v| !migrations.iter().any(|m| m.version == *v))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    unknown.sort_unstable();
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    Some(MigrateError::Newer { unknown, known })
}

/// The migrations whose version is not in `done`, by version.
fn pending<'a>(migrations: &'a [Migration], done: &[i32]) -> Vec<&'a Migration> {
    let mut todo: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !done.contains(&m.version))
        .collect();
    todo.sort_by_key(|m| m.version);
    todo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: i32) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            file: format!("{version:04}_m{version}.sql"),
            sql: String::new(),
        }
    }

    #[test]
    fn pending_skips_the_applied_and_orders_by_version() {
        let all = [m(3), m(1), m(2)];
        let todo: Vec<i32> = pending(&all, &[1]).iter().map(|m| m.version).collect();
        assert_eq!(todo, [2, 3]);
        assert!(pending(&all, &[1, 2, 3]).is_empty());
    }

    #[test]
    fn versions_the_code_does_not_know_are_refused() {
        let all = [m(1), m(2)];
        assert_eq!(newer_than(&all, &[1]), None);
        assert_eq!(newer_than(&all, &[]), None);
        let e = newer_than(&all, &[1, 7, 2, 5]).unwrap();
        assert_eq!(
            e,
            MigrateError::Newer {
                unknown: vec![5, 7],
                known: 2
            }
        );
        let text = e.to_string();
        assert!(
            text.contains(
                "migration(s) 0005, 0007 that this version does not know (it knows up to 0002)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_real_migrate_sql_has_every_statement() {
        let s = sql::migrations().unwrap();
        assert!(s.get(sql::MIGRATE_LOCK).contains("pg_advisory_xact_lock"));
        let record = s.get(sql::MIGRATE_RECORD);
        assert!(record.contains("$1") && record.contains("$2"));
    }

    #[test]
    fn errors_name_the_file_that_failed() {
        let e = MigrateError::Failed {
            file: Some("0002_broken.sql".into()),
            detail: "ERROR 42883: no".into(),
        };
        assert_eq!(
            e.to_string(),
            "migration failed while applying 0002_broken.sql, nothing was applied: ERROR 42883: no"
        );
        assert!(MigrateError::Connect("refused".into())
            .to_string()
            .starts_with("cannot connect to the database to migrate it"));
    }
}
