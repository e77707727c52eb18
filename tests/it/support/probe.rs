//! Token probing: asks the simulator's `getcallbackip` whether a token is
//! live, as a business server finds out when it uses one.

use serde_json::Value;

/// Probes tokens at one simulator over its own HTTP client.
pub struct Prober {
    http: reqwest::Client,
    url: String,
}

impl Prober {
    /// A prober for the simulator at `base_url`.
    pub fn new(base_url: &str) -> Prober {
        Prober {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
            url: format!("{base_url}/cgi-bin/getcallbackip"),
        }
    }

    /// The simulator's answer to a call with `token`; panics when it does not
    /// answer JSON.
    pub async fn answer(&self, token: &str) -> Value {
        self.http
            .get(&self.url)
            .query(&[("access_token", token)])
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("the probe answers JSON")
    }

    /// The simulator's answer to a call with `token`, `None` when there was
    /// no JSON answer.
    pub async fn try_answer(&self, token: &str) -> Option<Value> {
        self.http
            .get(&self.url)
            .query(&[("access_token", token)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

/// True when a probe answer says the token works (it lists callback IPs).
pub fn is_live(answer: &Value) -> bool {
    answer["ip_list"].is_array()
}
