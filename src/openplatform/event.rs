//! The Open Platform's pushed events: the encrypted envelope, the events
//! inside it, and (for the simulator) how one is sealed.
//!
//! Owns: the one parsing of an event URL request ([`open`]) — query,
//! signature, decryption, XML — into an [`Event`], and its inverse
//! ([`seal`]). XML is read and written by `quick-xml`. Invariant: every
//! error is an [`EventError`] that names the problem, never the input.

use serde::{Deserialize, Serialize};

use super::crypto::{CryptError, MsgCrypt};

/// The largest event body accepted (contract §6).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The query string WeChat sends with a pushed message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EventQuery {
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub encrypt_type: Option<String>,
    #[serde(default)]
    pub msg_signature: String,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event body is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    #[error("the query lacks timestamp, nonce or msg_signature")]
    Query,
    #[error("encrypt_type must be \"aes\"")]
    EncryptType,
    #[error("the body is not an <xml> envelope with an Encrypt element")]
    Envelope,
    #[error("{0}")]
    Crypt(#[from] CryptError),
    #[error("the decrypted event is not XML with an InfoType")]
    Xml,
    #[error("the event's {0} is missing or empty")]
    Missing(&'static str),
    #[error("the event is for platform {0:?}, not this one")]
    OtherPlatform(String),
}

#[derive(Deserialize)]
struct EnvelopeXml {
    #[serde(rename = "AppId", default)]
    app_id: Option<String>,
    #[serde(rename = "Encrypt", default)]
    encrypt: Option<String>,
}

/// The fields of a decrypted event (every InfoType shares them).
#[derive(Debug, Default, Deserialize, Serialize)]
struct EventXml {
    #[serde(rename = "AppId", default, skip_serializing_if = "Option::is_none")]
    app_id: Option<String>,
    #[serde(rename = "CreateTime", default, skip_serializing_if = "Option::is_none")]
    create_time: Option<i64>,
    #[serde(rename = "InfoType", default, skip_serializing_if = "Option::is_none")]
    info_type: Option<String>,
    #[serde(rename = "ComponentVerifyTicket", default, skip_serializing_if = "Option::is_none")]
    ticket: Option<String>,
    #[serde(rename = "AuthorizerAppid", default, skip_serializing_if = "Option::is_none")]
    authorizer_appid: Option<String>,
    #[serde(rename = "AuthorizationCode", default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(
        rename = "AuthorizationCodeExpiredTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    code_expired_time: Option<i64>,
    #[serde(rename = "PreAuthCode", default, skip_serializing_if = "Option::is_none")]
    pre_auth_code: Option<String>,
}

/// One event pushed to a platform's event URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// `component_verify_ticket`: the newest ticket (valid 12 h).
    Ticket { ticket: String, create_time: i64 },
    /// `authorized` or `updateauthorized` (`update`): exchange `code` at once.
    Authorized {
        authorizer_appid: String,
        code: String,
        update: bool,
        create_time: i64,
    },
    /// `unauthorized`: the merchant revoked the platform.
    Unauthorized {
        authorizer_appid: String,
        create_time: i64,
    },
    /// Any other InfoType: acknowledged and counted.
    Other { info_type: String },
}

impl std::fmt::Debug for Event {
    // Tickets and codes are credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Ticket { create_time, .. } => {
                write!(f, "Ticket {{ create_time: {create_time} }}")
            }
            Event::Authorized {
                authorizer_appid,
                update,
                ..
            } => write!(f, "Authorized {{ {authorizer_appid}, update: {update} }}"),
            Event::Unauthorized {
                authorizer_appid, ..
            } => write!(f, "Unauthorized {{ {authorizer_appid} }}"),
            Event::Other { info_type } => write!(f, "Other {{ {info_type:?} }}"),
        }
    }
}

impl Event {
    /// The `InfoType` word, bounded for a metric label (`other` for the rest).
    pub fn info_type(&self) -> &'static str {
        match self {
            Event::Ticket { .. } => "component_verify_ticket",
            Event::Authorized { update: false, .. } => "authorized",
            Event::Authorized { update: true, .. } => "updateauthorized",
            Event::Unauthorized { .. } => "unauthorized",
            Event::Other { .. } => "other",
        }
    }
}

