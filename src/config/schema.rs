//! The schema of `accounts.yaml` (contract §2): its keys, defaults and rules.
//!
//! Owns how each value of the `raw` structs is read (which keys exist is
//! `raw.rs`), the defaults, and every rule that involves several values
//! (duplicates across accounts and components, client scopes, `listen`
//! versus `clients`). Invariant: secrets (account secrets, a component's
//! secret, Token and EncodingAESKey, client keys that may be plain keys by
//! mistake, the Redis URL) are read here but never quoted in a message; only
//! variable names, file paths and lengths are.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::files::{OpenError, ReadError, mode, read_regular};
use super::load::{Fields, Got, Text, Walk, found, lowercase_first};
use super::raw::{
    RawAccount, RawClient, RawComponent, RawConfig, RawMetrics, RawProxy, RawRefresh, RawStore,
    RawUpstream, Slot,
};
use super::values::{self, quote, show_duration};
use super::{
    AccountConfig, AccountKind, AppScope, ClientConfig, ComponentConfig, Config, MetricsConfig,
    ProxyConfig, RefreshConfig, StoreConfig, UpstreamConfig,
};
use crate::domain::{AppId, KeyHash, Mode, TicketKind};
use crate::metrics::PerAccount;
use crate::openplatform::crypto::{ENCODING_AES_KEY_LEN, check_encoding_aes_key};

/// The default `listen` address: loopback only.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// A WeChat token lives this long; the stable refresh window must be shorter.
const TOKEN_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// The longest `upstream.timeout`: WeChat answers in well under a second, and
/// an answer may still arrive (and rotate a token) twice this long after a
/// request (the late-answer window).
const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `refresh.backoff_initial` and `refresh.backoff_max`: a token
/// lives 2h, so retries must come well within it.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest `proxy.timeout`: one proxied exchange, a 20 MiB upload or
/// download on a slow link included.
const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest secret file accepted.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// An example appid for hints.
const EXAMPLE_APPID: &str = "wx1111111111111111";

/// The shortest and longest message-check Token WeChat accepts (letters and
/// digits only).
const TOKEN_LEN: std::ops::RangeInclusive<usize> = 3..=32;

/// What the cross-checks need to know about one account or component, even
/// an invalid one.
#[derive(Default)]
struct AccountSeen {
    path: String,
    appid: Option<(AppId, usize)>,
    enabled: bool,
}

/// What the cross-checks need to know about one client, even an invalid one.
#[derive(Default)]
struct ClientSeen {
    path: String,
    name: Option<(String, usize)>,
    key: Option<(KeyHash, usize)>,
    scope: Vec<(AppId, usize)>,
}

/// The `components:` list as read: the valid components, what was seen of
/// all of them, and whether the file tries to configure any (a non-empty
/// list, or a value of the wrong shape), which lets `accounts:` be empty.
struct ComponentsRead {
    valid: Option<Vec<ComponentConfig>>,
    seen: Vec<AccountSeen>,
    present: bool,
}

/// A secret-typed value as read, before any rule about its content.
enum SecretGot {
    /// The value, the line it (or its file's name) is on, and how messages
    /// name it (`components[0].token`, or `... (read from token_file)`).
    Given(SecretString, Option<usize>, String),
    /// Not needed (`demo`) and not available: the caller makes up one.
    Placeholder,
}

impl SecretGot {
    /// The secret, or `placeholder()` when none was needed.
    fn or_placeholder(self, placeholder: fn() -> SecretString) -> SecretString {
        match self {
            SecretGot::Given(secret, ..) => secret,
            SecretGot::Placeholder => placeholder(),
        }
    }
}

/// Where one secret-typed value of an entry may be: its two keys.
struct Secret<'r> {
    /// `key:` (a literal or `${VAR}`).
    inline: &'r Slot<String>,
    /// `key_file:`.
    file: &'r Slot<String>,
    /// The key's name (`secret`, `token`, ...).
    key: &'static str,
    /// A variable name for the hint when both keys are missing.
    example_var: &'static str,
    /// The line of the entry, for "has no ..." problems.
    entry_line: usize,
}

/// The `clients:` list as read: the valid clients, what was seen of all of
/// them, how many entries there were, and the line of the `clients:` key.
struct ClientsRead {
    valid: Option<Vec<ClientConfig>>,
    seen: Vec<ClientSeen>,
    entries: usize,
    line: Option<usize>,
}

