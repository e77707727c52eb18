//! The one limit on upstream requests in flight (`upstream.max_concurrency`).
//!
//! Owns [`Limited`], the [`TokenSource`] wrapper the engine puts around
//! whichever source it fetches from (the [`super::WechatClient`] in
//! production, the in-process simulator in virtual-time tests and
//! benchmarks), so that a virtual-time run queues exactly like production.
//!
//! Invariants: at most `max_concurrency` token and ticket calls of one
//! [`Limited`] (and its clones) are in flight; waiting callers get their
//! slot in the order they asked (tokio's semaphore is fair); a call's inner
//! future is created only once it holds its slot; a token call reports how
//! long it waited for its slot ([`super::TokenGrant::waited`]), so that the
//! account counts its token's life from when the request was sent.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::{
    ApiQuota, FetchRequest, OpenAnswer, OpenCall, TicketGrant, TokenGrant, TokenSource,
    UpstreamError,
};
use crate::domain::{AccessToken, ApiName, TicketKind};

/// A token source of which at most `max_concurrency` calls are in flight.
/// Cheap to clone; clones share the limit.
#[derive(Clone)]
pub struct Limited {
    inner: Arc<dyn TokenSource>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("available", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl Limited {
    /// `inner` with at most `max_concurrency` (at least 1) calls in flight.
    pub fn new(inner: Arc<dyn TokenSource>, max_concurrency: usize) -> Limited {
        Limited {
            inner,
            slots: Arc::new(Semaphore::new(max_concurrency.max(1))),
        }
    }

    /// The number of calls that may start now without waiting.
    pub fn available_permits(&self) -> usize {
        self.slots.available_permits()
    }

    /// Waits for a slot; returns it with how long the wait took.
    async fn slot(slots: Arc<Semaphore>) -> (Option<tokio::sync::OwnedSemaphorePermit>, Duration) {
        let asked = tokio::time::Instant::now();
        // The semaphore is never closed, so this is always a permit.
        let permit = slots.acquire_owned().await.ok();
        (permit, asked.elapsed())
    }
}

impl TokenSource for Limited {
    fn fetch(&self, req: FetchRequest) -> BoxFuture<'static, Result<TokenGrant, UpstreamError>> {
        let (inner, slots) = (self.inner.clone(), self.slots.clone());
        Box::pin(async move {
            let (_permit, waited) = Limited::slot(slots).await;
            inner.fetch(req).await.map(|mut grant| {
                grant.waited = grant.waited.saturating_add(waited);
                grant
            })
        })
    }

    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        let (inner, slots) = (self.inner.clone(), self.slots.clone());
        Box::pin(async move {
            let (_permit, _) = Limited::slot(slots).await;
            inner.fetch_ticket(token, kind).await
        })
    }

    fn has_spare_capacity(&self) -> bool {
        // Permits go to queued callers first, so none is available while
        // anyone waits.
        self.slots.available_permits() > 0
    }

    fn api_quota(
        &self,
        token: AccessToken,
        of: ApiName,
    ) -> BoxFuture<'static, Result<ApiQuota, UpstreamError>> {
        let (inner, slots) = (self.inner.clone(), self.slots.clone());
        Box::pin(async move {
            let (_permit, _) = Limited::slot(slots).await;
            inner.api_quota(token, of).await
        })
    }

    fn open_call(&self, call: OpenCall) -> BoxFuture<'static, Result<OpenAnswer, UpstreamError>> {
        let (inner, slots) = (self.inner.clone(), self.slots.clone());
        Box::pin(async move {
            let (_permit, _) = Limited::slot(slots).await;
            inner.open_call(call).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use secrecy::SecretString;

    use super::*;
    use crate::domain::AppId;
    use crate::wechat::Endpoint;

    /// A source whose calls take 100 ms and count how many run at once.
    #[derive(Default)]
    struct Slow {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Slow {
        async fn take_time(&self) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl TokenSource for Arc<Slow> {
        fn fetch(&self, _: FetchRequest) -> BoxFuture<'static, Result<TokenGrant, UpstreamError>> {
            let this = self.clone();
            Box::pin(async move {
                this.take_time().await;
                Ok(TokenGrant {
                    access_token: AccessToken::new("a-token-of-test-length".to_string()),
                    expires_in: Duration::from_secs(7200),
                    after_unknown: false,
                    waited: Duration::ZERO,
                    refresh_token: None,
                })
            })
        }

        fn fetch_ticket(
            &self,
            _: AccessToken,
            _: TicketKind,
        ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
            let this = self.clone();
            Box::pin(async move {
                this.take_time().await;
                Ok(TicketGrant {
                    ticket: AccessToken::new("a-ticket-of-test-length".to_string()),
                    expires_in: Duration::from_secs(7200),
                })
            })
        }
    }

    fn request() -> FetchRequest {
        FetchRequest {
            appid: AppId::parse("wx1111111111111111").expect("valid appid"),
            secret: SecretString::from("s".to_string()),
            endpoint: Endpoint::Stable,
            force_refresh: false,
            open: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_and_ticket_calls_share_the_limit_and_report_their_wait() {
        let slow = Arc::new(Slow::default());
        let limited = Limited::new(Arc::new(slow.clone()), 2);
        let tokens = (0..4).map(|_| limited.fetch(request()));
        let tickets = (0..2).map(|_| {
            limited.fetch_ticket(
                AccessToken::new("a-token-of-test-length".to_string()),
                TicketKind::Jsapi,
            )
        });
        let started = tokio::time::Instant::now();
        let (tokens, tickets) = futures::future::join(
            futures::future::join_all(tokens),
            futures::future::join_all(tickets),
        )
        .await;
        // Six 100 ms calls, two at a time: three rounds.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(slow.most.load(Ordering::SeqCst), 2);
        assert!(tickets.iter().all(Result::is_ok));
        // In the order asked: the first two tokens went at once, the next two
        // after one round (the tickets took the third).
        let waits: Vec<Duration> = tokens
            .into_iter()
            .map(|t| t.expect("a token").waited)
            .collect();
        assert_eq!(waits, [0, 0, 100, 100].map(Duration::from_millis).to_vec());
        assert_eq!(limited.available_permits(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn there_is_spare_capacity_only_while_no_call_waits_for_a_slot() {
        let slow = Arc::new(Slow::default());
        let limited = Limited::new(Arc::new(slow.clone()), 2);
        assert!(limited.has_spare_capacity());
        let one = tokio::spawn(limited.fetch(request()));
        tokio::task::yield_now().await;
        assert!(limited.has_spare_capacity(), "one of two slots is free");
        let two = tokio::spawn(limited.fetch(request()));
        let three = tokio::spawn(limited.fetch(request()));
        tokio::task::yield_now().await;
        assert!(!limited.has_spare_capacity(), "both slots busy, one waits");
        for call in [one, two, three] {
            assert!(call.await.expect("the call ran").is_ok());
        }
        assert!(limited.has_spare_capacity());
    }
}
