//! The watches behind a project's synced variables: one watch of the
//! project's config prefix, one service watch per referenced registered
//! service, and one watch of the project's elections prefix — per project,
//! never per container. Their combined state is published debounced: a
//! burst of changes within the quiet period becomes one publication (so
//! `restart` mode recreates once, not once per write).
//!
//! Nothing here logs a value: errors name keys and services only.

use std::sync::Arc;
use std::time::Duration;

use cntnr_kv::{DynStore, EventKind, ServiceInstance, Snapshot, WatchFrom};
use cntnr_model::{Prefix, ProjectName};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{config_key_of, Needs, Sources};

/// Timing of a [`ProjectSync`].
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Quiet period: a change is published once no other change came for
    /// this long (default 1 s).
    pub debounce: Duration,
    /// A stream of changes that never goes quiet is still published after
    /// this long (default 10 × debounce).
    pub max_delay: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig::with_debounce(Duration::from_secs(1))
    }
}

impl SyncConfig {
    /// `debounce` as quiet period, 10 × it as the cap.
    pub fn with_debounce(debounce: Duration) -> Self {
        SyncConfig {
            debounce,
            max_delay: debounce * 10,
        }
    }
}

/// One publication: the sources and how many publications came before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Synced {
    /// Everything the watches hold.
    pub sources: Sources,
    /// 0 for the initial state, +1 per debounced change.
    pub generation: u64,
}

/// The election record at `elections/<project>/<service>` (also the lock's
/// value): the winning replica's instance id and address.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ElectionRecord {
    /// `<node>/<container id>`.
    pub instance: String,
    /// The address other containers reach the winner at.
    pub address: String,
}

/// The running watches of one project. Dropping it stops them.
pub struct ProjectSync {
    rx: watch::Receiver<Option<Arc<Synced>>>,
    needs: Needs,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ProjectSync {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ProjectSync {
    /// Starts the watches `needs` asks for.
    pub fn start(
        store: DynStore,
        prefix: &Prefix,
        project: &ProjectName,
        needs: Needs,
        cfg: SyncConfig,
    ) -> ProjectSync {
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            store,
            prefix.config_dir(project),
            prefix.elections_dir(project),
            project.to_string(),
            needs.clone(),
            cfg,
            tx,
            cancel.clone(),
        ));
        ProjectSync {
            rx,
            needs,
            cancel,
            task: Some(task),
        }
    }

    /// What this sync watches (compare with a redeployed project's needs;
    /// restart the sync when they differ).
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The last publication (`None` until every watch has its initial state).
    pub fn current(&self) -> Option<Arc<Synced>> {
        self.rx.borrow().clone()
    }

