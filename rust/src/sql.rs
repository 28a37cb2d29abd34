//! The core's SQL: engine.sql and migrate.sql compiled into the crate, the
//! one parser of the `-- name:` block format (Python's forge.db.queries
//! uses it too, through _core.parse_sql), and the check, made once before
//! anything connects, that every statement takes exactly the parameters
//! its callers pass.
//!
//! A block starts with a line `-- name: X`; the comment lines right after it
//! document the statement and are dropped, as are trailing comments, blank
//! lines and the final semicolon (one statement per prepared query).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use crate::errors::CoreError;

const ENGINE_SQL: &str = include_str!("../../python/forge/db/sql/engine.sql");
const MIGRATE_SQL: &str = include_str!("../../python/forge/db/sql/migrate.sql");

/// A named statement and how many parameters ($1..$n) it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Query {
    pub name: &'static str,
    pub params: usize,
}

const fn query(name: &'static str, params: usize) -> Query {
    Query { name, params }
}

pub const CLAIM: Query = query("claim", 5);
pub const START: Query = query("start", 4);
pub const COMPLETE: Query = query("complete", 6);
pub const FAIL: Query = query("fail", 10);
pub const RELEASE: Query = query("release", 3);
pub const PROGRESS: Query = query("progress", 5);
pub const LOG_LINES: Query = query("log_lines", 7);
pub const BUSY_JOBS: Query = query("busy_jobs", 1);
pub const HEARTBEAT: Query = query("heartbeat", 3);
pub const CLOSE_CLAIMS: Query = query("close_claims", 2);
pub const REGISTER_NODE: Query = query("register_node", 7);
pub const STOP_NODE: Query = query("stop_node", 1);
pub const NODE_HEARTBEAT: Query = query("node_heartbeat", 1);
pub const NOTIFY: Query = query("notify", 0);
pub const PEERS: Query = query("peers", 2);
pub const RESCUE: Query = query("rescue", 2);
pub const PRUNE_CLAIMS: Query = query("prune_claims", 1);
pub const DEAD_LETTER: Query = query("dead_letter", 1);
pub const PRUNE_DEAD_LETTERS: Query = query("prune_dead_letters", 1);
pub const PRUNE_FINISHED: Query = query("prune_finished", 5);
pub const RELEASE_KEYS: Query = query("release_keys", 2);
pub const FAIL_UNKNOWN_TYPES: Query = query("fail_unknown_types", 3);
pub const REAP_NODES: Query = query("reap_nodes", 1);

pub const MIGRATE_LOCK: Query = query("lock", 0);
pub const MIGRATE_CREATE_TABLE: Query = query("create_table", 0);
pub const MIGRATE_APPLIED: Query = query("applied", 0);
pub const MIGRATE_RECORD: Query = query("record", 2);

/// Prepared on the claim connection: claims run beside the reports of the
/// jobs already claimed instead of queueing behind them in one backend.
pub const CLAIM_CONNECTION: &[Query] = &[CLAIM];

/// Prepared on the main connection (the reports).
pub const MAIN_CONNECTION: &[Query] = &[
    START,
    COMPLETE,
    FAIL,
    RELEASE,
    PROGRESS,
    LOG_LINES,
    BUSY_JOBS,
    CLOSE_CLAIMS,
    NOTIFY,
];

/// Prepared on the heartbeat connection (lease renewal and the node's
/// row), so a renewal never queues behind a report that waits for a lock.
pub const HEARTBEAT_CONNECTION: &[Query] =
    &[HEARTBEAT, NODE_HEARTBEAT, PEERS, REGISTER_NODE, STOP_NODE];

/// Prepared on the maintenance connection, so a slow sweep never delays a
/// claim, report or heartbeat pipelined on the main one.
pub const MAINTENANCE_CONNECTION: &[Query] = &[
    RESCUE,
    PRUNE_CLAIMS,
    DEAD_LETTER,
    PRUNE_DEAD_LETTERS,
    PRUNE_FINISHED,
    RELEASE_KEYS,
    FAIL_UNKNOWN_TYPES,
    REAP_NODES,
    NOTIFY,
];

/// What migrate.rs runs of migrate.sql (its other blocks are Python's).
const MIGRATE_QUERIES: &[Query] = &[
    MIGRATE_LOCK,
    MIGRATE_CREATE_TABLE,
    MIGRATE_APPLIED,
    MIGRATE_RECORD,
];

/// The checked statements of one file.
#[derive(Debug, Clone)]
pub struct Statements(HashMap<String, String>);

