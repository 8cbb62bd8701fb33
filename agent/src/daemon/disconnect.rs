//! `cntnr.on-disconnect` (issue 9): what this node does with a service's
//! containers while it has lost the store.
//!
//! `keep` (the default) leaves them running. `stop-after:<d>` stops and
//! removes them once the agent has been disconnected for `d`: the leader
//! moves such a replica elsewhere after its `cntnr.reschedule-after`, so a
//! singleton must not keep running here too. Disconnected means: from the
//! moment the agent noticed its session was lost (at most one session TTL
//! after the last successful renewal) until it has a new session; the
//! session epoch in `mod.rs` reports both edges through [`Link`]. The
//! policies are taken from the desired state as last seen (the store is
//! gone, so nothing newer can be known). When the agent reconnects, the
//! reconciler recreates whatever is still scheduled here.
//!
//! This task outlives sessions (the reconciler does not run while there is
//! no session) and only ever touches containers under this agent's runc
//! root that carry the project and service annotations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use cntnr_model::{OnDisconnect, ProjectName, ServiceName};
use cntnr_reconcile::bundle;
use cntnr_reconcile::plan::DEFAULT_STOP_GRACE;
use cntnr_reconcile::runtime::{annotations, Runtime, Signal};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reconciler::Engine;
use super::Shared;

/// Whether the agent holds a store session: `None` while connected (or
/// before the first session), `Some(since)` while disconnected.
#[derive(Debug)]
pub struct Link(watch::Sender<Option<Instant>>);

impl Default for Link {
    fn default() -> Self {
        Link(watch::channel(None).0)
    }
}

impl Link {
    /// A session was created.
    pub fn up(&self) {
        self.0.send_if_modified(|v| v.take().is_some());
    }

    /// The session was lost (or the epoch failed): disconnected from now,
    /// unless already.
    pub fn down(&self) {
        self.0.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(Instant::now());
            true
        });
    }

    fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.0.subscribe()
    }
}

/// The `stop-after` services of the desired state as last seen.
fn policies(shared: &Shared) -> BTreeMap<(ProjectName, ServiceName), Duration> {
    let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = BTreeMap::new();
    for (p, dp) in &d.projects {
        let Ok(spec) = &dp.spec else { continue };
        for (s, svc) in &spec.services {
            if let OnDisconnect::StopAfter(after) = svc.agent.on_disconnect {
                out.insert((p.clone(), s.clone()), after);
            }
        }
    }
    out
}

/// Follows the [`Link`] until `cancel`; stops `stop-after` services'
/// containers when their time comes.
pub async fn run(engine: Arc<Engine>, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut link = shared.link.subscribe();
    loop {
        let since = loop {
            if let Some(since) = *link.borrow_and_update() {
                break since;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = link.changed() => if r.is_err() { return },
            }
        };
        let todo = policies(&shared);
        let mut done: BTreeSet<(ProjectName, ServiceName)> = BTreeSet::new();
        loop {
            let next = todo
                .iter()
                .filter(|(k, _)| !done.contains(*k))
                .map(|(_, after)| since + *after)
                .min();
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = link.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if link.borrow().is_none() {
                        break;
                    }
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    let due: Vec<(ProjectName, ServiceName)> = todo
                        .iter()
                        .filter(|(k, after)| !done.contains(*k) && since + **after <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for (p, s) in due {
                        tracing::warn!(project = %p, service = %s, after = ?todo[&(p.clone(), s.clone())],
                            "disconnected from the store for cntnr.on-disconnect: stopping the service's containers");
                        if let Err(e) = stop_service(&engine, &shared, &p, &s).await {
                            tracing::warn!(project = %p, service = %s, error = %format!("{e:#}"),
                                "stopping on disconnect failed; retrying");
                            continue;
                        }
                        done.insert((p, s));
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops and removes every container of `project`/`service` here.
async fn stop_service(
    engine: &Engine,
    shared: &Shared,
    project: &ProjectName,
    service: &ServiceName,
) -> Result<()> {
    let grace = {
        let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
        d.projects
            .get(project)
            .and_then(|dp| dp.spec.as_ref().ok())
            .and_then(|spec| spec.services.get(service))
            .and_then(|svc| svc.stop_grace_period)
            .unwrap_or(DEFAULT_STOP_GRACE)
    };
    let host = engine.host();
    for c in host.runc.list().await? {
        let ann = |k: &str| c.annotations.get(k).map(String::as_str);
        if ann(annotations::PROJECT) != Some(project.as_str())
            || ann(annotations::SERVICE) != Some(service.as_str())
        {
            continue;
        }
        let signal = ann(annotations::STOP_SIGNAL)
            .and_then(Signal::parse)
            .unwrap_or(Signal::TERM);
        host.runc.stop(&c.id, signal, grace).await?;
        host.runc.delete(&c.id, true).await?;
        let cfg = host.bundles.clone();
        let id = c.id.clone();
        tokio::task::spawn_blocking(move || bundle::remove(&cfg, &id))
            .await
            .map_err(|e| anyhow!("removing the bundle: {e}"))??;
        tracing::info!(container = %c.id, "stopped and removed (cntnr.on-disconnect)");
    }
    Ok(())
}