/// Checks, decrypts and parses one pushed message for the platform of
/// `crypt`. Nothing is trusted before the signature and the appid inside the
/// ciphertext have been checked.
pub fn open(crypt: &MsgCrypt, query: &EventQuery, body: &[u8]) -> Result<Event, EventError> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge);
    }
    if query.timestamp.is_empty() || query.nonce.is_empty() || query.msg_signature.is_empty() {
        return Err(EventError::Query);
    }
    if let Some(kind) = &query.encrypt_type {
        if kind != "aes" {
            return Err(EventError::EncryptType);
        }
    }
    let text = std::str::from_utf8(body).map_err(|_| EventError::Envelope)?;
    let envelope: EnvelopeXml = quick_xml::de::from_str(text).map_err(|_| EventError::Envelope)?;
    let encrypt = envelope
        .encrypt
        .filter(|e| !e.trim().is_empty())
        .ok_or(EventError::Envelope)?;
    crypt.verify(&query.msg_signature, &query.timestamp, &query.nonce, encrypt.trim())?;
    let xml = crypt.decrypt(&encrypt)?;
    // The outer AppId is informative only; the one inside the ciphertext was checked.
    let _ = envelope.app_id;
    parse(crypt.appid(), &xml)
}

fn parse(platform: &str, xml: &str) -> Result<Event, EventError> {
    let event: EventXml = quick_xml::de::from_str(xml).map_err(|_| EventError::Xml)?;
    if let Some(appid) = event.app_id.as_deref() {
        if !appid.is_empty() && appid != platform {
            return Err(EventError::OtherPlatform(appid.chars().take(64).collect()));
        }
    }
    let create_time = event.create_time.unwrap_or(0);
    let non_empty = |v: Option<String>, name| v.filter(|s| !s.trim().is_empty()).ok_or(EventError::Missing(name));
    match event.info_type.as_deref().map(str::trim) {
        None | Some("") => Err(EventError::Xml),
        Some("component_verify_ticket") => Ok(Event::Ticket {
            ticket: non_empty(event.ticket, "ComponentVerifyTicket")?,
            create_time,
        }),
        Some(kind @ ("authorized" | "updateauthorized")) => Ok(Event::Authorized {
            authorizer_appid: non_empty(event.authorizer_appid, "AuthorizerAppid")?,
            code: non_empty(event.code, "AuthorizationCode")?,
            update: kind == "updateauthorized",
            create_time,
        }),
        Some("unauthorized") => Ok(Event::Unauthorized {
            authorizer_appid: non_empty(event.authorizer_appid, "AuthorizerAppid")?,
            create_time,
        }),
        Some(other) => Ok(Event::Other {
            info_type: other.chars().take(64).collect(),
        }),
    }
}

/// A sealed message: the query and body WeChat would POST to the event URL.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub query: EventQuery,
    pub body: String,
}

