//! The named statements of engine.sql, parsed at runtime.
//!
//! A block starts with a line `-- name: X`; the comment lines right after it
//! document the statement and are dropped, as are trailing comments, blank
//! lines and the final semicolon (one statement per prepared query).

use std::collections::HashMap;

use crate::errors::CoreError;

/// Prepared on the claim connection: claims run beside the reports of the
/// jobs already claimed instead of queueing behind them in one backend.
pub const CLAIM: [&str; 1] = ["claim"];

/// Prepared on the main connection (reports, heartbeats, the node's row).
pub const MAIN: [&str; 11] = [
    "start",
    "complete",
    "fail",
    "release",
    "progress",
    "close_claims",
    "heartbeat",
    "node_heartbeat",
    "register_node",
    "stop_node",
    "notify",
];

/// Prepared on the maintenance connection, so a slow sweep never delays a
/// claim, report or heartbeat pipelined on the main one.
pub const MAINTENANCE: [&str; 7] = [
    "rescue",
    "prune_claims",
    "dead_letter",
    "prune_dead_letters",
    "fail_unknown_types",
    "reap_nodes",
    "notify",
];

/// Parses every `-- name:` block of `text` into name -> statement.
pub fn parse_blocks(text: &str) -> Result<HashMap<String, String>, CoreError> {
    let mut blocks: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("-- name:") {
            if let Some((n, body)) = current.take() {
                insert_block(&mut blocks, n, &body)?;
            }
            current = Some((name.trim().to_string(), Vec::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push(line);
        }
    }
    if let Some((n, body)) = current.take() {
        insert_block(&mut blocks, n, &body)?;
    }
    Ok(blocks)
}

/// Trims a block's leading/trailing comments and blanks, then stores it.
fn insert_block(
    blocks: &mut HashMap<String, String>,
    name: String,
    body: &[&str],
) -> Result<(), CoreError> {
    let is_noise = |l: &&str| l.trim().is_empty() || l.trim_start().starts_with("--");
    let start = body.iter().position(|l| !is_noise(l)).unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|l| !is_noise(l))
        .map_or(start, |i| i + 1);
    let statement = body[start..end].join("\n");
    let statement = statement
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_string();
    if name.is_empty() || statement.is_empty() {
        return Err(CoreError::Invalid(format!(
            "engine_sql: empty block {name:?}"
        )));
    }
    if blocks.insert(name.clone(), statement).is_some() {
        return Err(CoreError::Invalid(format!(
            "engine_sql: duplicate block {name:?}"
        )));
    }
    Ok(())
}

/// Parses and checks that every statement the core needs is there.
pub fn parse_engine_sql(text: &str) -> Result<HashMap<String, String>, CoreError> {
    let blocks = parse_blocks(text)?;
    // Every statement either connection prepares must be there.
    match CLAIM
        .iter()
        .chain(&MAIN)
        .chain(&MAINTENANCE)
        .find(|n| !blocks.contains_key(**n))
    {
        Some(missing) => Err(CoreError::Invalid(format!(
            "engine_sql has no block {missing:?}"
        ))),
        None => Ok(blocks),
    }
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
        let b = parse_blocks(TEXT).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b["first"], "SELECT 1\nFROM t");
        assert_eq!(b["second"], "UPDATE t SET x = 1 -- inline stays\nWHERE y");
        assert_eq!(b["third"], "SELECT pg_notify('c', '0')");
    }

    #[test]
    fn rejects_duplicate_and_empty_blocks() {
        assert!(parse_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;").is_err());
        assert!(parse_blocks("-- name: a\n-- only a comment\n").is_err());
        assert!(parse_blocks("-- name:\nSELECT 1;").is_err());
    }

    #[test]
    fn requires_every_statement_of_the_core() {
        let err = parse_engine_sql(TEXT).unwrap_err();
        assert!(err.to_string().contains("claim"), "{err}");
    }

    #[test]
    fn parses_the_real_engine_sql() {
        let text = include_str!("../../python/forge/db/sql/engine.sql");
        let b = parse_engine_sql(text).unwrap();
        assert!(b["claim"].contains("SKIP LOCKED"));
        assert!(b["claim"].contains("$4::text[]"));
        assert!(b["claim"].contains("INSERT INTO forge_claims"));
        for name in MAINTENANCE.iter().filter(|n| **n != "notify") {
            assert!(b[*name].contains("SKIP LOCKED"), "{name}");
            assert!(b[*name].contains("LIMIT 1000"), "{name}");
        }
        assert!(b
            .values()
            .all(|s| !s.starts_with("--") && !s.ends_with(';')));
    }
}
