//! What a NOTIFY on forge_jobs says, and which nodes should act on it.
//!
//! Without this every dispatch woke every idle node and each claimed, so
//! with N nodes a job cost N claim statements, N - 1 of them empty. Now:
//!
//! - A dispatch *announces* its jobs: how many, their type and capability,
//!   when they are due (the database clock) and the dispatching
//!   transaction's id.
//! - Of the live nodes that run that type and capability (the peers, read
//!   by every heartbeat), the announcement's rendezvous ranking (a hash of
//!   node id and transaction id) picks as many as the jobs need to claim at
//!   once; each other node waits its rank's share of a short window, and
//!   claims then only if no peer has *cleared* the jobs meanwhile.
//! - A claim that came back less than full took every claimable job of its
//!   node's types and capabilities in its snapshot, so it tells the peers
//!   (when there are any): its node and its snapshot. A waiting node drops
//!   each announcement whose transaction that snapshot saw, whose jobs
//!   were due by then and which that node could have claimed.
//!
//! A node that was picked but has no room, or died, costs the others one
//! window share each, in rank order. Every lost or unparsable notice errs
//! towards a claim (an empty one at worst), and the poll interval stays the
//! safety net. A bare number is the old payload and the engine's own wake-up
//! (jobs handed back or rescued): every node claims, as before. A cancel
//! request (an operator's, for a job a node holds) concerns its owner only.

use std::time::Duration;

use serde_json::{Map, Value};
use uuid::Uuid;

/// What one notification says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Claim in `delay_ms` (0: now), whoever you are.
    Wake {
        delay_ms: u64,
    },
    Announced(Announced),
    Cleared(Cleared),
    /// An operator asked the job this node holds to stop.
    Cancel(CancelRequest),
}

/// A job an operator cancelled while `owner` held it (operations.sql
/// request_cancel): that node stops it; every other node ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest {
    pub owner: Uuid,
    pub id: i64,
    pub attempt: i32,
}

/// Jobs a committed dispatch inserted.
#[derive(Debug, Clone, PartialEq)]
pub struct Announced {
    /// Milliseconds until they are due (0: now), on arrival.
    pub delay_ms: u64,
    /// When they are due, database clock, ms since the epoch.
    pub due_ms: i64,
    pub count: u64,
    /// The dispatching transaction (pg_current_xact_id).
    pub xid: u64,
    pub job_type: String,
    pub capability: String,
}

/// A peer's claim that came back less than full.
#[derive(Debug, Clone, PartialEq)]
pub struct Cleared {
    /// The claiming node.
    pub by: Uuid,
    /// The claim statement's snapshot (pg_current_snapshot).
    pub snapshot: Snapshot,
    /// The claim statement's now(), database clock, ms since the epoch.
    pub at_ms: i64,
}

/// Parses a payload. Anything unreadable is a wake-up now: claiming early
/// costs one empty claim at most, missing a job costs a poll interval.
pub fn parse(payload: &str) -> Notice {
    let payload = payload.trim();
    if payload.starts_with('{') {
        let parsed = match serde_json::from_str::<Map<String, Value>>(payload) {
            Ok(o) => match o.get("k").and_then(Value::as_str) {
                Some("a") => announced(&o).map(Notice::Announced),
                Some("c") => cleared(&o).map(Notice::Cleared),
                Some("x") => cancel(&o).map(Notice::Cancel),
                _ => None,
            },
            Err(_) => None,
        };
        return parsed.unwrap_or(Notice::Wake { delay_ms: 0 });
    }
    let delay_ms = payload
        .parse::<f64>()
        .ok()
        .filter(|d| d.is_finite() && *d > 0.0)
        .map_or(0, |d| d.ceil() as u64);
    Notice::Wake { delay_ms }
}

/// Payload keys: d delay ms, at due time (ms since the epoch), n count,
/// x transaction id, t job type, c capability (jobs.sql insert_job).
fn announced(o: &Map<String, Value>) -> Option<Announced> {
    Some(Announced {
        delay_ms: o.get("d")?.as_u64()?,
        due_ms: o.get("at")?.as_i64()?,
        count: o.get("n")?.as_u64()?,
        xid: o.get("x")?.as_str()?.parse().ok()?,
        job_type: o.get("t")?.as_str()?.to_string(),
        capability: o.get("c")?.as_str()?.to_string(),
    })
}

