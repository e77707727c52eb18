//! Prometheus metrics of contract §4, in one registry owned by [`Metrics`].
//!
//! Invariant: label values come only from the configuration (appids), from
//! fixed vocabularies (reasons, results, states, APIs, ticket types, route
//! patterns) or from WeChat errcodes and HTTP statuses; never from raw request
//! input. A vocabulary named by an enum is that enum's `ALL` through its
//! label function (`ApiName`, `TicketKind`), so a new variant gets its series.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::{Reason, TicketKind};

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
/// Results of a refresh, ticket fetch or reload, the `result` label.
const RESULTS: [&str; 2] = ["ok", "error"];

/// Every metric wxtoken exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub build_info: IntGaugeVec,
    pub accounts: IntGaugeVec,
    pub token_expiry: GaugeVec,
    pub token_fetched: GaugeVec,
    /// Until when the current token is handed out (Unix seconds): its expiry,
    /// or earlier in legacy mode (next refresh plus WeChat's grace).
    pub token_serve_until: GaugeVec,
    pub next_refresh: GaugeVec,
    pub refreshes: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_calls_today: IntGaugeVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub actor_restarts: IntCounterVec,
    /// When each JS-SDK ticket expires (Unix seconds).
    pub ticket_expiry: GaugeVec,
    /// Ticket fetches by result.
    pub ticket_refreshes: IntCounterVec,
    /// 1 for the state each account is in, 0 for the others.
    pub account_state: IntGaugeVec,
    /// 1 while an account's last failure is a configuration error (wrong
    /// secret, IP not whitelisted, frozen secret, ...), with WeChat's errcode
    /// and, for 40164, the IP WeChat saw.
    pub account_config_error: IntGaugeVec,
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
}

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
            token_expiry: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "wxtoken_token_expiry_timestamp_seconds",
                        "Unix time at which the current token of an account expires.",
                    ),
                    &["appid"],
                )
                .expect("valid metric"),
            ),
            token_fetched: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "wxtoken_token_fetched_timestamp_seconds",
                        "Unix time at which the current token of an account was fetched.",
                    ),
                    &["appid"],
                )
                .expect("valid metric"),
            ),
            next_refresh: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "wxtoken_next_refresh_timestamp_seconds",
                        "Unix time of the next planned refresh of an account.",
                    ),
                    &["appid"],
                )
                .expect("valid metric"),
            ),
            refreshes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_refreshes_total",
                        "Token refresh attempts by reason and result.",
                    ),
                    &["appid", "reason", "result"],
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
            upstream_calls_today: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_upstream_calls_today",
                        "Token fetches counted against WeChat's daily quota, China-time day.",
                    ),
                    &["appid"],
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
            actor_restarts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_actor_restarts_total",
                        "Account actors restarted by the supervisor.",
                    ),
                    &["appid"],
                )
                .expect("valid metric"),
            ),
            ticket_expiry: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "wxtoken_ticket_expiry_timestamp_seconds",
                        "When each JS-SDK ticket (jsapi, wx_card) expires, Unix seconds.",
                    ),
                    &["appid", "type"],
                )
                .expect("valid metric"),
            ),
            ticket_refreshes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "wxtoken_ticket_refreshes_total",
                        "JS-SDK ticket fetches by account, type and result (ok, error).",
                    ),
                    &["appid", "type", "result"],
                )
                .expect("valid metric"),
            ),
            token_serve_until: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "wxtoken_token_serve_until_timestamp_seconds",
                        "Until when the current token is handed out (its expiry, or earlier in legacy mode), Unix seconds.",
                    ),
                    &["appid"],
                )
                .expect("valid metric"),
            ),
            account_state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_account_state",
                        "1 for the state an account is in (ready, refreshing, failing, disabled), 0 for the others.",
                    ),
                    &["appid", "state"],
                )
                .expect("valid metric"),
            ),
            account_config_error: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wxtoken_account_config_error",
                        "1 while an account fails on a configuration error, with WeChat's errcode and, for 40164, the IP WeChat saw.",
                    ),
                    &["appid", "errcode", "ip"],
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
            registry: r,
        };
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
        m
    }

    /// Creates the per-account series at zero so they exist from start.
    pub fn init_account(&self, appid: &str) {
        for reason in REFRESH_REASONS {
            for result in RESULTS {
                self.refreshes.with_label_values(&[appid, reason, result]);
            }
        }
        self.upstream_calls_today.with_label_values(&[appid]);
        self.actor_restarts.with_label_values(&[appid]);
        for state in ACCOUNT_STATES {
            self.account_state.with_label_values(&[appid, state]);
        }
    }

    /// Sets `wxtoken_account_state` of `appid` to `state`.
    pub fn set_account_state(&self, appid: &str, state: &str) {
        for s in ACCOUNT_STATES {
            self.account_state
                .with_label_values(&[appid, s])
                .set(i64::from(s == state));
        }
    }

    /// Marks `appid` as failing on a config error (`Some`) or clears it (`None`).
    pub fn set_config_error(&self, appid: &str, error: Option<(i64, Option<std::net::IpAddr>)>) {
        self.clear_config_error(appid);
        if let Some((errcode, ip)) = error {
            let ip = ip.map(|ip| ip.to_string()).unwrap_or_default();
            self.account_config_error
                .with_label_values(&[appid, &errcode.to_string(), &ip])
                .set(1);
        }
    }

    fn clear_config_error(&self, appid: &str) {
        // The series of one account carry its appid; remove every one of them.
        let families = prometheus::core::Collector::collect(&self.account_config_error);
        for family in families {
            for metric in family.get_metric() {
                let labels: Vec<(&str, &str)> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.iter().any(|&(n, v)| n == "appid" && v == appid) {
                    let find = |name: &str| {
                        labels
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map_or("", |(_, v)| *v)
                    };
                    let _ = self.account_config_error.remove_label_values(&[
                        appid,
                        find("errcode"),
                        find("ip"),
                    ]);
                }
            }
        }
    }

    /// Removes the per-account series of an account that left the registry.
    pub fn remove_account(&self, appid: &str) {
        for reason in REFRESH_REASONS {
            for result in RESULTS {
                let _ = self.refreshes.remove_label_values(&[appid, reason, result]);
            }
        }
        let _ = self.upstream_calls_today.remove_label_values(&[appid]);
        let _ = self.actor_restarts.remove_label_values(&[appid]);
        let _ = self.token_expiry.remove_label_values(&[appid]);
        let _ = self.token_fetched.remove_label_values(&[appid]);
        let _ = self.token_serve_until.remove_label_values(&[appid]);
        let _ = self.next_refresh.remove_label_values(&[appid]);
        for state in ACCOUNT_STATES {
            let _ = self.account_state.remove_label_values(&[appid, state]);
        }
        for kind in TicketKind::ALL.map(TicketKind::as_str) {
            let _ = self.ticket_expiry.remove_label_values(&[appid, kind]);
            for result in RESULTS {
                let _ = self
                    .ticket_refreshes
                    .remove_label_values(&[appid, kind, result]);
            }
        }
        self.clear_config_error(appid);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec does not fail");
        String::from_utf8(buf).unwrap_or_default()
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
}