impl Walk<'_> {
    /// Reads the whole file. `None` when some part is invalid (every problem reported).
    pub(crate) fn config(&mut self, root: Option<&Slot<RawConfig>>) -> Option<Config> {
        let Some(root) = root else {
            self.report.error(
                None,
                "the file is empty; it needs at least an `accounts:` list with one account, or a `components:` list with one platform",
            );
            return None;
        };
        let f = self.fields(root, "")?;

        let listen = self.setting(&f.listen, "listen", parse_listen);
        let listen_line = listen.line().or(self.key_line(&f.listen));
        let listen = listen.or(DEFAULT_LISTEN);
        let upstream = self.upstream(&f.upstream);
        let store = self.store(&f.store);
        let refresh = self.refresh(&f.refresh);
        let metrics = self.metrics(&f.metrics);
        let proxy = self.proxy(&f.proxy);
        let clients = self.clients(&f);
        let components = self.components(&f);
        let (accounts, accounts_seen) = self.accounts(&f, components.present);

        self.check_appids(&accounts_seen, &components.seen);
        self.check_clients(&clients.seen, &accounts_seen, &components.seen);
        if let Some(listen) = listen
            && clients.entries == 0
            && clients.valid.is_some()
        {
            self.check_open_listen(listen, listen_line, clients.line);
        }

        Some(Config {
            source: self.report_file(),
            listen: listen?,
            upstream: upstream?,
            store: store?,
            refresh: refresh?,
            metrics: metrics?,
            proxy: proxy?,
            clients: clients.valid?,
            components: components.valid?,
            accounts: accounts?,
            digest: self.digest,
        })
    }

    fn report_file(&self) -> PathBuf {
        self.report.file().to_path_buf()
    }

    /// `upstream:`; defaults for what is absent.
    fn upstream(&mut self, slot: &Slot<RawUpstream>) -> Option<UpstreamConfig> {
        let defaults = UpstreamConfig::default();
        if matches!(slot, Slot::Absent | Slot::Null(_)) {
            return Some(defaults);
        }
        let f = self.fields(slot, "upstream")?;
        let base_urls = match &f.base_urls {
            Slot::Absent => Some(defaults.base_urls),
            s => self.base_urls(s, "upstream.base_urls", "https://api.weixin.qq.com"),
        };
        let wecom_base_urls = match &f.wecom_base_urls {
            Slot::Absent => Some(defaults.wecom_base_urls),
            s => self.base_urls(s, "upstream.wecom_base_urls", "https://qyapi.weixin.qq.com"),
        };
        let timeout = self.setting(&f.timeout, "upstream.timeout", values::duration);
        let timeout = self.rule(
            timeout,
            |d| within(*d, MAX_UPSTREAM_TIMEOUT),
            |d| out_of_bounds("upstream.timeout", *d, MAX_UPSTREAM_TIMEOUT, "5s"),
        );
        let max = self.setting(
            &f.max_concurrency,
            "upstream.max_concurrency",
            values::count,
        );
        let max = self.rule(
            max,
            |n| *n > 0,
            |_| "upstream.max_concurrency must be at least 1; e.g. 32".to_string(),
        );
        Some(UpstreamConfig {
            base_urls: base_urls?,
            wecom_base_urls: wecom_base_urls?,
            timeout: timeout.or(defaults.timeout)?,
            max_concurrency: max.or(defaults.max_concurrency)?,
        })
    }

    fn base_urls(
        &mut self,
        slot: &Slot<Vec<Slot<String>>>,
        key: &str,
        example: &str,
    ) -> Option<Vec<Url>> {
        let empty = format!("{key} is empty; list at least one URL, e.g. {example}");
        match slot {
            Slot::Absent => None,
            Slot::Null(at) => {
                self.report.error(self.line(*at), empty);
                None
            }
            Slot::Given(at, items) if items.is_empty() => {
                self.report.error(self.line(*at), empty);
                None
            }
            Slot::Given(_, items) => {
                let urls: Vec<Option<Url>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.parsed(item, &format!("{key}[{i}]"), values::base_url))
                    .collect();
                urls.into_iter().collect()
            }
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!("{key} must be a list of URLs, not {shape}; e.g. [{example}]"),
                );
                None
            }
        }
    }

    /// `path` resolved against the configuration file's directory.
    fn relative_to_config(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() || self.base_dir == Path::new(".") {
            path
        } else {
            self.base_dir.join(path)
        }
    }

    /// `store:`; defaults for what is absent. The Redis URL is never quoted.
    fn store(&mut self, slot: &Slot<RawStore>) -> Option<StoreConfig> {
        let defaults = StoreConfig::default();
        if matches!(slot, Slot::Absent | Slot::Null(_)) {
            return Some(StoreConfig {
                path: self.relative_to_config(defaults.path.clone()),
                ..defaults
            });
        }
        let f = self.fields(slot, "store")?;
        let path = self.setting(&f.path, "store.path", |t| non_empty(t).map(PathBuf::from));
        let prefix = self.setting(&f.redis_prefix, "store.redis_prefix", |t| {
            non_empty(t).and_then(|p| {
                if p.chars().any(char::is_whitespace) {
                    Err(format!("{} must not contain spaces", quote(&p)))
                } else {
                    Ok(p)
                }
            })
        });
        let redis = match &f.redis {
            Slot::Absent => Some(None),
            s => self.redis_url(s).map(Some),
        };
        Some(StoreConfig {
            // Relative to the configuration file, like `secret_file`, so the
            // store does not depend on the directory wxtoken is started from.
            path: self.relative_to_config(path.or(defaults.path)?),
            redis: redis?,
            redis_prefix: prefix.or(defaults.redis_prefix)?,
        })
    }

    fn redis_url(&mut self, slot: &Slot<String>) -> Option<SecretString> {
        let Text::Value(text, _) = self.expand_text(slot, "store.redis", false, true) else {
            return None;
        };
        let ok = Url::parse(text.trim())
            .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"));
        if ok {
            Some(SecretString::from(text.trim().to_string()))
        } else {
            self.report.error(
                self.line_of(slot),
                "store.redis is not a Redis URL; write e.g. redis://127.0.0.1:6379/0 or rediss://:PASSWORD@HOST:6380/0 (the value is not shown: it may hold a password)",
            );
            None
        }
    }

    /// `refresh:`; defaults for what is absent.
    fn refresh(&mut self, slot: &Slot<RawRefresh>) -> Option<RefreshConfig> {
        let defaults = RefreshConfig::default();
        if matches!(slot, Slot::Absent | Slot::Null(_)) {
            return Some(defaults);
        }
        let f = self.fields(slot, "refresh")?;
        let legacy_at = self.setting(&f.legacy_at, "refresh.legacy_at", values::number);
        let legacy_at = self.rule(
            legacy_at,
            |x| *x > 0.0 && *x < 1.0,
            |x| format!("refresh.legacy_at must be between 0 and 1 (exclusive), not {x}; e.g. 0.8"),
        );
        let jitter = self.setting(&f.jitter, "refresh.jitter", values::number);
        let jitter = self.rule(
            jitter,
            |x| *x >= 0.0 && *x < 0.5,
            |x| format!("refresh.jitter must be at least 0 and less than 0.5, not {x}; e.g. 0.05"),
        );
        let window = self.setting(&f.stable_window, "refresh.stable_window", values::duration);
        let window = self.rule(window, |d| !d.is_zero() && *d < TOKEN_LIFETIME, |d| {
            format!(
                "refresh.stable_window must be more than 0s and less than 2h (a token's lifetime), not {}; e.g. 5m",
                show_duration(*d)
            )
        });
        let initial = self.setting(
            &f.backoff_initial,
            "refresh.backoff_initial",
            values::duration,
        );
        let initial = self.rule(
            initial,
            |d| within(*d, MAX_BACKOFF),
            |d| out_of_bounds("refresh.backoff_initial", *d, MAX_BACKOFF, "1s"),
        );
        let max = self.setting(&f.backoff_max, "refresh.backoff_max", values::duration);
        let max = self.rule(
            max,
            |d| within(*d, MAX_BACKOFF),
            |d| out_of_bounds("refresh.backoff_max", *d, MAX_BACKOFF, "5m"),
        );

        let at_line = legacy_at.line().or(jitter.line());
        let (legacy_at, jitter) = (legacy_at.or(defaults.legacy_at), jitter.or(defaults.jitter));
        if let (Some(at), Some(j)) = (legacy_at, jitter)
            && at + j >= 1.0
        {
            self.report.warn(
                at_line,
                format!(
                    "refresh.legacy_at ({at}) plus refresh.jitter ({j}) reaches 1: a legacy refresh may be planned after its token expired"
                ),
            );
        }

        let backoff_line = initial.line().or(max.line());
        let (initial, max) = (
            initial.or(defaults.backoff_initial),
            max.or(defaults.backoff_max),
        );
        let mut backoff_ok = true;
        if let (Some(i), Some(m)) = (initial, max)
            && i > m
        {
            self.report.error(
                backoff_line,
                format!(
                    "refresh.backoff_initial ({}) is longer than refresh.backoff_max ({}); the first retry cannot wait longer than the longest",
                    show_duration(i),
                    show_duration(m)
                ),
            );
            backoff_ok = false;
        }
        if !backoff_ok {
            return None;
        }
        Some(RefreshConfig {
            legacy_at: legacy_at?,
            jitter: jitter?,
            stable_window: window.or(defaults.stable_window)?,
            backoff_initial: initial?,
            backoff_max: max?,
        })
    }

    /// `metrics:`; absent keys keep the defaults.
    fn metrics(&mut self, slot: &Slot<RawMetrics>) -> Option<MetricsConfig> {
        if matches!(slot, Slot::Absent | Slot::Null(_)) {
            return Some(MetricsConfig::default());
        }
        let f = self.fields(slot, "metrics")?;
        let per_account = self.setting(&f.per_account, "metrics.per_account", parse_per_account);
        Some(MetricsConfig {
            per_account: per_account.or(None)?,
        })
    }

    /// `proxy:`; absent keys keep the defaults.
    fn proxy(&mut self, slot: &Slot<RawProxy>) -> Option<ProxyConfig> {
        let defaults = ProxyConfig::default();
        if matches!(slot, Slot::Absent | Slot::Null(_)) {
            return Some(defaults);
        }
        let f = self.fields(slot, "proxy")?;
        let timeout = self.setting(&f.timeout, "proxy.timeout", values::duration);
        let timeout = self.rule(
            timeout,
            |d| within(*d, MAX_PROXY_TIMEOUT),
            |d| out_of_bounds("proxy.timeout", *d, MAX_PROXY_TIMEOUT, "60s"),
        );
        let max_body = self.setting(&f.max_body, "proxy.max_body", values::size);
        let max_body = self.rule(
            max_body,
            |n| *n > 0,
            |_| "proxy.max_body must be more than 0 bytes; e.g. 20MiB".to_string(),
        );
        let in_flight = self.setting(
            &f.max_in_flight_per_client,
            "proxy.max_in_flight_per_client",
            values::count,
        );
        let in_flight = self.rule(
            in_flight,
            |n| *n > 0,
            |_| "proxy.max_in_flight_per_client must be at least 1; e.g. 64".to_string(),
        );
        Some(ProxyConfig {
            timeout: timeout.or(defaults.timeout)?,
            max_body: max_body.or(defaults.max_body)?,
            max_in_flight_per_client: in_flight.or(defaults.max_in_flight_per_client)?,
        })
    }

    /// `clients:`; an absent or empty list means no clients.
    fn clients(&mut self, top: &Fields<'_, RawConfig>) -> ClientsRead {
        let line = self.key_line(&top.clients);
        let mut read = ClientsRead {
            valid: Some(Vec::new()),
            seen: Vec::new(),
            entries: 0,
            line,
        };
        let items = match &top.clients {
            Slot::Absent | Slot::Null(_) => return read,
            Slot::Given(_, items) => items,
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!(
                        "clients must be a list of clients (- name: ..., key: ..., appids: [...]), not {shape}"
                    ),
                );
                read.valid = None;
                return read;
            }
        };
        read.entries = items.len();
        let mut valid = Some(Vec::with_capacity(items.len()));
        for (i, item) in items.iter().enumerate() {
            let (client, seen) = self.client(i, item);
            match (client, valid.as_mut()) {
                (Some(c), Some(list)) => list.push(c),
                _ => valid = None,
            }
            read.seen.push(seen);
        }
        read.valid = valid;
        read
    }

    fn client(&mut self, i: usize, slot: &Slot<RawClient>) -> (Option<ClientConfig>, ClientSeen) {
        let path = format!("clients[{i}]");
        let mut seen = ClientSeen {
            path: path.clone(),
            ..ClientSeen::default()
        };
        let Some(f) = self.fields(slot, &path) else {
            return (None, seen);
        };
        seen.name = match &f.name {
            Slot::Absent => {
                self.report.error(
                    f.line,
                    format!("{path} has no name; add e.g. `name: order-service`"),
                );
                None
            }
            s => self.setting(s, &format!("{path}.name"), non_empty).value(),
        };
        let label = match &seen.name {
            Some((name, _)) => format!("{path} ({name})"),
            None => path.clone(),
        };
        seen.key = match &f.key {
            Slot::Absent => {
                self.report.error(
                    f.line,
                    format!(
                        "{label} has no key; add `key: sha256:...` (make it with `echo -n THE-KEY | wxtoken hash-key`)"
                    ),
                );
                None
            }
            s => {
                let line = self.line_of(s).unwrap_or(f.line);
                self.client_key(s, &path).map(|k| (k, line))
            }
        };
        let scope = match &f.appids {
            Slot::Absent => {
                self.report.error(
                    f.line,
                    format!(
                        "{label} has no appids; list the appids it may read, e.g. [{EXAMPLE_APPID}], or [\"*\"] for all"
                    ),
                );
                None
            }
            s => self.scope(s, &format!("{path}.appids")),
        };
        let admin = self
            .setting(&f.admin, &format!("{path}.admin"), values::boolean)
            .or(false);
        if let (Some((scope, _)), Some(false)) = (&scope, admin)
            && *scope == AppScope::Only(Vec::new())
        {
            self.report.warn(
                self.key_line(&f.appids),
                format!(
                    "{label} is not admin and its appids list is empty, so it may read nothing"
                ),
            );
        }
        let scope = scope.map(|(scope, ids)| {
            seen.scope = ids;
            scope
        });
        let client = match (&seen.name, &seen.key, scope, admin) {
            (Some((name, _)), Some((key, _)), Some(appids), Some(admin)) => Some(ClientConfig {
                name: name.clone(),
                key: key.clone(),
                appids,
                admin,
            }),
            _ => None,
        };
        (client, seen)
    }

    /// A client key: `sha256:<hex>`. Never quoted, in case a plain key was pasted.
    fn client_key(&mut self, slot: &Slot<String>, path: &str) -> Option<KeyHash> {
        let path = format!("{path}.key");
        let Text::Value(text, _) = self.expand_text(slot, &path, false, true) else {
            return None;
        };
        match KeyHash::parse(text.trim()) {
            Ok(k) => Some(k),
            Err(_) => {
                let plain = if text.trim().starts_with("sha256:") {
                    ""
                } else {
                    "; if this is the key itself, keep it out of the file and write its hash"
                };
                self.report.error(
                    self.line_of(slot),
                    format!(
                        "{path} must be \"sha256:\" followed by 64 hex digits (make it with `echo -n THE-KEY | wxtoken hash-key`){plain}; the value is not shown"
                    ),
                );
                None
            }
        }
    }

    /// A client's `appids`: `["*"]` or a list of WeChat appids.
    fn scope(
        &mut self,
        slot: &Slot<Vec<Slot<String>>>,
        path: &str,
    ) -> Option<(AppScope, Vec<(AppId, usize)>)> {
        let items = match slot {
            Slot::Given(_, items) => items,
            Slot::Absent => return None,
            Slot::Null(at) => {
                self.report
                    .error(self.line(*at), format!("{path} has no value"));
                return None;
            }
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!(
                        "{path} must be a list, not {shape}; write [\"*\"] for every account or e.g. [{EXAMPLE_APPID}]"
                    ),
                );
                return None;
            }
        };
        let mut ids = Vec::new();
        let mut all = false;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = self.text(item, &item_path) else {
                ok = false;
                continue;
            };
            let line = self.line_of(item);
            if text.trim() == "*" {
                if items.len() > 1 {
                    self.report.error(
                        line,
                        format!("{item_path}: \"*\" must be the only entry of {path}; remove the other appids or the \"*\""),
                    );
                    ok = false;
                }
                all = true;
                continue;
            }
            match account_id(&text) {
                Ok(id) => {
                    if !ids.iter().any(|(known, _)| *known == id) {
                        ids.push((id, line.unwrap_or_default()));
                    }
                }
                Err(message) => {
                    self.report.error(line, format!("{item_path}: {message}"));
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        if all {
            Some((AppScope::All, Vec::new()))
        } else {
            let only = ids.iter().map(|(id, _)| id.clone()).collect();
            Some((AppScope::Only(only), ids))
        }
    }

    /// `components:`; an absent or empty list means none.
    fn components(&mut self, top: &Fields<'_, RawConfig>) -> ComponentsRead {
        let mut read = ComponentsRead {
            valid: Some(Vec::new()),
            seen: Vec::new(),
            present: false,
        };
        let items = match &top.components {
            Slot::Absent | Slot::Null(_) => return read,
            Slot::Given(_, items) => items,
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!(
                        "components must be a list of third-party platforms (- appid: ..., secret: ..., token: ..., encoding_aes_key: ...), not {shape}"
                    ),
                );
                read.valid = None;
                read.present = true;
                return read;
            }
        };
        read.present = !items.is_empty();
        let mut valid = Some(Vec::with_capacity(items.len()));
        for (i, item) in items.iter().enumerate() {
            let (component, seen) = self.component(i, item);
            match (component, valid.as_mut()) {
                (Some(c), Some(list)) => list.push(c),
                _ => valid = None,
            }
            read.seen.push(seen);
        }
        read.valid = valid;
        read
    }

    fn component(
        &mut self,
        i: usize,
        slot: &Slot<RawComponent>,
    ) -> (Option<ComponentConfig>, AccountSeen) {
        let path = format!("components[{i}]");
        let mut seen = AccountSeen {
            path: path.clone(),
            appid: None,
            enabled: true,
        };
        let Some(f) = self.fields(slot, &path) else {
            return (None, seen);
        };
        seen.appid = match &f.appid {
            Slot::Absent => {
                self.report.error(
                    f.line,
                    format!(
                        "{path} has no appid; add its component_appid, e.g. `appid: {EXAMPLE_APPID}`"
                    ),
                );
                None
            }
            s => self
                .setting(s, &format!("{path}.appid"), wechat_appid)
                .value(),
        };
        let label = match &seen.appid {
            Some((id, _)) => format!("{path} ({id})"),
            None => path.clone(),
        };
        let name = self.setting(&f.name, &format!("{path}.name"), non_empty);
        let enabled = self
            .setting(&f.enabled, &format!("{path}.enabled"), values::boolean)
            .or(true);
        seen.enabled = enabled.unwrap_or(true);
        let secret = self
            .secret(
                Secret {
                    inline: &f.secret,
                    file: &f.secret_file,
                    key: "secret",
                    example_var: "WX_COMPONENT_SECRET",
                    entry_line: f.line,
                },
                &path,
                &label,
            )
            .map(|got| got.or_placeholder(placeholder_secret));
        let token = self
            .secret(
                Secret {
                    inline: &f.token,
                    file: &f.token_file,
                    key: "token",
                    example_var: "WX_COMPONENT_TOKEN",
                    entry_line: f.line,
                },
                &path,
                &label,
            )
            .and_then(|got| self.message_token(got));
        let encoding_aes_key = self
            .secret(
                Secret {
                    inline: &f.encoding_aes_key,
                    file: &f.encoding_aes_key_file,
                    key: "encoding_aes_key",
                    example_var: "WX_COMPONENT_AES",
                    entry_line: f.line,
                },
                &path,
                &label,
            )
            .and_then(|got| self.encoding_aes_key(got));

        let component = match (&seen.appid, secret, token, encoding_aes_key, enabled) {
            (
                Some((appid, _)),
                Some(secret),
                Some(token),
                Some(encoding_aes_key),
                Some(enabled),
            ) => name.or(appid.to_string()).map(|name| ComponentConfig {
                appid: appid.clone(),
                name,
                secret,
                token,
                encoding_aes_key,
                enabled,
            }),
            _ => None,
        };
        (component, seen)
    }

    /// A component's message-check Token: 3 to 32 letters or digits, as
    /// WeChat requires of it. Never quoted.
    fn message_token(&mut self, got: SecretGot) -> Option<SecretString> {
        let SecretGot::Given(token, line, named) = got else {
            return Some(placeholder_secret());
        };
        let text = token.expose_secret();
        let length = text.chars().count();
        let why = if !TOKEN_LEN.contains(&length) {
            format!("it has {length} characters")
        } else if !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            "it has characters other than letters and digits".to_string()
        } else {
            return Some(token);
        };
        self.report.error(
            line,
            format!(
                "{named} must be 3 to 32 letters or digits, the Token set in the platform's development settings, but {why}; the value is not shown"
            ),
        );
        None
    }

    /// A component's EncodingAESKey: 43 characters of Base64 that decode to
    /// 32 bytes (`openplatform::crypto` decides). Never quoted.
    fn encoding_aes_key(&mut self, got: SecretGot) -> Option<SecretString> {
        let SecretGot::Given(key, line, named) = got else {
            return Some(placeholder_aes_key());
        };
        if check_encoding_aes_key(key.expose_secret()).is_ok() {
            return Some(key);
        }
        let length = key.expose_secret().chars().count();
        let why = if length == ENCODING_AES_KEY_LEN {
            format!("its {length} characters are not all Base64 (letters, digits, + and /)")
        } else {
            format!("it has {length} characters")
        };
        self.report.error(
            line,
            format!(
                "{named} must be the {ENCODING_AES_KEY_LEN}-character EncodingAESKey set on the platform (Base64 that decodes to 32 bytes), but {why}; the value is not shown"
            ),
        );
        None
    }

    /// `accounts:`; at least one is required unless `components` is true
    /// (the file configures components), when it may be empty or absent.
    fn accounts(
        &mut self,
        top: &Fields<'_, RawConfig>,
        components: bool,
    ) -> (Option<Vec<AccountConfig>>, Vec<AccountSeen>) {
        let items = match &top.accounts {
            Slot::Absent | Slot::Null(_) if components => return (Some(Vec::new()), Vec::new()),
            Slot::Given(_, items) if items.is_empty() && components => {
                return (Some(Vec::new()), Vec::new());
            }
            Slot::Absent => {
                self.report.error(
                    None,
                    format!(
                        "no accounts: add an `accounts:` list with at least one account (appid: {EXAMPLE_APPID}, secret: ${{WX_SECRET_...}}), or a `components:` list of Open Platform third-party platforms"
                    ),
                );
                return (None, Vec::new());
            }
            Slot::Given(_, items) if !items.is_empty() => items,
            Slot::Null(_) | Slot::Given(..) => {
                self.report.error(
                    self.key_line(&top.accounts),
                    "accounts is empty; add at least one account (appid and secret), or a `components:` list of Open Platform third-party platforms",
                );
                return (None, Vec::new());
            }
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!(
                        "accounts must be a list of accounts (- appid: ..., secret: ...), not {shape}"
                    ),
                );
                return (None, Vec::new());
            }
        };
        // Sized once: growing a list of 100,000 accounts copies it many times.
        let mut valid = Some(Vec::with_capacity(items.len()));
        let mut seen = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let (account, s) = self.account(i, item);
            match (account, valid.as_mut()) {
                (Some(a), Some(list)) => list.push(a),
                _ => valid = None,
            }
            seen.push(s);
        }
        (valid, seen)
    }

    fn account(
        &mut self,
        i: usize,
        slot: &Slot<RawAccount>,
    ) -> (Option<AccountConfig>, AccountSeen) {
        let path = format!("accounts[{i}]");
        let mut seen = AccountSeen {
            path: path.clone(),
            appid: None,
            enabled: true,
        };
        let Some(f) = self.fields(slot, &path) else {
            return (None, seen);
        };
        let kind = match &f.kind {
            Slot::Absent => Some("wechat".to_string()),
            s => self.parsed(s, &format!("{path}.kind"), |t| match t.trim() {
                k @ ("wechat" | "wecom") => Ok(k.to_string()),
                other => Err(format!(
                    "unknown kind {}; expected wechat (the default) or wecom",
                    quote(other)
                )),
            }),
        };
        let wecom = kind.as_deref() == Some("wecom");
        let kind = if wecom {
            let wechat_only = [
                ("appid", self.key_line(&f.appid)),
                ("mode", self.key_line(&f.mode)),
                ("fallback_to_stable", self.key_line(&f.fallback_to_stable)),
                ("tickets", self.key_line(&f.tickets)),
            ];
            for (key, line) in wechat_only {
                if let Some(line) = line {
                    self.report.error(
                        line,
                        format!("{path} is a WeCom app (kind: wecom): it has corpid and agentid, not {key}"),
                    );
                }
            }
            let corpid = match &f.corpid {
                Slot::Absent => {
                    self.report.error(
                        f.line,
                        format!("{path} (kind: wecom) has no corpid; add e.g. `corpid: ww1234567890abcdef`"),
                    );
                    None
                }
                s => self.parsed(s, &format!("{path}.corpid"), corpid),
            };
            let agentid = match &f.agentid {
                Slot::Absent => {
                    self.report.error(
                        f.line,
                        format!("{path} (kind: wecom) has no agentid; add e.g. `agentid: 1000002`"),
                    );
                    None
                }
                s => self.parsed(s, &format!("{path}.agentid"), agentid),
            };
            let corpid_line = self.key_line(&f.corpid).unwrap_or(f.line);
            seen.appid = match (&corpid, agentid) {
                (Some(c), Some(a)) => AppId::parse(&format!("{c}:{a}"))
                    .ok()
                    .map(|id| (id, corpid_line)),
                _ => None,
            };
            match (corpid, agentid) {
                (Some(corpid), Some(agentid)) => Some(AccountKind::Wecom { corpid, agentid }),
                _ => None,
            }
        } else {
            let wecom_only = [
                ("corpid", self.key_line(&f.corpid)),
                ("agentid", self.key_line(&f.agentid)),
            ];
            for (key, line) in wecom_only {
                if let Some(line) = line {
                    self.report.error(
                        line,
                        format!("{path} has {key}, which only WeCom apps have; add `kind: wecom` or remove it"),
                    );
                }
            }
            seen.appid = match &f.appid {
                Slot::Absent => {
                    self.report.error(
                        f.line,
                        format!("{path} has no appid; add e.g. `appid: {EXAMPLE_APPID}`"),
                    );
                    None
                }
                s => self
                    .setting(s, &format!("{path}.appid"), wechat_appid)
                    .value(),
            };
            kind.map(|_| AccountKind::Wechat)
        };
        let label = match &seen.appid {
            Some((id, _)) => format!("{path} ({id})"),
            None => path.clone(),
        };
        let name = self.setting(&f.name, &format!("{path}.name"), non_empty);
        let mode = self
            .setting(&f.mode, &format!("{path}.mode"), parse_mode)
            .or(Mode::Stable);
        let fallback_to_stable = self
            .setting(
                &f.fallback_to_stable,
                &format!("{path}.fallback_to_stable"),
                values::boolean,
            )
            .or(false);
        if fallback_to_stable == Some(true)
            && mode == Some(Mode::Stable)
            && let Some(line) = self.key_line(&f.fallback_to_stable)
        {
            self.report.error(
                line,
                format!("{path}.fallback_to_stable applies to `mode: legacy` accounts; this one already uses stable_token (remove it, or set `mode: legacy`)"),
            );
        }
        let enabled = self
            .setting(&f.enabled, &format!("{path}.enabled"), values::boolean)
            .or(true);
        seen.enabled = enabled.unwrap_or(true);
        let secret = self
            .secret(
                Secret {
                    inline: &f.secret,
                    file: &f.secret_file,
                    key: "secret",
                    example_var: "WX_SECRET_...",
                    entry_line: f.line,
                },
                &path,
                &label,
            )
            .map(|got| got.or_placeholder(placeholder_secret));
        let tickets = match &f.tickets {
            Slot::Absent => Some(Vec::new()),
            s => self.tickets(s, &format!("{path}.tickets")),
        };

        let account = match (
            &seen.appid,
            secret,
            mode,
            enabled,
            kind,
            tickets,
            fallback_to_stable,
        ) {
            (
                Some((appid, _)),
                Some(secret),
                Some(mode),
                Some(enabled),
                Some(kind),
                Some(tickets),
                Some(fallback_to_stable),
            ) => name.or(appid.to_string()).map(|name| AccountConfig {
                appid: appid.clone(),
                name,
                secret,
                mode,
                enabled,
                kind,
                tickets,
                fallback_to_stable,
            }),
            _ => None,
        };
        (account, seen)
    }

    /// `tickets: [jsapi, wx_card]`: each kind at most once.
    fn tickets(&mut self, slot: &Slot<Vec<Slot<String>>>, path: &str) -> Option<Vec<TicketKind>> {
        let Slot::Given(_, items) = slot else {
            self.report.error(
                self.line_of(slot),
                format!(
                    "{path} must be a list like [jsapi, wx_card], not {}",
                    found(slot)
                ),
            );
            return None;
        };
        let mut out: Vec<TicketKind> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.parsed(item, &format!("{path}[{i}]"), |t| match t.trim() {
                "jsapi" => Ok(TicketKind::Jsapi),
                "wx_card" => Ok(TicketKind::WxCard),
                other => Err(format!(
                    "unknown ticket {}; expected jsapi or wx_card",
                    quote(other)
                )),
            }) {
                Some(kind) if out.contains(&kind) => {
                    self.report.error(
                        self.line_of(item),
                        format!("{path} lists {} twice", kind.as_str()),
                    );
                    ok = false;
                }
                Some(kind) => out.push(kind),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A secret given as `key` (a literal or `${VAR}`) or as `key_file` (a
    /// file read with `read_regular`): exactly one of them.
    fn secret(&mut self, s: Secret<'_>, path: &str, label: &str) -> Option<SecretGot> {
        let key = s.key;
        match (s.inline, s.file) {
            (Slot::Absent, Slot::Absent) => {
                self.report.error(
                    s.entry_line,
                    format!(
                        "{label} has no {key}; add `{key}: ${{{}}}` or `{key}_file: PATH`",
                        s.example_var
                    ),
                );
                None
            }
            (inline, Slot::Absent) => self.inline_secret(inline, &format!("{path}.{key}")),
            (Slot::Absent, file) => self.file_secret(
                file,
                &format!("{path}.{key}_file"),
                format!("{path}.{key} (read from {key}_file)"),
            ),
            (_, file) => {
                self.report.error(
                    self.key_line(file),
                    format!("{label} has both {key} and {key}_file; keep one"),
                );
                None
            }
        }
    }

    fn inline_secret(&mut self, slot: &Slot<String>, path: &str) -> Option<SecretGot> {
        let require = self.opts.require_secrets;
        match self.expand_text(slot, path, false, require) {
            Text::Bad => None,
            Text::MissingVars => Some(SecretGot::Placeholder),
            Text::Value(value, used) if value.trim().is_empty() => {
                let why = match used.as_slice() {
                    [] => String::new(),
                    [var] => format!(" (environment variable {var} is set but empty)"),
                    vars => format!(
                        " (environment variables {} are set but empty)",
                        vars.join(", ")
                    ),
                };
                self.report
                    .error(self.line_of(slot), format!("{path} is empty{why}"));
                None
            }
            Text::Value(value, _) => Some(SecretGot::Given(
                SecretString::from(value),
                self.line_of(slot),
                path.to_string(),
            )),
        }
    }

    /// The secret in the file `slot` names; `named` is how later messages
    /// name the value read.
    fn file_secret(&mut self, slot: &Slot<String>, path: &str, named: String) -> Option<SecretGot> {
        let require = self.opts.require_secrets;
        let line = self.line_of(slot);
        let name = match self.expand_text(slot, path, true, require) {
            Text::Bad => return None,
            Text::MissingVars => return Some(SecretGot::Placeholder),
            Text::Value(name, _) => name,
        };
        if name.trim().is_empty() {
            self.report.error(
                line,
                format!("{path} is empty; give the path of a file that holds the secret"),
            );
            return None;
        }
        let file = self.base_dir.join(&name);
        let shown = quote(&file.display().to_string());
        match read_secret_file(&file) {
            Ok(read) if read.secret.trim().is_empty() => {
                self.report.error(line, format!("{path}: {shown} is empty"));
                None
            }
            Ok(read) => {
                if let Some(mode) = read.mode
                    && mode & 0o077 != 0
                {
                    self.report.warn(
                        line,
                        format!(
                            "{path}: {shown} is open to other users (mode {mode:04o}); run `chmod 600 {}`",
                            file.display()
                        ),
                    );
                }
                Some(SecretGot::Given(
                    SecretString::from(read.secret),
                    line,
                    named,
                ))
            }
            Err(_) if !require => Some(SecretGot::Placeholder),
            Err(SecretFileError::NotRegular(what)) => {
                self.report.error(
                    line,
                    format!(
                        "{path}: {shown} is not a regular file ({what}); point it at a file that holds only the secret"
                    ),
                );
                None
            }
            Err(SecretFileError::Unreadable(reason)) => {
                self.report
                    .error(line, format!("{path}: cannot read {shown}: {reason}"));
                None
            }
        }
    }

    /// Turns a value that breaks a rule into `Got::Bad`, reporting `message`.
    fn rule<T>(
        &mut self,
        got: Got<T>,
        ok: impl FnOnce(&T) -> bool,
        message: impl FnOnce(&T) -> String,
    ) -> Got<T> {
        match got {
            Got::Value(v, line) if !ok(&v) => {
                self.report.error(line, message(&v));
                Got::Bad
            }
            other => other,
        }
    }

    /// Every appid is configured once, as an account or as a component;
    /// warns when everything is disabled.
    fn check_appids(&mut self, accounts: &[AccountSeen], components: &[AccountSeen]) {
        let mut account_lines: HashMap<&AppId, (&str, usize)> =
            HashMap::with_capacity(accounts.len());
        for account in accounts {
            let Some((id, line)) = &account.appid else {
                continue;
            };
            match account_lines.get(id) {
                Some((_, first)) => self.report.error(
                    *line,
                    format!(
                        "{}.appid: duplicate appid {id} (first at line {first}); each account must appear once",
                        account.path
                    ),
                ),
                None => {
                    account_lines.insert(id, (&account.path, *line));
                }
            }
        }
        let mut component_lines: HashMap<&AppId, usize> = HashMap::with_capacity(components.len());
        for component in components {
            let Some((id, line)) = &component.appid else {
                continue;
            };
            if let Some(first) = component_lines.get(id) {
                self.report.error(
                    *line,
                    format!(
                        "{}.appid: duplicate appid {id} (first at line {first}); each component must appear once",
                        component.path
                    ),
                );
                continue;
            }
            component_lines.insert(id, *line);
            if let Some((account, account_line)) = account_lines.get(id) {
                self.report.error(
                    *line,
                    format!(
                        "{}.appid: {id} is also the appid of {account} (line {account_line}); an appid is configured once, as an account (with its AppSecret) or as a component, not both",
                        component.path
                    ),
                );
            }
        }
        let all = || accounts.iter().chain(components);
        if all().next().is_some() && all().all(|a| !a.enabled) {
            let what = if components.is_empty() {
                "every account is"
            } else if accounts.is_empty() {
                "every component is"
            } else {
                "every account and component is"
            };
            self.report.warn(
                None,
                format!("{what} disabled (enabled: false); wxtoken will serve no token"),
            );
        }
    }

    /// Client names and keys are unique; scopes name configured accounts.
    fn check_clients(
        &mut self,
        clients: &[ClientSeen],
        accounts: &[AccountSeen],
        components: &[AccountSeen],
    ) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut keys: HashMap<[u8; 32], (&str, usize)> = HashMap::new();
        for client in clients {
            if let Some((name, line)) = &client.name {
                match names.get(name.as_str()) {
                    Some(first) => self.report.error(
                        *line,
                        format!(
                            "{}.name: duplicate client name {} (first at line {first}); each client needs its own name",
                            client.path,
                            quote(name)
                        ),
                    ),
                    None => {
                        names.insert(name, *line);
                    }
                }
            }
            if let Some((key, line)) = &client.key {
                match keys.get(&key.0) {
                    Some((other, first)) => self.report.error(
                        *line,
                        format!(
                            "{}.key is the same as the key of {other} (line {first}); each client needs its own key",
                            client.path
                        ),
                    ),
                    None => {
                        keys.insert(key.0, (&client.path, *line));
                    }
                }
            }
        }
        // With components, a scope may name an authorizer, which joins at
        // run time and is in no file: an unknown appid is no mistake then.
        if clients.iter().all(|c| c.scope.is_empty()) || !components.is_empty() {
            return;
        }
        let configured: HashSet<&AppId> = accounts
            .iter()
            .filter_map(|a| a.appid.as_ref().map(|(id, _)| id))
            .collect();
        // When some account has an invalid appid, a scope may name it: no warning then.
        if configured.len() < accounts.len() {
            return;
        }
        for client in clients {
            for (id, line) in &client.scope {
                if !configured.contains(id) {
                    self.report.warn(
                        *line,
                        format!(
                            "{}.appids: {id} is not a configured account, so this entry has no effect",
                            client.path
                        ),
                    );
                }
            }
        }
    }

    /// With no clients, the API is open: an error unless `listen` is loopback.
    fn check_open_listen(
        &mut self,
        listen: SocketAddr,
        listen_line: Option<usize>,
        clients_line: Option<usize>,
    ) {
        if listen.ip().is_loopback() {
            self.report.warn(
                clients_line.or(listen_line),
                "no clients are configured: any process on this host can read every token without a key; add `clients:` to require keys",
            );
        } else {
            self.report.error(
                listen_line,
                format!(
                    "listen {listen} is reachable from other hosts but no clients are configured, so anyone could read every token; add `clients:` with keys, or listen on 127.0.0.1"
                ),
            );
        }
    }
}

/// A non-empty string (surrounding spaces removed).
fn non_empty(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        Err("the value is empty".to_string())
    } else {
        Ok(t.to_string())
    }
}

