//! Helpers shared by the Consul-only test binaries (`consul_registry`,
//! `consul_session`): the harness's real Consul 1.8.7, over loopback.

use std::time::Duration;

use cntnr_e2e::shared_consul;
use cntnr_kv::consul::ConsulStore;
use cntnr_kv::ConnectOptions;
use serde_json::Value;

/// An HTTP client for the test's own requests to Consul.
pub fn http() -> reqwest::Client {
    // Loopback only: a proxy from the environment must not apply.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The harness Consul's HTTP base URL.
pub async fn base_url() -> String {
    tokio::task::spawn_blocking(|| shared_consul().url())
        .await
        .unwrap()
}

/// A store on the harness Consul; `lock_delay` overrides the sessions'
/// default lock-delay.
pub async fn store(lock_delay: Option<Duration>) -> ConsulStore {
    let addr = tokio::task::spawn_blocking(|| shared_consul().http_addr())
        .await
        .unwrap();
    let mut opts = ConnectOptions {
        connect_timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    if let Some(d) = lock_delay {
        opts.consul_lock_delay = d;
    }
    ConsulStore::connect(&addr, false, &opts).await.unwrap()
}

/// GET `url`, which must succeed, as JSON.
pub async fn get_json(url: &str) -> Value {
    let r = http().get(url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}
