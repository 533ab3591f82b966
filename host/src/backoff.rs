//! Exponential backoff, the one rule behind reconnect delays, publish retries, the pauses
//! between attempts to set up a consumer and the mirror's retries: doubling from a first delay,
//! capped, with optional jitter so many hosts do not retry in step; and the wait for the next
//! attempt, if there is one ([`sleep_until`]).

use std::time::Duration;

use rand::Rng as _;

/// Delays doubling from `first` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay after the first failure.
    pub first: Duration,
    /// The cap (before jitter).
    pub max: Duration,
    /// Spread every delay over ±50%.
    pub jitter: bool,
}

impl Backoff {
    /// The delay after failure number `n` (1-based): `first × 2^(n-1)`, at most `max`, then
    /// jittered if asked.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(16);
        let base = self.first.saturating_mul(1 << exp).min(self.max);
        if self.jitter {
            base.mul_f64(rand::rng().random_range(0.5..1.5))
        } else {
            base
        }
    }
}

/// Waits until `at` (the next attempt, a deadline), or for ever without one: a branch of a
/// `select!` that fires only when something is due.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let b = Backoff {
            first: 100 * MS,
            max: 1000 * MS,
            jitter: false,
        };
        let delays: Vec<Duration> = (1..=6).map(|n| b.delay(n)).collect();
        assert_eq!(
            delays,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(b.delay(0), 100 * MS);
        assert_eq!(b.delay(u32::MAX), 1000 * MS);
    }

    #[test]
    fn jitter_spreads_each_delay_over_half_to_one_and_a_half() {
        let b = Backoff {
            first: 400 * MS,
            max: 400 * MS,
            jitter: true,
        };
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| (200 * MS..600 * MS).contains(d)));
        assert!(delays.iter().any(|d| *d != delays[0]));
    }
}
