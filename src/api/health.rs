//! `GET /healthz` (the process serves) and `GET /readyz` (contract §9).
//!
//! `/readyz` is the load-balancer check: 200 once the process serves and its
//! tokens are loaded (every enabled account has finished its first token
//! fetch: it has a usable token, or that fetch failed), even when some
//! accounts fail, the store cannot write or Redis is down; before that, 503
//! `not_ready` with `"status": "starting"`. `/readyz?strict=1` keeps the
//! all-or-nothing meaning: 200 only when every enabled account has a usable
//! token, the store writes and Redis (when configured) answers. Every answer
//! lists the enabled accounts without a usable token (`failing`) and the
//! health of the store and of Redis.
//!
//! Invariants: once loaded, the load-balancer check stays 200 for the life of
//! the process (`AppState::tokens_loaded`), so neither one bad account nor an
//! account added by a reload takes a replica out of its load balancer. Both
//! endpoints are open to everyone, like `/metrics`: they tell which appids
//! are unhealthy but never a token or a secret.

use std::sync::atomic::Ordering;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::{Value, json};

use super::state::AppState;
use crate::snapshot::State;

use super::error::ApiError;

/// `GET /healthz`: 200 `ok` while the process serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body("ok")
}

/// `GET /readyz[?strict=1]`: see the module documentation for the meaning.
///
/// 200 `{"status":"ready","accounts":N,"failing":[{appid,state,errcode}],
/// "store":"ok"|{"failing":"..."},"redis":"up"|"down"}` (`redis` only with
/// `store.redis`); 503 `not_ready` with the same fields, `status`
/// `"starting"` or `"not_ready"`, and a `not_ready` list of the accounts
/// that make it so. Errors with 400 when `strict` is not `1`/`true`/`0`/`false`.
pub async fn readyz(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let strict = strict_param(&req)?;
    let observed = Observed::take(&state);
    let loaded = state.tokens_loaded.load(Ordering::Relaxed) || observed.tokens_loaded();
    if loaded {
        state.tokens_loaded.store(true, Ordering::Relaxed);
    }
    let verdict = verdict(&observed, strict, loaded);
    let mut fields = observed.fields();
    Ok(match verdict {
        Verdict::Ready => {
            fields.insert("status".into(), json!("ready"));
            let body = serde_json::to_vec(&fields).unwrap_or_default();
            HttpResponse::Ok()
                .insert_header((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ))
                .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
                .body(body)
        }
        Verdict::Unavailable {
            status,
            message,
            accounts,
        } => {
            fields.insert("status".into(), json!(status));
            fields.insert("not_ready".into(), listed(&accounts));
            let error = ApiError::not_ready(message);
            let extra = fields.iter().map(|(k, v)| (k.as_str(), v.clone()));
            error.respond_with(error.body_json(extra))
        }
    })
}

/// The `strict` query parameter: absent means the load-balancer check.
fn strict_param(req: &HttpRequest) -> Result<bool, ApiError> {
    let mut strict = false;
    for (key, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if key == "strict" {
            strict = match value.as_ref() {
                "" | "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ApiError::bad_request(
                        "the `strict` parameter must be 1 or 0: /readyz is the load-balancer check, /readyz?strict=1 needs a usable token for every account",
                    ));
                }
            };
        }
    }
    Ok(strict)
}

/// An enabled account without a usable token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unusable {
    appid: String,
    state: State,
    /// WeChat's errcode of its last failure, when known.
    errcode: Option<i64>,
    /// It has had its first token fetch answered (or failed) since it joined.
    first_fetch_done: bool,
}

/// The wire form of an account in `failing` and `not_ready`.
#[derive(Serialize)]
struct Listed<'a> {
    appid: &'a str,
    state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    errcode: Option<i64>,
}

fn listed(accounts: &[&Unusable]) -> Value {
    let list: Vec<Listed<'_>> = accounts
        .iter()
        .map(|a| Listed {
            appid: &a.appid,
            state: a.state,
            errcode: a.errcode,
        })
        .collect();
    serde_json::to_value(list).unwrap_or_default()
}

