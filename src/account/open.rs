//! The Open Platform side of an account actor: components (their verify
//! tickets) and authorizers (their authorization code, refresh token and
//! authorization), on the same actor, plan and fetch as every account.
//!
//! Owns: which inputs an Open Platform fetch uses ([`AccountActor::open_credential`]),
//! how a grant changes the stored Open Platform state ([`after_grant`]: a
//! returned refresh token that is non-empty and different replaces the
//! stored one, an empty one never does), the updates the registry routes
//! here ([`OpenUpdate`], answered once durable), and what an authorizer does
//! after WeChat's Open Platform errors (61023 → one recovery, 61003 → revoked).
//!
//! Invariants: a refresh token is never dropped (only replaced by a newer,
//! non-empty one); a revoked authorizer is never refreshed again and never
//! served; WeChat is not called without a ticket or a component token.

use std::sync::Arc;

use actix::prelude::*;

use crate::config::AccountKind;
use crate::domain::{AccessToken, AppId, Authorization};
use crate::snapshot::{LastError, State};
use crate::store::{StoredCode, StoredOpen, VerifyTicket};
pub use crate::store::{VERIFY_TICKET_LIFETIME_MS, VERIFY_TICKETS_KEPT};
use crate::wechat::{Decision, Endpoint, FetchRequest, OpenCredential};

use super::AccountActor;
use super::messages::{Finished, Reason, RefreshError};

/// Something new for an Open Platform account, routed by the registry and
/// answered once it is durable.
#[derive(Message)]
#[rtype(result = "Result<(), RefreshError>")]
pub enum OpenUpdate {
    /// Component: a pushed `component_verify_ticket`.
    Ticket {
        ticket: AccessToken,
        created_at_ms: i64,
    },
    /// Authorizer: an authorization code (`authorized`, `updateauthorized`).
    Code {
        code: AccessToken,
        expires_at_ms: i64,
    },
    /// Authorizer: a refresh token from an import or a reconcile.
    RefreshToken(AccessToken),
    /// Authorizer: the merchant revoked the platform (`unauthorized`).
    Revoke,
    /// Authorizer: the recovery found no refresh token for it.
    RecoveryFailed,
}

impl std::fmt::Debug for OpenUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenUpdate::Ticket { .. } => "Ticket",
            OpenUpdate::Code { .. } => "Code",
            OpenUpdate::RefreshToken(_) => "RefreshToken",
            OpenUpdate::Revoke => "Revoke",
            OpenUpdate::RecoveryFailed => "RecoveryFailed",
        })
    }
}

/// What an Open Platform account asks of its hub (the registry).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum OpenNotice {
    /// WeChat rejected the component token an authorizer used:
    /// compare-and-refresh it.
    ComponentStale {
        component: AppId,
        token: AccessToken,
    },
    /// An authorizer's refresh token or code is unusable: look for it in
    /// `api_get_authorizer_list`, then answer [`OpenUpdate::RefreshToken`]
    /// or [`OpenUpdate::RecoveryFailed`].
    Recover { component: AppId, authorizer: AppId },
}

/// The Open Platform state after a successful grant of `request`, when it
/// changed: the code is spent, a returned refresh token that is non-empty
/// and different replaces the stored one, the authorizer is authorized.
/// `at_ms` is when the grant was obtained (for a token another replica
/// fetched, when it did): a grant older than the state's last change (an
/// import or a code that came meanwhile) changes nothing but the component.
/// `None` for every other endpoint, and when nothing changed.
pub(super) fn after_grant(
    current: Option<&StoredOpen>,
    request: &FetchRequest,
    refresh_token: Option<AccessToken>,
    at_ms: i64,
) -> Option<StoredOpen> {
    let Endpoint::Authorizer { component } = &request.endpoint else {
        return None;
    };
    let mut open = current.cloned().unwrap_or_default();
    let named = open.component.is_none();
    if named {
        open.component = Some(component.clone());
    }
    if at_ms < open.changed_at_ms {
        return named.then_some(open);
    }
    let mut moved = false;
    if matches!(request.open, Some(OpenCredential::AuthCode { .. })) && open.auth_code.is_some() {
        open.auth_code = None;
        moved = true;
    }
    if let Some(new) = refresh_token.filter(|t| !t.expose().is_empty())
        && open.refresh_token.as_ref() != Some(&new)
    {
        open.refresh_token = Some(new);
        moved = true;
    }
    if open.authorization != Some(Authorization::Authorized) {
        open.authorization = Some(Authorization::Authorized);
        moved = true;
    }
    if moved {
        open.changed_at_ms = at_ms;
    }
    (named || moved).then_some(open)
}

