//! Prometheus metrics of contract §4.
//!
//! Two parts, one text: the fleet-level metrics live in one `prometheus`
//! [`Registry`] owned by [`Metrics`]; the per-account series are not stored
//! here at all. Each account's values live in its slot
//! ([`crate::snapshot::AccountSlot`]: status, token, tickets and a few atomic
//! counters) and are written at scrape time as text ([`exposition`]) by
//! [`crate::snapshot::Directory::encode_metrics`], in the [`PerAccount`] mode
//! in force: memory and scrape cost grow with what is exported, not with
//! pre-created child series.
//!
//! Owns: the fleet registry, the names and help texts of the per-account
//! families ([`PER_ACCOUNT_FAMILIES`]) and of the Open Platform families
//! written from the slots in every mode ([`OPEN_FAMILIES`]), the label vocabularies, and the
//! `metrics.per_account` modes with their default rule
//! ([`PerAccount::default_for`]).
//!
//! Invariant: label values come only from the configuration (appids), from
//! fixed vocabularies (reasons, results, states, APIs, ticket types, route
//! patterns, modes) or from WeChat errcodes, IPs WeChat reported and HTTP
//! statuses; never from raw request input. A vocabulary named by an enum is
//! that enum's `ALL` through its label function (`ApiName`, `TicketKind`,
//! `Reason`), so a new variant gets its series.

pub mod exposition;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::{Reason, TicketKind};
use exposition::Family;

/// Refresh reasons, the `reason` label of `wxtoken_refreshes_total`.
pub const REFRESH_REASONS: [&str; Reason::ALL.len()] = {
    let mut labels = [""; Reason::ALL.len()];
    let mut i = 0;
    while i < labels.len() {
        labels[i] = Reason::ALL[i].as_str();
        i += 1;
    }
    labels
};
/// Account states, the `state` label of `wxtoken_accounts`: the distinct
/// [`crate::domain::State::metric_label`]s of [`crate::domain::State::ALL`] (several states share a label;
/// a unit test keeps the two in step).
pub const ACCOUNT_STATES: [&str; 4] = ["ready", "refreshing", "failing", "disabled"];
/// Results of a refresh, ticket fetch or reload, the `result` label; index
/// 0 is success.
pub const RESULTS: [&str; 2] = ["ok", "error"];

/// How many per-account series `/metrics` carries: `metrics.per_account`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerAccount {
    /// Every per-account series of contract §4, counters at 0 from start:
    /// about 20 lines (1.6 KB) per account.
    Full,
    /// What the shipped dashboard and alerts use per account, and no
    /// zero-valued combination: token expiry, the current state, calls
    /// today, ticket expiries, a config error while set, and the refresh,
    /// ticket and restart counters only where failures (restarts) happened.
    Essential,
    /// No per-account series; the fleet aggregates remain.
    None,
}

/// Up to this many accounts the default mode is [`PerAccount::Full`].
pub const FULL_UP_TO: usize = 1_000;
/// Up to this many accounts (above [`FULL_UP_TO`]) the default mode is
/// [`PerAccount::Essential`]; above it [`PerAccount::None`].
pub const ESSENTIAL_UP_TO: usize = 50_000;

impl PerAccount {
    /// Every mode, in the order of `wxtoken_metrics_per_account{mode}`.
    pub const ALL: [PerAccount; 3] = [PerAccount::Full, PerAccount::Essential, PerAccount::None];

    /// The name in `accounts.yaml`, logs and the `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PerAccount::Full => "full",
            PerAccount::Essential => "essential",
            PerAccount::None => "none",
        }
    }

    /// The mode named `text` (`full`, `essential`, `none`).
    pub fn parse(text: &str) -> Option<PerAccount> {
        PerAccount::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// The mode when `metrics.per_account` is not set, for a fleet of
    /// `accounts`: full up to [`FULL_UP_TO`], essential up to
    /// [`ESSENTIAL_UP_TO`], none above.
    pub fn default_for(accounts: usize) -> PerAccount {
        if accounts <= FULL_UP_TO {
            PerAccount::Full
        } else if accounts <= ESSENTIAL_UP_TO {
            PerAccount::Essential
        } else {
            PerAccount::None
        }
    }

    fn code(setting: Option<PerAccount>) -> u8 {
        match setting {
            None => 0,
            Some(PerAccount::Full) => 1,
            Some(PerAccount::Essential) => 2,
            Some(PerAccount::None) => 3,
        }
    }

    fn from_code(code: u8) -> Option<PerAccount> {
        match code {
            1 => Some(PerAccount::Full),
            2 => Some(PerAccount::Essential),
            3 => Some(PerAccount::None),
            _ => None,
        }
    }
}

