//! When to claim: the producer's demand/credit state machine, free of I/O.
//!
//! The core claims min(credits, max_batch) jobs when it holds credits and has
//! a reason: the first claim after start, a wake-up NOTIFY, an announced job
//! whose wait (announce.rs: this node's rank among those that run it) has
//! passed and that no peer has cleared since, a known due time that has
//! passed (retries the core scheduled itself), a previous claim that came
//! back full (more are likely waiting), or poll_interval since the last
//! claim (catches anything missed).
//! After a failed claim it waits a capped, doubling backoff. While the
//! reporter cannot write this node's reports it claims nothing: every job
//! claimed then would only add to the reports waiting in memory. Nor while
//! the supervisor's loop has not been seen past the fence limit (heartbeat.rs):
//! no worker would get the jobs, and they would wait for a rescue.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::announce::{Announced, Cleared, Peer};
use crate::awaited::Awaited;
use crate::backoff::RetryDelay;

/// Known due times kept; beyond this the latest are forgotten and the poll
/// interval finds those jobs instead.
const MAX_DUE_TIMES: usize = 4096;

/// A job that the claim statement returned, held for Python's take().
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub job_type: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub input: String,
    pub parent_id: Option<i64>,
    /// The forge_claims row of the claim that took it.
    pub claim: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Claim this many jobs now.
    Claim(i64),
    /// Nothing to do until this instant (None: until woken by an event).
    Wait(Option<Instant>),
}

#[derive(Debug)]
pub struct ClaimState {
    credits: u64,
    /// Set for good when the supervisor stops: no claim after it.
    paused: bool,
    /// The reporter's last write failed: no claim until one succeeds.
    reports_stalled: bool,
    /// The supervisor's loop is not seen (frozen): no claim until it is again.
    loop_unseen: bool,
    max_batch: u64,
    poll_interval: Duration,
    last_claim: Option<Instant>,
    last_full: bool,
    /// When the latest wake-up NOTIFY (or resync) arrived. A claim that
    /// started before it may have missed that job's commit, so only a claim
    /// started after it uses it up.
    notified_at: Option<Instant>,
    /// Announced jobs this node waits to claim.
    awaited: Awaited,
    due: BTreeSet<Instant>,
    retry_at: Option<Instant>,
    retry: RetryDelay,
}

impl ClaimState {
    pub fn new(max_batch: u64, poll_interval: Duration, awaited: Awaited) -> Self {
        ClaimState {
            credits: 0,
            paused: false,
            reports_stalled: false,
            loop_unseen: false,
            max_batch: max_batch.max(1),
            poll_interval,
            last_claim: None,
            last_full: false,
            notified_at: None,
            awaited,
            due: BTreeSet::new(),
            retry_at: None,
            retry: RetryDelay::default(),
        }
    }

    pub fn grant(&mut self, n: u64) {
        if !self.paused {
            self.credits = self.credits.saturating_add(n);
        }
    }

    /// Stop claiming for good (shutdown): credits held are dropped, later
    /// grants ignored. A claim already running still delivers its rows.
    pub fn pause(&mut self) {
        self.paused = true;
        self.credits = 0;
    }

    /// Whether the reporter is failing to write this node's reports. The
    /// reasons to claim are kept: claiming resumes where it stopped.
    pub fn set_reports_stalled(&mut self, stalled: bool) {
        self.reports_stalled = stalled;
    }

    /// Whether the supervisor's loop has gone unseen past the fence limit.
    /// The reasons to claim are kept, as above.
    pub fn set_loop_unseen(&mut self, unseen: bool) {
        self.loop_unseen = unseen;
    }

    /// A wake-up NOTIFY arrived: claim `delay_ms` from now (0: now).
    pub fn notified(&mut self, delay_ms: u64, now: Instant) {
        if delay_ms == 0 {
            self.notified_at = Some(now);
        } else {
            self.schedule(now + Duration::from_millis(delay_ms));
        }
    }

    /// The live peers changed (each heartbeat reads them).
    pub fn set_peers(&mut self, peers: Vec<Peer>) {
        self.awaited.set_peers(peers);
    }

    /// Whether a claim now, if less than full, should tell the peers.
    pub fn tells_peers(&self) -> bool {
        self.awaited.tells_peers()
    }

    /// A dispatch announced jobs.
    pub fn announced(&mut self, job: Announced, now: Instant) {
        if !self.awaited.announced(job, self.max_batch, now) {
            self.notified_at = Some(now); // too many waited on: claim now instead
        }
    }

