//! Reports accumulated into one flush, as the column arrays of each statement.
//!
//! Rules: progress keeps only the latest report per (id, attempt), also for
//! jobs that end in the same flush (the progress statement is sent first, so
//! the last message a job reported survives its end); a start is dropped when
//! the same (id, attempt) also ends in the flush, since the end statements set
//! started_at themselves. Claim rows to close are written after all of it.

use std::collections::{HashMap, HashSet};

use crate::errors::CoreError;

/// Checks a JSON payload from Python before it is queued: a value the
/// database would reject would fail its whole batch on every retry, so it is
/// refused at the call instead (ValueError). Besides syntax, jsonb refuses the
/// \u0000 escape.
pub fn json_text(bytes: Vec<u8>, what: &str) -> Result<String, CoreError> {
    let text = String::from_utf8(bytes)
        .map_err(|_| CoreError::Invalid(format!("{what} is not UTF-8 JSON")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| CoreError::Invalid(format!("{what} is not valid JSON: {e}")))?;
    if has_nul_escape(&text) {
        return Err(CoreError::Invalid(format!(
            "{what} contains \\u0000, which jsonb refuses"
        )));
    }
    Ok(text)
}

/// Whether valid JSON text holds a \u0000 escape; backslashes only occur as
/// escapes inside strings, so skipping each escaped character is exact.
fn has_nul_escape(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b[i + 1..].starts_with(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// One report from Python, as enqueued.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Start {
        id: i64,
        attempt: i32,
    },
    Complete {
        id: i64,
        attempt: i32,
        result: Option<String>,
    },
    Fail {
        id: i64,
        attempt: i32,
        retryable: bool,
        delay_ms: f64,
        error: String,
        crashed: bool,
    },
    Release {
        id: i64,
        attempt: i32,
    },
    Progress {
        id: i64,
        attempt: i32,
        percent: i16,
        message: Option<String>,
    },
    /// Every job of this forge_claims row has ended (queued after the end
    /// report of the last one).
    CloseClaim {
        claim: i64,
    },
}

impl Report {
    /// The (id, attempt) of a job's end report.
    fn ended(&self) -> Option<(i64, i32)> {
        match self {
            Report::Complete { id, attempt, .. }
            | Report::Fail { id, attempt, .. }
            | Report::Release { id, attempt } => Some((*id, *attempt)),
            _ => None,
        }
    }
}

/// Columns of start, release and heartbeat: ($1 ids, $2 attempts).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pairs {
    pub ids: Vec<i64>,
    pub attempts: Vec<i32>,
}