impl std::fmt::Display for PerAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `wxtoken_token_expiry_timestamp_seconds{appid}` (contract §4).
pub const TOKEN_EXPIRY: Family = Family::gauge(
    "wxtoken_token_expiry_timestamp_seconds",
    "Unix time at which the current token of an account expires.",
);
/// `wxtoken_token_fetched_timestamp_seconds{appid}` (contract §4).
pub const TOKEN_FETCHED: Family = Family::gauge(
    "wxtoken_token_fetched_timestamp_seconds",
    "Unix time at which the current token of an account was fetched.",
);
/// `wxtoken_token_serve_until_timestamp_seconds{appid}`: until when the
/// current token is handed out (its expiry, or earlier in legacy mode).
pub const TOKEN_SERVE_UNTIL: Family = Family::gauge(
    "wxtoken_token_serve_until_timestamp_seconds",
    "Until when the current token is handed out (its expiry, or earlier in legacy mode), Unix seconds.",
);
/// `wxtoken_next_refresh_timestamp_seconds{appid}` (contract §4).
pub const NEXT_REFRESH: Family = Family::gauge(
    "wxtoken_next_refresh_timestamp_seconds",
    "Unix time of the next planned refresh of an account.",
);
/// `wxtoken_refreshes_total{appid,reason,result}` (contract §4).
pub const REFRESHES: Family = Family::counter(
    "wxtoken_refreshes_total",
    "Token refresh attempts by reason and result.",
);
/// `wxtoken_upstream_calls_today{appid}` (contract §4).
pub const CALLS_TODAY: Family = Family::gauge(
    "wxtoken_upstream_calls_today",
    "Token fetches counted against WeChat's daily quota, China-time day.",
);
/// `wxtoken_actor_restarts_total{appid}` (contract §4).
pub const ACTOR_RESTARTS: Family = Family::counter(
    "wxtoken_actor_restarts_total",
    "Account actors restarted by the supervisor.",
);
/// `wxtoken_account_state{appid,state}`: 1 for the state an account is in.
pub const ACCOUNT_STATE: Family = Family::gauge(
    "wxtoken_account_state",
    "1 for the state an account is in (ready, refreshing, failing, disabled), 0 for the others.",
);
/// `wxtoken_account_config_error{appid,errcode,ip}`: 1 while an account's
/// last failure is a configuration error (wrong secret, IP not whitelisted,
/// frozen secret, ...), with WeChat's errcode and, for 40164, the IP WeChat saw.
pub const ACCOUNT_CONFIG_ERROR: Family = Family::gauge(
    "wxtoken_account_config_error",
    "1 while an account fails on a configuration error, with WeChat's errcode and, for 40164, the IP WeChat saw.",
);
/// `wxtoken_ticket_expiry_timestamp_seconds{appid,type}`.
pub const TICKET_EXPIRY: Family = Family::gauge(
    "wxtoken_ticket_expiry_timestamp_seconds",
    "When each JS-SDK ticket (jsapi, wx_card) expires, Unix seconds.",
);
/// `wxtoken_ticket_refreshes_total{appid,result,type}`.
pub const TICKET_REFRESHES: Family = Family::counter(
    "wxtoken_ticket_refreshes_total",
    "JS-SDK ticket fetches by account, type and result (ok, error).",
);
/// `wxtoken_upstream_quota_limit{appid,api}` (contract §9): the daily limit
/// of a token API (`token`, `stable_token`; a component's
/// `api_component_token`, `api_authorizer_token`) as getApiQuota reported it.
pub const QUOTA_LIMIT: Family = Family::gauge(
    "wxtoken_upstream_quota_limit",
    "Daily call limit of a token API (token, stable_token, api_component_token, api_authorizer_token) as WeChat's getApiQuota reported it.",
);
/// `wxtoken_upstream_quota_used{appid,api}` (contract §9): the calls of the
/// China-time day as getApiQuota last reported them (0 once that day is over).
pub const QUOTA_USED: Family = Family::gauge(
    "wxtoken_upstream_quota_used",
    "Calls of a token API used today as WeChat's getApiQuota last reported them (0 after China-time midnight until read again).",
);

