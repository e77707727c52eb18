//! `POST /v1/admin/reload` (admin): re-read `accounts.yaml` and apply it.
//!
//! Answers 200 with what changed (`added`, `removed`, `changed` appids and the
//! `unchanged` count), or 400 `invalid_config` with every problem of the new
//! file as `PATH:LINE: message` while the old configuration stays in force.
//! Problems never quote a secret (the config loader guarantees it).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::state::AppState;
use crate::reload::ReloadError;

use super::error::ApiError;

/// `POST /v1/admin/reload`.
///
/// Errors: 401, 403 (not an admin, or an admin limited to some appids),
/// 409 when the server has no configuration file, 503 when the registry
/// does not answer.
pub async fn reload(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    {
        let auth = state.auth.load();
        let caller = auth.authenticate(&req)?;
        caller.check_admin()?;
        if !caller.may_access_all() {
            return Err(ApiError::forbidden(
                "reloading needs an admin key for every account (`appids: [\"*\"]`)",
            ));
        }
    }
    let reloader = state
        .reloader
        .as_ref()
        .ok_or_else(ApiError::reload_unavailable)?;
    match reloader.reload(super::origin(&req, "admin")).await {
        Ok(summary) => Ok(HttpResponse::Ok().json(summary)),
        Err(ReloadError::Invalid(problems)) => {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Ok(HttpResponse::BadRequest().json(json!({
                "error": "invalid_config",
                "message": format!(
                    "the new configuration has {} problem(s); the old one stays in force",
                    lines.len()
                ),
                "problems": lines,
            })))
        }
        Err(e @ ReloadError::Registry) => Err(ApiError::internal(e.to_string())),
    }
}
