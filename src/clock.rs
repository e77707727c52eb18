//! The one clock of wxtoken.
//!
//! Every "what time is it" question (token expiry, China-time quota days, the
//! simulator's token lifetimes) goes through [`Clock`]. It owns two things that
//! tests need to control: it can follow tokio's paused clock (so
//! `tokio::time::advance` moves wall time too), and it carries a manual offset
//! that [`Clock::advance`] moves forward (used by the simulator's clock control).
//!
//! Invariant: `now()` never goes backwards for one `Clock` value and its clones,
//! except when the underlying system clock itself is stepped back.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between UTC and China Standard Time (UTC+8, no daylight saving).
const CHINA_OFFSET_SECS: i64 = 8 * 3600;
const DAY_SECS: i64 = 86_400;

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The operating system's wall clock.
    System,
    /// Wall time at creation plus tokio's (possibly paused) monotonic time since then.
    Tokio {
        anchor_wall: SystemTime,
        anchor_instant: tokio::time::Instant,
    },
}

/// A cloneable clock; clones share the manual offset.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
    offset_ms: Arc<AtomicI64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The operating system clock. Use this in production.
    pub fn system() -> Self {
        Clock {
            source: Source::System,
            offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// A clock that follows tokio's time: under `tokio::time::pause()` it only
    /// moves when tokio's clock is advanced. Must be created inside a runtime.
    pub fn tokio() -> Self {
        Clock {
            source: Source::Tokio {
                anchor_wall: SystemTime::now(),
                anchor_instant: tokio::time::Instant::now(),
            },
            offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Moves this clock (and all its clones) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        let base = match self.source {
            Source::System => SystemTime::now(),
            Source::Tokio {
                anchor_wall,
                anchor_instant,
            } => anchor_wall + anchor_instant.elapsed(),
        };
        let offset = self.offset_ms.load(Ordering::SeqCst);
        if offset >= 0 {
            base + Duration::from_millis(offset as u64)
        } else {
            base - Duration::from_millis(offset.unsigned_abs())
        }
    }

    /// The current time as Unix milliseconds.
    pub fn now_unix_ms(&self) -> i64 {
        unix_ms(self.now())
    }

    /// The current time as whole Unix seconds.
    pub fn now_unix(&self) -> i64 {
        self.now_unix_ms().div_euclid(1000)
    }
}

/// Converts a wall time to Unix milliseconds (negative before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Converts Unix milliseconds to a wall time.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// `ms` (Unix milliseconds) plus `d`, saturating instead of overflowing: the
/// one way to add a duration to an instant, so that no upstream value can
/// wrap a time around.
pub fn add_ms(ms: i64, d: Duration) -> i64 {
    ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long from `from_ms` until `to_ms` (zero when `to_ms` is not later).
pub fn until_ms(from_ms: i64, to_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(to_ms.saturating_sub(from_ms)).unwrap_or(0))
}

/// The China-time (UTC+8) calendar day of a Unix time, as days since 1970-01-01.
/// WeChat's daily quotas reset when this number changes.
pub fn china_day(unix_secs: i64) -> i64 {
    (unix_secs + CHINA_OFFSET_SECS).div_euclid(DAY_SECS)
}

/// The Unix time (seconds) of the next China-time midnight strictly after `unix_secs`.
pub fn next_china_midnight(unix_secs: i64) -> i64 {
    (china_day(unix_secs) + 1) * DAY_SECS - CHINA_OFFSET_SECS
}

/// The Unix time (seconds) of the start of the next wall-clock minute strictly after `unix_secs`.
pub fn next_minute(unix_secs: i64) -> i64 {
    (unix_secs.div_euclid(60) + 1) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_day_changes_at_utc_1600() {
        // 2026-11-23T15:59:59Z is 23:59:59 in Beijing; one second later is a new day.
        let before = 1_795_449_599;
        assert_eq!(china_day(before) + 1, china_day(before + 1));
        assert_eq!(next_china_midnight(before), before + 1);
        assert_eq!(next_china_midnight(before + 1), before + 1 + DAY_SECS);
    }

    #[test]
    fn next_minute_is_strictly_after() {
        assert_eq!(next_minute(120), 180);
        assert_eq!(next_minute(179), 180);
    }

    #[test]
    fn advance_moves_all_clones() {
        let c = Clock::system();
        let d = c.clone();
        let before = d.now_unix();
        c.advance(Duration::from_secs(3600));
        assert!(d.now_unix() >= before + 3600);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = Clock::tokio();
        let t0 = c.now_unix_ms();
        tokio::time::advance(Duration::from_secs(7200)).await;
        let t1 = c.now_unix_ms();
        assert!(
            (7_200_000..7_200_100).contains(&(t1 - t0)),
            "moved {}",
            t1 - t0
        );
    }
}
