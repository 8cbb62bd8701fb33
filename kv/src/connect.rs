//! Opening a store from a URL, and the retry policy for reaching a server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::store::DynStore;
use crate::url::{ConnectOptions, StoreUrl};
use crate::{Error, Result};

/// Opens the store `url` names. Waits (retrying with backoff, logging what
/// it waits for) while the server is unreachable, up to
/// `opts.connect_timeout`; fails at once on bad URLs, TLS files or
/// credentials.
pub async fn connect(url: &StoreUrl, opts: &ConnectOptions) -> Result<DynStore> {
    Ok(match url {
        StoreUrl::Etcd { endpoints, tls } => {
            Arc::new(crate::etcd::EtcdStore::connect(endpoints, *tls, opts).await?)
        }
        StoreUrl::Consul { address, tls } => {
            Arc::new(crate::consul::ConsulStore::connect(address, *tls, opts).await?)
        }
        StoreUrl::Dir { root } => Arc::new(crate::dir::DirStore::open(root, opts)?),
    })
}

/// Retries `attempt` while it fails with a retryable error: 200ms doubling
/// to 5s with jitter, until `limit` (forever when `None`).
pub(crate) async fn retry_connect<T, F, Fut>(
    what: &str,
    limit: Option<Duration>,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = tokio::time::Instant::now();
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                if let Some(limit) = limit {
                    if start.elapsed() + delay > limit {
                        tracing::error!(error = %e, "giving up waiting for {what}");
                        return Err(Error::Timeout {
                            op: format!("waiting for {what} ({e})"),
                            after: limit,
                        });
                    }
                }
                tracing::warn!(error = %e, ?delay, "waiting for {what} to become reachable");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