/// Payload keys: o owner, s snapshot, at now() (engine.sql claim).
fn cleared(o: &Map<String, Value>) -> Option<Cleared> {
    Some(Cleared {
        by: o.get("o")?.as_str()?.parse().ok()?,
        snapshot: Snapshot::parse(o.get("s")?.as_str()?)?,
        at_ms: o.get("at")?.as_i64()?,
    })
}

/// Payload keys: o owner, i job id, a attempt (operations.sql request_cancel).
fn cancel(o: &Map<String, Value>) -> Option<CancelRequest> {
    Some(CancelRequest {
        owner: o.get("o")?.as_str()?.parse().ok()?,
        id: o.get("i")?.as_i64()?,
        attempt: o.get("a")?.as_i64()?.try_into().ok()?,
    })
}

/// A pg_snapshot ("xmin:xmax:xip,xip,..."): which transactions a statement saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let rest = parts.next()?;
        let in_progress = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?
        };
        Some(Snapshot {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the committed transaction `xid` was visible to it
    /// (pg_visible_in_snapshot's rule).
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// A live node: what it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: Uuid,
    pub capabilities: Vec<String>,
    pub job_types: Vec<String>,
}

impl Peer {
    pub fn runs(&self, job_type: &str, capability: &str) -> bool {
        self.job_types.iter().any(|t| t == job_type)
            && self.capabilities.iter().any(|c| c == capability)
    }
}

/// This node and its live peers, as of the last heartbeat.
#[derive(Debug, Clone)]
pub struct Audience {
    pub me: Peer,
    pub peers: Vec<Peer>,
}

impl Audience {
    pub fn alone(me: Peer) -> Self {
        Audience {
            me,
            peers: Vec::new(),
        }
    }

    /// How long this node waits before claiming for `a`: None if it does not
    /// run those jobs, zero if it is among the first `needed` of the nodes
    /// that do (by the announcement's ranking), else its rank past them
    /// times `share`.
    pub fn wait_for(&self, a: &Announced, needed: u64, share: Duration) -> Option<Duration> {
        if !self.me.runs(&a.job_type, &a.capability) {
            return None;
        }
        let mine = score(&self.me.id, a);
        let ahead = self
            .peers
            .iter()
            .filter(|p| p.runs(&a.job_type, &a.capability))
            .filter(|p| (score(&p.id, a), p.id) > (mine, self.me.id))
            .count() as u64;
        Some(
            share
                * ahead
                    .saturating_sub(needed.saturating_sub(1))
                    .min(u32::MAX as u64) as u32,
        )
    }

    pub fn peer(&self, id: &Uuid) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id == *id)
    }
}

