//! Parsers for the scalar forms the configuration uses, and message helpers.
//!
//! Owns the accepted spelling of durations, booleans and numbers, the rule for
//! which upstream URLs are acceptable, and "did you mean" suggestions. Every
//! function here returns an error message fragment (lowercase, no key name);
//! the caller adds the key and the line.

use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

/// The longest part of a value quoted back in a message.
const MAX_SHOWN: usize = 80;

/// Quotes a (non-secret) value for a message: escaped, and cut if very long.
pub(crate) fn quote(value: &str) -> String {
    if value.chars().count() > MAX_SHOWN {
        let cut: String = value.chars().take(MAX_SHOWN).collect();
        format!("{:?}...", cut)
    } else {
        format!("{value:?}")
    }
}

/// Parses a duration with a unit: `500ms`, `30s`, `5m`, `2h`, `1h 30m`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{} has no unit; write e.g. \"{t}s\" or \"{t}ms\"",
            quote(text)
        ));
    }
    humantime::parse_duration(t).map_err(|_| {
        format!(
            "{} is not a duration; write a number with a unit, e.g. 500ms, 30s, 5m or 2h",
            quote(text)
        )
    })
}

/// Formats a duration the way it is written in the config (`5m`, `1s 500ms`).
pub(crate) fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses `true` or `false` (YAML 1.2 core schema spellings).
pub(crate) fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(format!(
            "{} is not a boolean; write true or false",
            quote(text)
        )),
    }
}

/// Parses a finite decimal number.
pub(crate) fn number(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{} is not a number; write e.g. 0.8", quote(text))),
    }
}

/// Parses a whole number that is zero or more.
pub(crate) fn count(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| format!("{} is not a whole number; write e.g. 32", quote(text)))
}

/// Parses a size in bytes with an optional unit (`512`, `64KiB`, `20MiB`,
/// `1GB`).
pub(crate) fn size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{} is not a size; write e.g. 20MiB", quote(text)))
}

/// True for `localhost` and loopback IP addresses.
pub(crate) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Quotes a URL as written, with any `user:password@` replaced by `***@`,
/// whether or not the rest of it parses.
pub(crate) fn show_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return quote(text);
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => quote(&format!("{}***{}", &text[..authority_start], &rest[at..])),
        None => quote(text),
    }
}

/// Parses an upstream base URL: `https://`, or `http://` to a loopback host
/// only, and never with credentials in it (they would reach logs and answers).
pub(crate) fn base_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    let shown = show_url(text);
    let url = Url::parse(text)
        .map_err(|e| format!("{shown} is not a URL ({e}); write e.g. https://api.weixin.qq.com"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{shown} has a user name or password; wxtoken sends no credentials to WeChat: remove the `user:password@` part"
        ));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback_host(&url) => Ok(url),
        "http" => Err(format!(
            "{shown} uses plain http to a host that is not loopback; use https (http is only for a local simulator on 127.0.0.1)"
        )),
        _ => Err(format!(
            "{shown} is not an http(s) URL; write e.g. https://api.weixin.qq.com"
        )),
    }
}

/// The known key that `unknown` is most likely a typo of, if one is close:
/// the same once case, `-` and spaces are set aside, or at most two edits
/// (insertions, deletions, substitutions, swaps of neighbours) away.
pub(crate) fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let normal = |s: &str| s.to_ascii_lowercase().replace(['-', ' '], "_");
    let wanted = normal(unknown);
    if let Some(k) = known.iter().find(|k| normal(k) == wanted) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (strsim::osa_distance(&wanted, k), *k))
        .filter(|(d, k)| *d <= 2 && *d * 3 <= k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        let e = duration("30").unwrap_err();
        assert!(e.contains("no unit") && e.contains("\"30s\""), "{e}");
        assert!(
            duration("5 parsecs")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(duration("-5s").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn numbers_and_booleans_parse_strictly() {
        assert_eq!(boolean("true"), Ok(true));
        assert_eq!(boolean("FALSE"), Ok(false));
        assert!(boolean("yes").unwrap_err().contains("true or false"));
        assert_eq!(number("0.8"), Ok(0.8));
        assert!(number("NaN").is_err() && number("inf").is_err() && number("abc").is_err());
        assert_eq!(count("32"), Ok(32));
        assert!(count("-1").is_err() && count("1.5").is_err());
    }

    #[test]
    fn base_urls_must_be_https_unless_loopback() {
        assert!(base_url("https://api.weixin.qq.com").is_ok());
        assert!(base_url("http://127.0.0.1:9090").is_ok());
        assert!(base_url("http://localhost:9090/").is_ok());
        assert!(base_url("http://[::1]:9090/").is_ok());
        assert!(
            base_url("http://api.weixin.qq.com")
                .unwrap_err()
                .contains("use https")
        );
        assert!(
            base_url("ftp://x")
                .unwrap_err()
                .contains("not an http(s) URL")
        );
        assert!(
            base_url("api.weixin.qq.com")
                .unwrap_err()
                .contains("not a URL")
        );
        for url in [
            "ftp://user:hunter2@x",
            "https://user:hunter2@api.weixin.qq.com",
            "https://user:hunter2@bad host/",
            "http://user:hunter2@127.0.0.1:9090",
        ] {
            let e = base_url(url).unwrap_err();
            assert!(!e.contains("hunter2") && !e.contains("//user"), "{e}");
            assert!(e.contains("***@"), "{e}");
        }
    }

    #[test]
    fn shown_urls_lose_their_userinfo_only() {
        assert_eq!(show_url("https://a:b@h:1/p@q"), "\"https://***@h:1/p@q\"");
        assert_eq!(show_url("https://h/p@q"), "\"https://h/p@q\"");
        assert_eq!(show_url("h@x"), "\"h@x\"");
        assert_eq!(show_url("https://a@b@h"), "\"https://***@h\"");
    }

    #[test]
    fn suggests_close_keys_only() {
        let known = ["timeout", "base_urls", "max_concurrency"];
        assert_eq!(closest("timout", &known), Some("timeout"));
        assert_eq!(closest("Base-URLs", &known), Some("base_urls"));
        assert_eq!(closest("max_concurency", &known), Some("max_concurrency"));
        assert_eq!(closest("tiemout", &known), Some("timeout"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(closest("x", &["a"]), None);
    }

    #[test]
    fn long_values_are_cut_when_quoted() {
        let q = quote(&"a".repeat(200));
        assert!(q.len() < 100 && q.ends_with("..."));
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
