//! Who is calling: API-key authentication and the per-client permissions.
//!
//! Owns [`Auth`] (the client table built from `clients:`) and [`Caller`] (what
//! one authenticated request may do). Keys are never stored or compared in
//! plain text: the presented key is hashed with SHA-256 and compared, in
//! constant time, against the hash of every configured client.
//!
//! Invariants:
//! - With clients configured, a request without a known key gets 401 before
//!   anything else is looked at.
//! - Scope is checked before existence, so a scoped client cannot probe which
//!   appids this server knows.
//! - With no clients configured, only loopback peers are served (the config
//!   loader already refuses a non-loopback `listen` in that case; this is the
//!   second line of defence).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpMessage as _, HttpRequest};

use crate::config::{AppScope, ClientConfig};
use crate::domain::{AppId, KeyHash};

use super::error::ApiError;

/// The scope of every caller when no clients are configured.
static OPEN_SCOPE: AppScope = AppScope::All;

/// One configured client, as authentication needs it.
#[derive(Debug, Clone)]
struct Client {
    name: Arc<str>,
    key: KeyHash,
    scope: AppScope,
    admin: bool,
}

/// The table of API clients. Built from `clients:`; swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    clients: Vec<Client>,
}

/// What the caller of one request is allowed to do.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The client's name, or `None` when no clients are configured.
    name: Option<&'a Arc<str>>,
    scope: &'a AppScope,
    admin: bool,
}

impl Auth {
    /// The client table for `clients`; empty means open to loopback callers.
    pub fn new(clients: &[ClientConfig]) -> Self {
        Auth {
            clients: clients
                .iter()
                .map(|c| Client {
                    name: Arc::from(c.name.as_str()),
                    key: c.key.clone(),
                    scope: c.appids.clone(),
                    admin: c.admin,
                })
                .collect(),
        }
    }

    /// True when no clients are configured (loopback callers need no key).
    pub fn is_open(&self) -> bool {
        self.clients.is_empty()
    }

    /// Identifies the caller of `req`.
    ///
    /// Errors with 401 when clients are configured and the request has no
    /// `Authorization: Bearer <key>` header or its key is unknown, and with
    /// 403 when no clients are configured and the peer is not on loopback.
    pub fn authenticate<'a>(&'a self, req: &HttpRequest) -> Result<Caller<'a>, ApiError> {
        let caller = self.caller_of(req)?;
        caller.label(req);
        Ok(caller)
    }

    /// [`authenticate`](Self::authenticate) without labelling the request.
    fn caller_of<'a>(&'a self, req: &HttpRequest) -> Result<Caller<'a>, ApiError> {
        if self.clients.is_empty() {
            return match req.peer_addr() {
                Some(peer) if !peer.ip().to_canonical().is_loopback() => Err(ApiError::forbidden(
                    "no API clients are configured, so only callers on this host are served; add `clients:` with keys to serve other hosts",
                )),
                _ => Ok(Caller {
                    name: None,
                    scope: &OPEN_SCOPE,
                    admin: true,
                }),
            };
        }
        let key = bearer_key(req)?;
        self.client_of(key).ok_or_else(ApiError::invalid_key)
    }

    /// The caller a key stands for where a WeChat SDK sends its AppSecret
    /// (the face's `secret` and `corpsecret`): with no clients configured,
    /// any key from a loopback peer, as for [`Auth::authenticate`].
    ///
    /// Errors with [`KeyRefused::Unknown`] for a key no client has and
    /// [`KeyRefused::NotLoopback`] for a peer off this host when no clients
    /// are configured.
    pub fn authenticate_key<'a>(
        &'a self,
        req: &HttpRequest,
        key: &str,
    ) -> Result<Caller<'a>, KeyRefused> {
        let caller = if self.clients.is_empty() {
            self.caller_of(req).map_err(|_| KeyRefused::NotLoopback)?
        } else {
            self.client_of(key).ok_or(KeyRefused::Unknown)?
        };
        caller.label(req);
        Ok(caller)
    }

    /// The caller of the client whose key is `key`.
    fn client_of(&self, key: &str) -> Option<Caller<'_>> {
        let presented = KeyHash::of_key(key);
        // Compare with every client, without stopping at the first match, so
        // the time taken does not tell how many hashes were tried.
        let mut found = None;
        for client in &self.clients {
            if client.key.matches(&presented) {
                found = Some(client);
            }
        }
        found.map(|client| Caller {
            name: Some(&client.name),
            scope: &client.scope,
            admin: client.admin,
        })
    }
}

/// Why a key in a WeChat-shaped request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefused {
    /// No client has this key.
    Unknown,
    /// No clients are configured and the peer is not on loopback.
    NotLoopback,
}

/// The key of an `Authorization: Bearer <key>` header (scheme case-insensitive).
fn bearer_key(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(ApiError::missing_key)?;
    let text = value.to_str().map_err(|_| ApiError::invalid_key())?;
    let (scheme, key) = text
        .trim()
        .split_once(' ')
        .ok_or_else(ApiError::invalid_key)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(ApiError::invalid_key());
    }
    Ok(key)
}

/// Which client a request was made by, kept in the request's extensions
/// for the metrics middleware (`wxtoken_client_requests_total`) and the
/// audit log. Set only once a key (or, with no clients configured, a
/// loopback peer) was accepted.
#[derive(Debug, Clone)]
pub enum ClientLabel {
    /// A configured client, by name.
    Named(Arc<str>),
    /// No clients are configured: a caller on this host.
    Anonymous,
}

impl ClientLabel {
    /// The `client` label value.
    pub fn as_str(&self) -> &str {
        match self {
            ClientLabel::Named(name) => name,
            ClientLabel::Anonymous => "anonymous",
        }
    }
}

impl Caller<'_> {
    /// The client's configured name, shared (`None` when no clients are configured).
    pub fn client(&self) -> Option<Arc<str>> {
        self.name.cloned()
    }

    /// Marks `req` as made by this caller (see [`ClientLabel`]).
    fn label(&self, req: &HttpRequest) {
        let label = match self.name {
            Some(name) => ClientLabel::Named(name.clone()),
            None => ClientLabel::Anonymous,
        };
        req.extensions_mut().insert(label);
    }

    /// True when this caller may read and refresh `appid`'s token.
    pub fn may_access(&self, appid: &AppId) -> bool {
        self.scope.allows(appid)
    }

    /// True when this caller's scope is every account (`appids: ["*"]`).
    pub fn may_access_all(&self) -> bool {
        matches!(self.scope, AppScope::All)
    }

    /// Ok when this caller may read and refresh `appid`'s token; else 403.
    pub fn check_scope(&self, appid: &AppId) -> Result<(), ApiError> {
        if self.scope.allows(appid) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this API key may not access account {appid}; add it to the client's `appids` to allow it"
            )))
        }
    }

    /// Ok when this caller is an admin client; else 403.
    pub fn check_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this endpoint needs an admin API key (a client with `admin: true`)",
            ))
        }
    }
}