/// Another replica's view of this account's Open Platform state (read from
/// the shared store): merged into the slot's ([`StoredOpen::merge`]), never
/// written back, never a fetch by itself except to wake an account that was
/// waiting for it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AdoptOpen(pub StoredOpen);

impl AccountActor {
    /// The Open Platform state to change: the slot's, or a new one (for an
    /// authorizer, naming its component so that a restart finds it).
    fn open_state(&self) -> StoredOpen {
        let mut open = self.slot.open().map(|o| (*o).clone()).unwrap_or_default();
        if let Endpoint::Authorizer { component } = &self.endpoint
            && open.component.is_none()
        {
            open.component = Some(component.clone());
        }
        open
    }

    /// The inputs of the next fetch for an Open Platform account (`None` for
    /// the others); an error when WeChat must not be called now.
    pub(super) fn open_credential(&self) -> Result<Option<OpenCredential>, RefreshError> {
        let now = self.now_ms();
        match &self.endpoint {
            Endpoint::Component => {
                let open = self.open_state();
                open.newest_ticket(now)
                    .map(|t| Some(OpenCredential::Ticket(t.ticket.clone())))
                    .ok_or(RefreshError::NoVerifyTicket)
            }
            Endpoint::Authorizer { component } => {
                let open = self.open_state();
                match open.authorization {
                    Some(Authorization::Unauthorized) => return Err(RefreshError::Revoked),
                    Some(Authorization::NeedsReauth) if open.auth_code.is_none() => {
                        return Err(RefreshError::NeedsReauth);
                    }
                    _ => {}
                }
                let component_token = self
                    .deps
                    .directory
                    .get(component)
                    .and_then(|slot| slot.token())
                    .filter(|t| t.usable_secs(now).is_some())
                    .map(|t| t.token.clone())
                    .ok_or(RefreshError::ComponentUnavailable)?;
                if let Some(code) = open.auth_code.filter(|c| c.expires_at_ms > now) {
                    return Ok(Some(OpenCredential::AuthCode {
                        component_token,
                        code: code.code,
                    }));
                }
                match open.refresh_token {
                    Some(refresh_token) => Ok(Some(OpenCredential::RefreshToken {
                        component_token,
                        refresh_token,
                    })),
                    None => Err(RefreshError::NeedsReauth),
                }
            }
            _ => Ok(None),
        }
    }

    /// True when an authorizer must not be refreshed at all (revoked, or
    /// waiting for the merchant to authorize again).
    pub(super) fn open_parked(&self) -> bool {
        matches!(
            (&self.endpoint, self.slot.authorization()),
            (
                Endpoint::Authorizer { .. },
                Some(Authorization::Unauthorized)
            )
        ) || matches!(
            (&self.endpoint, self.slot.open()),
            (Endpoint::Authorizer { .. }, Some(o))
                if o.authorization == Some(Authorization::NeedsReauth) && o.auth_code.is_none()
        )
    }

    /// After a failed refresh of an Open Platform account: report a stale
    /// component token, ask for a recovery, or park a revoked authorizer.
    /// True when the failure is handled here and no retry may be armed.
    pub(super) fn open_failed(
        &mut self,
        msg: &Finished,
        err: &RefreshError,
        decision: &Decision,
    ) -> bool {
        let Endpoint::Authorizer { component } = &self.endpoint else {
            return false;
        };
        let component = component.clone();
        match (err, decision) {
            (RefreshError::Revoked, _) | (_, Decision::Revoked) => {
                self.park(Authorization::Unauthorized);
                true
            }
            (RefreshError::NeedsReauth, _) => {
                self.park(Authorization::NeedsReauth);
                true
            }
            (_, Decision::Recover) => {
                if self.recovery_asked {
                    self.park(Authorization::NeedsReauth);
                } else if let Some(hub) = &self.deps.hub {
                    self.recovery_asked = true;
                    // A spent or expired code cannot be used again.
                    let mut open = self.open_state();
                    if open.auth_code.take().is_some() {
                        open.changed_at_ms = self.now_ms();
                        self.slot.publish_open(Arc::new(open));
                    }
                    hub.do_send(OpenNotice::Recover {
                        component,
                        authorizer: self.config.appid.clone(),
                    });
                } else {
                    self.park(Authorization::NeedsReauth);
                }
                true
            }
            (_, Decision::TokenRejected) => {
                if let (Some(hub), Some(token)) = (&self.deps.hub, &msg.component_token) {
                    hub.do_send(OpenNotice::ComponentStale {
                        component,
                        token: token.clone(),
                    });
                }
                false
            }
            _ => false,
        }
    }

