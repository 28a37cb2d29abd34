//! The two database connections: the main one (claim, reports, heartbeats,
//! pipelined by tokio-postgres, every statement prepared once per
//! connection) and the LISTEN one, whose notifications feed the producer.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

use crate::claim::parse_delay;
use crate::core::{Config, Shared};
use crate::errors::{describe, CoreError};
use crate::sql::REQUIRED;
use crate::stats::Stat;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The channel engine.sql's notify statement and job inserts notify.
const CHANNEL: &str = "forge_jobs";

/// The main connection with its prepared statements.
pub struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

/// The LISTEN connection: the client keeps it open, the driver task reads
/// its notifications and ends when it closes.
pub struct Listener {
    _client: Client,
    driver: JoinHandle<()>,
}

impl Listener {
    /// Resolves when the LISTEN connection is gone.
    pub async fn closed(&mut self) {
        let _ = (&mut self.driver).await;
    }
}

pub struct Db {
    config: Arc<Config>,
    shared: Arc<Shared>,
    /// The main connection; the async lock makes concurrent callers wait for
    /// one reconnect instead of each opening a connection.
    main: tokio::sync::Mutex<Option<Arc<Conn>>>,
    connected_once: AtomicBool,
}

impl Db {
    pub fn new(config: Arc<Config>, shared: Arc<Shared>) -> Db {
        Db {
            config,
            shared,
            main: tokio::sync::Mutex::new(None),
            connected_once: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The main connection, reconnecting (and re-preparing) if it closed.
    pub async fn client(&self) -> Result<Arc<Conn>, CoreError> {
        let mut slot = self.main.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.client.is_closed() {
                return Ok(conn.clone());
            }
            *slot = None;
            self.shared
                .log("warning", "database connection lost; reconnecting".into());
        }
        let conn = Arc::new(self.connect_main().await?);
        if self.connected_once.swap(true, Ordering::Relaxed) {
            self.shared
                .log("info", "database connection restored".into());
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn connect_main(&self) -> Result<Conn, CoreError> {
        let setup = async {
            let (client, connection) = connect(&self.config.dsn).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let prepared = try_join_all(
                REQUIRED
                    .iter()
                    .map(|name| prepare(&client, name, &self.config.sql[*name])),
            )
            .await?;
            Ok(Conn {
                client,
                statements: REQUIRED.into_iter().zip(prepared).collect(),
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Opens the LISTEN connection; each notification updates the claim state.
    pub async fn listen(&self) -> Result<Listener, CoreError> {
        let (client, mut connection) = connect(&self.config.dsn).await?;
        let shared = self.shared.clone();
        // Driving the connection through poll_message is what surfaces
        // notifications; None or an error means the connection is gone.
        let driver = tokio::spawn(async move {
            while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                if let AsyncMessage::Notification(n) = message {
                    let delay = parse_delay(n.payload());
                    shared.claim_event(|c| c.notified(delay, Instant::now()));
                }
            }
        });
        let listen = format!("LISTEN {CHANNEL}");
        let subscribe = client.batch_execute(&listen);
        tokio::time::timeout(CONNECT_TIMEOUT, subscribe)
            .await
            .map_err(|_| timed_out())??;
        Ok(Listener {
            _client: client,
            driver,
        })
    }

    /// Runs a prepared statement, counted in stats.
    pub async fn query(
        &self,
        conn: &Conn,
        name: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CoreError> {
        let rows = conn.client.query(&conn.statements[name], params).await?;
        self.shared.stats.add(Stat::Statements, 1);
        Ok(rows)
    }
}

fn timed_out() -> CoreError {
    CoreError::Connect(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Connects within the timeout; the caller must spawn a task polling the
/// connection. Any failure here, server errors included (unknown database,
/// authentication), is a connection failure.
async fn connect(dsn: &str) -> Result<(Client, Connection), CoreError> {
    let connecting = tokio_postgres::connect(dsn, NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| CoreError::Connect(describe(&e)))?;
    Ok((client, connection))
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
