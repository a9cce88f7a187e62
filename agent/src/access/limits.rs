//! One client's usage of one model: a request bucket and a 24-hour token window, both on the
//! monotonic clock.

use std::time::{Duration, Instant};

use super::Refusal;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug)]
pub(super) struct Usage {
    /// Requests that may start now (fractional: the bucket refills evenly over a minute).
    requests: f64,
    refilled: Instant,
    /// Start of the current 24-hour window and the tokens used in it.
    window: Instant,
    tokens: u64,
}

impl Usage {
    pub(super) fn new(now: Instant) -> Usage {
        Usage {
            requests: f64::INFINITY,
            refilled: now,
            window: now,
            tokens: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window) >= DAY {
            self.window = now;
            self.tokens = 0;
        }
    }

    /// Takes one request from the bucket, unless the rate or the day's tokens are spent.
    pub(super) fn admit(
        &mut self,
        per_minute: Option<u32>,
        per_day: Option<u64>,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.roll(now);
        if let Some(limit) = per_day
            && self.tokens >= limit
        {
            let retry_after = (self.window + DAY).saturating_duration_since(now);
            return Err(Refusal::QuotaExhausted {
                limit,
                retry_after: round_up(retry_after),
            });
        }
        let Some(limit) = per_minute else {
            return Ok(());
        };
        let capacity = f64::from(limit);
        let rate = capacity / MINUTE.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.requests = (self.requests.min(capacity) + elapsed * rate).min(capacity);
        self.refilled = now;
        if self.requests < 1.0 {
            let wait = (1.0 - self.requests) / rate;
            return Err(Refusal::RateLimited {
                limit,
                retry_after: round_up(Duration::from_secs_f64(wait)),
            });
        }
        self.requests -= 1.0;
        Ok(())
    }

    pub(super) fn consume(&mut self, tokens: u64, now: Instant) {
        self.roll(now);
        self.tokens = self.tokens.saturating_add(tokens);
    }
}

/// Whole seconds, at least one: what `Retry-After` can say.
fn round_up(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}
