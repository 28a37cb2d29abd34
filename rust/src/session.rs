//! The session settings of the core's database connections: who the
//! connection is, timeouts, TCP keepalives and the planner settings that
//! keep every statement on its index plan.

use std::time::Duration;

use uuid::Uuid;

use crate::errors::{describe, CoreError};
use crate::pacing::ConnKind;

/// The DSN with the core's connection settings: the connect timeout, TCP
/// keepalives (a dead peer is noticed by the kernel even on an idle
/// connection), a server-side statement_timeout equal to the client-side
/// one, so a statement the core gave up on does not keep running (and
/// holding row locks) on the server, and a lock_timeout of half of it, so a
/// statement that waits for a lock another session holds fails with an
/// error its caller retries, on a connection that stays usable, instead of
/// hanging until the connection is dropped as unresponsive. The main
/// connection (the reports) waits for a row lock REPORT_LOCK_WAIT at most:
/// its statements are short, a longer wait holds up the node's other
/// reports, and the reporter writes around a locked row (reporter.rs).
///
/// application_name says which node and which of its connections this is,
/// "forge <owner> <connection>", so pg_stat_activity, the server's logs and
/// a trigger (current_setting('application_name')) can tell who wrote a row.
///
/// Every statement of the core is meant to walk an index (the claim in
/// claim order along forge_jobs_claimable, the reports and sweeps by primary
/// key, one lookup per id of their batch), and the planner must not be free
/// to decide otherwise: the generic plan of the claim cannot see its LIMIT
/// and joins with a sequential scan, with the statistics of a table that
/// was empty at its last ANALYZE (a burst right after a quiet spell) it
/// sorts every due row with a bitmap scan, and a large completion
/// hash-joined its ids with a walk of the whole primary key. So sequential
/// and bitmap scans, hash and merge joins are off for the core's sessions:
/// every join is a nested loop over index lookups. A disabled plan that is
/// the only way (forge_nodes is read by sequential scan) adds 10^10 to its
/// cost, which makes PostgreSQL JIT-compile it, for far longer than the
/// statement runs; none of the core's statements gains from JIT, so it is
/// off. docs/performance.md ("Design measurements") has the figures.
pub const INDEX_ONLY_PLANS: &str = "-c enable_seqscan=off -c enable_bitmapscan=off \
     -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off";

/// How long a report statement waits for a row lock before the reporter
/// sets the locked rows' reports aside: longer than the node's own lease
/// renewal holds a batch of its rows (tens of ms for thousands of leases),
/// short beside the flush interval a stuck report would otherwise add to
/// every other job's.
pub const REPORT_LOCK_WAIT: Duration = Duration::from_millis(100);

/// How long a statement of connection `kind` waits for a row lock.
fn lock_timeout(kind: ConnKind, io_timeout: Duration) -> Duration {
    match kind {
        ConnKind::Main => REPORT_LOCK_WAIT.min(io_timeout / 2),
        _ => io_timeout / 2,
    }
}

/// How each connection plans. With the plan shapes fixed as above, the
/// claim and the reports have one right plan whatever their parameters, so
/// those connections keep one generic plan per statement (planning them at
/// every execution was a tenth of their backends' CPU). The maintenance
/// sweeps run once per interval and plan each time.
fn plan_options(kind: ConnKind) -> &'static str {
    match kind {
        ConnKind::Maintenance => "-c plan_cache_mode=force_custom_plan",
        _ => "-c plan_cache_mode=force_generic_plan",
    }
}

/// The planner settings of the connection `kind` (all but the statement
/// timeout, which depends on the heartbeat timeout): what tests that run
/// engine.sql by hand use, so that their plans are the core's.
pub fn planner_options(kind: ConnKind) -> String {
    format!("{INDEX_ONLY_PLANS} {}", plan_options(kind))
}

/// The application_name of `owner`'s connection `kind`.
pub fn application_name(owner: &Uuid, kind: ConnKind) -> String {
    format!("forge {owner} {}", kind.name())
}

pub fn pg_config(
    dsn: &str,
    io_timeout: Duration,
    owner: &Uuid,
    kind: ConnKind,
) -> Result<tokio_postgres::Config, CoreError> {
    let mut pg: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e: tokio_postgres::Error| CoreError::Connect(describe(&e)))?;
    pg.connect_timeout(io_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(io_timeout)
        .application_name(application_name(owner, kind));
    let timeout = format!(
        "-c statement_timeout={} -c lock_timeout={} {}",
        io_timeout.as_millis(),
        lock_timeout(kind, io_timeout).as_millis(),
        planner_options(kind)
    );
    let options = match pg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {timeout}"),
        _ => timeout,
    };
    pg.options(options);
    Ok(pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dsn_gets_timeouts_keepalives_and_statement_timeout() {
        let owner = Uuid::nil();
        let pg = pg_config(
            "host=127.0.0.1 port=5432 user=u dbname=d options='-c search_path=x'",
            Duration::from_secs(10),
            &owner,
            ConnKind::Main,
        )
        .unwrap();
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(pg.get_keepalives());
        assert_eq!(
            pg.get_options(),
            Some(
                format!(
                    "-c search_path=x -c statement_timeout=10000 -c lock_timeout=100 \
                     {INDEX_ONLY_PLANS} -c plan_cache_mode=force_generic_plan"
                )
                .as_str()
            )
        );
        let url = pg_config(
            "postgresql://u@127.0.0.1:5432/d",
            Duration::from_secs(3),
            &owner,
            ConnKind::Maintenance,
        )
        .unwrap();
        let options = url.get_options().unwrap();
        assert!(
            options.starts_with(&format!(
                "-c statement_timeout=3000 -c lock_timeout=1500 {INDEX_ONLY_PLANS} "
            )),
            "{options}"
        );
        assert!(options.contains("force_custom_plan"), "{options}");
        // a short io timeout shortens the reports' lock wait too
        let dsn = "postgresql://u@127.0.0.1:5432/d";
        let reports = pg_config(dsn, Duration::from_millis(150), &owner, ConnKind::Main).unwrap();
        let options = reports.get_options().unwrap();
        assert!(options.contains("-c lock_timeout=75 "), "{options}");
        assert!(pg_config(
            "postgresql://u@[bad",
            Duration::from_secs(3),
            &owner,
            ConnKind::Main
        )
        .is_err());
    }

    #[test]
    fn each_connection_names_its_node_and_its_role() {
        let owner: Uuid = "6f1c1e4a-0f4e-4b1e-9c55-2b8f3f9d7a10".parse().unwrap();
        let dsn = "postgresql://u@127.0.0.1/d?application_name=mine";
        let pg = pg_config(dsn, Duration::from_secs(3), &owner, ConnKind::Heartbeat).unwrap();
        let name = "forge 6f1c1e4a-0f4e-4b1e-9c55-2b8f3f9d7a10 heartbeat";
        assert_eq!(pg.get_application_name(), Some(name));
        assert!(name.len() < 64, "PostgreSQL keeps 63 bytes of it");
        let longest = application_name(&owner, ConnKind::Maintenance);
        assert!(longest.len() < 64, "{longest}");
    }
}