/// A WeChat appid: `wx` and 16 letters or digits.
/// An account id in a client scope: a WeChat appid or a WeCom `corpid:agentid`.
fn account_id(text: &str) -> Result<AppId, String> {
    let t = text.trim();
    if let Some((corp, agent)) = t.split_once(':') {
        return match (corpid(corp), agentid(agent)) {
            (Ok(_), Ok(_)) => AppId::parse(t).map_err(|e| e.to_string()),
            _ => Err(format!(
                "{} is not a WeCom app id (corpid:agentid, e.g. ww1234567890abcdef:1000002)",
                quote(t)
            )),
        };
    }
    wechat_appid(t)
}

fn wechat_appid(text: &str) -> Result<AppId, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the appid is empty".to_string());
    }
    match AppId::parse(t) {
        Ok(id) if id.is_wechat_appid() => Ok(id),
        _ => Err(format!(
            "{} is not a WeChat appid (\"wx\" followed by 16 letters or digits, e.g. {EXAMPLE_APPID})",
            quote(t)
        )),
    }
}

/// A WeCom corpid: letters and digits (WeCom's look like `ww` + 16 hex digits).
fn corpid(text: &str) -> Result<String, String> {
    let t = text.trim();
    if !t.is_empty() && t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{} is not a WeCom corpid (letters and digits, e.g. ww1234567890abcdef)",
            quote(t)
        ))
    }
}

