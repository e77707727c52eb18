//! Virtual-time runs of many accounts behind the engine's upstream limit,
//! for the congestion test and the scale benchmark's spread and cost phases.
//!
//! [`Timed`] sits between the engine's limit and the in-process simulator,
//! so it sees each token call when it got its slot (`sent_ms`) and when it
//! finished, and notes the serve time of the token the call replaces (the
//! slot still holds it: a token is published after its fetch returns).
//! [`Watch`] polls the slots and WeChat's view of them. [`Figures`] turns
//! both into the numbers of issue 13: accounts ever without a valid token,
//! refreshes finishing past their serve time, calls per account-day per mode,
//! the busiest 10 s against the mean and against what the limit carries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use wxtoken::clock::Clock;
use wxtoken::config::AccountConfig;
use wxtoken::domain::{AccessToken, AppId, Mode, TicketKind};
use wxtoken::simulator::{FaultSpec, InProcess};
use wxtoken::snapshot::{AccountSlot, Directory};
use wxtoken::wechat::{FetchRequest, TicketGrant, TokenGrant, TokenSource, UpstreamError};

use super::densest_window;

/// Where the densest window of `width` ms over `samples` (ms) begins.
fn densest_start(samples: &[i64], width: i64) -> i64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let (mut best, mut at, mut start) = (0, sorted.first().copied().unwrap_or(0), 0);
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= width {
            start += 1;
        }
        if end - start + 1 > best {
            best = end - start + 1;
            at = sorted[start];
        }
    }
    at
}

/// WeChat's token lifetime, in ms.
pub const LIFE_MS: i64 = 7_200_000;
const DAY_MS: f64 = 86_400_000.0;
/// The width of the busiest-window figure, in ms.
const WINDOW_MS: i64 = 10_000;

/// Makes every call to `sim` take `latency` (a delay-only fault on every API).
pub fn with_latency(sim: &InProcess, latency: Duration) {
    sim.try_inject_fault(FaultSpec {
        delay_ms: Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
        ..FaultSpec::default()
    })
    .expect("a valid delay fault");
}

/// One token call as [`Timed`] saw it. Times are Unix ms.
#[derive(Debug, Clone, Copy)]
pub struct TimedCall {
    /// The account's index in the configured accounts.
    pub account: usize,
    pub mode: Mode,
    /// When the call got its upstream slot and went out.
    pub sent_ms: i64,
    pub done_ms: i64,
    /// The serve time of the token the account held when the call finished.
    pub replaced_serve_until_ms: Option<i64>,
}

impl TimedCall {
    /// True when the call finished after the token it replaces stopped being served.
    pub fn late(&self) -> bool {
        self.replaced_serve_until_ms
            .is_some_and(|serve| self.done_ms > serve)
    }
}

/// A token source that records every token call of `inner` (see the module doc).
#[derive(Clone)]
pub struct Timed {
    inner: Arc<dyn TokenSource>,
    clock: Clock,
    index: Arc<HashMap<AppId, usize>>,
    directory: Arc<OnceLock<Directory>>,
    calls: Arc<Mutex<Vec<TimedCall>>>,
}

impl Timed {
    /// Records the calls of `accounts` to `inner`, timed on `clock`.
    pub fn new(inner: Arc<dyn TokenSource>, clock: Clock, accounts: &[AccountConfig]) -> Timed {
        Timed {
            inner,
            clock,
            index: Arc::new(
                accounts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (a.appid.clone(), i))
                    .collect(),
            ),
            directory: Arc::new(OnceLock::new()),
            calls: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Where to find the token each call replaces (the engine's directory).
    pub fn watch(&self, directory: Directory) {
        let _ = self.directory.set(directory);
    }

    /// Every call so far, in the order they finished.
    pub fn calls(&self) -> Vec<TimedCall> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

impl TokenSource for Timed {
    fn fetch(&self, req: FetchRequest) -> BoxFuture<'static, Result<TokenGrant, UpstreamError>> {
        let this = self.clone();
        Box::pin(async move {
            let sent_ms = this.clock.now_unix_ms();
            let account = this.index.get(&req.appid).copied().unwrap_or(usize::MAX);
            let mode = if req.endpoint.rotates_on_fetch() {
                Mode::Legacy
            } else {
                Mode::Stable
            };
            let replaced = this.directory.get().and_then(|d| d.get(&req.appid));
            let result = this.inner.fetch(req).await;
            let call = TimedCall {
                account,
                mode,
                sent_ms,
                done_ms: this.clock.now_unix_ms(),
                replaced_serve_until_ms: replaced
                    .and_then(|slot| slot.token())
                    .map(|t| t.serve_until_ms),
            };
            this.calls.lock().expect("not poisoned").push(call);
            result
        })
    }

    fn fetch_ticket(
        &self,
        token: AccessToken,
        kind: TicketKind,
    ) -> BoxFuture<'static, Result<TicketGrant, UpstreamError>> {
        self.inner.fetch_ticket(token, kind)
    }
}

/// What polling the slots saw: which accounts, once they had a token, were
/// ever left without one to serve, or served one WeChat no longer accepts.
pub struct Watch {
    slots: Vec<Arc<AccountSlot>>,
    had_token: Vec<bool>,
    /// Accounts seen without a servable token after their first one.
    pub without_token: Vec<bool>,
    /// Accounts seen serving a token WeChat no longer accepts.
    pub served_invalid: Vec<bool>,
}

impl Watch {
    /// Watches the slots of `accounts` in `directory`.
    pub fn new(directory: &Directory, accounts: &[AccountConfig]) -> Watch {
        let slots: Vec<Arc<AccountSlot>> = accounts
            .iter()
            .map(|a| directory.get(&a.appid).expect("a configured account"))
            .collect();
        let n = slots.len();
        Watch {
            slots,
            had_token: vec![false; n],
            without_token: vec![false; n],
            served_invalid: vec![false; n],
        }
    }