/// Every per-account family, in the order they are written.
pub const PER_ACCOUNT_FAMILIES: [Family; 13] = [
    TOKEN_EXPIRY,
    TOKEN_FETCHED,
    TOKEN_SERVE_UNTIL,
    NEXT_REFRESH,
    REFRESHES,
    CALLS_TODAY,
    ACTOR_RESTARTS,
    ACCOUNT_STATE,
    ACCOUNT_CONFIG_ERROR,
    TICKET_EXPIRY,
    TICKET_REFRESHES,
    QUOTA_LIMIT,
    QUOTA_USED,
];

/// `wxtoken_component_ticket_age_seconds{component}`: how old the newest
/// `component_verify_ticket` of a component is (WeChat pushes one every 10
/// minutes; a component token can only be minted with a ticket younger than
/// 12 hours). Absent while a component holds no ticket.
pub const COMPONENT_TICKET_AGE: Family = Family::gauge(
    "wxtoken_component_ticket_age_seconds",
    "Seconds since WeChat created the newest component_verify_ticket of an Open Platform component (pushed every 10 minutes).",
);
/// `wxtoken_component_tickets{component}`: verify tickets a component holds.
pub const COMPONENT_TICKETS: Family = Family::gauge(
    "wxtoken_component_tickets",
    "component_verify_tickets an Open Platform component holds (the newest few are kept).",
);
/// `wxtoken_authorizers{component,state}`: a component's authorizers by
/// [`crate::domain::Authorization`], every state present for every component.
pub const AUTHORIZERS: Family = Family::gauge(
    "wxtoken_authorizers",
    "Authorizers of an Open Platform component by state (authorized, needs_reauth, unauthorized).",
);

/// The Open Platform families, written from the slots at scrape time in
/// every [`PerAccount`] mode (one series per component and state: components
/// are few), after the per-account families.
pub const OPEN_FAMILIES: [Family; 3] = [COMPONENT_TICKET_AGE, COMPONENT_TICKETS, AUTHORIZERS];

/// The fleet-level metrics (one registry) and the per-account mode.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub accounts: IntGaugeVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Refresh attempts of every account by reason and result: the fleet
    /// sum of `wxtoken_refreshes_total`, present in every mode.
    pub fleet_refreshes: IntCounterVec,
    /// Ticket fetches of every account by type and result.
    pub fleet_ticket_refreshes: IntCounterVec,
    /// Account actors restarted, all accounts together.
    pub fleet_actor_restarts: IntCounter,
    /// Accounts whose last failure is a configuration error (set per scrape).
    pub fleet_config_errors: IntGauge,
    /// 1 for the `metrics.per_account` mode in force, 0 for the others.
    pub per_account_mode: IntGaugeVec,
    /// 1 when every enabled account has a usable token (the accounts part of
    /// `/readyz?strict=1`; the load-balancer check `/readyz` stays 200 when some fail).
    pub ready: IntGauge,
    /// With `store.redis`: 1 while Redis answers, 0 while it does not.
    pub redis_up: IntGauge,
    /// Token store writes that failed (disk full, I/O error, Redis down).
    pub store_write_errors: IntCounterVec,
    /// 1 while every write the store accepted is durable, 0 while some wait
    /// to be retried (see [`crate::store::StoreWriter::failing`]).
    pub store_up: IntGaugeVec,
    /// Configuration reloads by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// 1 when the last configuration reload succeeded (or none was tried), else 0.
    pub config_last_reload_successful: IntGauge,
    /// Panics caught inside background tasks, by task ([`PANIC_TASKS`]);
    /// each is also a failed attempt that is retried.
    pub task_panics: IntCounterVec,
    /// Open Platform events pushed to the event URL, by `info_type`
    /// ([`OPEN_EVENT_TYPES`]) and `result` ([`OPEN_EVENT_RESULTS`]).
    pub open_events: IntCounterVec,
    /// Authorizer refresh tokens added or repaired from WeChat's authorizer list.
    pub refresh_token_repairs: IntCounter,
    /// Requests the token-injecting proxy handled, by API `group`
    /// ([`PROXY_GROUPS`]) and `outcome` ([`PROXY_OUTCOMES`]).
    pub proxy_requests: IntCounterVec,
    /// Proxied requests sent a second time with a new token, after WeChat
    /// rejected the injected one, by `group` and the second answer's `outcome`.
    pub proxy_retries: IntCounterVec,
    /// Time from a proxied request's arrival to the head of its answer.
    pub proxy_duration: HistogramVec,
    /// Token requests at the WeChat-compatible face, by `api`
    /// ([`FACE_APIS`]) and `outcome` (`ok` or `errcode_<n>` of [`FACE_ERRCODES`]).
    pub face_requests: IntCounterVec,
    /// Requests made with each configured client's key, by `client` (its
    /// configured name; `anonymous` when no clients are configured), `route`
    /// (as `wxtoken_http_requests_total`'s) and `status`. Requests refused
    /// for their key are no client's and are not counted here.
    pub client_requests: IntCounterVec,
    /// Token requests held by a long-poll (`?wait=`) right now.
    pub long_polls_held: IntGauge,
    /// `metrics.per_account` as configured (`None`: the default rule).
    per_account: Arc<AtomicU8>,
}