    /// A peer's claim cleared the jobs it could take.
    pub fn cleared(&mut self, notice: &Cleared, now: Instant) {
        self.awaited.cleared(notice, now);
    }

    /// A job becomes claimable at `at` (a retry this core scheduled, or a
    /// delayed job announced by NOTIFY).
    pub fn schedule(&mut self, at: Instant) {
        self.due.insert(at);
        if self.due.len() > MAX_DUE_TIMES {
            self.due.pop_last();
        }
    }

    /// Whether to claim now, or until when to sleep.
    pub fn decide(&self, now: Instant) -> Decision {
        if self.credits == 0 || self.reports_stalled || self.loop_unseen {
            return Decision::Wait(None);
        }
        if let Some(at) = self.retry_at.filter(|at| *at > now) {
            return Decision::Wait(Some(at));
        }
        let poll_at = self.last_claim.map(|t| t + self.poll_interval);
        let due_at = self.due.first().copied();
        let announced_at = self.awaited.next_claim_at();
        let timer = [poll_at, due_at, announced_at].into_iter().flatten().min();
        let urgent = self.last_claim.is_none() || self.notified_at.is_some() || self.last_full;
        if urgent || timer.is_some_and(|t| t <= now) {
            Decision::Claim(self.credits.min(self.max_batch) as i64)
        } else {
            Decision::Wait(timer)
        }
    }

    /// A claim that started at `started` asked for `asked` and got `got`
    /// rows: reasons up to that instant are used up.
    pub fn claimed(&mut self, asked: i64, got: usize, started: Instant) {
        self.credits = self.credits.saturating_sub(got as u64);
        self.last_full = got as i64 >= asked;
        self.notified_at = self.notified_at.filter(|at| *at > started);
        self.awaited.used_up_by(started);
        self.last_claim = Some(started);
        self.due = self.due.split_off(&(started + Duration::from_nanos(1)));
        self.retry_at = None;
        self.retry.reset();
    }

