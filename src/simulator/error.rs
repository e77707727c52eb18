//! Everything the simulator's API refuses, as typed errors: an invalid
//! [`SimConfig`](super::SimConfig), app registration, fault or whitelist
//! entry, and a listen address that cannot be served.
//!
//! Invariants: each message is one lowercase sentence naming the offending
//! value (never a secret), and the control API (`/sim/...`) answers exactly
//! this text in its `message` field, so HTTP and in-process callers read the
//! same words.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::AppIdError;
use crate::openplatform::CryptError;

/// Why the simulator could not start or refused a request.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration's lifetimes do not make sense.
    #[error(transparent)]
    InvalidConfig(#[from] SimConfigError),
    /// An app registration was refused.
    #[error(transparent)]
    InvalidRegistration(#[from] RegistrationError),
    /// A fault was refused.
    #[error(transparent)]
    InvalidFault(#[from] FaultError),
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The server bound but reported no address to serve on.
    #[error("listening on {addr} gave no address")]
    NoAddress { addr: SocketAddr },
}

/// Why a [`SimConfig`](super::SimConfig) is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimConfigError {
    /// `token_ttl` is under one second.
    #[error("token ttl {}s is too short; it must be at least 1 second", .token_ttl.as_secs_f64())]
    TokenTtlTooShort { token_ttl: Duration },
    /// `grace` is not shorter than `token_ttl`.
    #[error(
        "grace {}s must be shorter than the token ttl {}s",
        .grace.as_secs_f64(),
        .token_ttl.as_secs_f64()
    )]
    GraceNotShorterThanTtl {
        grace: Duration,
        token_ttl: Duration,
    },
    /// `ticket_ttl` is under one second.
    #[error("ticket ttl {}s is too short; it must be at least 1 second", .ticket_ttl.as_secs_f64())]
    TicketTtlTooShort { ticket_ttl: Duration },
}

/// Every problem of a refused app registration; shown as one sentence with
/// the problems separated by `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.problems))]
pub struct RegistrationError {
    /// The problems, in the order the fields were checked (never empty).
    pub problems: Vec<RegistrationProblem>,
}

fn join(problems: &[RegistrationProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One problem of an app registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationProblem {
    /// The appid is not a valid AppID.
    #[error(transparent)]
    AppId(#[from] AppIdError),
    /// The secret is empty.
    #[error("secret is empty")]
    EmptySecret,
    /// The secret is longer than `max` characters.
    #[error("secret is longer than {max} characters")]
    SecretTooLong { max: usize },
    /// An `ip_whitelist` entry does not parse.
    #[error(transparent)]
    Whitelist(#[from] WhitelistError),
    /// A component's message-check token is empty.
    #[error("token is empty")]
    EmptyToken,
    /// A component's `encoding_aes_key` is unusable.
    #[error("encoding_aes_key: {0}")]
    EncodingAesKey(CryptError),
    /// A component's `callback_url` is not an http or https URL.
    #[error("callback_url {url:?} is not an http or https url")]
    CallbackUrl { url: String },
}

/// Why an Open Platform control call (authorize, unauthorize, push a
/// ticket, break a refresh token) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenControlError {
    /// No component is registered with this appid.
    #[error("no component {component:?} is registered")]
    UnknownComponent { component: String },
    /// The component has no such authorizer.
    #[error("component {component:?} has no authorizer {authorizer:?}")]
    UnknownAuthorizer {
        component: String,
        authorizer: String,
    },
    /// The authorizer appid is not a valid AppID.
    #[error("authorizer_appid: {0}")]
    AuthorizerAppId(AppIdError),
}

/// Why an `ip_whitelist` entry is not an address or CIDR range. `entry` is
/// the entry with surrounding whitespace removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhitelistError {
    /// The address part does not parse as IPv4 or IPv6.
    #[error("ip_whitelist entry {entry:?} is not an IP address or CIDR range")]
    NotAnAddress { entry: String },
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("ip_whitelist entry {entry:?} has a bad prefix length")]
    BadPrefix { entry: String },
}

/// Why a [`FaultSpec`](super::FaultSpec) is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    /// `api` names no simulated API.
    #[error(
        "unknown api {api:?}; expected one of token, stable_token, getticket, getcallbackip, gettoken, api_component_token, api_query_auth, api_authorizer_token, api_get_authorizer_list, api_create_preauthcode, api_start_push_ticket"
    )]
    UnknownApi { api: String },
    /// `count` is 0.
    #[error("count must be at least 1")]
    ZeroCount,
    /// `rate` is outside 0.0 to 1.0.
    #[error("rate {rate} is not between 0 and 1")]
    RateOutOfRange { rate: f64 },
    /// Both `count` and `rate` are set.
    #[error("give either count or rate, not both")]
    CountAndRate,
    /// `http_status` is outside 200 to 599.
    #[error("http_status {status} is not between 200 and 599")]
    HttpStatusOutOfRange { status: u16 },
    /// `delay_ms` is longer than `max_ms`.
    #[error("delay_ms {delay_ms} is longer than {max_ms}")]
    DelayTooLong { delay_ms: u64, max_ms: u64 },
    /// `errmsg` is set without `errcode`.
    #[error("errmsg needs an errcode")]
    ErrmsgWithoutErrcode,
    /// `errcode` is 0, which is WeChat's success.
    #[error("errcode 0 means success; pick an error code")]
    ZeroErrcode,
    /// `body_bytes` is larger than `max`.
    #[error("body_bytes {bytes} is larger than {max}")]
    BodyTooLarge { bytes: u64, max: u64 },
    /// No effect is set, so the fault would change nothing.
    #[error(
        "the fault does nothing; set errcode, http_status, delay_ms, drop_connection, malformed, html, body or body_bytes"
    )]
    NoEffect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_values_in_the_control_api_wording() {
        let registration = RegistrationError {
            problems: vec![
                RegistrationProblem::EmptySecret,
                RegistrationProblem::Whitelist(WhitelistError::BadPrefix {
                    entry: "10.0.0.0/33".into(),
                }),
            ],
        };
        assert_eq!(
            registration.to_string(),
            "secret is empty; ip_whitelist entry \"10.0.0.0/33\" has a bad prefix length"
        );
        assert_eq!(
            FaultError::DelayTooLong {
                delay_ms: 700_000,
                max_ms: 600_000
            }
            .to_string(),
            "delay_ms 700000 is longer than 600000"
        );
        let config = SimConfigError::GraceNotShorterThanTtl {
            grace: Duration::from_secs(300),
            token_ttl: Duration::from_millis(60_500),
        };
        assert_eq!(
            SimError::from(config).to_string(),
            "grace 300s must be shorter than the token ttl 60.5s"
        );
    }
}
