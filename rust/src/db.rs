//! The five database connections, every statement prepared once per
//! connection: the claim one (so claiming the next batch runs in its own
//! backend while another writes the reports of the last one: one backend
//! doing both was the busiest process of a no-op run), the main one
//! (reports, pipelined by tokio-postgres), the heartbeat one (lease renewal
//! and the node's registration, so a report waiting for a row lock another
//! session holds never holds up the renewal of the leases), the maintenance
//! one (the sweeps, so a slow one never delays the hot path) and the LISTEN
//! one, whose notifications feed the producer.
//!
//! Losing the database never panics or ends a task: every round of
//! statements has a client-side timeout (a connection that hangs without
//! closing, e.g. a blackholed network path, is dropped and replaced), TCP
//! keepalives are on, the server's statement_timeout matches, and every
//! connection attempt of the core is paced (see pacing.rs). An outage is
//! logged once when it starts and once when it ends.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

use crate::announce::{self, Notice};
use crate::config::Config;
use crate::errors::{describe, CoreError};
use crate::pacing::{ConnKind, Outage, Pacer};
use crate::session::pg_config;
use crate::shared::{lock, Shared};
use crate::sql::{self, Query, Statements};
use crate::stats::Stat;

/// The channel engine.sql's notify statement and job inserts notify.
const CHANNEL: &str = "forge_jobs";