impl Statements {
    /// The text of `q` (present: checked when the file was loaded).
    pub fn get(&self, q: Query) -> &str {
        &self.0[q.name]
    }
}

/// engine.sql, parsed and checked once: every statement the connections
/// prepare, with its parameter count, and nothing else.
pub fn engine() -> Result<&'static Statements, CoreError> {
    static ENGINE: OnceLock<Result<Statements, CoreError>> = OnceLock::new();
    let all: Vec<Query> = CLAIM_CONNECTION
        .iter()
        .chain(MAIN_CONNECTION)
        .chain(HEARTBEAT_CONNECTION)
        .chain(MAINTENANCE_CONNECTION)
        .copied()
        .collect();
    ENGINE
        .get_or_init(|| load("engine.sql", ENGINE_SQL, &all, true))
        .as_ref()
        .map_err(Clone::clone)
}

/// migrate.sql, parsed and checked once.
pub fn migrations() -> Result<&'static Statements, CoreError> {
    static MIGRATE: OnceLock<Result<Statements, CoreError>> = OnceLock::new();
    MIGRATE
        .get_or_init(|| load("migrate.sql", MIGRATE_SQL, MIGRATE_QUERIES, false))
        .as_ref()
        .map_err(Clone::clone)
}

/// Parses `text` and checks each of `queries` is there with its parameter
/// count; with `exact`, also that the file has no other block.
fn load(source: &str, text: &str, queries: &[Query], exact: bool) -> Result<Statements, CoreError> {
    let blocks = parse_blocks(text, source)?;
    for q in queries {
        let sql = blocks
            .get(q.name)
            .ok_or_else(|| internal(format!("{source} has no block '{}'", q.name)))?;
        let found = placeholders(sql);
        let expected: BTreeSet<usize> = (1..=q.params).collect();
        if found != expected {
            return Err(internal(format!(
                "{source}: '{}' uses parameters {found:?}, its callers pass {}",
                q.name, q.params
            )));
        }
    }
    if exact {
        if let Some(extra) = blocks
            .keys()
            .find(|name| !queries.iter().any(|q| q.name == name.as_str()))
        {
            return Err(internal(format!(
                "{source}: block '{extra}' is run by nothing"
            )));
        }
    }
    Ok(Statements(blocks))
}

fn internal(message: String) -> CoreError {
    CoreError::Internal(message)
}