/// The shared Redis of replicas, as `/readyz` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RedisSeen {
    up: bool,
    address: String,
}

/// Everything `/readyz` decides on, taken once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// Configured accounts, enabled or not.
    accounts: usize,
    /// Enabled accounts without a usable token, sorted by appid.
    unusable: Vec<Unusable>,
    /// Why the token store cannot write, if it cannot.
    store_failing: Option<String>,
    /// `None` without `store.redis`.
    redis: Option<RedisSeen>,
}

impl Observed {
    fn take(state: &AppState) -> Observed {
        let now_ms = state.clock.now_unix_ms();
        let slots = state.directory.all();
        let unusable = slots
            .iter()
            .filter(|slot| !slot.is_ready(now_ms))
            .map(|slot| {
                let status = slot.status();
                Unusable {
                    appid: slot.appid.to_string(),
                    state: status.state,
                    errcode: status.last_error.as_ref().and_then(|e| e.errcode),
                    // A failed first fetch leaves `last_error` set while its
                    // retry runs as `fetching` again.
                    first_fetch_done: status.last_error.is_some()
                        || !matches!(status.state, State::Empty | State::Fetching),
                }
            })
            .collect();
        Observed {
            accounts: slots.len(),
            unusable,
            store_failing: state.store.failing(),
            redis: state.shared.as_ref().map(|shared| RedisSeen {
                up: shared.is_up(),
                address: shared.address().to_string(),
            }),
        }
    }

    /// Every enabled account has finished its first token fetch.
    fn tokens_loaded(&self) -> bool {
        self.unusable.iter().all(|a| a.first_fetch_done)
    }

    /// The fields every answer carries (`accounts`, `failing`, `store`, `redis`).
    fn fields(&self) -> serde_json::Map<String, Value> {
        let mut fields = serde_json::Map::new();
        fields.insert("accounts".into(), json!(self.accounts));
        let failing: Vec<&Unusable> = self.unusable.iter().collect();
        fields.insert("failing".into(), listed(&failing));
        let store = match &self.store_failing {
            None => json!("ok"),
            Some(reason) => json!({ "failing": reason }),
        };
        fields.insert("store".into(), store);
        if let Some(redis) = &self.redis {
            fields.insert("redis".into(), json!(if redis.up { "up" } else { "down" }));
        }
        fields
    }
}

/// What `/readyz` answers.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<'a> {
    Ready,
    /// 503 `not_ready`.
    Unavailable {
        /// `"starting"` or `"not_ready"`.
        status: &'static str,
        message: String,
        /// The accounts that make it so (the `not_ready` list).
        accounts: Vec<&'a Unusable>,
    },
}

