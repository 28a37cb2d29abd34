//! Connection pacing and outage bookkeeping, free of I/O.
//!
//! Every connection attempt of the core (claim, main, heartbeat, LISTEN and
//! maintenance connections alike) takes a token from one bucket: a burst of
//! `CONNECT_BURST` (the connections opened together at start, or after one
//! outage), then `CONNECTS_PER_SEC` at most. While the database is down the
//! core therefore tries about twice a second in all, and reconnects within
//! half a second (plus the connect itself) of it being ready again.
//!
//! An outage starts when the first connection is found lost and ends when
//! every connection found lost has been re-established: one log line each.

use std::time::{Duration, Instant};

/// Sustained connection attempts per second, all connections together.
pub const CONNECTS_PER_SEC: f64 = 2.0;
/// Attempts allowed back to back after a quiet period: the connections a
/// core opens at start (claim, main, LISTEN, heartbeat; the maintenance one
/// comes at its first sweep).
pub const CONNECT_BURST: f64 = 4.0;

/// A token bucket whose reservations may overdraw it: each caller gets the
/// instant its attempt may start, later callers later slots.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    pub fn new(now: Instant) -> Self {
        Self::with(CONNECTS_PER_SEC, CONNECT_BURST, now)
    }

    pub fn with(rate: f64, burst: f64, now: Instant) -> Self {
        Pacer {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Reserves one attempt; returns how long to wait before making it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        if now > self.at {
            self.at = now;
        }
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The core's connections, for the outage bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    Main = 1,
    Listen = 2,
    Maintenance = 4,
    Claim = 8,
    Heartbeat = 16,
}

impl ConnKind {
    const ALL: [ConnKind; 5] = [
        ConnKind::Main,
        ConnKind::Listen,
        ConnKind::Maintenance,
        ConnKind::Claim,
        ConnKind::Heartbeat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ConnKind::Main => "main",
            ConnKind::Listen => "LISTEN",
            ConnKind::Maintenance => "maintenance",
            ConnKind::Claim => "claim",
            ConnKind::Heartbeat => "heartbeat",
        }
    }

    /// The connection called `name` (as name() spells it).
    pub fn named(name: &str) -> Option<ConnKind> {
        ConnKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Which connections are down, and since when.
#[derive(Debug, Default)]
pub struct Outage {
    broken: u8,
    since: Option<Instant>,
}

impl Outage {
    /// `conn` is down; true when this starts an outage (log it).
    pub fn lost(&mut self, conn: ConnKind, now: Instant) -> bool {
        let started = self.broken == 0;
        self.broken |= conn as u8;
        if started {
            self.since = Some(now);
        }
        started
    }

    /// `conn` is up again; the outage's length when this ends it (log it).
    pub fn restored(&mut self, conn: ConnKind, now: Instant) -> Option<Duration> {
        if self.broken & conn as u8 == 0 {
            return None;
        }
        self.broken &= !(conn as u8);
        if self.broken != 0 {
            return None;
        }
        self.since.take().map(|s| now.saturating_duration_since(s))
    }

    pub fn is_down(&self, conn: ConnKind) -> bool {
        self.broken & conn as u8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_then_two_attempts_per_second() {
        let t = Instant::now();
        let mut p = Pacer::new(t);
        let waits: Vec<Duration> = (0..8).map(|_| p.reserve(t)).collect();
        assert_eq!(waits[..4], [Duration::ZERO; 4]);
        assert_eq!(waits[4..], [ms(500), ms(1000), ms(1500), ms(2000)]);
    }

    #[test]
    fn a_long_outage_is_paced_at_the_rate() {
        // each caller waits its slot, then fails and asks again at once
        let t = Instant::now();
        let mut p = Pacer::new(t);
        let mut now = t;
        let mut attempts = Vec::new();
        for _ in 0..25 {
            now += p.reserve(now);
            attempts.push(now);
        }
        let in_ten_s = attempts.iter().filter(|a| **a < t + ms(10_000)).count();
        assert!(in_ten_s <= 4 + 20, "{in_ten_s}");
        for w in attempts[4..].windows(2) {
            assert!(w[1] - w[0] >= ms(499), "{:?}", w[1] - w[0]);
        }
    }

    #[test]
    fn tokens_refill_while_quiet_up_to_the_burst() {
        let t = Instant::now();
        let mut p = Pacer::new(t);
        for _ in 0..4 {
            p.reserve(t);
        }
        assert_eq!(p.reserve(t + ms(500)), Duration::ZERO);
        let later = t + ms(60_000);
        let waits: Vec<Duration> = (0..5).map(|_| p.reserve(later)).collect();
        assert_eq!(
            waits,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                ms(500)
            ]
        );
    }

    #[test]
    fn an_outage_is_one_loss_and_one_restore() {
        let t = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.restored(ConnKind::Main, t), None);
        assert!(o.lost(ConnKind::Main, t));
        assert!(!o.lost(ConnKind::Listen, t + ms(10)));
        assert!(!o.lost(ConnKind::Main, t + ms(20)));
        assert!(o.is_down(ConnKind::Listen));
        assert_eq!(o.restored(ConnKind::Main, t + ms(900)), None);
        assert_eq!(o.restored(ConnKind::Listen, t + ms(1000)), Some(ms(1000)));
        assert!(!o.is_down(ConnKind::Main));
        assert!(o.lost(ConnKind::Maintenance, t + ms(2000)));
        assert_eq!(
            o.restored(ConnKind::Maintenance, t + ms(2500)),
            Some(ms(500))
        );
        assert!(o.lost(ConnKind::Heartbeat, t + ms(3000)));
        assert!(o.is_down(ConnKind::Heartbeat) && !o.is_down(ConnKind::Claim));
    }

    #[test]
    fn connections_are_found_by_name() {
        for kind in ConnKind::ALL {
            assert_eq!(ConnKind::named(kind.name()), Some(kind));
        }
        assert_eq!(ConnKind::named("nope"), None);
    }
}
