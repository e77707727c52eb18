//! Request metrics: `wxtoken_http_requests_total{route,status}` and
//! `wxtoken_http_request_duration_seconds{route}` for every request that
//! reaches the app (not the ones actix-http refuses while parsing the head;
//! see the `api` module).
//!
//! Owns [`HttpMetrics`], an actix-web middleware wrapped around the whole app.
//! Invariant: the `route` label is the matched resource pattern (each resource
//! is named after its pattern, see `super::routes`), or `unmatched`; never the
//! raw path, so label values stay bounded whatever clients send. Per request it
//! costs two series lookups and no allocation.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::Error;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use prometheus::{HistogramVec, IntCounterVec};

use crate::metrics::Metrics;

/// The `route` label of requests that matched no endpoint.
pub const UNMATCHED: &str = "unmatched";

/// The two series the middleware writes.
struct Series {
    requests: IntCounterVec,
    duration: HistogramVec,
}

/// Middleware factory recording every request into [`Metrics`].
pub struct HttpMetrics {
    series: Rc<Series>,
}

impl HttpMetrics {
    /// Records into `metrics`' HTTP series.
    pub fn new(metrics: &Metrics) -> Self {
        HttpMetrics {
            series: Rc::new(Series {
                requests: metrics.http_requests.clone(),
                duration: metrics.http_duration.clone(),
            }),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for HttpMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = HttpMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(HttpMetricsService {
            service,
            series: self.series.clone(),
        }))
    }
}

/// The per-worker middleware service made by [`HttpMetrics`].
pub struct HttpMetricsService<S> {
    service: S,
    series: Rc<Series>,
}

impl<S, B> Service<ServiceRequest> for HttpMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Recording<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        Recording {
            inner: self.service.call(req),
            started: Instant::now(),
            series: self.series.clone(),
        }
    }
}

/// The response future of [`HttpMetricsService`]: records when it completes.
pub struct Recording<F> {
    inner: F,
    started: Instant,
    series: Rc<Series>,
}

impl<F, B> Future for Recording<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        let elapsed = this.started.elapsed().as_secs_f64();
        let (route, status) = match &result {
            Ok(res) => (
                res.request().match_name().unwrap_or(UNMATCHED),
                res.status(),
            ),
            Err(err) => (UNMATCHED, err.as_response_error().status_code()),
        };
        this.series
            .requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        this.series
            .duration
            .with_label_values(&[route])
            .observe(elapsed);
        tracing::debug!(
            route,
            status = status.as_u16(),
            elapsed_us = (elapsed * 1e6) as u64,
            "http request"
        );
        Poll::Ready(result)
    }
}