/// A WeCom agentid: a positive integer.
fn agentid(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{} is not a WeCom agentid (a positive number, e.g. 1000002)",
            quote(text.trim())
        )),
    }
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text.trim() {
        "stable" => Ok(Mode::Stable),
        "legacy" => Ok(Mode::Legacy),
        other => Err(format!(
            "unknown mode {}; expected stable (POST /cgi-bin/stable_token) or legacy (GET /cgi-bin/token)",
            quote(other)
        )),
    }
}

fn parse_per_account(text: &str) -> Result<Option<PerAccount>, String> {
    PerAccount::parse(text.trim()).map(Some).ok_or_else(|| {
        format!(
            "unknown per-account mode {}; expected full (every series), essential (what the dashboard and alerts use) or none",
            quote(text.trim())
        )
    })
}

/// An IP address and port; hints for the usual near misses.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    t.parse::<SocketAddr>().map_err(|_| {
        let hint = if let Some(port) = t.strip_prefix("localhost:") {
            format!("write 127.0.0.1:{port}")
        } else if t.starts_with(':') {
            format!("write 127.0.0.1{t} (this host only) or 0.0.0.0{t} (every interface)")
        } else if t.parse::<u16>().is_ok() {
            format!("add an address, e.g. 127.0.0.1:{t}")
        } else if let Some((host, port)) = t.rsplit_once(':')
            && host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok()
            && port.parse::<u16>().is_err()
        {
            format!(
                "the port must be a number from 0 to 65535, not {}",
                quote(port)
            )
        } else if let Ok(ip) = t.parse::<IpAddr>() {
            format!("add a port, e.g. {}", SocketAddr::new(ip, 8080))
        } else {
            "write an IP address and a port, e.g. 127.0.0.1:8080".to_string()
        };
        format!("{} is not a socket address; {hint}", quote(text))
    })
}

