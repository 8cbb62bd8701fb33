//! `nodes/<node>`: this agent's [`NodeRecord`], bound to its session so it
//! disappears with the agent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cntnr_kv::{DynStore, Session};
use cntnr_model::records::NodeRecord;
use cntnr_model::StoreKey;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Writes the node record (retrying with backoff until it lands), then
/// returns.
pub async fn register(
    store: DynStore,
    session: Arc<Session>,
    shared: Arc<Shared>,
    record: NodeRecord,
    cancel: CancellationToken,
) -> Result<()> {
    let key = StoreKey::Node(shared.node.clone()).render(&shared.prefix);
    let value = serde_json::to_vec(&record)?;
    let mut delay = Duration::from_millis(200);
    loop {
        let r = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = store.put_bound(&session, &key, &value) => r,
        };
        match r {
            Ok(_) => {
                tracing::info!(%key, "node registered");
                return Ok(());
            }
            Err(e @ cntnr_kv::Error::SessionLost { .. }) => return Err(e.into()),
            Err(e) => {
                shared.metrics.store_error("register_node");
                tracing::warn!(%key, error = %e, ?delay, "registering the node failed; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