impl Metrics {
    /// Counts one pushed Open Platform event (labels outside the bounded
    /// sets are counted as `other` / `error`).
    pub fn open_event(&self, info_type: &str, result: &str) {
        let info_type = OPEN_EVENT_TYPES
            .iter()
            .find(|t| **t == info_type)
            .copied()
            .unwrap_or("other");
        let result = OPEN_EVENT_RESULTS
            .iter()
            .find(|r| **r == result)
            .copied()
            .unwrap_or("error");
        self.open_events
            .with_label_values(&[info_type, result])
            .inc();
    }

    /// Counts `n` refresh tokens added or repaired.
    pub fn refresh_token_repairs(&self, n: usize) {
        self.refresh_token_repairs.inc_by(n as u64);
    }
}

impl Metrics {
    /// The `group` label of a proxied request's WeChat `path`.
    pub fn proxy_group(path: &str) -> &'static str {
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let first = segments.next().unwrap_or_default();
        let name = if first == "cgi-bin" {
            segments.next().unwrap_or_default()
        } else {
            first
        };
        PROXY_GROUPS
            .iter()
            .find(|g| **g == name)
            .copied()
            .unwrap_or("other")
    }

    /// Counts one answer of the face (`outcome` is `ok` or an errcode
    /// outside [`FACE_ERRCODES`], counted as `errcode_other`).
    pub fn face(&self, api: &'static str, errcode: Option<i64>) {
        let mut buf = itoa::Buffer::new();
        let outcome = match errcode {
            None => "ok".to_string(),
            Some(code) if FACE_ERRCODES.contains(&code) => format!("errcode_{}", buf.format(code)),
            Some(_) => "errcode_other".to_string(),
        };
        self.face_requests.with_label_values(&[api, &outcome]).inc();
    }
}

/// The `info_type` label of `wxtoken_open_events_total` (bounded: any other
/// InfoType is `other`; an event that could not be opened is `unreadable`).
pub const OPEN_EVENT_TYPES: [&str; 6] = [
    "component_verify_ticket",
    "authorized",
    "updateauthorized",
    "unauthorized",
    "other",
    "unreadable",
];
/// The `result` label of `wxtoken_open_events_total`.
pub const OPEN_EVENT_RESULTS: [&str; 4] = ["ok", "ignored", "refused", "error"];

/// The `group` label of the proxy's metrics: the first path segment below
/// `/cgi-bin/` (or the first segment for other roots such as `/wxa/`),
/// when it is one of these; `other` otherwise.
pub const PROXY_GROUPS: [&str; 26] = [
    "message",
    "media",
    "material",
    "user",
    "tags",
    "menu",
    "qrcode",
    "template",
    "customservice",
    "ticket",
    "shorturl",
    "datacube",
    "card",
    "wxa",
    "wxaapi",
    "sns",
    "merchant",
    "shop",
    "component",
    "department",
    "externalcontact",
    "appchat",
    "agent",
    "kf",
    "batch",
    "other",
];

