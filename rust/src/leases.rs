//! The leases this core holds, renewed by the heartbeat task.
//!
//! A job enters at claim. When Python reports its end (complete, fail,
//! release) its lease is ending: still held and renewed, so no node rescues
//! a job whose outcome only waits to be written, until the reporter has
//! written that end; then it leaves. A heartbeat sends every held
//! (id, attempt); a running job the database did not renew has lost its
//! lease (rescued by another node, or cancelled): it leaves the set at once,
//! so it is reported once and never renewed again (Python learns of it
//! through Core.lost()). An ending lease is never reported lost: its job is
//! over, and not being renewed is what its written end does to it.
//!
//! While the supervisor's loop is not seen running (heartbeat.rs), only the
//! ending leases are renewed (Renew::Ending): a running job's lease is kept
//! only while the loop that watches its worker runs.
//!
//! Each lease also counts its attempt's log lines, so that no more than the
//! cap are queued (log_line), and how many were dropped: its end says so.
//!
//! The set also counts, per forge_claims row, the jobs of that claim still
//! held: the end of the last one says the row can be closed. A claim whose
//! last job was a lost lease is left to the maintenance sweep (prune_claims).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The heartbeat statement's columns ($1 ids, $2 attempts), and the claim
/// each lease came from (not sent). A job handed back unrun gets its attempt
/// back (the release statement), so a later claim of it by this node holds
/// the same (id, attempt): only the claim tells the two leases apart.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pairs {
    pub ids: Vec<i64>,
    pub attempts: Vec<i32>,
    claims: Vec<i64>,
}

impl Pairs {
    fn push(&mut self, id: i64, attempt: i32, claim: i64) {
        self.ids.push(id);
        self.attempts.push(attempt);
        self.claims.push(claim);
    }
    /// Each (id, attempt) sent.
    pub fn pairs(&self) -> impl Iterator<Item = (i64, i32)> + '_ {
        self.ids.iter().copied().zip(self.attempts.iter().copied())
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Which held leases a heartbeat round renews.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Renew {
    /// Every held lease.
    All,
    /// Only those whose end Python reported: their outcome waits for the
    /// reporter, not for a worker.
    Ending,
}

#[derive(Debug)]
struct Lease {
    attempt: i32,
    job_type: String,
    claim: i64,
    /// When Python reported the job started (handed to its worker).
    started: Option<Instant>,
    /// Python reported the end; the reporter has not written it yet.
    ending: bool,
    /// Log lines of this attempt queued, and dropped over the cap.
    logged: u32,
    dropped: u32,
}

/// What ending a held lease tells the end report.
#[derive(Debug, PartialEq)]
pub struct Ending<'a> {
    /// For the retry policy of a failure.
    pub job_type: &'a str,
    /// When the job started, so that its end statement writes started_at
    /// with completed_at, from the same now() (exactly ordered).
    pub started: Option<Instant>,
    /// Log lines of the attempt dropped over the cap.
    pub dropped: u32,
}

#[derive(Debug, Default)]
pub struct InFlight {
    jobs: HashMap<i64, Lease>,
    /// Held jobs per claim row.
    held_by_claim: HashMap<i64, usize>,
}

impl InFlight {
    pub fn add(&mut self, id: i64, attempt: i32, job_type: String, claim: i64) {
        let lease = Lease {
            attempt,
            job_type,
            claim,
            started: None,
            ending: false,
            logged: 0,
            dropped: 0,
        };
        if let Some(old) = self.jobs.insert(id, lease) {
            self.release_claim(old.claim);
        }
        *self.held_by_claim.entry(claim).or_default() += 1;
    }

    /// Python reported that (id, attempt) started at `at`.
    pub fn started(&mut self, id: i64, attempt: i32, at: Instant) {
        if let Some(lease) = self.jobs.get_mut(&id).filter(|l| l.attempt == attempt) {
            lease.started = Some(at);
        }
    }

