//! The `accounts.yaml` configuration: its typed form, loading and validation.
//!
//! Owns: turning a YAML file plus the environment into a [`Config`], or into the
//! complete list of [`Problem`]s with `file:line` positions. Invariant: a
//! `Config` value is fully valid (every rule of contract §2 holds), and secrets
//! inside it are only reachable through `secrecy::ExposeSecret`.
//!
//! Code map: `yaml` parses the text (saphyr) into a `serde_yaml::Value` whose
//! values are tagged with their place in a located index (lines, keys);
//! `raw` is the file's shape as serde structs, the one list of its keys, with
//! lenient fields so every problem is found; `env` holds [`LoadOptions`] and
//! `${VAR}` expansion; `load` has the entry points and the typed getters that
//! report problems; `schema` knows every default and rule of contract §2;
//! `values` parses durations, numbers and URLs; `files` opens and reads the
//! config and secret files (regular files only, never blocking, never past a
//! size limit); `problems` formats `file:line: message`; `check` is
//! `wxtoken check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::domain::{AppId, KeyHash, Mode};

mod check;
mod env;
mod files;
mod load;
mod problems;
mod raw;
mod schema;
mod values;
mod yaml;

pub use check::{CHECK_INVALID, CHECK_OK, run_check, summary};
pub use env::{EnvLookup, LoadOptions};
pub use load::{Loaded, load, load_str, read};
pub use problems::{Problem, Problems};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration was read from (for reload and messages).
    pub source: PathBuf,
    /// The address of the HTTP API, `/metrics` and the health endpoints.
    pub listen: SocketAddr,
    /// How WeChat is reached.
    pub upstream: UpstreamConfig,
    /// Where tokens are persisted.
    pub store: StoreConfig,
    /// When tokens are refreshed.
    pub refresh: RefreshConfig,
    /// What `/metrics` exports.
    pub metrics: MetricsConfig,
    /// The limits of the token-injecting proxy (contract §7).
    pub proxy: ProxyConfig,
    /// Who may read tokens; empty means unauthenticated loopback access.
    pub clients: Vec<ClientConfig>,
    /// Open Platform third-party platforms (contract §6); their authorizers
    /// are not in the file: they arrive by events and live in the store.
    pub components: Vec<ComponentConfig>,
    /// The WeChat accounts whose tokens are kept fresh (at least one unless
    /// components are configured).
    pub accounts: Vec<AccountConfig>,
    /// The digest of the text this configuration was read from, so a reload
    /// can tell whether the file changed since.
    pub digest: Digest,
}

impl Config {
    /// Every account the registry runs from this file: the accounts, then
    /// each component's own token (its authorizers come from the store).
    pub fn registry_accounts(&self) -> Vec<AccountConfig> {
        let mut all = self.accounts.clone();
        all.extend(self.components.iter().map(ComponentConfig::account));
        all
    }
}

/// The SHA-256 of a configuration file's text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `text` (the file's bytes, byte-order mark included).
    pub fn of(text: &str) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(text.as_bytes()).into())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({}…)", hex::encode(&self.0[..6]))
    }
}

/// `upstream:`: how wxtoken reaches WeChat.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Tried in order; the next one on connect error, timeout or HTTP 5xx.
    pub base_urls: Vec<Url>,
    /// WeCom's API (`kind: wecom` accounts), tried in order like `base_urls`.
    pub wecom_base_urls: Vec<Url>,
    /// Per HTTP request.
    pub timeout: Duration,
    /// Upstream requests in flight across all accounts.
    pub max_concurrency: usize,
}

impl UpstreamConfig {
    /// The base URLs of WeCom apps: `wecom_base_urls`, or `base_urls` when
    /// a configuration built in code left it empty (the file cannot).
    pub fn wecom_urls(&self) -> &[Url] {
        if self.wecom_base_urls.is_empty() {
            &self.base_urls
        } else {
            &self.wecom_base_urls
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            base_urls: vec![
                Url::parse("https://api.weixin.qq.com").expect("static url"),
                Url::parse("https://api2.weixin.qq.com").expect("static url"),
            ],
            wecom_base_urls: vec![Url::parse("https://qyapi.weixin.qq.com").expect("static url")],
            timeout: Duration::from_secs(5),
            max_concurrency: 32,
        }
    }
}

/// `proxy:`: the limits of the token-injecting API proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// One proxied exchange, from the request to the last byte of the
    /// answer (uploads and downloads of media included).
    pub timeout: Duration,
    /// The largest request body forwarded (WeChat's own media limit is 20 MB
    /// for permanent videos); larger ones are answered 413.
    pub max_body: u64,
    /// Proxied requests in flight per client (a bearer key's client, or a
    /// peer address for callers that present a token).
    pub max_in_flight_per_client: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            timeout: Duration::from_secs(60),
            max_body: 20 * 1024 * 1024,
            max_in_flight_per_client: 64,
        }
    }
}

/// `store:`: where tokens are persisted.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The embedded store file.
    pub path: PathBuf,
    /// A Redis URL (it may carry a password, hence secret) for the shared store.
    pub redis: Option<SecretString>,
    /// Prefix of every Redis key wxtoken writes.
    pub redis_prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data/wxtoken.redb"),
            redis: None,
            redis_prefix: "wxtoken".to_string(),
        }
    }
}

