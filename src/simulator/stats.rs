//! The simulator's counters, as returned by `GET /sim/stats` and
//! [`Simulator::stats`](super::Simulator::stats).
//!
//! Invariant: counters only grow while the simulator runs; nothing here holds
//! a secret or a token value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The appid key used for calls whose app cannot be known (no appid given, or
/// an access token the simulator never issued).
pub const UNKNOWN_APPID: &str = "-";

/// Everything the simulator has counted since it started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Stats {
    /// Calls received, per appid then per API (`token`, `stable_token`,
    /// `getticket`, `getcallbackip`), including failed and faulted calls.
    /// Calls that carry an access token are counted under the token's app,
    /// or under [`UNKNOWN_APPID`] when the token is unknown.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Access tokens issued, per appid and kind.
    pub tokens_issued: BTreeMap<String, IssuedTokens>,
    /// JS-SDK tickets issued, per appid.
    pub tickets_issued: BTreeMap<String, u64>,
    /// `force_refresh` calls that actually rotated the stable token, per appid.
    pub force_refreshes: BTreeMap<String, u64>,
    /// Results of the validity probe `GET /cgi-bin/getcallbackip`.
    pub probe_results: ProbeResults,
    /// Uses of a token that was not live (superseded, expired or unknown) seen
    /// by the probe or by `getticket`.
    pub invalid_token_uses: u64,
    /// Calls answered by an injected fault (delay-only faults excluded).
    pub faults_applied: u64,
    /// The most token requests (`token` and `stable_token`) that were being
    /// answered at the same time, injected delays included.
    pub max_token_calls_in_flight: u64,
    /// Open Platform events (tickets, authorizations) pushed to a
    /// component's `callback_url` and answered with a 2xx status.
    pub events_delivered: u64,
    /// Open Platform event pushes that failed (no answer, or not 2xx).
    pub event_push_failures: u64,
    /// Business API calls (user info, messages, media), per path then per
    /// outcome (`ok` or WeChat's errcode).
    pub business_calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Business API calls that carried an `Authorization` header (a proxy
    /// must never pass a caller's credentials on to WeChat).
    pub business_calls_with_authorization: u64,
}

/// Access tokens issued to one app, by endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct IssuedTokens {
    /// Issued by `GET /cgi-bin/token`.
    pub legacy: u64,
    /// Issued by `POST /cgi-bin/stable_token`.
    pub stable: u64,
    /// Open Platform component tokens (`api_component_token`).
    pub component: u64,
    /// Open Platform authorizer tokens (`api_query_auth`, `api_authorizer_token`).
    pub authorizer: u64,
}

/// Probe outcomes, keyed in JSON by WeChat's answer (`ok` or the errcode).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProbeResults {
    /// The token was live.
    pub ok: u64,
    /// 40001: the token was superseded and its grace period is over.
    #[serde(rename = "40001")]
    pub superseded: u64,
    /// 42001: the token reached its natural expiry.
    #[serde(rename = "42001")]
    pub expired: u64,
    /// 40014: the simulator never issued this token.
    #[serde(rename = "40014")]
    pub invalid: u64,
}

impl Stats {
    /// Calls received for `appid` on `api` (for example `"token"`).
    pub fn calls_to(&self, appid: &str, api: &str) -> u64 {
        self.calls
            .get(appid)
            .and_then(|apis| apis.get(api))
            .copied()
            .unwrap_or(0)
    }

    /// Calls received on `api` across all apps.
    pub fn total_calls(&self, api: &str) -> u64 {
        self.calls.values().filter_map(|apis| apis.get(api)).sum()
    }

    /// Access tokens of every kind (legacy, stable, component, authorizer)
    /// issued to `appid`.
    pub fn tokens_issued_to(&self, appid: &str) -> u64 {
        self.tokens_issued
            .get(appid)
            .map_or(0, |t| t.legacy + t.stable + t.component + t.authorizer)
    }

    /// Stable-token force refreshes that rotated the token of `appid`.
    pub fn force_refreshes_of(&self, appid: &str) -> u64 {
        self.force_refreshes.get(appid).copied().unwrap_or(0)
    }
}
