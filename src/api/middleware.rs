//! Request metrics: `wxtoken_http_requests_total{route,status}` and
//! `wxtoken_http_request_duration_seconds{route}` for every request that
//! reaches the app (not the ones actix-http refuses while parsing the head;
//! see the `api` module), and `wxtoken_client_requests_total{client,route,status}`
//! for those whose key was accepted (the handler marked the request with a
//! [`ClientLabel`](super::ClientLabel)): client names come from the
//! configuration, so that label is bounded too.
//!
//! Owns [`HttpMetrics`], an actix-web middleware wrapped around the whole app.
//! Invariant: the `route` label is the matched resource pattern (each resource
//! is named after its pattern, see `super::routes`), or `unmatched`; never the
//! raw path, so label values stay bounded whatever clients send.
//!
//! Per request it costs no label hashing and no lock: each worker keeps the
//! counter and histogram handles it has resolved, per route and per
//! (route, status), and only the first request of a combination on a worker
//! goes through `with_label_values`. The handles stay valid because nothing
//! removes or resets the HTTP series; the cache is bounded as the labels are
//! (routes × statuses actix-web can answer with).

use std::cell::RefCell;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::{Error, HttpMessage as _};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use crate::metrics::Metrics;

/// The `route` label of requests that matched no endpoint.
pub const UNMATCHED: &str = "unmatched";

/// The two series the middleware writes, and one worker's resolved handles.
struct Series {
    requests: IntCounterVec,
    duration: HistogramVec,
    clients: IntCounterVec,
    /// Handles resolved so far, one entry per route seen by this worker.
    cache: RefCell<Vec<RouteHandles>>,
}

/// The resolved series of one route.
struct RouteHandles {
    route: Box<str>,
    duration: Histogram,
    /// `wxtoken_http_requests_total{route, status}` per status seen.
    requests: StatusCounters,
    /// `wxtoken_client_requests_total{client, route, status}` per client
    /// name and status seen (names, not `Arc`s: a reload makes new ones).
    clients: Vec<(Box<str>, StatusCounters)>,
}

/// Counters resolved per status.
type StatusCounters = Vec<(StatusCode, IntCounter)>;

/// The counter of `status` in `handles`, resolved through `resolve` the
/// first time.
fn counter_of(
    handles: &mut StatusCounters,
    status: StatusCode,
    resolve: impl FnOnce() -> IntCounter,
) -> &IntCounter {
    let at = match handles.iter().position(|(s, _)| *s == status) {
        Some(at) => at,
        None => {
            handles.push((status, resolve()));
            handles.len() - 1
        }
    };
    &handles[at].1
}

impl Series {
    /// Counts one request of `route` answered with `status` that took
    /// `elapsed` seconds, made by `client` when its key was accepted.
    fn record(&self, route: &str, status: StatusCode, elapsed: f64, client: Option<&str>) {
        // The cache is only borrowed here, never across an await or a call
        // that could come back; should it be busy anyway, resolve afresh.
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            self.record_uncached(route, status, elapsed, client);
            return;
        };
        let at = match cache.iter().position(|r| &*r.route == route) {
            Some(at) => at,
            None => {
                cache.push(RouteHandles {
                    route: route.into(),
                    duration: self.duration.with_label_values(&[route]),
                    requests: Vec::new(),
                    clients: Vec::new(),
                });
                cache.len() - 1
            }
        };
        let handles = &mut cache[at];
        counter_of(&mut handles.requests, status, || {
            self.requests.with_label_values(&[route, status.as_str()])
        })
        .inc();
        handles.duration.observe(elapsed);
        if let Some(client) = client {
            let at = match handles.clients.iter().position(|(c, _)| &**c == client) {
                Some(at) => at,
                None => {
                    handles.clients.push((client.into(), Vec::new()));
                    handles.clients.len() - 1
                }
            };
            counter_of(&mut handles.clients[at].1, status, || {
                self.clients
                    .with_label_values(&[client, route, status.as_str()])
            })
            .inc();
        }
    }

    fn record_uncached(&self, route: &str, status: StatusCode, elapsed: f64, client: Option<&str>) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.duration.with_label_values(&[route]).observe(elapsed);
        if let Some(client) = client {
            self.clients
                .with_label_values(&[client, route, status.as_str()])
                .inc();
        }
    }
}

/// Middleware factory recording every request into [`Metrics`].
pub struct HttpMetrics {
    series: Rc<Series>,
}