/// Parses every `-- name:` block of `text` into name -> statement;
/// `source` names the text in errors (with the line of a duplicate).
pub fn parse_blocks(text: &str, source: &str) -> Result<HashMap<String, String>, CoreError> {
    let mut blocks: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for (number, line) in text.lines().enumerate() {
        if let Some(name) = name_of(line) {
            if let Some((n, body)) = current.take() {
                insert_block(&mut blocks, n, &body, source)?;
            }
            if name.is_empty() {
                return Err(CoreError::Invalid(format!(
                    "{source}:{}: a block without a name",
                    number + 1
                )));
            }
            if blocks.contains_key(name) {
                return Err(CoreError::Invalid(format!(
                    "{source}:{}: query '{name}' is defined twice",
                    number + 1
                )));
            }
            current = Some((name.to_string(), Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push(line);
        }
    }
    if let Some((n, body)) = current.take() {
        insert_block(&mut blocks, n, &body, source)?;
    }
    Ok(blocks)
}

/// The name of a `-- name: X` line (empty for `-- name:`), None otherwise.
fn name_of(line: &str) -> Option<&str> {
    let comment = line.trim().strip_prefix("--")?;
    Some(comment.trim_start().strip_prefix("name:")?.trim())
}

/// Trims a block's leading/trailing comments and blanks, then stores it.
fn insert_block(
    blocks: &mut HashMap<String, String>,
    name: String,
    body: &[&str],
    source: &str,
) -> Result<(), CoreError> {
    let is_noise = |l: &&str| l.trim().is_empty() || l.trim_start().starts_with("--");
    let start = body.iter().position(|l| !is_noise(l)).unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|l| !is_noise(l))
        .map_or(start, |i| i + 1);
    let statement = body[start..end].join("\n");
    let statement = statement.trim().trim_end_matches(';').trim_end();
    if statement.is_empty() {
        return Err(CoreError::Invalid(format!(
            "{source}: query '{name}' has no statement"
        )));
    }
    blocks.insert(name, statement.to_string());
    Ok(())
}

/// The parameter numbers ($1, $2...) a statement uses, outside string
/// literals, quoted identifiers, dollar-quoted strings and comments.
fn placeholders(sql: &str) -> BTreeSet<usize> {
    let b = sql.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => i = skip_past(b, i + 1, &[q]),
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_past(b, i, b"\n"),
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let number = &sql[i + 1..i + 1 + digits];
                found.extend(number.parse::<usize>().ok());
                i += 1 + digits;
            }
            b'$' => {
                let tag_len = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                if b.get(i + 1 + tag_len) == Some(&b'$') {
                    let tag = &b[i..i + tag_len + 2];
                    i = skip_past(b, i + tag.len(), tag);
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    found
}

/// The index just after the first `end` at or after `from` (the end of the
/// text when there is none).
fn skip_past(b: &[u8], from: usize, end: &[u8]) -> usize {
    b[from.min(b.len())..]
        .windows(end.len())
        .position(|w| w == end)
        .map_or(b.len(), |p| from + p + end.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "-- file header\n-- more header\n\n\
        -- name: first\n-- what it does\n-- and why\nSELECT 1\nFROM t;\n\n\
        -- name:second\nUPDATE t SET x = 1 -- inline stays\nWHERE y;\n-- trailing comment\n\n\
        -- name: third\nSELECT pg_notify('c', '0');";

    #[test]
    fn parses_named_blocks_without_comments_and_semicolons() {
        let b = parse_blocks(TEXT, "t.sql").unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b["first"], "SELECT 1\nFROM t");
        assert_eq!(b["second"], "UPDATE t SET x = 1 -- inline stays\nWHERE y");
        assert_eq!(b["third"], "SELECT pg_notify('c', '0')");
    }

    #[test]
    fn rejects_duplicate_and_empty_blocks_naming_the_place() {
        let twice = parse_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "x.sql");
        assert_eq!(
            twice.unwrap_err().to_string(),
            "x.sql:3: query 'a' is defined twice"
        );
        let empty = parse_blocks("-- name: a\n-- only a comment\n", "x.sql");
        assert_eq!(
            empty.unwrap_err().to_string(),
            "x.sql: query 'a' has no statement"
        );
        assert!(parse_blocks("-- name:\nSELECT 1;", "x.sql").is_err());
    }

    #[test]
    fn counts_placeholders_outside_literals_and_comments() {
        let sql = "SELECT $1, '$2', \"$3\", $$ $4 $$, $t$ $5 $t$ -- $6\n, $7::int, $10";
        assert_eq!(placeholders(sql), BTreeSet::from([1, 7, 10]));
        assert_eq!(placeholders("SELECT 1"), BTreeSet::new());
    }

    #[test]
    fn a_statement_must_take_exactly_its_callers_parameters() {
        let text = "-- name: claim\nSELECT $1, $2, $4;";
        let err = load("e.sql", text, &[query("claim", 4)], true).unwrap_err();
        assert!(err.to_string().contains("'claim' uses parameters"), "{err}");
        let err = load(
            "e.sql",
            "-- name: claim\nSELECT $1;",
            &[query("claim", 0)],
            true,
        );
        assert!(err.is_err());
        let missing = load("e.sql", TEXT, &[CLAIM], false).unwrap_err();
        assert!(
            missing.to_string().contains("no block 'claim'"),
            "{missing}"
        );
        let unused = load("e.sql", "-- name: a\nSELECT 1;", &[], true).unwrap_err();
        assert!(
            unused.to_string().contains("'a' is run by nothing"),
            "{unused}"
        );
        assert!(load("e.sql", "-- name: a\nSELECT 1;", &[], false).is_ok());
    }

    #[test]
    fn the_embedded_files_pass_their_checks() {
        let engine = engine().unwrap();
        assert!(engine.get(CLAIM).contains("SKIP LOCKED"));
        assert!(engine.get(CLAIM).contains("INSERT INTO forge_claims"));
        for q in MAINTENANCE_CONNECTION.iter().filter(|q| **q != NOTIFY) {
            assert!(engine.get(*q).contains("SKIP LOCKED"), "{}", q.name);
            assert!(engine.get(*q).contains("LIMIT 1000"), "{}", q.name);
        }
        // the heartbeat connection never waits for a row another session holds
        for q in [HEARTBEAT, NODE_HEARTBEAT] {
            assert!(engine.get(q).contains("SKIP LOCKED"), "{}", q.name);
        }
        let migrate = migrations().unwrap();
        assert!(migrate.get(MIGRATE_LOCK).contains("pg_advisory_xact_lock"));
    }
}
