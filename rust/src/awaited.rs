//! The announced jobs this node waits to claim (announce.rs says who claims
//! what): when to claim for them, and which claims have taken them since.

use std::time::{Duration, Instant};

use crate::announce::{Announced, Audience, Cleared, Peer};

/// Announcements waited on; past this they are all dropped for one claim now.
const MAX_WAITING: usize = 4096;

/// A node's share of the wait for an announcement is twice the time a peer's
/// cleared notice has taken to arrive after it (a moving average), within
/// these bounds; it starts at FIRST_SHARE.
const FIRST_SHARE: Duration = Duration::from_millis(4);
const MIN_SHARE: Duration = Duration::from_millis(1);
const MAX_SHARE: Duration = Duration::from_millis(50);

/// An announcement waited on: claim at `claim_at` unless a claim (this
/// node's, or a peer's cleared notice) has taken its jobs by then.
#[derive(Debug, Clone)]
struct Waiting {
    arrived: Instant,
    /// When its jobs are due, on this node's clock.
    due: Instant,
    claim_at: Instant,
    job: Announced,
}

#[derive(Debug)]
pub struct Awaited {
    /// This node and its live peers.
    audience: Audience,
    waiting: Vec<Waiting>,
    /// The current wait share (see FIRST_SHARE).
    share: Duration,
}

impl Awaited {
    pub fn new(me: Peer) -> Self {
        Awaited {
            audience: Audience::alone(me),
            waiting: Vec::new(),
            share: FIRST_SHARE,
        }
    }

    pub fn set_peers(&mut self, peers: Vec<Peer>) {
        self.audience.peers = peers;
    }

    /// Whether a claim now, if less than full, should tell the peers: only
    /// if there are any, and the claim is for announced jobs (so peers may
    /// be waiting on them too). A poll's claim tells nobody: every notice
    /// wakes every listening node, and costs each about a fifth of an empty
    /// claim (benches/wakeups.py).
    pub fn tells_peers(&self) -> bool {
        !self.audience.peers.is_empty() && !self.waiting.is_empty()
    }

