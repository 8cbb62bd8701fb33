//! The status writer: `status/<project>/<node>` records, bound to the
//! agent's session, written on every change but coalesced and rate-limited
//! (at most one write per project per [`MIN_INTERVAL`]); failed writes are
//! kept and retried. On shutdown it flushes what is pending once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cntnr_kv::{DynStore, Session};
use cntnr_model::records::StatusRecord;
use cntnr_model::{ProjectName, StoreKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Minimum time between two flushes.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// A new status for a project, or its removal.
#[derive(Debug, Clone)]
pub enum StatusMsg {
    /// Write this record.
    Put(ProjectName, StatusRecord),
    /// The project is gone: delete its status key.
    Delete(ProjectName),
}

/// Runs the writer until `cancel`, then flushes once.
pub async fn run(
    store: DynStore,
    session: Arc<Session>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<StatusMsg>,
    cancel: CancellationToken,
) {
    let mut pending: BTreeMap<ProjectName, Option<StatusRecord>> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(m) => take(&mut pending, m),
                None => break,
            },
        }
        // Coalesce whatever else arrives within the interval.
        let deadline = tokio::time::sleep(MIN_INTERVAL);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = rx.recv() => match msg {
                    Some(m) => take(&mut pending, m),
                    None => break,
                },
            }
        }
        flush(&store, &session, &shared, &mut pending).await;
        if !pending.is_empty() {
            // Something failed: the next message or the next interval retries.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            flush(&store, &session, &shared, &mut pending).await;
        }
    }
    while let Ok(m) = rx.try_recv() {
        take(&mut pending, m);
    }
    if !pending.is_empty() && !session.is_lost() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            flush(&store, &session, &shared, &mut pending),
        )
        .await;
    }
}

fn take(pending: &mut BTreeMap<ProjectName, Option<StatusRecord>>, m: StatusMsg) {
    match m {
        StatusMsg::Put(p, r) => pending.insert(p, Some(r)),
        StatusMsg::Delete(p) => pending.insert(p, None),
    };
}

async fn flush(
    store: &DynStore,
    session: &Session,
    shared: &Shared,
    pending: &mut BTreeMap<ProjectName, Option<StatusRecord>>,
) {
    let mut failed = BTreeMap::new();
    for (project, record) in std::mem::take(pending) {
        let key = StoreKey::Status(project.clone(), shared.node.clone()).render(&shared.prefix);
        let r = match &record {
            Some(rec) => match serde_json::to_vec(rec) {
                Ok(bytes) => store.put_bound(session, &key, &bytes).await.map(drop),
                Err(e) => {
                    tracing::error!(%key, error = %e, "encoding status");
                    continue;
                }
            },
            None => store.delete(&key).await,
        };
        if let Err(e) = r {
            shared.metrics.store_error("status");
            tracing::warn!(%key, error = %e, "writing status failed; will retry");
            failed.insert(project, record);
        }
    }
    *pending = failed;
}
