//! `GET /metrics`: every metric of contract §4 in the Prometheus text format.
//! Open to everyone (scrapers carry no key); label values are appids and fixed
//! vocabularies only, never a token or a secret.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

use super::state::AppState;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .directory
        .update_state_gauge(&state.metrics, state.clock.now_unix_ms());
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_TEXT),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(state.metrics.encode())
}
