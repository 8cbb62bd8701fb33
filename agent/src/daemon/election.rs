//! Leader election: every agent campaigns for `<prefix>/leader` (value: its
//! node name) with the store's lock, under its session. The leader runs
//! placement ([`super::scheduler`]) for as long as it leads. Who leads is
//! followed with a watch of that key, so `/status` and `cntnr nodes` can
//! say who it is. Leadership ends with the session, on resign at shutdown,
//! or when the key shows another holder.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cntnr_kv::{DynStore, Holder, Session, WatchFrom};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Who leads, as this agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LeaderView {
    /// The leader's node name, if anyone leads.
    pub node: Option<String>,
    /// The leader's fencing token.
    pub token: Option<u64>,
    /// Whether this agent is the leader.
    pub is_self: bool,
}

/// Follows the holder of the leader key: a watch of the key, and a
/// `holder` read per burst of events. Publishes into `tx`.
pub async fn follow(
    store: DynStore,
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Holder>>,
    cancel: CancellationToken,
) -> Result<()> {
    let key = shared.leader_key.clone();
    let mut events = store.watch(&key, WatchFrom::Start);
    let mut delay = Duration::from_millis(200);
    loop {
        match store.holder(&key).await {
            Ok(h) => {
                delay = Duration::from_millis(200);
                shared.set_leader_holder(h.as_ref());
                tx.send_replace(h);
            }
            Err(e) => {
                shared.metrics.store_error("holder");
                tracing::warn!(error = %e, ?delay, "reading the leader failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = events.next() => match ev {
                None => anyhow::bail!("the watch of {key} ended"),
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "leader watch error (it resumes by itself)");
                }
                Some(Ok(_)) => shared.metrics.watch_event("leader"),
            },
        }
        // One read per burst.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(events.next()) {}
    }
}

/// Campaigns until cancelled: waits for the lock, leads until the session
/// is lost or another holder shows up, then campaigns again. Resigns on
/// cancel so another agent takes over at once.
pub async fn campaign(
    store: DynStore,
    session: Arc<Session>,
    shared: Arc<Shared>,
    mut holder: watch::Receiver<Option<Holder>>,
    cancel: CancellationToken,
) -> Result<()> {
    let key = shared.leader_key.clone();
    let mut delay = Duration::from_millis(200);
    loop {
        let won = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = store.campaign(&session, &key, shared.node.as_str().as_bytes()) => r,
        };
        let leadership = match won {
            Ok(l) => l,
            Err(cntnr_kv::Error::SessionLost { .. }) => {
                // The session loop notices and starts a new one.
                session.lost().await;
                return Ok(());
            }
            Err(e) => {
                shared.metrics.store_error("campaign");
                tracing::warn!(error = %e, ?delay, "campaigning failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        // What the follower saw before the win is stale by now.
        holder.borrow_and_update();
        tracing::info!(token = leadership.token, "elected leader");
        shared.set_leading(Some(leadership.token));
        // Placement runs for as long as this leadership holds.
        let placing = cancel.child_token();
        let resign = {
            let scheduler =
                super::scheduler::run(store.clone(), shared.clone(), &leadership, placing.clone());
            tokio::pin!(scheduler);
            let mut scheduling = true;
            let resign = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break true,
                    r = &mut scheduler, if scheduling => {
                        scheduling = false;
                        if let Err(e) = r {
                            tracing::warn!(error = %format!("{e:#}"), "placement stopped: no longer leader");
                            break false;
                        }
                    }
                    _ = leadership.lost() => {
                        tracing::warn!("leadership lost with the session");
                        break false;
                    }
                    changed = holder.changed() => {
                        if changed.is_err() {
                            break true;
                        }
                        let other = holder
                            .borrow_and_update()
                            .as_ref()
                            .is_some_and(|h| h.session_id != leadership.session_id);
                        // A read in flight across the win can be stale: confirm.
                        if other && !still_ours(&store, &key, &leadership.session_id).await {
                            tracing::warn!("the leader key shows another holder: no longer leader");
                            break false;
                        }
                    }
                }
            };
            placing.cancel();
            if scheduling {
                let _ = (&mut scheduler).await;
            }
            resign
        };
        shared.set_leading(None);
        if resign || leadership.is_held() {
            match tokio::time::timeout(Duration::from_secs(5), store.resign(leadership)).await {
                Ok(Ok(())) => tracing::info!("resigned leadership"),
                Ok(Err(e)) => {
                    shared.metrics.store_error("resign");
                    tracing::warn!(error = %e, "resigning failed (the session's end releases it)");
                }
                Err(_) => tracing::warn!("resigning timed out (the session's end releases it)"),
            }
        }
        if cancel.is_cancelled() || session.is_lost() {
            return Ok(());
        }
    }
}

/// Whether the lock `key` is (still) held by `session_id`; a failed read
/// counts as held (the session's loss is what ends leadership then).
async fn still_ours(store: &DynStore, key: &str, session_id: &str) -> bool {
    match store.holder(key).await {
        Ok(h) => h.is_some_and(|h| h.session_id == session_id),
        Err(_) => true,
    }
}
