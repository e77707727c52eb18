//! The Open Platform state of a component or an authorizer, and the one rule
//! by which two views of it combine ([`StoredOpen::merge`]).
//!
//! One process has one view. Replicas sharing Redis have one each, and each
//! writes its own: the shared record is the merge of every write, so that no
//! replica's older view can take back what another learned.
//!
//! Invariants: a merge never loses a refresh token (an empty side never
//! overwrites one), never goes back to an older authorizer state (the side
//! changed last wins, [`StoredOpen::changed_at_ms`]), and keeps the newest
//! verify tickets of both sides.

use crate::domain::{AccessToken, AppId};

/// How many verify tickets a component keeps (newest last).
pub const VERIFY_TICKETS_KEPT: usize = 3;
/// A verify ticket is valid this long after WeChat created it (12 h).
pub const VERIFY_TICKET_LIFETIME_MS: i64 = 12 * 3600 * 1000;

/// The Open Platform state of a component or an authorizer: for an
/// authorizer, the refresh token that must never be lost (a lost one means
/// asking the merchant to authorize again).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredOpen {
    /// Authorizer: the component it authorized.
    pub component: Option<AppId>,
    /// Authorizer: where it stands (`None` for a component).
    pub authorization: Option<crate::domain::Authorization>,
    /// Authorizer: its `authorizer_refresh_token` (the newest WeChat returned).
    pub refresh_token: Option<AccessToken>,
    /// Authorizer: an authorization code not yet exchanged (`api_query_auth`).
    pub auth_code: Option<StoredCode>,
    /// Authorizer: when `authorization`, `refresh_token` or `auth_code` last
    /// changed (Unix ms; 0 in records written before replicas shared them).
    pub changed_at_ms: i64,
    /// Component: the newest `component_verify_ticket`s, oldest first.
    pub verify_tickets: Vec<VerifyTicket>,
}

/// An authorization code pushed with `authorized`; it expires in minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCode {
    pub code: AccessToken,
    pub expires_at_ms: i64,
}

/// One pushed `component_verify_ticket` (valid 12 h from its push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyTicket {
    pub ticket: AccessToken,
    /// When WeChat created it (the event's CreateTime, Unix ms).
    pub created_at_ms: i64,
    /// When a replica received it (Unix ms).
    pub received_at_ms: i64,
}

impl StoredOpen {
    /// The newest verify ticket still inside its 12 hours at `now_ms`.
    pub fn newest_ticket(&self, now_ms: i64) -> Option<&VerifyTicket> {
        self.verify_tickets
            .iter()
            .filter(|t| t.created_at_ms.saturating_add(VERIFY_TICKET_LIFETIME_MS) > now_ms)
            .max_by_key(|t| (t.created_at_ms, t.received_at_ms))
    }

    /// Adds a pushed ticket (kept sorted, the newest [`VERIFY_TICKETS_KEPT`]).
    /// False when it was already known (WeChat pushes again when it missed
    /// an answer).
    pub fn add_ticket(&mut self, ticket: VerifyTicket) -> bool {
        if self
            .verify_tickets
            .iter()
            .any(|t| t.ticket == ticket.ticket)
        {
            return false;
        }
        self.verify_tickets.push(ticket);
        self.trim_tickets();
        true
    }

    fn trim_tickets(&mut self) {
        self.verify_tickets
            .sort_by_key(|t| (t.created_at_ms, t.received_at_ms));
        let excess = self
            .verify_tickets
            .len()
            .saturating_sub(VERIFY_TICKETS_KEPT);
        self.verify_tickets.drain(..excess);
    }

    /// `self` and `other` combined: the authorizer state of the side changed
    /// last (`self` on a tie), a refresh token from either side when the
    /// newer has none, the component from either, the newest tickets of both.
    pub fn merge(&self, other: &StoredOpen) -> StoredOpen {
        let (newer, older) = if other.changed_at_ms > self.changed_at_ms {
            (other, self)
        } else {
            (self, other)
        };
        let mut merged = StoredOpen {
            component: newer.component.clone().or_else(|| older.component.clone()),
            authorization: newer.authorization.or(older.authorization),
            refresh_token: newer
                .refresh_token
                .clone()
                .or_else(|| older.refresh_token.clone()),
            auth_code: newer.auth_code.clone(),
            changed_at_ms: newer.changed_at_ms,
            verify_tickets: self.verify_tickets.clone(),
        };
        for t in &other.verify_tickets {
            if !merged.verify_tickets.iter().any(|m| m.ticket == t.ticket) {
                merged.verify_tickets.push(t.clone());
            }
        }
        merged.trim_tickets();
        merged
    }

