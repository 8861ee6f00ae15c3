//! Sliding one-minute windows and a per-UTC-day budget: how much of a limit is used at an
//! instant, whether a new use fits, and when it would. Pure data: the caller passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const MINUTE: Duration = Duration::from_secs(60);

/// A limit's state as OpenAI's `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is back to its full limit (OpenAI's `x-ratelimit-reset-*`).
    pub reset: Duration,
}

/// Amounts used in the last minute, each tagged with a ticket so it can be settled later.
#[derive(Debug, Default)]
pub struct MinuteWindow {
    /// `(when, ticket, amount)`, oldest first.
    entries: VecDeque<(Instant, u64, u64)>,
}

impl MinuteWindow {
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, _, _)) = self.entries.front() {
            if now.saturating_duration_since(t) >= MINUTE {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn used(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.entries.iter().map(|e| e.2).sum()
    }

    pub fn quota(&mut self, limit: u64, now: Instant) -> Quota {
        let used = self.used(now);
        let reset = self
            .entries
            .back()
            .map(|&(t, _, _)| (t + MINUTE).saturating_duration_since(now))
            .unwrap_or(Duration::ZERO);
        Quota {
            limit,
            remaining: limit.saturating_sub(used),
            reset,
        }
    }

    /// How long until `amount` more fits under `limit` (zero: it fits now). `None`: it never
    /// fits, `amount` alone is over the limit.
    pub fn wait_for(&mut self, amount: u64, limit: u64, now: Instant) -> Option<Duration> {
        if amount > limit {
            return None;
        }
        let mut used = self.used(now);
        if used + amount <= limit {
            return Some(Duration::ZERO);
        }
        for &(t, _, a) in &self.entries {
            used -= a;
            if used + amount <= limit {
                return Some((t + MINUTE).saturating_duration_since(now));
            }
        }
        Some(MINUTE)
    }

    pub fn push(&mut self, now: Instant, ticket: u64, amount: u64) {
        self.entries.push_back((now, ticket, amount));
    }

    /// Replaces a ticket's amount (a reservation becomes what was used); a ticket that has
    /// already left the window is not counted again.
    pub fn settle(&mut self, ticket: u64, amount: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.1 == ticket) {
            e.2 = amount;
        }
    }
}

/// Tokens used on one UTC day.
#[derive(Debug, Default)]
pub struct DailyBudget {
    day: i64,
    used: u64,
}

/// The UTC day number and the time left until it ends.
#[derive(Debug, Clone, Copy)]
pub struct Day {
    pub number: i64,
    pub left: Duration,
}

impl Day {
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let day = 86_400;
        Self {
            number: (secs.as_secs() / day) as i64,
            left: Duration::from_secs(day) - Duration::from_secs(secs.as_secs() % day),
        }
    }
}

impl DailyBudget {
    fn roll(&mut self, day: Day) {
        if day.number != self.day {
            self.day = day.number;
            self.used = 0;
        }
    }

    pub fn quota(&mut self, limit: u64, day: Day) -> Quota {
        self.roll(day);
        Quota {
            limit,
            remaining: limit.saturating_sub(self.used),
            reset: day.left,
        }
    }

    pub fn fits(&mut self, amount: u64, limit: u64, day: Day) -> bool {
        self.roll(day);
        self.used + amount <= limit
    }

    pub fn add(&mut self, amount: u64, day: Day) {
        self.roll(day);
        self.used += amount;
    }

    /// Changes a reservation made on `reserved_on` from `reserved` to `used`; one made on an
    /// earlier day no longer counts.
    pub fn settle(&mut self, reserved_on: i64, reserved: u64, used: u64) {
        if reserved_on == self.day {
            self.used = self.used.saturating_sub(reserved) + used;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_expires_settles_and_says_when_room_comes() {
        let t0 = Instant::now();
        let mut w = MinuteWindow::default();
        w.push(t0, 1, 60);
        w.push(t0 + Duration::from_secs(10), 2, 30);
        let now = t0 + Duration::from_secs(20);
        assert_eq!(w.used(now), 90);
        let q = w.quota(100, now);
        assert_eq!((q.remaining, q.reset), (10, Duration::from_secs(50)));
        assert_eq!(w.wait_for(10, 100, now), Some(Duration::ZERO));
        // 50 more fit once the first entry (60) leaves, at t0 + 60 s.
        assert_eq!(w.wait_for(50, 100, now), Some(Duration::from_secs(40)));
        assert_eq!(w.wait_for(101, 100, now), None);
        w.settle(1, 5);
        assert_eq!(w.used(now), 35);
        assert_eq!(w.used(t0 + Duration::from_secs(65)), 30);
        assert_eq!(w.used(t0 + Duration::from_secs(70)), 0);
    }

    #[test]
    fn daily_budget_rolls_over_and_settles_same_day_only() {
        let d1 = Day {
            number: 1,
            left: Duration::from_secs(5),
        };
        let d2 = Day { number: 2, ..d1 };
        let mut b = DailyBudget::default();
        assert!(b.fits(100, 100, d1));
        b.add(100, d1);
        assert!(!b.fits(1, 100, d1));
        b.settle(1, 100, 40);
        assert_eq!(b.quota(100, d1).remaining, 60);
        assert!(b.fits(100, 100, d2));
        b.settle(1, 40, 0);
        assert_eq!(b.quota(100, d2).remaining, 100);
    }
}