impl Pairs {
    pub fn push(&mut self, id: i64, attempt: i32) {
        self.ids.push(id);
        self.attempts.push(attempt);
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Completes {
    pub ids: Vec<i64>,
    pub attempts: Vec<i32>,
    pub results: Vec<Option<String>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fails {
    pub ids: Vec<i64>,
    pub attempts: Vec<i32>,
    pub retryable: Vec<bool>,
    pub delay_ms: Vec<f64>,
    pub errors: Vec<String>,
    pub crashed: Vec<bool>,
}

impl Fails {
    /// The delay sent for `id`, to schedule the producer's due timer for the
    /// rows the database actually put in retry.
    pub fn delay_of(&self, id: i64) -> Option<f64> {
        self.ids
            .iter()
            .position(|i| *i == id)
            .map(|p| self.delay_ms[p])
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progresses {
    pub ids: Vec<i64>,
    pub attempts: Vec<i32>,
    pub percents: Vec<i16>,
    pub messages: Vec<Option<String>>,
}

/// One flush: every statement's columns. A part that has been written is
/// cleared, so retrying a half-written batch re-runs only what is left.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub starts: Pairs,
    pub completes: Completes,
    pub fails: Fails,
    pub releases: Pairs,
    pub progress: Progresses,
    pub closes: Vec<i64>,
}

impl Batch {
    /// Builds the batch from reports in enqueue order.
    pub fn build(reports: Vec<Report>) -> Batch {
        let ended: HashSet<(i64, i32)> = reports.iter().filter_map(Report::ended).collect();
        let mut latest_progress: HashMap<(i64, i32), usize> = HashMap::new();
        for (i, r) in reports.iter().enumerate() {
            if let Report::Progress { id, attempt, .. } = r {
                latest_progress.insert((*id, *attempt), i);
            }
        }
        let mut batch = Batch::default();
        for (i, r) in reports.into_iter().enumerate() {
            match r {
                Report::Start { id, attempt } if !ended.contains(&(id, attempt)) => {
                    batch.starts.push(id, attempt)
                }
                Report::Start { .. } => {}
                Report::Progress {
                    id,
                    attempt,
                    percent,
                    message,
                } => {
                    if latest_progress.get(&(id, attempt)) == Some(&i) {
                        batch.progress.ids.push(id);
                        batch.progress.attempts.push(attempt);
                        batch.progress.percents.push(percent);
                        batch.progress.messages.push(message);
                    }
                }
                Report::Complete {
                    id,
                    attempt,
                    result,
                } => {
                    batch.completes.ids.push(id);
                    batch.completes.attempts.push(attempt);
                    batch.completes.results.push(result);
                }
                Report::Fail {
                    id,
                    attempt,
                    retryable,
                    delay_ms,
                    error,
                    crashed,
                } => {
                    let f = &mut batch.fails;
                    f.ids.push(id);
                    f.attempts.push(attempt);
                    f.retryable.push(retryable);
                    f.delay_ms.push(delay_ms);
                    f.errors.push(error);
                    f.crashed.push(crashed);
                }
                Report::Release { id, attempt } => batch.releases.push(id, attempt),
                Report::CloseClaim { claim } => batch.closes.push(claim),
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(id: i64, percent: i16) -> Report {
        Report::Progress {
            id,
            attempt: 1,
            percent,
            message: Some(format!("{percent}%")),
        }
    }

    fn fail(id: i64, delay_ms: f64) -> Report {
        Report::Fail {
            id,
            attempt: 1,
            retryable: true,
            delay_ms,
            error: "{}".into(),
            crashed: false,
        }
    }

    #[test]
    fn builds_columns_per_statement_in_order() {
        let b = Batch::build(vec![
            Report::Start { id: 1, attempt: 1 },
            Report::Start { id: 2, attempt: 3 },
            Report::Complete {
                id: 3,
                attempt: 1,
                result: None,
            },
            Report::Complete {
                id: 4,
                attempt: 2,
                result: Some("7".into()),
            },
            fail(5, 250.0),
            Report::Release { id: 6, attempt: 1 },
            Report::CloseClaim { claim: 9 },
        ]);
        assert_eq!(
            b.starts,
            Pairs {
                ids: vec![1, 2],
                attempts: vec![1, 3]
            }
        );
        assert_eq!(b.completes.ids, [3, 4]);
        assert_eq!(b.completes.attempts, [1, 2]);
        assert_eq!(b.completes.results, [None, Some("7".to_string())]);
        assert_eq!(b.fails.ids, [5]);
        assert_eq!(b.fails.delay_of(5), Some(250.0));
        assert_eq!(b.fails.delay_of(9), None);
        assert_eq!(b.releases.ids, [6]);
        assert_eq!(b.closes, [9]);
        assert!(b.progress.ids.is_empty());
    }

    #[test]
    fn progress_keeps_the_latest_per_job_and_attempt() {
        let mut other_attempt = progress(1, 5);
        if let Report::Progress { attempt, .. } = &mut other_attempt {
            *attempt = 2;
        }
        let b = Batch::build(vec![
            progress(1, 10),
            progress(2, 50),
            progress(1, 30),
            other_attempt,
        ]);
        assert_eq!(b.progress.ids, [2, 1, 1]);
        assert_eq!(b.progress.attempts, [1, 1, 2]);
        assert_eq!(b.progress.percents, [50, 30, 5]);
        assert_eq!(b.progress.messages[1].as_deref(), Some("30%"));
    }

    #[test]
    fn ending_a_job_drops_its_start_but_keeps_its_last_progress() {
        let b = Batch::build(vec![
            Report::Start { id: 1, attempt: 1 },
            progress(1, 40),
            Report::Complete {
                id: 1,
                attempt: 1,
                result: None,
            },
            Report::Start { id: 2, attempt: 1 },
            fail(2, 1.0),
            Report::Start { id: 3, attempt: 1 },
            Report::Release { id: 3, attempt: 1 },
            Report::Start { id: 4, attempt: 1 },
            progress(4, 20),
        ]);
        assert_eq!(b.starts.ids, [4]);
        assert_eq!(b.progress.ids, [1, 4]);
        assert_eq!(b.completes.ids, [1]);
        assert_eq!(b.fails.ids, [2]);
        assert_eq!(b.releases.ids, [3]);
    }

    #[test]
    fn an_end_of_another_attempt_keeps_the_start() {
        let b = Batch::build(vec![
            Report::Release { id: 1, attempt: 1 },
            Report::Start { id: 1, attempt: 2 },
        ]);
        assert_eq!(
            b.starts,
            Pairs {
                ids: vec![1],
                attempts: vec![2]
            }
        );
    }

    #[test]
    fn json_payloads_are_checked() {
        assert_eq!(
            json_text(b"{\"a\": [1, 2]}".to_vec(), "result").unwrap(),
            "{\"a\": [1, 2]}"
        );
        assert!(json_text(b"{\"a\":".to_vec(), "result").is_err());
        assert!(json_text(vec![0xff], "result").is_err());
        assert!(json_text(br#""a\u0000b""#.to_vec(), "error").is_err());
        assert!(json_text(br#""a\\u0000b""#.to_vec(), "error").is_ok());
    }

    #[test]
    fn empty_batch() {
        assert_eq!(Batch::build(vec![]), Batch::default());
    }
}