    /// `self` after learning the refresh token that came with a token fetched
    /// at `fetched_at_ms` (the shared token record carries it, written in
    /// the same fenced write as the token). It counts only when the fetch
    /// came after the last change of `self`; a code that waited is then spent.
    pub fn with_fetched_refresh_token(
        &self,
        refresh_token: Option<&AccessToken>,
        fetched_at_ms: i64,
    ) -> StoredOpen {
        let mut open = self.clone();
        let Some(new) = refresh_token.filter(|t| !t.expose().is_empty()) else {
            return open;
        };
        if fetched_at_ms <= open.changed_at_ms || open.refresh_token.as_ref() == Some(new) {
            return open;
        }
        open.refresh_token = Some(new.clone());
        open.auth_code = None;
        open.changed_at_ms = fetched_at_ms;
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Authorization;

    fn rt(s: &str) -> Option<AccessToken> {
        Some(AccessToken::new(format!("refresh@@@{s}0123456789")))
    }

    fn authorizer(refresh: &str, authorization: Authorization, at: i64) -> StoredOpen {
        StoredOpen {
            component: Some(AppId::parse("wx9999999999999999").unwrap()),
            authorization: Some(authorization),
            refresh_token: rt(refresh),
            auth_code: None,
            changed_at_ms: at,
            verify_tickets: Vec::new(),
        }
    }

    fn ticket(n: i64) -> VerifyTicket {
        VerifyTicket {
            ticket: AccessToken::new(format!("ticket@@@{n}0123456789")),
            created_at_ms: n,
            received_at_ms: n + 1,
        }
    }

    #[test]
    fn the_side_changed_last_wins_whichever_writes_last() {
        let old = authorizer("one", Authorization::Authorized, 10);
        let new = authorizer("two", Authorization::Authorized, 20);
        assert_eq!(old.merge(&new), new);
        assert_eq!(new.merge(&old), new);
        let revoked = authorizer("two", Authorization::Unauthorized, 30);
        assert_eq!(
            new.merge(&revoked).authorization,
            Some(Authorization::Unauthorized)
        );
        assert_eq!(
            revoked.merge(&new).authorization,
            Some(Authorization::Unauthorized)
        );
    }

    #[test]
    fn a_refresh_token_is_never_lost_to_a_newer_side_without_one() {
        let with = authorizer("one", Authorization::Authorized, 10);
        let without = StoredOpen {
            refresh_token: None,
            ..authorizer("x", Authorization::NeedsReauth, 20)
        };
        let merged = with.merge(&without);
        assert_eq!(merged.refresh_token, rt("one"));
        assert_eq!(merged.authorization, Some(Authorization::NeedsReauth));
    }

    #[test]
    fn tickets_of_both_sides_are_kept_newest_few() {
        let a = StoredOpen {
            verify_tickets: vec![ticket(1), ticket(3)],
            ..StoredOpen::default()
        };
        let b = StoredOpen {
            verify_tickets: vec![ticket(2), ticket(3), ticket(4)],
            ..StoredOpen::default()
        };
        let merged = a.merge(&b);
        let created: Vec<i64> = merged
            .verify_tickets
            .iter()
            .map(|t| t.created_at_ms)
            .collect();
        assert_eq!(created, vec![2, 3, 4]);
        assert_eq!(merged.newest_ticket(0).map(|t| t.created_at_ms), Some(4));
        assert_eq!(b.merge(&a), merged);
    }

    #[test]
    fn a_fetched_refresh_token_counts_only_after_the_last_change() {
        let mut open = authorizer("one", Authorization::Authorized, 100);
        open.auth_code = Some(StoredCode {
            code: AccessToken::new("code@@@0123456789"),
            expires_at_ms: 1000,
        });
        // Fetched before an import changed it: the import stays.
        assert_eq!(
            open.with_fetched_refresh_token(rt("two").as_ref(), 50),
            open
        );
        // Empty never overwrites.
        let empty = AccessToken::new("");
        assert_eq!(open.with_fetched_refresh_token(Some(&empty), 500), open);
        let after = open.with_fetched_refresh_token(rt("two").as_ref(), 500);
        assert_eq!(after.refresh_token, rt("two"));
        assert_eq!(after.auth_code, None);
        assert_eq!(after.changed_at_ms, 500);
    }
}