/// The decision of `/readyz`. `loaded`: the process's tokens are (or were
/// once) loaded. Without `strict`, only a process still loading is
/// unavailable: failing accounts, a failing store and Redis down are shown,
/// not punished, because tokens held in memory keep being served and taking
/// every replica out of the load balancer would stop serving them all.
fn verdict(observed: &Observed, strict: bool, loaded: bool) -> Verdict<'_> {
    let total = observed.unusable.len();
    let names = |accounts: &[&Unusable]| -> String {
        accounts
            .iter()
            .map(|a| a.appid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !strict {
        if loaded {
            return Verdict::Ready;
        }
        let waiting: Vec<&Unusable> = observed
            .unusable
            .iter()
            .filter(|a| !a.first_fetch_done)
            .collect();
        return Verdict::Unavailable {
            status: "starting",
            message: format!(
                "starting: {} of {} accounts have not finished their first token fetch yet: {}",
                waiting.len(),
                observed.accounts,
                names(&waiting)
            ),
            accounts: waiting,
        };
    }
    let unusable: Vec<&Unusable> = observed.unusable.iter().collect();
    let mut reasons = Vec::new();
    if total > 0 {
        reasons.push(format!(
            "{total} of {} accounts have no usable token: {}",
            observed.accounts,
            names(&unusable)
        ));
    }
    if let Some(reason) = &observed.store_failing {
        reasons.push(format!(
            "the token store cannot write ({reason}); tokens are served from memory"
        ));
    }
    if let Some(redis) = observed.redis.as_ref().filter(|r| !r.up) {
        reasons.push(format!(
            "the shared store (Redis at {}) is unreachable; held tokens are served while valid, but nothing is refreshed until it is back",
            redis.address
        ));
    }
    if reasons.is_empty() {
        return Verdict::Ready;
    }
    Verdict::Unavailable {
        status: "not_ready",
        message: reasons.join("; "),
        accounts: unusable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(appid: &str, state: State, first_fetch_done: bool) -> Unusable {
        Unusable {
            appid: appid.to_string(),
            state,
            errcode: None,
            first_fetch_done,
        }
    }

    fn healthy() -> Observed {
        Observed {
            accounts: 3,
            unusable: Vec::new(),
            store_failing: None,
            redis: Some(RedisSeen {
                up: true,
                address: "127.0.0.1:6379".to_string(),
            }),
        }
    }

    fn status_of(verdict: &Verdict<'_>) -> &'static str {
        match verdict {
            Verdict::Ready => "ready",
            Verdict::Unavailable { status, .. } => status,
        }
    }

    #[test]
    fn a_healthy_process_is_ready_strict_or_not() {
        let observed = healthy();
        assert_eq!(verdict(&observed, false, true), Verdict::Ready);
        assert_eq!(verdict(&observed, true, true), Verdict::Ready);
    }

    #[test]
    fn a_failing_store_is_ready_for_the_load_balancer_but_not_under_strict() {
        let observed = Observed {
            store_failing: Some("no space left on device".to_string()),
            ..healthy()
        };
        assert_eq!(verdict(&observed, false, true), Verdict::Ready);
        let strict = verdict(&observed, true, true);
        assert_eq!(status_of(&strict), "not_ready");
        let Verdict::Unavailable { message, .. } = strict else {
            unreachable!()
        };
        assert!(message.contains("no space left on device"), "{message}");
        let fields = observed.fields();
        assert_eq!(
            fields["store"],
            json!({"failing": "no space left on device"})
        );
    }

    #[test]
    fn redis_down_is_ready_for_the_load_balancer_but_not_under_strict() {
        let mut observed = healthy();
        if let Some(redis) = observed.redis.as_mut() {
            redis.up = false;
        }
        assert_eq!(verdict(&observed, false, true), Verdict::Ready);
        let strict = verdict(&observed, true, true);
        let Verdict::Unavailable { message, .. } = &strict else {
            panic!("strict readiness with Redis down: {strict:?}")
        };
        assert!(message.contains("127.0.0.1:6379"), "{message}");
        assert_eq!(observed.fields()["redis"], "down");
    }

    #[test]
    fn a_process_still_loading_is_starting_and_names_only_the_accounts_it_waits_for() {
        let observed = Observed {
            unusable: vec![
                account("wx0000000000000001", State::Failing, true),
                account("wx0000000000000002", State::Fetching, false),
            ],
            ..healthy()
        };
        assert!(!observed.tokens_loaded());
        let Verdict::Unavailable {
            status,
            message,
            accounts,
        } = verdict(&observed, false, false)
        else {
            panic!("ready while loading")
        };
        assert_eq!(status, "starting");
        assert_eq!(accounts, vec![&observed.unusable[1]]);
        assert!(message.contains("wx0000000000000002"), "{message}");
        assert!(!message.contains("wx0000000000000001"), "{message}");
        // Once loaded (the latch), a retry in `fetching` changes nothing.
        assert_eq!(verdict(&observed, false, true), Verdict::Ready);
        // Strict names both.
        let Verdict::Unavailable { accounts, .. } = verdict(&observed, true, true) else {
            panic!("strict ready without tokens")
        };
        assert_eq!(accounts.len(), 2);
    }

    #[test]
    fn a_failed_first_fetch_counts_as_loaded() {
        let observed = Observed {
            unusable: vec![account("wx0000000000000001", State::Failing, true)],
            ..healthy()
        };
        assert!(observed.tokens_loaded());
    }
}
