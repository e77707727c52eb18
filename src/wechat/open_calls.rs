//! The Open Platform calls that are not token fetches: pages of
//! authorizers (the recovery of lost refresh tokens), pre-auth codes, and
//! the ticket push restart. Made through [`super::TokenSource::open_call`]
//! so that they share the upstream limit and run against the simulator in
//! virtual-time tests.

use std::time::Duration;

use crate::domain::{AccessToken, AppId};

/// The most authorizers `api_get_authorizer_list` returns in one page.
pub const AUTHORIZER_PAGE: u32 = 500;

/// One Open Platform call besides the token fetches.
#[derive(Clone)]
pub enum OpenCall {
    /// `api_get_authorizer_list`: `count` (≤ 500) authorizers from `offset`.
    AuthorizerList {
        component: AppId,
        component_token: AccessToken,
        offset: u32,
        count: u32,
    },
    /// `api_create_preauthcode`.
    PreAuthCode {
        component: AppId,
        component_token: AccessToken,
    },
    /// `api_start_push_ticket`: ask WeChat to resume pushing verify tickets.
    StartPushTicket {
        component: AppId,
        secret: secrecy::SecretString,
    },
}

impl std::fmt::Debug for OpenCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenCall::AuthorizerList {
                component,
                offset,
                count,
                ..
            } => {
                write!(
                    f,
                    "AuthorizerList {{ {component}, offset: {offset}, count: {count} }}"
                )
            }
            OpenCall::PreAuthCode { component, .. } => write!(f, "PreAuthCode {{ {component} }}"),
            OpenCall::StartPushTicket { component, .. } => {
                write!(f, "StartPushTicket {{ {component} }}")
            }
        }
    }
}

impl OpenCall {
    /// The API this call makes.
    pub fn api(&self) -> crate::domain::ApiName {
        use crate::domain::ApiName;
        match self {
            OpenCall::AuthorizerList { .. } => ApiName::AuthorizerList,
            OpenCall::PreAuthCode { .. } => ApiName::PreAuthCode,
            OpenCall::StartPushTicket { .. } => ApiName::StartPushTicket,
        }
    }
}

/// The answer to an [`OpenCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenAnswer {
    /// A page of authorizers with their refresh tokens (entries with an
    /// unusable appid or an empty refresh token are left out).
    AuthorizerList {
        total_count: u32,
        authorizers: Vec<(AppId, AccessToken)>,
    },
    /// A pre-auth code and its lifetime.
    PreAuthCode {
        code: AccessToken,
        expires_in: Duration,
    },
    /// The call succeeded and has nothing to return.
    Done,
}