    /// A revoked authorizer: its token is no longer served, no refresh is
    /// planned; the caller records the revocation in the Open Platform state.
    fn stop_revoked(&mut self, ctx: &mut Context<Self>) {
        let now = self.now_ms();
        self.slot.clear();
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.update_status(|s| {
            s.state = State::Disabled;
            s.next_refresh_at_ms = None;
            s.last_error = Some(LastError {
                errcode: None,
                errmsg: "the merchant revoked the authorization".to_string(),
                at: now.div_euclid(1000),
            });
        });
    }

    /// Stops refreshing an authorizer that a person must attend to; a revoked
    /// one is no longer served either.
    fn park(&mut self, authorization: Authorization) {
        let mut open = self.open_state();
        open.authorization = Some(authorization);
        open.changed_at_ms = self.now_ms();
        if authorization == Authorization::Unauthorized {
            open.auth_code = None;
            self.slot.clear();
        }
        self.slot.publish_open(Arc::new(open));
        self.update_status(|s| {
            s.next_refresh_at_ms = None;
            if authorization == Authorization::Unauthorized {
                s.state = State::Disabled;
            }
        });
        tracing::warn!(appid = %self.config.appid, authorization = authorization.as_str(), "authorizer parked: no more refreshes until a person acts");
        self.persist_always();
    }

    /// Queues the current state for the store whatever `enabled` says (an
    /// Open Platform state must never be lost).
    pub(super) fn persist_always(&self) {
        self.deps.store.put_later(self.stored());
    }
}

impl Handler<OpenUpdate> for AccountActor {
    type Result = ResponseFuture<Result<(), RefreshError>>;

    fn handle(&mut self, msg: OpenUpdate, ctx: &mut Self::Context) -> Self::Result {
        let now = self.now_ms();
        let mut open = self.open_state();
        let is_component = self.config.kind == AccountKind::Component;
        let is_authorizer = matches!(self.config.kind, AccountKind::Authorizer { .. });
        let mut refresh_now = false;
        match msg {
            OpenUpdate::Ticket {
                ticket,
                created_at_ms,
            } if is_component => {
                let added = open.add_ticket(VerifyTicket {
                    ticket,
                    created_at_ms,
                    received_at_ms: now,
                });
                if !added {
                    // WeChat pushes again when it missed our answer: already durable.
                    return Box::pin(async { Ok(()) });
                }
                // A component that was waiting for a ticket fetches at once.
                refresh_now =
                    !self.slot.is_ready(now) || self.slot.status().state == State::Failing;
            }
            OpenUpdate::Code {
                code,
                expires_at_ms,
            } if is_authorizer => {
                open.auth_code = Some(StoredCode {
                    code,
                    expires_at_ms,
                });
                open.authorization = Some(Authorization::Authorized);
                open.changed_at_ms = now;
                self.recovery_asked = false;
                refresh_now = true;
            }
            OpenUpdate::RefreshToken(token) if is_authorizer => {
                let unchanged = open.refresh_token.as_ref() == Some(&token)
                    && open.authorization == Some(Authorization::Authorized);
                if unchanged {
                    self.recovery_asked = false;
                    return Box::pin(async { Ok(()) });
                }
                let was_parked = self.open_parked();
                open.refresh_token = Some(token);
                open.changed_at_ms = now;
                if open.authorization != Some(Authorization::Unauthorized) {
                    open.authorization = Some(Authorization::Authorized);
                }
                refresh_now = open.authorization == Some(Authorization::Authorized)
                    && (was_parked || self.recovery_asked || !self.slot.is_ready(now));
                self.recovery_asked = false;
            }
            OpenUpdate::Revoke if is_authorizer => {
                open.authorization = Some(Authorization::Unauthorized);
                open.auth_code = None;
                open.changed_at_ms = now;
                self.stop_revoked(ctx);
            }
            OpenUpdate::RecoveryFailed if is_authorizer => {
                self.recovery_asked = false;
                open.authorization = Some(Authorization::NeedsReauth);
                open.changed_at_ms = now;
                if let Some(handle) = self.timer.take() {
                    ctx.cancel_future(handle);
                }
                self.update_status(|s| s.next_refresh_at_ms = None);
            }
            OpenUpdate::Ticket { .. } => {
                return Box::pin(async { Err(RefreshError::WrongKind("component")) });
            }
            _ => return Box::pin(async { Err(RefreshError::WrongKind("authorizer")) }),
        }
        self.slot.publish_open(Arc::new(open));
        let durable = {
            let store = self.deps.store.clone();
            let stored = self.stored();
            async move { store.put(stored).await }
        };
        if refresh_now && self.config.enabled {
            if let Some(handle) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            drop(self.start_refresh(ctx, Reason::Startup, false));
        }
        Box::pin(async move {
            durable.await.map_err(|e| RefreshError::NotDurable {
                detail: e.to_string(),
            })
        })
    }
}

