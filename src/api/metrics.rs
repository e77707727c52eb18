//! `GET /metrics`: every metric of contract §4 in the Prometheus text format.
//! Open to everyone (scrapers carry no key); label values are appids and fixed
//! vocabularies only, never a token or a secret. The text is written in one
//! buffer by [`crate::snapshot::Directory::encode_metrics`] (the fleet
//! registry, then the per-account series of the `metrics.per_account` mode
//! in force), off the server's threads: at 100,000 accounts it takes tens of
//! milliseconds.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

use super::state::AppState;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (directory, metrics) = (state.directory.clone(), state.metrics.clone());
    let now_ms = state.clock.now_unix_ms();
    let body = match web::block(move || directory.encode_metrics(&metrics, now_ms)).await {
        Ok(body) => body,
        Err(_) => {
            return HttpResponse::ServiceUnavailable()
                .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
                .body("metrics are unavailable right now\n");
        }
    };
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_TEXT),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body)
}