/// The `outcome` label of `wxtoken_proxy_requests_total`: `ok` (WeChat
/// answered, no error code), `errcode` (WeChat answered an error other than
/// a rejected token), `token_rejected` (WeChat rejected the token even after
/// the retry, or it could not be retried), `http_4xx`/`http_5xx`, `timeout`,
/// `connect`, `failed`; and answered locally: `unknown_token`,
/// `expired_token`, `unavailable` (no usable token), `limited` (the client's
/// in-flight limit), `too_large`, `bad_request`.
pub const PROXY_OUTCOMES: [&str; 14] = [
    "ok",
    "errcode",
    "token_rejected",
    "http_4xx",
    "http_5xx",
    "timeout",
    "connect",
    "failed",
    "unknown_token",
    "expired_token",
    "unavailable",
    "limited",
    "too_large",
    "bad_request",
];

/// The `api` label of `wxtoken_face_requests_total`.
pub const FACE_APIS: [&str; 3] = ["token", "stable_token", "gettoken"];

/// The error codes the face answers with (each an `errcode_<n>` outcome).
pub const FACE_ERRCODES: [i64; 8] = [-1, 40002, 40013, 40125, 40164, 41002, 41004, 47001];

/// The tasks whose panics are caught and counted, the `task` label of
/// `wxtoken_task_panics_total`.
pub const PANIC_TASKS: [&str; 2] = ["refresh", "ticket"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are static and unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let http_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ];
        let m = Metrics {
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_build_info",
                        "Always 1; the version label tells the build.",
                    ),
                    &["version"],
                )
                .expect("valid metric"),
            ),
            accounts: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("wxtoken_accounts", "Configured accounts by state."),
                    &["state"],
                )
                .expect("valid metric"),
            ),
            upstream_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_upstream_requests_total",
                        "HTTP requests to WeChat by API and outcome.",
                    ),
                    &["api", "outcome"],
                )
                .expect("valid metric"),
            ),
            upstream_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "wxtoken_upstream_request_duration_seconds",
                        "Duration of HTTP requests to WeChat.",
                    )
                    .buckets(latency_buckets),
                    &["api"],
                )
                .expect("valid metric"),
            ),
            http_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_http_requests_total",
                        "HTTP API requests by route and status.",
                    ),
                    &["route", "status"],
                )
                .expect("valid metric"),
            ),
            http_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "wxtoken_http_request_duration_seconds",
                        "Duration of HTTP API requests by route.",
                    )
                    .buckets(http_buckets),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            fleet_refreshes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_fleet_refreshes_total",
                        "Token refresh attempts of all accounts together, by reason and result.",
                    ),
                    &["reason", "result"],
                )
                .expect("valid metric"),
            ),
            fleet_ticket_refreshes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_fleet_ticket_refreshes_total",
                        "JS-SDK ticket fetches of all accounts together, by type and result.",
                    ),
                    &["type", "result"],
                )
                .expect("valid metric"),
            ),
            fleet_actor_restarts: reg(
                &r,
                IntCounter::new(
                    "wxtoken_fleet_actor_restarts_total",
                    "Account actors restarted by the supervisor, all accounts together.",
                )
                .expect("valid metric"),
            ),
            fleet_config_errors: reg(
                &r,
                IntGauge::new(
                    "wxtoken_fleet_config_errors",
                    "Accounts whose last failure is a configuration error (wrong secret, IP not whitelisted, ...).",
                )
                .expect("valid metric"),
            ),
            per_account_mode: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_metrics_per_account",
                        "1 for the metrics.per_account mode in force (full, essential, none), 0 for the others.",
                    ),
                    &["mode"],
                )
                .expect("valid metric"),
            ),
            ready: reg(
                &r,
                IntGauge::new(
                    "wxtoken_ready",
                    "1 when every enabled account has a usable token, else 0.",
                )
                .expect("valid metric"),
            ),
            redis_up: reg(
                &r,
                IntGauge::new(
                    "wxtoken_redis_up",
                    "1 while the shared store (Redis) answers, 0 while it does not (always 1 without store.redis).",
                )
                .expect("valid metric"),
            ),
            store_write_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_store_write_errors_total",
                        "Token store writes that failed; the in-memory token keeps being served.",
                    ),
                    &["store"],
                )
                .expect("valid metric"),
            ),
            store_up: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_store_up",
                        "1 while every accepted token store write is durable, 0 while failed writes wait to be retried.",
                    ),
                    &["store"],
                )
                .expect("valid metric"),
            ),
            config_reloads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_config_reloads_total",
                        "Configuration reloads by result.",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            config_last_reload_successful: reg(
                &r,
                IntGauge::new(
                    "wxtoken_config_last_reload_successful",
                    "1 when the last configuration reload succeeded or none was tried, 0 when it was rejected.",
                )
                .expect("valid metric"),
            ),
            task_panics: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_task_panics_total",
                        "Panics caught inside background tasks (a bug); each is a failed attempt that is retried.",
                    ),
                    &["task"],
                )
                .expect("valid metric"),
            ),
            open_events: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_open_events_total",
                        "Open Platform events pushed to the event URL, by InfoType and result (ok: durable and answered success; refused: a 4xx).",
                    ),
                    &["info_type", "result"],
                )
                .expect("valid metric"),
            ),
            refresh_token_repairs: reg(
                &r,
                IntCounter::new(
                    "wxtoken_refresh_token_repairs_total",
                    "Authorizer refresh tokens added or repaired from WeChat's authorizer list (reconcile, and the recovery after 61023).",
                )
                .expect("valid metric"),
            ),
            proxy_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_proxy_requests_total",
                        "Requests of the token-injecting proxy by API group and outcome.",
                    ),
                    &["group", "outcome"],
                )
                .expect("valid metric"),
            ),
            proxy_retries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_proxy_retries_total",
                        "Proxied requests sent again with a new token after WeChat rejected the injected one, by API group and the second answer's outcome.",
                    ),
                    &["group", "outcome"],
                )
                .expect("valid metric"),
            ),
            proxy_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "wxtoken_proxy_request_duration_seconds",
                        "Time from a proxied request's arrival to the head of its answer, by API group.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0,
                    ]),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            face_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_face_requests_total",
                        "Token requests at the WeChat-compatible face (/cgi-bin/token, stable_token, gettoken) by API and outcome.",
                    ),
                    &["api", "outcome"],
                )
                .expect("valid metric"),
            ),
            client_requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_client_requests_total",
                        "Requests made with each configured client's key, by client name, route and HTTP status.",
                    ),
                    &["client", "route", "status"],
                )
                .expect("valid metric"),
            ),
            long_polls_held: reg(
                &r,
                IntGauge::new(
                    "wxtoken_long_polls_held",
                    "Token requests held by a long-poll (?wait=) until a newer token or their wait's end.",
                )
                .expect("valid metric"),
            ),
            registry: r,
            per_account: Arc::new(AtomicU8::new(PerAccount::code(None))),
        };
        for outcome in PROXY_OUTCOMES {
            m.proxy_requests.with_label_values(&["other", outcome]);
        }
        m.proxy_retries.with_label_values(&["other", "ok"]);
        m.proxy_duration.with_label_values(&["other"]);
        for api in FACE_APIS {
            m.face_requests.with_label_values(&[api, "ok"]);
        }
        for task in PANIC_TASKS {
            m.task_panics.with_label_values(&[task]);
        }
        m.config_last_reload_successful.set(1);
        m.redis_up.set(1);
        for result in RESULTS {
            m.config_reloads.with_label_values(&[result]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for s in ACCOUNT_STATES {
            m.accounts.with_label_values(&[s]).set(0);
        }
        for api in crate::domain::ApiName::ALL {
            m.upstream_duration.with_label_values(&[api.as_str()]);
            m.upstream_requests.with_label_values(&[api.as_str(), "ok"]);
        }
        for reason in REFRESH_REASONS {
            for result in RESULTS {
                m.fleet_refreshes.with_label_values(&[reason, result]);
            }
        }
        for kind in TicketKind::ALL {
            for result in RESULTS {
                m.fleet_ticket_refreshes
                    .with_label_values(&[kind.as_str(), result]);
            }
        }
        m.set_mode_gauge(PerAccount::default_for(0));
        m
    }

    /// Puts `metrics.per_account` in force for a fleet of `accounts` and
    /// logs the resulting mode (and why). Takes effect at the next scrape.
    pub fn configure_per_account(
        &self,
        setting: Option<PerAccount>,
        accounts: usize,
    ) -> PerAccount {
        self.set_per_account(setting);
        let mode = self.per_account_for(accounts);
        let rule = match setting {
            Some(_) => "metrics.per_account",
            None => "the default by fleet size",
        };
        tracing::info!(
            per_account = mode.as_str(),
            accounts,
            rule,
            full_up_to = FULL_UP_TO,
            essential_up_to = ESSENTIAL_UP_TO,
            "per-account metrics"
        );
        mode
    }

    /// Sets `metrics.per_account` (`None`: the default rule by fleet size).
    /// Takes effect at the next scrape.
    pub fn set_per_account(&self, setting: Option<PerAccount>) {
        self.per_account
            .store(PerAccount::code(setting), Ordering::Relaxed);
    }

    /// `metrics.per_account` as configured (`None`: the default rule).
    pub fn per_account_setting(&self) -> Option<PerAccount> {
        PerAccount::from_code(self.per_account.load(Ordering::Relaxed))
    }

    /// The mode in force for a fleet of `accounts`: the configured one, or
    /// [`PerAccount::default_for`].
    pub fn per_account_for(&self, accounts: usize) -> PerAccount {
        self.per_account_setting()
            .unwrap_or_else(|| PerAccount::default_for(accounts))
    }

    /// Sets `wxtoken_metrics_per_account{mode}` to 1 for `mode`.
    pub fn set_mode_gauge(&self, mode: PerAccount) {
        for m in PerAccount::ALL {
            self.per_account_mode
                .with_label_values(&[m.as_str()])
                .set(i64::from(m == mode));
        }
    }

    /// The text exposition of the fleet registry only (the per-account part
    /// is [`crate::snapshot::Directory::encode_metrics`]).
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Appends the text exposition of the fleet registry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        TextEncoder::new()
            .encode(&self.registry.gather(), out)
            .expect("text encoding into a Vec does not fail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::State;

    #[test]
    fn the_state_labels_are_the_distinct_labels_of_every_state() {
        let mut labels: Vec<&str> = Vec::new();
        for state in State::ALL {
            if !labels.contains(&state.metric_label()) {
                labels.push(state.metric_label());
            }
        }
        labels.sort_unstable();
        let mut listed = ACCOUNT_STATES.to_vec();
        listed.sort_unstable();
        assert_eq!(labels, listed);
    }

    #[test]
    fn the_reason_labels_are_every_reason() {
        assert_eq!(
            REFRESH_REASONS,
            ["startup", "scheduled", "stale_report", "admin", "retry"]
        );
    }

    #[test]
    fn counters_end_in_total_and_names_are_unique() {
        let scraped = || PER_ACCOUNT_FAMILIES.into_iter().chain(OPEN_FAMILIES);
        let mut names: Vec<&str> = scraped().map(|f| f.name).collect();
        for family in scraped() {
            assert!(family.name.starts_with("wxtoken_"), "{}", family.name);
            assert_eq!(
                family.kind == exposition::Kind::Counter,
                family.name.ends_with("_total"),
                "{}",
                family.name
            );
        }
        for family in Metrics::new().registry.gather() {
            assert!(
                !names.contains(&family.name()),
                "{} is both per account and in the registry",
                family.name()
            );
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(family.name().ends_with("_total"), "{}", family.name());
            }
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            PER_ACCOUNT_FAMILIES.len() + OPEN_FAMILIES.len()
        );
    }

    #[test]
    fn the_default_mode_follows_the_fleet_size() {
        assert_eq!(PerAccount::default_for(0), PerAccount::Full);
        assert_eq!(PerAccount::default_for(FULL_UP_TO), PerAccount::Full);
        assert_eq!(
            PerAccount::default_for(FULL_UP_TO + 1),
            PerAccount::Essential
        );
        assert_eq!(
            PerAccount::default_for(ESSENTIAL_UP_TO),
            PerAccount::Essential
        );
        assert_eq!(
            PerAccount::default_for(ESSENTIAL_UP_TO + 1),
            PerAccount::None
        );
        let m = Metrics::new();
        assert_eq!(m.per_account_setting(), None);
        assert_eq!(m.per_account_for(10_000), PerAccount::Essential);
        m.set_per_account(Some(PerAccount::Full));
        assert_eq!(m.clone().per_account_for(10_000), PerAccount::Full);
        m.set_per_account(None);
        assert_eq!(m.per_account_for(100_000), PerAccount::None);
        for mode in PerAccount::ALL {
            assert_eq!(PerAccount::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(PerAccount::parse("Full"), None);
    }
}