impl Handler<AdoptOpen> for AccountActor {
    type Result = ();

    fn handle(&mut self, AdoptOpen(incoming): AdoptOpen, ctx: &mut Self::Context) {
        let current = self.open_state();
        let merged = current.merge(&incoming);
        if merged == current {
            return;
        }
        let now = self.now_ms();
        let was_parked = self.open_parked();
        let was_revoked = current.authorization == Some(Authorization::Unauthorized);
        if merged.refresh_token != current.refresh_token {
            self.recovery_asked = false;
        }
        let revoked = merged.authorization == Some(Authorization::Unauthorized);
        self.slot.publish_open(Arc::new(merged));
        tracing::debug!(appid = %self.config.appid, "adopted the Open Platform state another replica stored");
        let wake = match &self.config.kind {
            AccountKind::Component => {
                !self.slot.is_ready(now) || self.slot.status().state == State::Failing
            }
            AccountKind::Authorizer { .. } if revoked => {
                if !was_revoked {
                    self.stop_revoked(ctx);
                }
                false
            }
            AccountKind::Authorizer { .. } if self.open_parked() => {
                if let Some(handle) = self.timer.take() {
                    ctx.cancel_future(handle);
                }
                self.update_status(|s| s.next_refresh_at_ms = None);
                false
            }
            AccountKind::Authorizer { .. } => was_parked || !self.slot.is_ready(now),
            AccountKind::Wechat | AccountKind::Wecom { .. } => false,
        };
        // The refresh goes through the shared lock: when the other replica
        // already has the token, this takes it without calling WeChat.
        if wake && self.config.enabled && self.inflight.is_none() {
            if let Some(handle) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            drop(self.start_refresh(ctx, Reason::Startup, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AppId {
        AppId::parse(s).unwrap()
    }

    fn request(open: OpenCredential) -> FetchRequest {
        FetchRequest {
            appid: id("wx1111111111111111"),
            secret: secrecy::SecretString::from(String::new()),
            endpoint: Endpoint::Authorizer {
                component: id("wx9999999999999999"),
            },
            force_refresh: false,
            open: Some(open),
        }
    }

    fn token(s: &str) -> AccessToken {
        AccessToken::new(format!("{s}@@@0123456789abcdef"))
    }

    fn with_code(at: i64) -> StoredOpen {
        StoredOpen {
            component: Some(id("wx9999999999999999")),
            authorization: Some(Authorization::Authorized),
            refresh_token: Some(token("old")),
            auth_code: Some(StoredCode {
                code: token("code"),
                expires_at_ms: at + 600_000,
            }),
            changed_at_ms: at,
            verify_tickets: Vec::new(),
        }
    }

    #[test]
    fn a_grant_spends_the_code_and_stores_a_new_refresh_token_at_its_time() {
        let current = with_code(100);
        let by_code = request(OpenCredential::AuthCode {
            component_token: token("ct"),
            code: token("code"),
        });
        let open = after_grant(Some(&current), &by_code, Some(token("new")), 200).unwrap();
        assert_eq!(open.auth_code, None);
        assert_eq!(open.refresh_token, Some(token("new")));
        assert_eq!(open.changed_at_ms, 200);
        // Empty never overwrites; the same one changes nothing.
        let by_refresh = request(OpenCredential::RefreshToken {
            component_token: token("ct"),
            refresh_token: token("new"),
        });
        assert_eq!(
            after_grant(Some(&open), &by_refresh, Some(AccessToken::new("")), 300),
            None
        );
        assert_eq!(
            after_grant(Some(&open), &by_refresh, Some(token("new")), 300),
            None
        );
    }

    #[test]
    fn a_grant_older_than_the_last_change_keeps_the_newer_code_and_refresh_token() {
        // Another replica's token, fetched before this replica stored a new
        // code: the code is not spent and the refresh token stays.
        let current = with_code(500);
        let by_code = request(OpenCredential::AuthCode {
            component_token: token("ct"),
            code: token("code"),
        });
        assert_eq!(
            after_grant(Some(&current), &by_code, Some(token("other")), 400),
            None
        );
        // Without a stored state, the component is still named.
        let open = after_grant(None, &by_code, None, 400).unwrap();
        assert_eq!(open.component, Some(id("wx9999999999999999")));
    }
}