/// `refresh:`: when tokens are refreshed and how failures back off.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// Legacy mode: refresh after this fraction of the lifetime (0 < x < 1).
    pub legacy_at: f64,
    /// Plus/minus this fraction, drawn per account per cycle (0 <= x < 0.5).
    pub jitter: f64,
    /// Stable mode: refresh inside the last `stable_window` of the lifetime.
    pub stable_window: Duration,
    /// The first retry delay after a failed refresh; later ones grow up to `backoff_max`.
    pub backoff_initial: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            legacy_at: 0.8,
            jitter: 0.05,
            stable_window: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// `metrics:`: what `/metrics` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `metrics.per_account`; `None` (absent) means the default rule by
    /// fleet size, [`crate::metrics::PerAccount::default_for`].
    pub per_account: Option<crate::metrics::PerAccount>,
}

/// Which appids a client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppScope {
    /// `["*"]`: every account.
    All,
    /// Only these.
    Only(Vec<AppId>),
}

impl AppScope {
    /// True when a client with this scope may read `appid`'s token.
    pub fn allows(&self, appid: &AppId) -> bool {
        match self {
            AppScope::All => true,
            AppScope::Only(ids) => ids.contains(appid),
        }
    }
}

/// One entry of `clients:`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Unique name, shown in logs and metrics.
    pub name: String,
    /// The SHA-256 of the client's API key (unique).
    pub key: KeyHash,
    /// The accounts whose tokens it may read.
    pub appids: AppScope,
    /// May list accounts, force refreshes and reload.
    pub admin: bool,
}

/// One entry of `accounts:`.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// A WeChat appid (`wx` + 16 letters or digits), unique in the file.
    pub appid: AppId,
    /// Free text for status and dashboards (defaults to the appid).
    pub name: String,
    /// The AppSecret; only reachable through `ExposeSecret`.
    pub secret: SecretString,
    /// Which WeChat token endpoint the account uses.
    pub mode: Mode,
    /// Disabled accounts are kept in the file but not refreshed or served.
    pub enabled: bool,
    /// A WeChat account (the default) or a WeCom application.
    pub kind: AccountKind,
    /// The JS-SDK tickets kept next to the token (WeChat accounts only).
    pub tickets: Vec<crate::domain::TicketKind>,
    /// A legacy account whose `/cgi-bin/token` quota is spent (45009) gets
    /// its tokens from `stable_token` (a separate quota) until the next
    /// China-time day, as WeChat's 45009 message recommends.
    pub fallback_to_stable: bool,
}

/// One Open Platform third-party platform (`components:`).
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    /// The `component_appid` (WeChat appid syntax), unique across accounts
    /// and components.
    pub appid: AppId,
    /// Free text for status and dashboards (defaults to the appid).
    pub name: String,
    /// The `component_appsecret`.
    pub secret: SecretString,
    /// The message-check Token set on the platform (signs pushed events).
    pub token: SecretString,
    /// The 43-character EncodingAESKey (decrypts pushed events).
    pub encoding_aes_key: SecretString,
    /// A disabled component keeps its record but is neither refreshed nor
    /// served, and its authorizers neither.
    pub enabled: bool,
}

impl ComponentConfig {
    /// The component as an account of the registry: its own token
    /// (`component_access_token`, legacy semantics: every fetch mints one).
    pub fn account(&self) -> AccountConfig {
        AccountConfig {
            appid: self.appid.clone(),
            name: self.name.clone(),
            secret: self.secret.clone(),
            mode: Mode::Legacy,
            enabled: self.enabled,
            kind: AccountKind::Component,
            tickets: Vec::new(),
            fallback_to_stable: false,
        }
    }
}

/// The account of authorizer `appid` of the component `component` (its
/// secret is the refresh token, which lives in the slot and the store, not
/// here); it is enabled when its component is.
pub fn authorizer_account(component: &AppId, enabled: bool, appid: AppId) -> AccountConfig {
    AccountConfig {
        name: appid.as_str().to_string(),
        appid,
        secret: SecretString::from(String::new()),
        mode: Mode::Legacy,
        enabled,
        kind: AccountKind::Authorizer {
            component: component.clone(),
        },
        tickets: Vec::new(),
        fallback_to_stable: false,
    }
}

/// What kind of account a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccountKind {
    /// A WeChat Official Account or Mini Program (`api.weixin.qq.com`).
    #[default]
    Wechat,
    /// A WeCom (企业微信) application: one token per (corpid, agentid), from
    /// `qyapi.weixin.qq.com/cgi-bin/gettoken`. Its id is `corpid:agentid`.
    Wecom { corpid: String, agentid: u64 },
    /// An Open Platform third-party platform's own `component_access_token`
    /// (configured under `components:`).
    Component,
    /// An Open Platform authorizer of `component`: its
    /// `authorizer_access_token`, refreshed with its refresh token.
    Authorizer { component: AppId },
}

impl AccountKind {
    /// The `kind` word of `/v1/accounts`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AccountKind::Wechat => "account",
            AccountKind::Wecom { .. } => "wecom",
            AccountKind::Component => "component",
            AccountKind::Authorizer { .. } => "authorizer",
        }
    }

    /// The component an authorizer belongs to.
    pub fn component(&self) -> Option<&AppId> {
        match self {
            AccountKind::Authorizer { component } => Some(component),
            _ => None,
        }
    }
}
