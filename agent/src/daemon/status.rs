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
/// First and longest wait before retrying failed writes.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

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
    let mut retry = RETRY_MIN;
    'run: loop {
        if pending.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => break 'run,
                msg = rx.recv() => match msg {
                    Some(m) => take(&mut pending, m),
                    None => break 'run,
                },
            }
        } else {
            // Writes failed: retry with backoff, or sooner with news.
            tokio::select! {
                _ = cancel.cancelled() => break 'run,
                _ = tokio::time::sleep(retry) => {}
                msg = rx.recv() => match msg {
                    Some(m) => take(&mut pending, m),
                    None => break 'run,
                },
            }
            retry = (retry * 2).min(RETRY_MAX);
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
        if pending.is_empty() {
            retry = RETRY_MIN;
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