    /// A receiver of publications, for a loop that waits for changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Synced>>> {
        self.rx.clone()
    }

    /// Waits for the initial state.
    pub async fn ready(&self) -> Arc<Synced> {
        let mut rx = self.rx.clone();
        let r = rx.wait_for(|s| s.is_some()).await;
        match r {
            Ok(s) => s.clone().expect("checked by wait_for"),
            // The task never drops the sender before cancel; Drop cancels.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the watches and waits for the task to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

enum Update {
    Config(cntnr_kv::Result<cntnr_kv::WatchEvent>),
    Election(cntnr_kv::Result<cntnr_kv::WatchEvent>),
    Service(String, cntnr_kv::Result<Vec<ServiceInstance>>),
}

/// `addr:port` of passing instances, sorted (IPv6 addresses bracketed).
pub fn instance_list(instances: &[ServiceInstance]) -> Vec<String> {
    let mut v: Vec<String> = instances
        .iter()
        .filter(|i| i.health == cntnr_kv::Health::Passing)
        .map(|i| {
            if i.address.contains(':') {
                format!("[{}]:{}", i.address, i.port)
            } else {
                format!("{}:{}", i.address, i.port)
            }
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The leader address an elections key's value names, if it parses.
fn leader_of(elections_dir: &str, key: &str, value: &[u8]) -> Option<(String, String)> {
    let service = key.strip_prefix(elections_dir)?;
    if service.is_empty() || service.contains('/') {
        return None;
    }
    let rec: ElectionRecord = serde_json::from_slice(value).ok()?;
    Some((service.to_string(), rec.address))
}

async fn list_retrying(
    store: &DynStore,
    prefix: &str,
    project: &str,
    cancel: &CancellationToken,
) -> Option<Snapshot> {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.list(prefix).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(%project, %prefix, error = %e, ?delay, "env sync: listing failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    store: DynStore,
    config_dir: String,
    elections_dir: String,
    project: String,
    needs: Needs,
    cfg: SyncConfig,
    tx: watch::Sender<Option<Arc<Synced>>>,
    cancel: CancellationToken,
) {
    let mut state = Sources::default();
    let mut streams: Vec<BoxStream<'static, Update>> = Vec::new();
    if needs.config {
        let Some(snap) = list_retrying(&store, &config_dir, &project, &cancel).await else {
            return;
        };
        for e in snap.entries.values() {
            if let Some(k) = config_key_of(&config_dir, &e.key) {
                state.config.insert(k, e.value.clone());
            }
        }
        streams.push(
            store
                .watch(&config_dir, WatchFrom::Snapshot(snap))
                .map(Update::Config)
                .boxed(),
        );
    }
    if needs.leaders {
        let Some(snap) = list_retrying(&store, &elections_dir, &project, &cancel).await else {
            return;
        };
        for e in snap.entries.values() {
            if let Some((s, a)) = leader_of(&elections_dir, &e.key, &e.value) {
                state.leaders.insert(s, a);
            }
        }
        streams.push(
            store
                .watch(&elections_dir, WatchFrom::Snapshot(snap))
                .map(Update::Election)
                .boxed(),
        );
    }
    let mut awaiting: std::collections::BTreeSet<String> = needs.services.clone();
    for name in &needs.services {
        let n = name.clone();
        streams.push(
            store
                .watch_service(name, true)
                .map(move |r| Update::Service(n.clone(), r))
                .boxed(),
        );
    }
    let mut merged = futures::stream::select_all(streams);
    let mut generation = 0u64;
    let mut published: Option<Sources> = None;
    // (first change not yet published, last change)
    let mut pending: Option<(Instant, Instant)> = None;
    if awaiting.is_empty() {
        tx.send_replace(Some(Arc::new(Synced {
            sources: state.clone(),
            generation,
        })));
        published = Some(state.clone());
    }
    loop {
        let deadline =
            pending.map(|(first, last)| (last + cfg.debounce).min(first + cfg.max_delay));
        let update = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => None,
            u = merged.next() => match u {
                Some(u) => Some(u),
                None => {
                    // Every stream ended (none was needed): wait to be stopped.
                    cancel.cancelled().await;
                    return;
                }
            },
        };
        let Some(update) = update else {
            // Quiet period over: publish.
            pending = None;
            if published.as_ref() != Some(&state) {
                generation += 1;
                tx.send_replace(Some(Arc::new(Synced {
                    sources: state.clone(),
                    generation,
                })));
                published = Some(state.clone());
            }
            continue;
        };
        match update {
            Update::Config(Ok(ev)) => {
                if let Some(k) = config_key_of(&config_dir, &ev.key) {
                    match ev.kind {
                        EventKind::Put => state.config.insert(k, ev.value),
                        EventKind::Delete => state.config.remove(&k),
                    };
                }
            }
            Update::Election(Ok(ev)) => {
                if let Some(service) = ev.key.strip_prefix(&elections_dir) {
                    match (ev.kind, leader_of(&elections_dir, &ev.key, &ev.value)) {
                        (EventKind::Put, Some((s, a))) => {
                            state.leaders.insert(s, a);
                        }
                        _ => {
                            state.leaders.remove(service);
                        }
                    }
                }
            }
            Update::Service(name, Ok(list)) => {
                awaiting.remove(&name);
                state.services.insert(name, instance_list(&list));
            }
            Update::Config(Err(e)) | Update::Election(Err(e)) => {
                tracing::warn!(%project, error = %e, "env sync watch error (it resumes by itself)");
            }
            Update::Service(name, Err(e)) => {
                tracing::warn!(%project, service = %name, error = %e, "env sync service watch error (it resumes by itself)");
            }
        }
        if !awaiting.is_empty() {
            continue;
        }
        if published.is_none() {
            // Every watch has its initial state: publish at once.
            tx.send_replace(Some(Arc::new(Synced {
                sources: state.clone(),
                generation,
            })));
            published = Some(state.clone());
            continue;
        }
        if published.as_ref() != Some(&state) {
            let now = Instant::now();
            pending = Some(match pending {
                Some((first, _)) => (first, now),
                None => (now, now),
            });
        }
    }
}