/// A node's place in an announcement's ranking: FNV-1a over the node id and
/// the transaction id, stable across builds and machines.
fn score(node: &Uuid, a: &Announced) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    node.as_bytes()
        .iter()
        .chain(a.xid.to_le_bytes().iter())
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u128, types: &[&str], caps: &[&str]) -> Peer {
        Peer {
            id: Uuid::from_u128(n),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            job_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn job(xid: u64, job_type: &str) -> Announced {
        Announced {
            delay_ms: 0,
            due_ms: 0,
            count: 1,
            xid,
            job_type: job_type.into(),
            capability: "default".into(),
        }
    }

    fn everyone(nodes: &[Peer]) -> Vec<Audience> {
        nodes
            .iter()
            .map(|me| Audience {
                me: me.clone(),
                peers: nodes.iter().filter(|p| p.id != me.id).cloned().collect(),
            })
            .collect()
    }

    const SHARE: Duration = Duration::from_millis(4);

    #[test]
    fn parses_announcements_cleared_notices_and_old_payloads() {
        let a = r#"{"k":"a","d":0,"at":1700000000123,"n":3,"x":"741","t":"mail","c":"gpu"}"#;
        let Notice::Announced(a) = parse(a) else {
            panic!("not an announcement")
        };
        assert_eq!(
            (a.count, a.xid, a.job_type.as_str(), a.capability.as_str()),
            (3, 741, "mail", "gpu")
        );
        let id = Uuid::from_u128(7);
        let c = format!(r#"{{"k":"c","o":"{id}","s":"10:20:12,15","at":5}}"#);
        let Notice::Cleared(c) = parse(&c) else {
            panic!("not a cleared notice")
        };
        assert_eq!((c.by, c.at_ms), (id, 5));
        let x = format!(r#"{{"k":"x","i":12,"a":3,"o":"{id}"}}"#);
        assert_eq!(
            parse(&x),
            Notice::Cancel(CancelRequest {
                owner: id,
                id: 12,
                attempt: 3
            })
        );
        assert_eq!(parse(" 1500 "), Notice::Wake { delay_ms: 1500 });
        assert_eq!(parse("2.5"), Notice::Wake { delay_ms: 3 });
        for now in [
            "",
            "0",
            "-4",
            "soon",
            "{",
            r#"{"k":"a"}"#,
            r#"{"k":"c","o":"x","s":"1:2:","at":0}"#,
            r#"{"k":"x","i":12,"a":3}"#,
            r#"{"k":"x","i":12,"a":3000000000,"o":"00000000-0000-0000-0000-000000000007"}"#,
        ] {
            assert_eq!(parse(now), Notice::Wake { delay_ms: 0 }, "{now:?}");
        }
    }

    #[test]
    fn a_snapshot_sees_what_committed_before_it() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert!(s.sees(9) && s.sees(11) && s.sees(19));
        assert!(!s.sees(12) && !s.sees(15) && !s.sees(20) && !s.sees(25));
        assert!(Snapshot::parse("10:10:").unwrap().sees(9));
        assert!(!Snapshot::parse("10:10:").unwrap().sees(10));
        assert_eq!(Snapshot::parse("10:x:"), None);
        assert_eq!(Snapshot::parse("10:20:1,,2"), None);
    }

    #[test]
    fn one_node_of_those_that_run_the_job_claims_at_once_the_rest_by_rank() {
        let nodes: Vec<Peer> = (1..=8).map(|n| peer(n, &["mail"], &["default"])).collect();
        for xid in 100..200 {
            let mut waits: Vec<Duration> = everyone(&nodes)
                .iter()
                .map(|a| a.wait_for(&job(xid, "mail"), 1, SHARE).unwrap())
                .collect();
            waits.sort();
            let expected: Vec<Duration> = (0..8).map(|r| SHARE * r).collect();
            assert_eq!(waits, expected, "xid {xid}");
        }
    }

    #[test]
    fn as_many_claim_at_once_as_the_jobs_need() {
        let nodes: Vec<Peer> = (1..=8).map(|n| peer(n, &["mail"], &["default"])).collect();
        let at_once = everyone(&nodes)
            .iter()
            .filter(|a| a.wait_for(&job(5, "mail"), 3, SHARE) == Some(Duration::ZERO))
            .count();
        assert_eq!(at_once, 3);
    }

    #[test]
    fn the_ranking_spreads_jobs_over_the_nodes() {
        let nodes: Vec<Peer> = (1..=4).map(|n| peer(n, &["mail"], &["default"])).collect();
        let audiences = everyone(&nodes);
        for a in &audiences {
            let first = (0..400)
                .filter(|x| a.wait_for(&job(*x, "mail"), 1, SHARE) == Some(Duration::ZERO))
                .count();
            assert!(
                (50..150).contains(&first),
                "{} first {first} of 400",
                a.me.id
            );
        }
    }

    #[test]
    fn nodes_that_do_not_run_the_job_are_neither_asked_nor_waited_for() {
        let nodes = [
            peer(1, &["mail"], &["default"]),
            peer(2, &["report"], &["default"]),
            peer(3, &["mail"], &["gpu"]),
            peer(4, &["mail", "report"], &["default"]),
        ];
        let audiences = everyone(&nodes);
        for xid in 0..50 {
            let waits: Vec<Option<Duration>> = audiences
                .iter()
                .map(|a| a.wait_for(&job(xid, "report"), 1, SHARE))
                .collect();
            assert_eq!(waits[0], None);
            assert_eq!(waits[2], None);
            let mut both = [waits[1].unwrap(), waits[3].unwrap()];
            both.sort();
            assert_eq!(both, [Duration::ZERO, SHARE]);
        }
    }
}