/// A connection with its prepared statements. Dropping the last handle
/// stops its driver task, which also closes a socket that hangs.
pub struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    driver: JoinHandle<()>,
    /// Set when a statement timed out: the connection is replaced.
    broken: AtomicBool,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.client.is_closed()
    }

    /// The prepared statement of `q`, given `params` parameters: a query
    /// this connection did not prepare, or the wrong number of parameters
    /// (engine.sql was checked against `q.params` at start), is a bug.
    fn statement(&self, q: Query, params: usize) -> Result<&Statement, CoreError> {
        if params != q.params {
            return Err(CoreError::Internal(format!(
                "{} takes {} parameters, {params} were passed",
                q.name, q.params
            )));
        }
        self.statements
            .get(q.name)
            .ok_or_else(|| CoreError::Internal(format!("{} is not prepared here", q.name)))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The LISTEN connection: the client keeps it open, the driver task reads
/// its notifications and ends when it closes.
pub struct Listener {
    client: Client,
    driver: JoinHandle<()>,
}

impl Listener {
    /// Resolves when the LISTEN connection is gone.
    pub async fn closed(&mut self) {
        let _ = (&mut self.driver).await;
    }

    /// A round trip within the timeout: a silent connection (nothing comes
    /// back, nothing closes) is otherwise indistinguishable from a quiet one.
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.client.simple_query("")).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One reconnecting connection slot; the async lock makes concurrent
/// callers wait for one reconnect instead of each opening a connection.
struct Slot {
    kind: ConnKind,
    /// The parsed DSN with this connection's session settings.
    pg: tokio_postgres::Config,
    queries: &'static [Query],
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

pub struct Db {
    config: Arc<Config>,
    shared: Arc<Shared>,
    sql: &'static Statements,
    claim: Slot,
    main: Slot,
    heartbeat: Slot,
    maintenance: Slot,
    /// The LISTEN connection's DSN with its session settings.
    listen: tokio_postgres::Config,
    pacer: Mutex<Pacer>,
    outage: Mutex<Outage>,
}

impl Db {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>) -> Result<Db, CoreError> {
        let pg = |kind| pg_config(&config.dsn, config.io_timeout(), &config.owner, kind);
        let slot = |kind, queries| -> Result<Slot, CoreError> {
            Ok(Slot {
                kind,
                pg: pg(kind)?,
                queries,
                conn: tokio::sync::Mutex::new(None),
            })
        };
        Ok(Db {
            claim: slot(ConnKind::Claim, sql::CLAIM_CONNECTION)?,
            main: slot(ConnKind::Main, sql::MAIN_CONNECTION)?,
            heartbeat: slot(ConnKind::Heartbeat, sql::HEARTBEAT_CONNECTION)?,
            maintenance: slot(ConnKind::Maintenance, sql::MAINTENANCE_CONNECTION)?,
            listen: pg(ConnKind::Listen)?,
            sql: sql::engine()?,
            pacer: Mutex::new(Pacer::new(Instant::now())),
            outage: Mutex::new(Outage::default()),
            config,
            shared,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The main connection, reconnecting (and re-preparing) if it closed.
    pub async fn client(&self) -> Result<Arc<Conn>, CoreError> {
        self.slot(&self.main).await
    }

    /// The claim connection, likewise.
    pub async fn claim_client(&self) -> Result<Arc<Conn>, CoreError> {
        self.slot(&self.claim).await
    }

    /// The heartbeat connection, likewise.
    pub async fn heartbeat_client(&self) -> Result<Arc<Conn>, CoreError> {
        self.slot(&self.heartbeat).await
    }

    /// The maintenance connection, likewise.
    pub async fn maintenance_client(&self) -> Result<Arc<Conn>, CoreError> {
        self.slot(&self.maintenance).await
    }

    async fn slot(&self, slot: &Slot) -> Result<Arc<Conn>, CoreError> {
        let mut held = slot.conn.lock().await;
        if let Some(conn) = held.as_ref() {
            if conn.usable() {
                return Ok(conn.clone());
            }
            *held = None;
            self.lost(slot.kind, "the connection closed or stopped answering");
        }
        match self.connect_prepared(slot).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *held = Some(conn.clone());
                self.restored(slot.kind);
                Ok(conn)
            }
            Err(e) => {
                self.lost(slot.kind, &e.to_string());
                Err(e)
            }
        }
    }

    /// `conn` is down: logs the outage if this starts one.
    pub fn lost(&self, conn: ConnKind, why: &str) {
        if lock(&self.outage).lost(conn, Instant::now()) {
            self.shared.log(
                "warning",
                format!(
                    "database connection lost ({} connection: {why}); reconnecting, \
                     at most {} attempts per second",
                    conn.name(),
                    crate::pacing::CONNECTS_PER_SEC
                ),
            );
        }
    }

    /// `conn` is up; logs the end of the outage if this ends it. After the
    /// claim, main or LISTEN connection was down NOTIFYs may have been
    /// missed: claim once.
    pub fn restored(&self, conn: ConnKind) {
        let mut outage = lock(&self.outage);
        let was_down = outage.is_down(conn);
        let ended = outage.restored(conn, Instant::now());
        drop(outage);
        if let Some(length) = ended {
            self.shared.log(
                "info",
                format!(
                    "database connection restored after {:.1} s",
                    length.as_secs_f64()
                ),
            );
        }
        if was_down && !matches!(conn, ConnKind::Maintenance | ConnKind::Heartbeat) {
            self.shared.claim_event(|c| c.resync(Instant::now()));
        }
    }

    /// Waits for this attempt's slot in the core-wide connection pace.
    async fn paced(&self) {
        let wait = lock(&self.pacer).reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.shared.stats.add(Stat::Connects, 1);
    }

    async fn connect_prepared(&self, slot: &Slot) -> Result<Conn, CoreError> {
        self.paced().await;
        let queries = slot.queries;
        let setup = async {
            let (client, connection) = connect(&slot.pg).await?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let prepared = try_join_all(
                queries
                    .iter()
                    .map(|q| prepare(&client, q.name, self.sql.get(*q))),
            )
            .await?;
            Ok(Conn {
                client,
                statements: queries.iter().map(|q| q.name).zip(prepared).collect(),
                driver,
                broken: AtomicBool::new(false),
            })
        };
        let timeout = self.config.io_timeout();
        tokio::time::timeout(timeout, setup)
            .await
            .unwrap_or_else(|_| Err(timed_out("connecting", timeout)))
    }

    /// Opens the LISTEN connection; each notification updates the claim state.
    pub async fn listen(&self) -> Result<Listener, CoreError> {
        self.paced().await;
        let timeout = self.config.io_timeout();
        let (client, mut connection) = tokio::time::timeout(timeout, connect(&self.listen))
            .await
            .map_err(|_| timed_out("connecting", timeout))??;
        let shared = self.shared.clone();
        let owner = self.config.owner;
        // Driving the connection through poll_message is what surfaces
        // notifications; None or an error means the connection is gone.
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                if let AsyncMessage::Notification(n) = message {
                    match announce::parse(n.payload()) {
                        Notice::Wake { delay_ms } => {
                            shared.claim_event(|c| c.notified(delay_ms, Instant::now()))
                        }
                        Notice::Announced(job) => {
                            shared.claim_event(|c| c.announced(job, Instant::now()))
                        }
                        Notice::Cleared(cleared) => {
                            shared.claim_event(|c| c.cleared(&cleared, Instant::now()))
                        }
                        Notice::Cancel(c) if c.owner == owner => {
                            shared.cancel_requested([(c.id, c.attempt)])
                        }
                        Notice::Cancel(_) => {}
                    }
                }
            }
        });
        let listener = Listener { client, driver };
        let listen = format!("LISTEN {CHANNEL}");
        tokio::time::timeout(timeout, listener.client.batch_execute(&listen))
            .await
            .map_err(|_| timed_out("LISTEN", timeout))??;
        Ok(listener)
    }

    /// Runs a prepared statement within the I/O timeout, counted in stats.
    /// A timeout or a broken connection marks the connection for
    /// replacement; the caller's next client() reconnects.
    pub async fn query(
        &self,
        conn: &Conn,
        q: Query,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CoreError> {
        let statement = conn.statement(q, params.len())?;
        let timeout = self.config.io_timeout();
        let result = tokio::time::timeout(timeout, conn.client.query(statement, params)).await;
        match result {
            Ok(Ok(rows)) => {
                self.shared.stats.add(Stat::Statements, 1);
                Ok(rows)
            }
            Ok(Err(e)) => {
                let e = CoreError::from(e);
                if matches!(e, CoreError::Connect(_)) {
                    conn.broken.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
            Err(_) => {
                conn.broken.store(true, Ordering::Relaxed);
                Err(timed_out(q.name, timeout))
            }
        }
    }
}

fn timed_out(what: &str, timeout: Duration) -> CoreError {
    CoreError::Connect(format!(
        "{what}: no answer within {:.1} s",
        timeout.as_secs_f64()
    ))
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Connects (the caller bounds the time); the caller must spawn a task
/// polling the connection. Any failure here, server errors included (unknown
/// database, authentication), is a connection failure.
async fn connect(pg: &tokio_postgres::Config) -> Result<(Client, Connection), CoreError> {
    pg.connect(NoTls)
        .await
        .map_err(|e| CoreError::Connect(describe(&e)))
}

async fn prepare(client: &Client, name: &str, sql: &str) -> Result<Statement, CoreError> {
    client
        .prepare(sql)
        .await
        .map_err(|e| match CoreError::from(e) {
            CoreError::Database(m) => CoreError::Database(format!("preparing {name}: {m}")),
            other => other,
        })
}