    /// Looks at every slot at `now_ms`; with `sim`, also asks it whether
    /// each served token is live (the costly part: hashing every token).
    pub fn observe(&mut self, now_ms: i64, sim: Option<&InProcess>) {
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.token().filter(|t| t.usable_secs(now_ms).is_some()) {
                Some(t) => {
                    self.had_token[i] = true;
                    if sim.is_some_and(|sim| {
                        !sim.is_token_valid(slot.appid.as_str(), t.token.expose())
                    }) {
                        self.served_invalid[i] = true;
                    }
                }
                None if self.had_token[i] => self.without_token[i] = true,
                None => {}
            }
        }
    }

    /// Accounts that had a token and were at some step without a valid one.
    pub fn ever_without_valid_token(&self) -> usize {
        self.without_token
            .iter()
            .zip(&self.served_invalid)
            .filter(|(a, b)| **a || **b)
            .count()
    }

    /// Accounts that have had a token.
    pub fn filled(&self) -> usize {
        self.had_token.iter().filter(|h| **h).count()
    }
}

/// Calls per account-day of one mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerDay {
    /// Accounts of the mode.
    pub accounts: usize,
    /// Refresh calls per account-day, counted over each account's first
    /// `lifetimes` lifetimes after its fill (the floor is 12: one per lifetime).
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// The long-run rate: a day over the mean time between an account's calls.
    pub long_run: f64,
    /// The shortest time between two calls of one account (ms).
    pub shortest_gap_ms: i64,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Token calls, the fill included.
    pub calls: usize,
    /// When the last account's first call (the fill) finished, from the start.
    pub fill_ms: i64,
    /// Refresh calls that finished after the serve time of the token they replace.
    pub late: usize,
    /// The longest a refresh finished before that serve time (ms; the least
    /// slack of any refresh, negative when late).
    pub least_slack_ms: i64,
    /// The most refresh calls sent in any 10 s, and the mean per 10 s, over
    /// the run after the fill.
    pub busiest_10s: usize,
    /// When the busiest 10 s began, from the start (ms).
    pub busiest_at_ms: i64,
    pub mean_10s: f64,
    pub legacy: PerDay,
    pub stable: PerDay,
}

impl Figures {
    /// Computes the figures of `calls` made by `accounts` in a run that
    /// started at `started_ms` and ended at `ended_ms`, counting calls per
    /// day over each account's first `lifetimes` lifetimes.
    pub fn of(
        calls: &[TimedCall],
        accounts: &[AccountConfig],
        started_ms: i64,
        ended_ms: i64,
        lifetimes: u32,
    ) -> Figures {
        let mut per_account: Vec<Vec<TimedCall>> = vec![Vec::new(); accounts.len()];
        for c in calls {
            if let Some(list) = per_account.get_mut(c.account) {
                list.push(*c);
            }
        }
        for list in &mut per_account {
            list.sort_by_key(|c| c.sent_ms);
        }
        let fill_ms = per_account
            .iter()
            .filter_map(|l| l.first())
            .map(|c| c.done_ms - started_ms)
            .max()
            .unwrap_or(0);
        let refreshes: Vec<&TimedCall> =
            per_account.iter().flat_map(|l| l.iter().skip(1)).collect();
        let late = refreshes.iter().filter(|c| c.late()).count();
        let least_slack_ms = refreshes
            .iter()
            .filter_map(|c| c.replaced_serve_until_ms.map(|s| s - c.done_ms))
            .min()
            .unwrap_or(0);
        let sends: Vec<i64> = refreshes.iter().map(|c| c.sent_ms).collect();
        let span = (ended_ms - started_ms - fill_ms).max(WINDOW_MS);
        let span_days = f64::from(lifetimes) * LIFE_MS as f64 / DAY_MS;
        let per_day = |mode: Mode| {
            let mut counts = Vec::new();
            let mut gaps = Vec::new();
            for (list, account) in per_account.iter().zip(accounts) {
                if account.mode != mode {
                    continue;
                }
                let Some(first) = list.first() else {
                    counts.push(0.0);
                    continue;
                };
                let until = first.sent_ms + i64::from(lifetimes) * LIFE_MS;
                let n = list[1..].iter().filter(|c| c.sent_ms <= until).count();
                counts.push(n as f64 / span_days);
                gaps.extend(list.windows(2).map(|w| w[1].sent_ms - w[0].sent_ms));
            }
            let mean_gap = gaps.iter().sum::<i64>() as f64 / gaps.len().max(1) as f64;
            PerDay {
                accounts: counts.len(),
                mean: counts.iter().sum::<f64>() / counts.len().max(1) as f64,
                min: counts.iter().copied().fold(f64::INFINITY, f64::min),
                max: counts.iter().copied().fold(0.0, f64::max),
                long_run: if mean_gap > 0.0 {
                    DAY_MS / mean_gap
                } else {
                    0.0
                },
                shortest_gap_ms: gaps.iter().copied().min().unwrap_or(0),
            }
        };
        Figures {
            calls: calls.len(),
            fill_ms,
            late,
            least_slack_ms,
            busiest_10s: densest_window(&sends, WINDOW_MS),
            busiest_at_ms: densest_start(&sends, WINDOW_MS) - started_ms,
            mean_10s: sends.len() as f64 * WINDOW_MS as f64 / span as f64,
            legacy: per_day(Mode::Legacy),
            stable: per_day(Mode::Stable),
        }
    }
}