/// A secret file's text and permission bits.
struct SecretRead {
    /// The text, trailing newlines removed.
    secret: String,
    /// The file's permission bits (`None` where there are none).
    mode: Option<u32>,
}

/// Why a secret file was not read.
enum SecretFileError {
    /// It is a FIFO, a device or a socket (the text says which).
    NotRegular(&'static str),
    /// Anything else, as a lowercase reason.
    Unreadable(String),
}

/// Reads a secret file: a regular file of at most 64 KiB of UTF-8. Never
/// blocks on a FIFO and never reads a device.
fn read_secret_file(path: &Path) -> Result<SecretRead, SecretFileError> {
    use std::io::ErrorKind;
    let describe = |e: std::io::Error| {
        SecretFileError::Unreadable(match e.kind() {
            ErrorKind::NotFound => "no such file".to_string(),
            ErrorKind::PermissionDenied => "permission denied".to_string(),
            ErrorKind::IsADirectory => "it is a directory".to_string(),
            _ => lowercase_first(&e.to_string()),
        })
    };
    let (bytes, meta) = read_regular(path, MAX_SECRET_FILE_BYTES).map_err(|e| match e {
        ReadError::Open(OpenError::Io(e)) | ReadError::Io(e) => describe(e),
        ReadError::Open(OpenError::Directory) => {
            SecretFileError::Unreadable("it is a directory".to_string())
        }
        ReadError::Open(OpenError::NotRegular(what)) => SecretFileError::NotRegular(what),
        ReadError::TooLarge => SecretFileError::Unreadable(
            "it is larger than 64 KiB; is this the right file?".to_string(),
        ),
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| SecretFileError::Unreadable("it is not UTF-8 text".to_string()))?;
    Ok(SecretRead {
        secret: text.trim_end_matches(['\r', '\n']).to_string(),
        mode: mode(&meta),
    })
}

/// A made-up secret for an account whose real one is not needed (`demo`);
/// 32 hex digits, so it is also a valid message-check Token.
fn placeholder_secret() -> SecretString {
    let bytes: [u8; 16] = rand::random();
    SecretString::from(hex::encode(bytes))
}

/// A made-up EncodingAESKey (43 characters of Base64, 32 random bytes) for a
/// component whose real one is not needed (`demo`).
fn placeholder_aes_key() -> SecretString {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    SecretString::from(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
}

/// True for a duration more than zero and at most `max`.
fn within(d: Duration, max: Duration) -> bool {
    !d.is_zero() && d <= max
}

/// The problem of a duration `key` outside (0, `max`]: names both bounds,
/// the value and an `example`.
fn out_of_bounds(key: &str, d: Duration, max: Duration, example: &str) -> String {
    if d.is_zero() {
        format!("{key} must be more than 0s; e.g. {example}")
    } else {
        format!(
            "{key} must be at most {}, not {}; e.g. {example}",
            show_duration(max),
            show_duration(d)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use secrecy::ExposeSecret;

    use crate::config::{LoadOptions, load_str};
    use crate::openplatform::crypto::check_encoding_aes_key;

    /// Tencent's sample EncodingAESKey (open-platform.md, vector A).
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn component(extra: &str) -> String {
        format!(
            "components:\n  - appid: wx9999999999999999\n    secret: platform-secret\n    token: pamtest\n    encoding_aes_key: {KEY}\n{extra}"
        )
    }

    fn errors(yaml: &str) -> Vec<String> {
        match load_str(yaml, Path::new("t.yaml"), &LoadOptions::from_pairs([])) {
            Ok(_) => panic!("expected problems:\n{yaml}"),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_file_with_only_components_is_valid_and_takes_the_defaults() {
        let opts = LoadOptions::from_pairs([]);
        let loaded = load_str(&component(""), Path::new("t.yaml"), &opts).unwrap();
        let c = &loaded.config;
        assert!(c.accounts.is_empty());
        assert_eq!(c.components.len(), 1);
        let p = &c.components[0];
        assert_eq!(p.appid.as_str(), "wx9999999999999999");
        assert_eq!(p.name, "wx9999999999999999");
        assert!(p.enabled);
        assert_eq!(p.secret.expose_secret(), "platform-secret");
        assert_eq!(p.token.expose_secret(), "pamtest");
        assert_eq!(p.encoding_aes_key.expose_secret(), KEY);

        for accounts in ["accounts:\n", "accounts: []\n"] {
            assert!(load_str(&component(accounts), Path::new("t.yaml"), &opts).is_ok());
        }
    }

    #[test]
    fn a_token_must_be_3_to_32_letters_or_digits() {
        for bad in ["ab", "a-b-c", &"a".repeat(33)] {
            let lines =
                errors(&component("").replace("token: pamtest", &format!("token: \"{bad}\"")));
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0]
                    .starts_with("t.yaml:4: components[0].token must be 3 to 32 letters or digits"),
                "{}",
                lines[0]
            );
            assert!(!lines[0].contains(&format!("\"{bad}\"")), "{}", lines[0]);
        }
    }

    #[test]
    fn an_encoding_aes_key_must_be_43_characters_of_base64() {
        let short = &KEY[..42];
        let not_base64 = format!("{}!", &KEY[..42]);
        for (bad, why) in [
            (short, "it has 42 characters"),
            (not_base64.as_str(), "are not all Base64"),
        ] {
            let lines = errors(&component("").replace(KEY, bad));
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].starts_with("t.yaml:5: components[0].encoding_aes_key must be the 43-character EncodingAESKey")
                    && lines[0].contains(why),
                "{}",
                lines[0]
            );
            assert!(!lines[0].contains(bad), "{}", lines[0]);
        }
    }

    #[test]
    fn demo_placeholders_are_a_valid_token_and_key() {
        let yaml = "components:\n  - appid: wx9999999999999999\n    secret: ${A}\n    token: ${B}\n    encoding_aes_key_file: /nonexistent/key\n";
        let opts = LoadOptions::from_pairs([]).secrets_optional();
        let config = load_str(yaml, Path::new("t.yaml"), &opts).unwrap().config;
        let p = &config.components[0];
        assert!(check_encoding_aes_key(p.encoding_aes_key.expose_secret()).is_ok());
        let token = p.token.expose_secret();
        assert!(
            (3..=32).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
        );
        assert!(!p.secret.expose_secret().is_empty());
    }

    #[test]
    fn neither_accounts_nor_components_is_the_no_accounts_problem() {
        for yaml in [
            "listen: 127.0.0.1:8080\n",
            "components: []\n",
            "components:\n",
        ] {
            let lines = errors(yaml);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(
                lines[0].contains("no accounts") && lines[0].contains("`components:`"),
                "{}",
                lines[0]
            );
        }
    }

    #[test]
    fn an_invalid_component_does_not_also_claim_there_are_no_accounts() {
        let lines = errors("components:\n  - appid: wx1\n");
        assert!(
            lines.iter().all(|l| !l.contains("no accounts")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l
                    .starts_with("t.yaml:2: components[0].appid: \"wx1\" is not a WeChat appid")),
            "{lines:?}"
        );
        let lines = errors("components: wx9999999999999999\n");
        assert_eq!(
            lines,
            [
                "t.yaml:1: components must be a list of third-party platforms (- appid: ..., secret: ..., token: ..., encoding_aes_key: ...), not a single value"
            ]
        );
    }
}
