//! Per-key rate limits (`--rate-limit`, `--rate-limit-burst`): events per
//! second per API key, counted over every way an event enters (`/publish`,
//! each record of `/publish/batch`, stream sends, WebSocket event frames).
//!
//! One GCRA limiter (governor) per configured key, built at start-up: keys
//! are known in advance, so the map is read-only and a check is one atomic
//! compare-and-swap on that key's state, with no lock and no allocation.
//! Keys never share a limiter, so one busy client cannot slow another.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::AppError;

/// The limiters of every configured key.
pub struct RateLimits {
    /// By key fingerprint (what [`crate::auth::Caller::owner`] holds).
    limiters: HashMap<Arc<str>, DefaultDirectRateLimiter>,
    /// Events a key may send at once; reported as `RateLimit-Limit`.
    burst: NonZeroU32,
    /// The time one event's allowance takes to come back.
    period: Duration,
    clock: DefaultClock,
}

impl RateLimits {
    /// Limits of `rate` events per second with `burst` (default: one
    /// second's worth, at least 1) for each key fingerprint; `None` when
    /// `rate` is unset, 0 or not a usable number (no limit).
    pub fn new(
        rate: Option<f64>,
        burst: Option<NonZeroU32>,
        fingerprints: impl IntoIterator<Item = Arc<str>>,
    ) -> Option<Self> {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
        let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
        let default_burst = NonZeroU32::new(rate.ceil().min(f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        let burst = burst.unwrap_or(default_burst);
        let quota = Quota::with_period(period)?.allow_burst(burst);
        let limiters = fingerprints.into_iter().map(|owner| (owner, RateLimiter::direct(quota))).collect();
        Some(Self { limiters, burst, period, clock: DefaultClock::default() })
    }

    /// Takes `events` from `owner`'s allowance, all or none: 429 with the
    /// wait when they do not fit now. More than the burst at once (a batch
    /// too large for the limit) never fits: that is a 429 too, as over the
    /// limit, with a detail that says waiting alone will not help.
    pub fn check(&self, owner: &str, events: usize) -> Result<(), AppError> {
        let Some(limiter) = self.limiters.get(owner) else {
            // Every authenticated caller has a limiter; a key unknown here
            // could only come from a bug, and must not be let through
            // silently unlimited either. Fail closed, loudly.
            return Err(AppError::Internal(format!("no rate limiter for key {owner}")));
        };
        let Some(n) = u32::try_from(events).ok().and_then(NonZeroU32::new) else {
            if events == 0 {
                return Ok(());
            }
            return Err(self.too_large(events));
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(self.refused(not_until.wait_time_from(self.clock.now()), None)),
            Err(_insufficient) => Err(self.too_large(events)),
        }
    }

    fn too_large(&self, events: usize) -> AppError {
        self.refused(
            // When the whole burst is back: the most that can ever be sent
            // at once.
            self.period.saturating_mul(self.burst.get()),
            Some(format!(
                "{events} events at once are more than this key's rate-limit burst of {burst} (RATE_LIMIT_BURST), \
                 so this batch can never be admitted whole: send at most {burst} per batch",
                burst = self.burst
            )),
        )
    }

    /// A 429 over the limit, counted: every refusal, whether waiting will
    /// let the events through or (with `detail` saying so) it never can.
    fn refused(&self, retry_after: Duration, detail: Option<String>) -> AppError {
        metrics::counter!("rate_limited_total").increment(1);
        AppError::RateLimited { retry_after, limit: self.burst.get(), detail }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn each_key_has_its_own_allowance() {
        let limits = RateLimits::new(Some(1.0), NonZeroU32::new(3), ["a".into(), "b".into()]).unwrap();
        limits.check("a", 2).unwrap();
        limits.check("a", 1).unwrap();
        let refused = limits.check("a", 1).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let AppError::RateLimited { retry_after, limit, detail } = refused else { panic!("{refused:?}") };
        assert_eq!(limit, 3);
        assert_eq!(detail, None);
        assert!(retry_after > std::time::Duration::ZERO && retry_after <= std::time::Duration::from_secs(1));
        // Another key is untouched by a's use.
        limits.check("b", 3).unwrap();
        // All or nothing, and never more than the burst: refused as over
        // the limit, saying that waiting alone will not help, and when the
        // whole burst is back.
        let too_many = limits.check("b", 4).unwrap_err();
        assert_eq!(too_many.status(), StatusCode::TOO_MANY_REQUESTS);
        let AppError::RateLimited { retry_after, limit: 3, detail: Some(detail) } = &too_many else {
            panic!("{too_many:?}")
        };
        assert_eq!(*retry_after, std::time::Duration::from_secs(3));
        assert!(detail.contains("at most 3 per batch"), "{detail}");
        assert_eq!(too_many.body()["detail"], detail.as_str());
        limits.check("b", 0).unwrap();
        assert_eq!(limits.check("nobody", 1).unwrap_err().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn off_unless_a_rate_is_set() {
        assert!(RateLimits::new(None, NonZeroU32::new(5), ["a".into()]).is_none());
        assert!(RateLimits::new(Some(0.0), None, ["a".into()]).is_none());
        assert!(RateLimits::new(Some(f64::NAN), None, ["a".into()]).is_none());
        assert_eq!(RateLimits::new(Some(2.0), None, ["a".into()]).unwrap().burst.get(), 2);
        assert_eq!(RateLimits::new(Some(0.5), None, ["a".into()]).unwrap().burst.get(), 1);
        assert_eq!(RateLimits::new(Some(2.5), None, ["a".into()]).unwrap().burst.get(), 3);
    }
}
