//! `GET /ui` (contract §9): the operators' status page, one self-contained
//! HTML file (`ui.html`, compiled in) that reads `GET /v1/accounts` from the
//! browser.
//!
//! Owns the page and the headers it is served with. Invariants:
//! - The page holds no data and needs no key: it asks for the admin key in
//!   the page, keeps it in the tab's `sessionStorage` only (never
//!   `localStorage`, a cookie or the URL) and sends it as a bearer key to
//!   `/v1/accounts`, which does the authentication.
//! - Nothing is loaded from anywhere else: the page's only script and only
//!   style sheet are inline, and the `Content-Security-Policy` allows exactly
//!   those two (by their SHA-256, computed from the page itself), requests
//!   to this origin only, no framing, no form submission and no `<base>`.
//!   Everything the page shows from an answer is inserted as text.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The page.
const PAGE: &str = include_str!("ui.html");

/// The `Content-Security-Policy` of the page, built once from its inline
/// script and style.
static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    // The policy is ASCII, so the fallback (which blocks everything) is never taken.
    HeaderValue::from_str(&policy(PAGE))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
});

/// `GET /ui` (and `HEAD`): the status page, never cached.
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY.clone()))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ))
        .body(PAGE)
}

/// The policy for `page`: nothing by default, the page's one inline
/// `<script>` and one inline `<style>` by hash, fetches to this origin.
/// A page without one of them gets `'none'` for it.
fn policy(page: &str) -> String {
    let script = inline(page, "script").map_or_else(|| "'none'".to_string(), hash_source);
    let style = inline(page, "style").map_or_else(|| "'none'".to_string(), hash_source);
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The text of the first `<tag>...</tag>` element of `page` (the tag written
/// without attributes, as `ui.html` does).
fn inline<'a>(page: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open)? + open.len();
    let len = page[start..].find(&close)?;
    Some(&page[start..start + len])
}

/// The CSP hash source (`'sha256-<base64>'`) of an inline element's text.
fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_pages_own_script_and_style_by_hash_only() {
        let policy = policy(PAGE);
        assert!(
            policy.starts_with("default-src 'none'; script-src 'sha256-"),
            "{policy}"
        );
        assert!(policy.contains("style-src 'sha256-"), "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(POLICY.to_str().ok(), Some(policy.as_str()));
    }

    #[test]
    fn the_page_has_exactly_one_inline_script_and_style_and_no_attributes_on_them() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(inline(PAGE, "script").is_some_and(|s| s.contains("sessionStorage")));
    }

    #[test]
    fn hashes_are_csp_sha256_sources() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            hash_source("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
        assert_eq!(inline("<p><style>a{}</style>", "style"), Some("a{}"));
        assert_eq!(inline("<p>", "style"), None);
        assert!(policy("<p>").contains("script-src 'none'"));
    }
}
