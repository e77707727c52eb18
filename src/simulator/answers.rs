//! The shapes of the simulator's WeChat answers: error codes with WeChat's own
//! messages, the ` rid: ...` request id, and the JSON content type.
//!
//! Invariant: every WeChat-style error answer is HTTP 200 with
//! `{"errcode","errmsg"}`, and every `errmsg` ends with ` rid: <hex>`, as on WeChat.

use std::net::IpAddr;

use actix_web::HttpResponse;
use rand::Rng;
use serde_json::json;

/// The content type WeChat puts on its JSON answers.
pub(crate) const WECHAT_JSON: &str = "application/json; encoding=utf-8";

/// A WeChat error answer: an errcode and the message before its ` rid: ...` suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WxError {
    pub(crate) errcode: i64,
    pub(crate) errmsg: String,
}

impl WxError {
    /// An error with WeChat's usual message for `errcode`.
    pub(crate) fn new(errcode: i64) -> Self {
        WxError {
            errcode,
            errmsg: default_errmsg(errcode).to_string(),
        }
    }

    /// An error with a given message.
    pub(crate) fn with_message(errcode: i64, errmsg: impl Into<String>) -> Self {
        WxError {
            errcode,
            errmsg: errmsg.into(),
        }
    }

    /// 40164: the caller's IP is not in the app's whitelist. WeChat names the
    /// IP twice, as IPv4 and as its IPv4-mapped IPv6 form.
    pub(crate) fn ip_not_whitelisted(peer: Option<IpAddr>) -> Self {
        WxError::with_message(40164, ip_message(peer))
    }

    /// The HTTP answer: status 200 and `{"errcode","errmsg"}` with a fresh rid.
    pub(crate) fn into_response(self) -> HttpResponse {
        json_response(&json!({
            "errcode": self.errcode,
            "errmsg": with_rid(&self.errmsg),
        }))
    }
}

/// The 40164 message for a peer address, without the rid.
pub(crate) fn ip_message(peer: Option<IpAddr>) -> String {
    match peer.map(canonical_ip) {
        Some(IpAddr::V4(v4)) => format!("invalid ip {v4} ipv6 ::ffff:{v4}, not in whitelist"),
        Some(IpAddr::V6(v6)) => format!("invalid ip {v6} ipv6 {v6}, not in whitelist"),
        None => "invalid ip unknown, not in whitelist".to_string(),
    }
}

/// Turns an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) into plain IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A 200 answer with a JSON body and WeChat's content type.
pub(crate) fn json_response(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(WECHAT_JSON)
        .body(body.to_string())
}

/// Appends ` rid: <id>` to a message unless it already carries one.
pub(crate) fn with_rid(errmsg: &str) -> String {
    if errmsg.contains(" rid: ") {
        errmsg.to_string()
    } else {
        format!("{errmsg} rid: {}", new_rid())
    }
}

/// A request id in WeChat's form: three dash-separated groups of 8 hex digits.
pub(crate) fn new_rid() -> String {
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.random::<u32>(),
        rng.random::<u32>(),
        rng.random::<u32>()
    )
}

/// WeChat's message for an errcode (before the rid), or a generic one for
/// codes the simulator does not know.
pub(crate) fn default_errmsg(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system error",
        0 => "ok",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40097 => "invalid args",
        40125 => "invalid appsecret",
        40164 => "invalid ip, not in whitelist",
        40243 => "AppSecret is frozen, please unfreeze it on mp.weixin.qq.com and retry",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        42001 => "access_token expired",
        45009 => {
            "reach max api daily quota limit, could get access_token by getStableAccessToken, more details at https://mmbizurl.cn/s/JtxxFh33r"
        }
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        47001 => "data format error",
        48006 => "forbid to clear quota because of reaching the limit",
        76021 => "cgi_path not found, please check",
        89501 => {
            "this IP is waiting for the administrator's confirmation, please contact the administrator"
        }
        89503 => {
            "this IP call requires the administrator's confirmation, please contact the administrator"
        }
        89506 => {
            "the administrator rejected this IP twice in 24 hours; it cannot call for 24 hours"
        }
        89507 => "the administrator rejected this IP once in 1 hour; it cannot call for 1 hour",
        _ => "simulated error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rid_is_appended_once() {
        let m = with_rid("invalid appid");
        assert!(m.starts_with("invalid appid rid: "));
        assert_eq!(with_rid(&m), m);
        assert_eq!(new_rid().len(), 26);
    }

    #[test]
    fn ip_message_names_both_forms_of_an_ipv4_peer() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            ip_message(Some(mapped)),
            "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist"
        );
    }
}