/// Seals `event` for the platform of `crypt` as WeChat pushes it (used by
/// the simulator's pusher and by tests).
pub fn seal(crypt: &MsgCrypt, event: &Event, create_time: i64) -> Sealed {
    let mut xml = EventXml {
        app_id: Some(crypt.appid().to_string()),
        create_time: Some(create_time),
        info_type: Some(match event {
            Event::Other { info_type } => info_type.clone(),
            e => e.info_type().to_string(),
        }),
        ..EventXml::default()
    };
    match event {
        Event::Ticket { ticket, .. } => xml.ticket = Some(ticket.clone()),
        Event::Authorized {
            authorizer_appid,
            code,
            ..
        } => {
            xml.authorizer_appid = Some(authorizer_appid.clone());
            xml.code = Some(code.clone());
            xml.code_expired_time = Some(create_time + 600);
        }
        Event::Unauthorized {
            authorizer_appid, ..
        } => xml.authorizer_appid = Some(authorizer_appid.clone()),
        Event::Other { .. } => {}
    }
    let inner = quick_xml::se::to_string_with_root("xml", &xml).unwrap_or_default();
    let encrypt = crypt.encrypt(&inner);
    let timestamp = create_time.to_string();
    let nonce = rand::random::<u32>().to_string();
    let msg_signature = crypt.signature(&timestamp, &nonce, &encrypt);
    #[derive(Serialize)]
    struct Outer<'a> {
        #[serde(rename = "AppId")]
        app_id: &'a str,
        #[serde(rename = "Encrypt")]
        encrypt: &'a str,
    }
    let body = quick_xml::se::to_string_with_root(
        "xml",
        &Outer {
            app_id: crypt.appid(),
            encrypt: &encrypt,
        },
    )
    .unwrap_or_default();
    Sealed {
        query: EventQuery {
            timestamp,
            nonce,
            encrypt_type: Some("aes".to_string()),
            msg_signature,
        },
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wxb11529c136998cb6";

    fn crypt() -> MsgCrypt {
        MsgCrypt::new("pamtest", KEY, APPID).unwrap()
    }

    #[test]
    fn every_event_round_trips_through_seal_and_open() {
        let events = [
            Event::Ticket {
                ticket: "ticket@@@abcdefghijklmnopqrstuvwxyz".into(),
                create_time: 1_700_000_000,
            },
            Event::Authorized {
                authorizer_appid: "wx1234567890123456".into(),
                code: "queryauthcode@@@xyz".into(),
                update: false,
                create_time: 1_700_000_000,
            },
            Event::Authorized {
                authorizer_appid: "wx1234567890123456".into(),
                code: "queryauthcode@@@xyz".into(),
                update: true,
                create_time: 1_700_000_000,
            },
            Event::Unauthorized {
                authorizer_appid: "wx1234567890123456".into(),
                create_time: 1_700_000_000,
            },
            Event::Other {
                info_type: "notify_third_fasteregister".into(),
            },
        ];
        for event in events {
            let sealed = seal(&crypt(), &event, 1_700_000_000);
            assert_eq!(open(&crypt(), &sealed.query, sealed.body.as_bytes()), Ok(event));
        }
    }

    #[test]
    fn wechats_own_cdata_form_is_read() {
        let inner = "<xml><AppId><![CDATA[wxb11529c136998cb6]]></AppId>\n<CreateTime>1413192605</CreateTime>\n<InfoType><![CDATA[component_verify_ticket]]></InfoType>\n<ComponentVerifyTicket><![CDATA[some@@@ticket]]></ComponentVerifyTicket>\n</xml>";
        let c = crypt();
        let encrypt = c.encrypt(inner);
        let query = EventQuery {
            timestamp: "1413192605".into(),
            nonce: "1".into(),
            encrypt_type: Some("aes".into()),
            msg_signature: c.signature("1413192605", "1", &encrypt),
        };
        let body = format!("<xml>\n<AppId><![CDATA[{APPID}]]></AppId>\n<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n</xml>");
        assert_eq!(
            open(&c, &query, body.as_bytes()),
            Ok(Event::Ticket {
                ticket: "some@@@ticket".into(),
                create_time: 1413192605
            })
        );
    }

    #[test]
    fn forged_tampered_and_foreign_events_are_refused() {
        let c = crypt();
        let ticket = Event::Ticket {
            ticket: "t".repeat(20),
            create_time: 1,
        };
        let sealed = seal(&c, &ticket, 1);
        // Bad signature.
        let mut q = sealed.query.clone();
        q.msg_signature = "0".repeat(40);
        assert_eq!(
            open(&c, &q, sealed.body.as_bytes()),
            Err(EventError::Crypt(CryptError::Signature))
        );
        // Replayed with another nonce (signature no longer matches).
        let mut q = sealed.query.clone();
        q.nonce.push('9');
        assert!(open(&c, &q, sealed.body.as_bytes()).is_err());
        // Another platform's keys (same key, other appid).
        let other = MsgCrypt::new("pamtest", KEY, "wx0000000000000000").unwrap();
        let foreign = seal(&other, &ticket, 1);
        assert_eq!(
            open(&c, &foreign.query, foreign.body.as_bytes()),
            Err(EventError::Crypt(CryptError::AppId))
        );
        // Oversized, not XML, no Encrypt, wrong encrypt_type, missing query.
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(open(&c, &sealed.query, &big), Err(EventError::TooLarge));
        assert_eq!(open(&c, &sealed.query, b"not xml"), Err(EventError::Envelope));
        assert_eq!(open(&c, &sealed.query, b"<xml><AppId>x</AppId></xml>"), Err(EventError::Envelope));
        let mut q = sealed.query.clone();
        q.encrypt_type = Some("raw".into());
        assert_eq!(open(&c, &q, sealed.body.as_bytes()), Err(EventError::EncryptType));
        assert_eq!(
            open(&c, &EventQuery::default(), sealed.body.as_bytes()),
            Err(EventError::Query)
        );
    }

    #[test]
    fn events_without_their_fields_are_refused() {
        let c = crypt();
        for inner in [
            "<xml><InfoType>component_verify_ticket</InfoType></xml>",
            "<xml><InfoType>authorized</InfoType><AuthorizerAppid>wx1</AuthorizerAppid></xml>",
            "<xml><InfoType>unauthorized</InfoType></xml>",
            "<xml><CreateTime>1</CreateTime></xml>",
            "<xml><InfoType>component_verify_ticket</InfoType><CreateTime>soon</CreateTime></xml>",
        ] {
            let encrypt = c.encrypt(inner);
            let query = EventQuery {
                timestamp: "1".into(),
                nonce: "2".into(),
                encrypt_type: None,
                msg_signature: c.signature("1", "2", &encrypt),
            };
            let body = format!("<xml><Encrypt>{encrypt}</Encrypt></xml>");
            assert!(open(&c, &query, body.as_bytes()).is_err(), "{inner}");
        }
    }
}