    /// Waits this node's rank's share past the jobs' due time, unless it
    /// does not run them (claims take up to `max_batch` jobs). False when
    /// too many were waited on: they are dropped, and the caller claims now.
    pub fn announced(&mut self, job: Announced, max_batch: u64, now: Instant) -> bool {
        let needed = job.count.div_ceil(max_batch.max(1));
        let Some(wait) = self.audience.wait_for(&job, needed, self.share) else {
            return true;
        };
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.clear();
            return false;
        }
        let due = now + Duration::from_millis(job.delay_ms);
        let claim_at = due + wait;
        self.waiting.push(Waiting {
            arrived: now,
            due,
            claim_at,
            job,
        });
        true
    }

    /// A peer's claim took every job it could claim in its snapshot: drop
    /// the announcements it covers (seen by that snapshot, due by then, and
    /// of a type and capability that peer runs).
    pub fn cleared(&mut self, notice: &Cleared, now: Instant) {
        let Some(peer) = self.audience.peer(&notice.by) else {
            return; // ourselves, or a node not yet seen: its types are unknown
        };
        let mut took = None;
        self.waiting.retain(|w| {
            let covered = notice.snapshot.sees(w.job.xid)
                && w.job.due_ms <= notice.at_ms
                && peer.runs(&w.job.job_type, &w.job.capability);
            if covered {
                took = Some(now.saturating_duration_since(w.arrived));
            }
            !covered
        });
        if let Some(took) = took {
            let average = (self.share / 2 * 4 + took) / 5;
            self.share = (average * 2).clamp(MIN_SHARE, MAX_SHARE);
        }
    }

    /// When the earliest wait ends.
    pub fn next_claim_at(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.claim_at).min()
    }

    /// This node's claim that started at `started` saw every job announced
    /// before then and due by then.
    pub fn used_up_by(&mut self, started: Instant) {
        self.waiting
            .retain(|w| w.arrived >= started || w.due > started);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::Snapshot;
    use uuid::Uuid;

    const ME: u128 = 1;

    fn node(n: u128, job_type: &str) -> Peer {
        Peer {
            id: Uuid::from_u128(n),
            capabilities: vec!["default".into()],
            job_types: vec![job_type.into()],
        }
    }

    fn job(xid: u64, job_type: &str) -> Announced {
        Announced {
            delay_ms: 0,
            due_ms: 1_000,
            count: 1,
            xid,
            job_type: job_type.into(),
            capability: "default".into(),
        }
    }

    fn cleared_by(n: u128, snapshot: &str, at_ms: i64) -> Cleared {
        Cleared {
            by: Uuid::from_u128(n),
            snapshot: Snapshot::parse(snapshot).unwrap(),
            at_ms,
        }
    }

    /// Waiting among `peers` other nodes running mail, and an xid for which
    /// this node is ranked after all of them.
    fn last_of(peers: u128) -> (Awaited, u64) {
        let mut a = Awaited::new(node(ME, "mail"));
        a.set_peers((2..2 + peers).map(|n| node(n, "mail")).collect());
        let xid = (0..)
            .find(|x| {
                a.audience.wait_for(&job(*x, "mail"), 1, FIRST_SHARE)
                    == Some(FIRST_SHARE * peers as u32)
            })
            .unwrap();
        (a, xid)
    }

    #[test]
    fn alone_an_announced_job_is_claimed_at_once() {
        let now = Instant::now();
        let mut a = Awaited::new(node(ME, "mail"));
        assert!(a.announced(job(10, "mail"), 100, now));
        assert_eq!(a.next_claim_at(), Some(now));
        assert!(!a.tells_peers()); // no peers to tell
        a.used_up_by(now + Duration::from_millis(1));
        assert_eq!(a.next_claim_at(), None);
    }

    #[test]
    fn a_job_this_node_does_not_run_is_not_waited_on() {
        let now = Instant::now();
        let mut a = Awaited::new(node(ME, "mail"));
        a.announced(job(10, "report"), 100, now);
        let mut other = job(11, "mail");
        other.capability = "gpu".into();
        a.announced(other, 100, now);
        assert_eq!(a.next_claim_at(), None);
    }

    #[test]
    fn ranked_last_it_claims_after_its_share_unless_a_peer_cleared_the_job() {
        let (mut a, xid) = last_of(3);
        let now = Instant::now();
        a.announced(job(xid, "mail"), 100, now);
        assert_eq!(a.next_claim_at(), Some(now + FIRST_SHARE * 3));
        assert!(a.tells_peers());
        let seen = format!("{}:{}:", xid + 1, xid + 1);
        a.cleared(&cleared_by(2, &seen, 1_000), now + Duration::from_millis(2));
        assert_eq!(a.next_claim_at(), None);
        assert!(!a.tells_peers());
    }

    #[test]
    fn a_cleared_notice_covers_only_what_its_claim_could_have_taken() {
        let now = Instant::now();
        for unseen in ["{x}:{x}:", "{x}:{y}:{x}"] {
            // committed after the snapshot was taken; in progress in it
            let (mut a, xid) = last_of(3);
            a.announced(job(xid, "mail"), 100, now);
            let snapshot = unseen
                .replace("{x}", &xid.to_string())
                .replace("{y}", &(xid + 10).to_string());
            a.cleared(&cleared_by(2, &snapshot, 1_000), now);
            assert_eq!(
                a.waiting.len(),
                1,
                "snapshot {snapshot} did not see xid {xid}"
            );
        }
        // a peer that does not run the type, a claim made before the jobs were
        // due, an unknown node, this node: none clears them
        let (mut a, xid) = last_of(3);
        a.set_peers(vec![
            node(2, "mail"),
            node(3, "mail"),
            node(4, "mail"),
            node(9, "report"),
        ]);
        a.announced(job(xid, "mail"), 100, now);
        let seen = format!("{}:{}:", xid + 1, xid + 1);
        a.cleared(&cleared_by(9, &seen, 1_000), now);
        a.cleared(&cleared_by(2, &seen, 999), now);
        a.cleared(&cleared_by(77, &seen, 1_000), now);
        a.cleared(&cleared_by(ME, &seen, 1_000), now);
        assert_eq!(a.waiting.len(), 1);
        a.cleared(&cleared_by(3, &seen, 1_000), now);
        assert!(a.waiting.is_empty());
    }

    #[test]
    fn the_share_follows_how_long_cleared_notices_take() {
        let (mut a, _) = last_of(3);
        let now = Instant::now();
        for xid in 0..30 {
            a.announced(job(xid, "mail"), 100, now);
            a.cleared(
                &cleared_by(2, "100:100:", 1_000),
                now + Duration::from_millis(10),
            );
        }
        assert!(
            a.share > Duration::from_millis(18) && a.share <= Duration::from_millis(20),
            "{:?}",
            a.share
        );
        for xid in 0..100 {
            a.announced(job(xid, "mail"), 100, now);
            a.cleared(
                &cleared_by(2, "100:100:", 1_000),
                now + Duration::from_secs(1),
            );
        }
        assert_eq!(a.share, MAX_SHARE);
    }

    #[test]
    fn a_claim_started_after_an_announcement_uses_it_up_unless_not_yet_due() {
        let (mut a, xid) = last_of(3);
        let now = Instant::now();
        a.announced(job(xid, "mail"), 100, now);
        let mut later = job(xid, "mail");
        later.delay_ms = 500;
        a.announced(later, 100, now);
        a.used_up_by(now); // started as they arrived: it may have missed them
        assert_eq!(a.waiting.len(), 2);
        a.used_up_by(now + Duration::from_millis(1));
        assert_eq!(a.waiting.len(), 1);
        assert_eq!(a.waiting[0].due, now + Duration::from_millis(500));
    }

    #[test]
    fn too_many_waited_on_are_dropped_for_one_claim_now() {
        let (mut a, _) = last_of(1);
        let now = Instant::now();
        for xid in 0..MAX_WAITING as u64 {
            let mut j = job(xid, "mail");
            j.delay_ms = 10_000;
            assert!(a.announced(j, 100, now));
        }
        assert!(!a.announced(job(1, "mail"), 100, now));
        assert!(a.waiting.is_empty());
    }
}