impl HttpMetrics {
    /// Records into `metrics`' HTTP series. Make one per worker (in the
    /// `HttpServer::new` factory): its handle cache is not shared.
    pub fn new(metrics: &Metrics) -> Self {
        HttpMetrics {
            series: Rc::new(Series {
                requests: metrics.http_requests.clone(),
                duration: metrics.http_duration.clone(),
                clients: metrics.client_requests.clone(),
                cache: RefCell::new(Vec::new()),
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
        let (route, status, client) = match &result {
            Ok(res) => (
                res.response()
                    .extensions()
                    .get::<super::RouteLabel>()
                    .map(|l| l.0)
                    .or_else(|| res.request().match_name())
                    .unwrap_or(UNMATCHED),
                res.status(),
                res.request()
                    .extensions()
                    .get::<super::ClientLabel>()
                    .cloned(),
            ),
            Err(err) => (UNMATCHED, err.as_response_error().status_code(), None),
        };
        this.series
            .record(route, status, elapsed, client.as_ref().map(|c| c.as_str()));
        tracing::debug!(
            route,
            status = status.as_u16(),
            elapsed_us = (elapsed * 1e6) as u64,
            "http request"
        );
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpResponse, test, web};

    use super::*;

    const ROUTE: &str = "/things/{id}";
    const OTHER: &str = "/other";

    /// An app with two named routes, wrapped like the real one.
    fn app(
        middleware: HttpMetrics,
    ) -> App<
        impl actix_web::dev::ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl actix_web::body::MessageBody>,
            Error = Error,
            InitError = (),
        >,
    > {
        App::new()
            .wrap(middleware)
            .service(web::resource(ROUTE).name(ROUTE).route(web::get().to(
                |id: web::Path<String>| async move {
                    match id.as_str() {
                        "ok" => HttpResponse::Ok().finish(),
                        "gone" => HttpResponse::Gone().finish(),
                        _ => HttpResponse::NotFound().finish(),
                    }
                },
            )))
            .service(
                web::resource(OTHER)
                    .name(OTHER)
                    .route(web::get().to(|| async { HttpResponse::Accepted().finish() })),
            )
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
    }

    fn count(metrics: &Metrics, route: &str, status: &str) -> u64 {
        metrics
            .http_requests
            .with_label_values(&[route, status])
            .get()
    }

    fn observed(metrics: &Metrics, route: &str) -> u64 {
        metrics
            .http_duration
            .with_label_values(&[route])
            .get_sample_count()
    }

    #[actix_web::test]
    async fn cached_handles_count_each_request_under_its_route_and_status() {
        let metrics = Metrics::new();
        // Two services from two factories, as two HTTP workers have: each
        // has its own cache, both count into the same series.
        let first = test::init_service(app(HttpMetrics::new(&metrics))).await;
        let second = test::init_service(app(HttpMetrics::new(&metrics))).await;
        // Interleaved so that every cache lookup after the first hits an
        // entry resolved for another (route, status).
        let paths = [
            "/things/ok",
            "/things/missing",
            "/other",
            "/things/ok",
            "/nowhere",
            "/things/gone",
            "/things/ok",
            "/things/missing",
            "/other",
            "/nowhere/else",
        ];
        for (i, path) in paths.iter().enumerate() {
            let req = test::TestRequest::get().uri(path).to_request();
            let service = if i % 3 == 0 { &first } else { &second };
            test::call_service(service, req).await;
        }
        assert_eq!(count(&metrics, ROUTE, "200"), 3);
        assert_eq!(count(&metrics, ROUTE, "404"), 2);
        assert_eq!(count(&metrics, ROUTE, "410"), 1);
        assert_eq!(count(&metrics, OTHER, "202"), 2);
        assert_eq!(count(&metrics, UNMATCHED, "404"), 2);
        // Nothing landed on a combination that was never answered.
        assert_eq!(count(&metrics, ROUTE, "202"), 0);
        assert_eq!(count(&metrics, OTHER, "200"), 0);
        assert_eq!(count(&metrics, UNMATCHED, "200"), 0);
        assert_eq!(observed(&metrics, ROUTE), 6);
        assert_eq!(observed(&metrics, OTHER), 2);
        assert_eq!(observed(&metrics, UNMATCHED), 2);
        // And the exposition shows them (the handles are the registry's).
        let text = metrics.encode();
        assert!(
            text.contains("wxtoken_http_requests_total{route=\"/things/{id}\",status=\"200\"} 3"),
            "{text}"
        );
    }
}