    /// A claim failed: keep the reasons, retry after a doubling delay.
    /// Returns the delay, for the log line.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.retry.next_delay();
        self.retry_at = Some(now + delay);
        delay
    }

    /// After a reconnect notifications may have been missed: claim once.
    pub fn resync(&mut self, now: Instant) {
        self.notified_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::announce::Peer;
    use uuid::Uuid;

    const POLL: Duration = Duration::from_millis(1000);

    fn state() -> ClaimState {
        let me = Peer {
            id: Uuid::from_u128(1),
            capabilities: vec!["default".into()],
            job_types: vec!["mail".into()],
        };
        ClaimState::new(100, POLL, Awaited::new(me))
    }

    /// A state that has claimed once, not full, so it has no reason left.
    fn idle(now: Instant) -> ClaimState {
        let mut s = state();
        s.grant(10);
        s.claimed(10, 0, now);
        s
    }

    #[test]
    fn no_credits_means_no_claim() {
        let now = Instant::now();
        let mut s = state();
        s.notified(0, now);
        assert_eq!(s.decide(now), Decision::Wait(None));
        s.grant(3);
        assert_eq!(s.decide(now), Decision::Claim(3));
    }

    #[test]
    fn pause_drops_credits_and_ignores_later_grants() {
        let now = Instant::now();
        let mut s = state();
        s.grant(5);
        s.pause();
        assert_eq!(s.decide(now), Decision::Wait(None));
        s.grant(5);
        s.notified(0, now);
        assert_eq!(s.decide(now), Decision::Wait(None));
    }

    #[test]
    fn no_claim_while_reports_cannot_be_written() {
        let now = Instant::now();
        let mut s = idle(now);
        s.notified(0, now);
        s.set_reports_stalled(true);
        assert_eq!(s.decide(now), Decision::Wait(None));
        assert_eq!(s.decide(now + POLL), Decision::Wait(None));
        s.grant(5);
        assert_eq!(s.decide(now), Decision::Wait(None));
        s.set_reports_stalled(false);
        assert_eq!(s.decide(now), Decision::Claim(15)); // the NOTIFY was kept
    }

    #[test]
    fn no_claim_while_the_supervisors_loop_is_unseen() {
        let now = Instant::now();
        let mut s = idle(now);
        s.notified(0, now);
        s.set_loop_unseen(true);
        assert_eq!(s.decide(now + POLL), Decision::Wait(None));
        s.set_loop_unseen(false);
        assert_eq!(s.decide(now), Decision::Claim(10)); // the NOTIFY was kept
    }

    #[test]
    fn first_claim_is_immediate_and_capped_by_max_batch() {
        let now = Instant::now();
        let mut s = state();
        s.grant(250);
        assert_eq!(s.decide(now), Decision::Claim(100));
    }

    #[test]
    fn idle_waits_for_the_poll_interval() {
        let now = Instant::now();
        let s = idle(now);
        assert_eq!(s.decide(now), Decision::Wait(Some(now + POLL)));
        assert_eq!(s.decide(now + POLL), Decision::Claim(10));
    }

    #[test]
    fn notification_triggers_a_claim_once() {
        let now = Instant::now();
        let mut s = idle(now);
        s.notified(0, now);
        assert_eq!(s.decide(now), Decision::Claim(10));
        s.claimed(10, 1, now);
        assert_eq!(s.credits, 9);
        assert_eq!(s.decide(now), Decision::Wait(Some(now + POLL)));
    }

    #[test]
    fn full_claim_claims_again_when_credits_come() {
        let now = Instant::now();
        let mut s = state();
        s.grant(5);
        s.claimed(5, 5, now);
        assert_eq!(s.decide(now), Decision::Wait(None));
        s.grant(2);
        assert_eq!(s.decide(now), Decision::Claim(2));
    }

    #[test]
    fn due_times_wake_the_claim_earliest_first() {
        let now = Instant::now();
        let mut s = idle(now);
        s.notified(300, now);
        s.schedule(now + Duration::from_millis(100));
        let first = now + Duration::from_millis(100);
        assert_eq!(s.decide(now), Decision::Wait(Some(first)));
        assert_eq!(s.decide(first), Decision::Claim(10));
        s.claimed(10, 1, first);
        assert_eq!(
            s.decide(first),
            Decision::Wait(Some(now + Duration::from_millis(300)))
        );
    }

    #[test]
    fn due_times_are_bounded() {
        let now = Instant::now();
        let mut s = idle(now);
        for i in 0..(MAX_DUE_TIMES as u64 + 10) {
            s.schedule(now + Duration::from_millis(i + 1));
        }
        assert_eq!(s.due.len(), MAX_DUE_TIMES);
        assert_eq!(s.due.first(), Some(&(now + Duration::from_millis(1))));
    }

    #[test]
    fn failures_back_off_doubling_to_a_cap_and_keep_the_reason() {
        let now = Instant::now();
        let mut s = idle(now);
        s.notified(0, now);
        let delays: Vec<u128> = (0..7).map(|_| s.failed(now).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(s.decide(now), Decision::Wait(Some(now + RetryDelay::MAX)));
        assert_eq!(s.decide(now + RetryDelay::MAX), Decision::Claim(10));
        s.claimed(10, 0, now + RetryDelay::MAX);
        assert_eq!(s.failed(now).as_millis(), 100);
    }

    #[test]
    fn resync_claims_after_reconnect() {
        let now = Instant::now();
        let mut s = idle(now);
        s.resync(now);
        assert_eq!(s.decide(now), Decision::Claim(10));
    }

    #[test]
    fn notification_during_a_claim_survives_it() {
        // The job's commit may postdate the running claim's snapshot: the
        // empty claim must not use up the wake-up it could not have seen.
        let now = Instant::now();
        let mut s = idle(now);
        let started = now + Duration::from_millis(5);
        s.notified(0, started + Duration::from_millis(1));
        s.claimed(10, 0, started);
        assert_eq!(s.decide(started), Decision::Claim(10));
        s.claimed(10, 1, started + Duration::from_millis(2));
        assert_eq!(
            s.decide(started + Duration::from_millis(2)),
            Decision::Wait(Some(started + Duration::from_millis(2) + POLL))
        );
    }

    #[test]
    fn an_announced_job_makes_a_claim_when_its_wait_ends_and_the_claim_uses_it_up() {
        let now = Instant::now();
        let mut s = idle(now);
        let job = crate::announce::Announced {
            delay_ms: 0,
            due_ms: 0,
            count: 1,
            xid: 7,
            job_type: "mail".into(),
            capability: "default".into(),
        };
        s.announced(job, now);
        assert_eq!(s.decide(now), Decision::Claim(10));
        let later = now + Duration::from_millis(1);
        s.claimed(10, 1, later);
        assert_eq!(s.decide(later), Decision::Wait(Some(later + POLL)));
    }
}