    /// Python reported the end of (id, attempt): the lease is kept (and
    /// renewed) until finish(). None when this attempt is not held.
    pub fn end(&mut self, id: i64, attempt: i32) -> Option<Ending<'_>> {
        let lease = self.jobs.get_mut(&id).filter(|l| l.attempt == attempt)?;
        lease.ending = true;
        Some(Ending {
            job_type: &lease.job_type,
            started: lease.started,
            dropped: lease.dropped,
        })
    }

    /// Whether to queue a log line of (id, attempt): Some(true) for the
    /// first `cap` lines of the attempt, Some(false) for the others (counted
    /// as dropped), None when the attempt is not held or has ended (the
    /// line would be fenced).
    pub fn log_line(&mut self, id: i64, attempt: i32, cap: u32) -> Option<bool> {
        let lease = self
            .jobs
            .get_mut(&id)
            .filter(|l| l.attempt == attempt && !l.ending)?;
        if lease.logged < cap {
            lease.logged += 1;
            return Some(true);
        }
        lease.dropped = lease.dropped.saturating_add(1);
        Some(false)
    }

    /// The end of (id, attempt) is written: the lease leaves the set. The
    /// claim row whose last held job it was, if so. A lease that is not
    /// ending (the job was claimed again since) stays.
    pub fn finish(&mut self, id: i64, attempt: i32) -> Option<i64> {
        self.jobs
            .get(&id)
            .filter(|l| l.attempt == attempt && l.ending)?;
        self.remove(id, attempt)
    }

    /// Removes the lease of (id, attempt); the claim it closes, if any.
    fn remove(&mut self, id: i64, attempt: i32) -> Option<i64> {
        self.jobs.get(&id).filter(|l| l.attempt == attempt)?;
        let lease = self.jobs.remove(&id)?;
        self.release_claim(lease.claim)
    }

    /// Whether (id, attempt) is held from `claim` and its end not reported.
    fn running(&self, id: i64, attempt: i32, claim: i64) -> bool {
        self.jobs
            .get(&id)
            .is_some_and(|l| l.attempt == attempt && l.claim == claim && !l.ending)
    }

    /// One job of `claim` is no longer held; Some(claim) if it was the last.
    fn release_claim(&mut self, claim: i64) -> Option<i64> {
        let held = self.held_by_claim.get_mut(&claim)?;
        *held -= 1;
        if *held > 0 {
            return None;
        }
        self.held_by_claim.remove(&claim);
        Some(claim)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The heartbeat statement's columns: the held leases `renew` picks.
    pub fn snapshot(&self, renew: Renew) -> Pairs {
        let mut pairs = Pairs::default();
        for (id, lease) in &self.jobs {
            if renew == Renew::All || lease.ending {
                pairs.push(*id, lease.attempt, lease.claim);
            }
        }
        pairs
    }

    /// After a heartbeat that sent `sent` and renewed `renewed`: the leases
    /// found lost, removed from the set. Jobs whose end was reported
    /// meanwhile are not running, and a job claimed again meanwhile holds a
    /// lease of another claim, so neither is mistaken for a loss.
    pub fn take_lost(&mut self, sent: &Pairs, renewed: &HashSet<i64>) -> Vec<(i64, i32)> {
        let mut lost = Vec::new();
        for ((id, attempt), claim) in sent.ids.iter().zip(&sent.attempts).zip(&sent.claims) {
            if !renewed.contains(id) && self.running(*id, *attempt, *claim) {
                self.remove(*id, *attempt);
                lost.push((*id, *attempt));
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python reports the end and the reporter writes it.
    fn ended(f: &mut InFlight, id: i64, attempt: i32) -> Option<i64> {
        f.end(id, attempt);
        f.finish(id, attempt)
    }

    #[test]
    fn ending_needs_the_held_attempt() {
        let mut f = InFlight::default();
        f.add(1, 2, "email".into(), 7);
        assert_eq!(f.end(1, 1), None);
        assert_eq!(f.finish(1, 2), None); // not ending yet
        let t = Instant::now();
        f.started(1, 2, t);
        f.started(1, 1, t + std::time::Duration::from_secs(1)); // another attempt: ignored
        let ending = Ending {
            job_type: "email",
            started: Some(t),
            dropped: 0,
        };
        assert_eq!(f.end(1, 2), Some(ending));
        assert_eq!(f.finish(1, 2), Some(7));
        assert_eq!(f.len(), 0);
        assert_eq!(f.finish(1, 2), None);
    }

    #[test]
    fn log_lines_are_capped_per_held_attempt_and_the_end_counts_the_dropped() {
        let mut f = InFlight::default();
        f.add(1, 2, "a".into(), 7);
        assert_eq!(f.log_line(1, 1, 2), None, "another attempt");
        assert_eq!(f.log_line(9, 2, 2), None, "another job");
        let kept: Vec<Option<bool>> = (0..5).map(|_| f.log_line(1, 2, 2)).collect();
        assert_eq!(
            kept,
            [
                Some(true),
                Some(true),
                Some(false),
                Some(false),
                Some(false)
            ]
        );
        assert_eq!(f.end(1, 2).map(|e| e.dropped), Some(3));
        assert_eq!(f.log_line(1, 2, 2), None, "ended");
        f.finish(1, 2);
        f.add(1, 3, "a".into(), 8);
        assert_eq!(
            f.log_line(1, 3, 2),
            Some(true),
            "the next attempt counts anew"
        );
        assert_eq!(f.end(1, 3).map(|e| e.dropped), Some(0));
    }

    #[test]
    fn an_ending_lease_is_renewed_until_its_end_is_written() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 1);
        f.add(2, 1, "a".into(), 1);
        f.end(1, 1);
        let sent = f.snapshot(Renew::All);
        assert_eq!(sent.len(), 2); // the heartbeat still renews job 1
                                   // the end of job 1 was written before the heartbeat ran: not renewed, yet not lost
        let renewed: HashSet<i64> = [2].into();
        assert_eq!(f.take_lost(&sent, &renewed), []);
        assert_eq!(f.len(), 2);
        assert_eq!(f.finish(1, 1), None); // job 2 still holds the claim
        assert_eq!(f.snapshot(Renew::All).ids, [2]);
    }

    #[test]
    fn a_job_handed_back_and_claimed_again_before_its_end_is_written_stays_held() {
        // release gives the attempt back, so the next claim has the same number
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 1);
        f.end(1, 1);
        f.add(1, 1, "a".into(), 2);
        assert_eq!(f.finish(1, 1), None);
        assert_eq!(f.len(), 1);
        assert_eq!(ended(&mut f, 1, 1), Some(2));
    }

    #[test]
    fn unrenewed_held_leases_are_lost_once_and_leave_the_set() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 1);
        f.add(2, 1, "a".into(), 1);
        f.add(3, 1, "a".into(), 1);
        f.add(4, 1, "a".into(), 1);
        let sent = f.snapshot(Renew::All);
        assert_eq!(sent.len(), 4);
        ended(&mut f, 3, 1); // completed while the heartbeat ran
        ended(&mut f, 4, 1); // released (its attempt given back), then claimed again while the heartbeat ran
        f.add(4, 1, "a".into(), 2);
        let renewed: HashSet<i64> = [1].into();
        assert_eq!(f.take_lost(&sent, &renewed), [(2, 1)]);
        assert_eq!(f.take_lost(&sent, &renewed), []);
        assert_eq!(f.len(), 2);
        // the next heartbeat no longer sends the lost lease
        let mut next = f.snapshot(Renew::All).ids;
        next.sort();
        assert_eq!(next, [1, 4]);
        // a late report of the lost attempt finds nothing held
        assert_eq!(f.end(2, 1), None);
    }

    #[test]
    fn a_job_handed_back_and_claimed_again_with_the_same_attempt_is_not_lost() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 7);
        let sent = f.snapshot(Renew::All);
        // the heartbeat's statement runs after the release is written: the row is nobody's
        ended(&mut f, 1, 1);
        f.add(1, 1, "a".into(), 8); // the next claim takes it again, at the same attempt
        assert_eq!(f.take_lost(&sent, &HashSet::new()), []);
        // still held, still renewed; and the new claim's own lease, unrenewed, is lost as any
        assert_eq!(f.snapshot(Renew::All).ids, [1]);
        let sent = f.snapshot(Renew::All);
        assert_eq!(f.take_lost(&sent, &HashSet::new()), [(1, 1)]);
    }

    #[test]
    fn only_ending_leases_are_sent_when_asked_and_the_others_are_not_lost() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 1);
        f.add(2, 1, "a".into(), 1);
        f.end(2, 1);
        let sent = f.snapshot(Renew::Ending);
        assert_eq!(sent.ids, [2]);
        // job 1 was not sent: not renewing it does not make it lost
        assert_eq!(f.take_lost(&sent, &HashSet::new()), []);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn a_claim_closes_with_the_end_of_its_last_held_job() {
        let mut f = InFlight::default();
        f.add(1, 1, "a".into(), 10);
        f.add(2, 1, "a".into(), 10);
        f.add(3, 1, "a".into(), 11);
        assert_eq!(ended(&mut f, 2, 1), None);
        assert_eq!(ended(&mut f, 3, 1), Some(11));
        assert_eq!(ended(&mut f, 1, 1), Some(10));
        // claimed again before its old attempt ended (not in practice): the
        // old claim is no longer counted, and is left to the sweep
        f.add(4, 1, "a".into(), 12);
        f.add(4, 1, "a".into(), 13);
        assert_eq!(f.held_by_claim.get(&12), None);
        assert_eq!(ended(&mut f, 4, 1), Some(13));
        assert!(f.held_by_claim.is_empty());
    }
}
