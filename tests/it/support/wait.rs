//! Waiting for a condition: poll it on whatever clock tokio runs (the real
//! one, or a paused one that the sleeps between polls advance) and fail,
//! naming what was awaited, when it does not come within a limit.
//!
//! Shared by the integration tests and the benches, so it uses nothing but
//! tokio.

use std::time::Duration;

/// How long [`eventually`] waits.
pub const EVENTUALLY: Duration = Duration::from_secs(10);
/// How often a [`Wait`] polls unless told otherwise.
const EVERY: Duration = Duration::from_millis(20);

/// How long and how often to poll a condition.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    limit: Duration,
    every: Duration,
}

impl Wait {
    /// Polls every 20 ms for at most `limit` (tokio time: virtual when paused).
    pub const fn up_to(limit: Duration) -> Wait {
        Wait {
            limit,
            every: EVERY,
        }
    }

    /// Polls every `every` instead.
    pub const fn every(self, every: Duration) -> Wait {
        Wait { every, ..self }
    }

    /// Polls `done` until it holds; panics with `what` after the limit.
    pub async fn until(self, what: &str, mut done: impl FnMut() -> bool) {
        self.until_async(what, async || done()).await
    }

    /// Polls the async `done` until it holds; panics with `what` after the limit.
    pub async fn until_async(self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        self.for_value_async(what, async || done().await.then_some(()))
            .await
    }

    /// Polls `found` until it gives a value and returns that; panics with
    /// `what` after the limit.
    pub async fn for_value<T>(self, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
        self.for_value_async(what, async || found()).await
    }

    /// Polls the async `found` until it gives a value and returns that;
    /// panics with `what` after the limit.
    pub async fn for_value_async<T>(
        self,
        what: &str,
        mut found: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + self.limit;
        loop {
            if let Some(value) = found().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {:?}",
                self.limit
            );
            tokio::time::sleep(self.every).await;
        }
    }
}

/// Polls `done` every 20 ms until it holds; panics with `what` after 10 s.
pub async fn eventually(what: &str, done: impl FnMut() -> bool) {
    Wait::up_to(EVENTUALLY).until(what, done).await
}
