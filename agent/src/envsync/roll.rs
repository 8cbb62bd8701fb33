//! Restart mode one replica at a time across the cluster (issue 7:
//! "recreate the replicas one at a time, each waiting until the previous
//! one is healthy again").
//!
//! [`super::next_to_restart`] orders the replicas of one node. Across nodes,
//! an agent with a stale replica of a `restart` service first holds the
//! service's roll lock, `envroll/<project>/<service>` (the store's lock:
//! etcd lease + create-revision, Consul session + acquire, dir flock), on
//! the agent's own session, with the instance id of the replica it is about
//! to recreate as the lock's value (never an env value). While it holds the
//! lock it recreates its stale replicas one at a time, and it releases the
//! lock only once none is stale and every local replica of the service is
//! running and healthy (or running without a check) again. Other agents
//! wait inside `campaign` (a watch, a blocking query or a flock: no
//! polling); the one that gets the lock next requeues its project. If the
//! holder's node dies, its session lapses and the lock frees.
//!
//! A recreated replica that never turns healthy keeps the lock: the roll
//! halts rather than take down another replica.
//!
//! Without a session ([`RollLocks::set_session`] not called: tools and
//! tests of the engine alone), the order is per node only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cntnr_kv::{DynStore, Leadership, Session};
use cntnr_model::{Prefix, ProjectName, ServiceName, StoreKey};
use tokio::sync::mpsc;

use super::{next_to_restart, ReplicaEnvState};

/// What a pass does about one restart-mode service's roll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollStep {
    /// Nothing stale that may go now, and the lock is not held.
    Nothing,
    /// A replica may go, but the lock is not held: campaign for it.
    Campaign,
    /// Held; the replica recreated under it is not back and healthy yet.
    Wait,
    /// Held: recreate this replica now.
    Recreate(u32),
    /// Held, and nothing is left to do: release it.
    Release,
}

/// The roll's next step for the local replicas of one service, given
/// whether this agent holds the lock and which replica it recreated under
/// it (`awaiting`).
pub fn roll_step(replicas: &[ReplicaEnvState], held: bool, awaiting: Option<u32>) -> RollStep {
    let next = next_to_restart(replicas);
    if !held {
        return match next {
            Some(_) => RollStep::Campaign,
            None => RollStep::Nothing,
        };
    }
    if let Some(a) = awaiting {
        if replicas.iter().any(|r| r.replica == a && !r.ready) {
            return RollStep::Wait;
        }
    }
    match next {
        Some(r) => RollStep::Recreate(r),
        None => RollStep::Release,
    }
}

enum State {
    /// Waiting for the lock in the background. `wanted` turns false when
    /// the lock is no longer needed: it is then released as soon as won.
    Campaigning { wanted: bool },
    /// Held; the replica recreated under it, if any.
    Held {
        leadership: Leadership,
        awaiting: Option<u32>,
    },
    /// Being released (no new campaign until it is gone: the locks are
    /// re-entrant per session).
    Releasing,
}

type Key = (ProjectName, ServiceName);

/// The roll locks of one agent (one session).
pub struct RollLocks {
    store: DynStore,
    prefix: Prefix,
    session: Mutex<Option<Arc<Session>>>,
    triggers: Mutex<Option<mpsc::UnboundedSender<ProjectName>>>,
    entries: Arc<Mutex<BTreeMap<Key, State>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RollLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollLocks")
            .field("locks", &lock(&self.entries).keys().collect::<Vec<_>>())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RollLocks {
    /// Roll locks over `store`, inactive until [`RollLocks::set_session`].
    pub fn new(store: DynStore, prefix: Prefix) -> RollLocks {
        RollLocks {
            store,
            prefix,
            session: Mutex::new(None),
            triggers: Mutex::new(None),
            entries: Arc::new(Mutex::new(BTreeMap::new())),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The agent's session the locks are held on (`None`: per node only).
    pub fn set_session(&self, session: Option<Arc<Session>>) {
        *lock(&self.session) = session;
    }

    /// Where a project is requeued when one of its locks is won, or
    /// released (a pass that saw it being released may have wanted it).
    pub fn set_triggers(&self, tx: Option<mpsc::UnboundedSender<ProjectName>>) {
        *lock(&self.triggers) = tx;
    }

    /// One pass for a restart-mode service whose values are ready: the
    /// replica to recreate now, if any. `value` is the lock's value (the
    /// instance id of the replica to go: never an env value).
    pub fn step(
        &self,
        project: &ProjectName,
        service: &ServiceName,
        replicas: &[ReplicaEnvState],
        value: &str,
    ) -> Option<u32> {
        let Some(session) = lock(&self.session).clone() else {
            return next_to_restart(replicas);
        };
        let key = (project.clone(), service.clone());
        let mut entries = lock(&self.entries);
        let (held, awaiting) = match entries.get_mut(&key) {
            Some(State::Campaigning { wanted }) => {
                *wanted = next_to_restart(replicas).is_some();
                return None;
            }
            Some(State::Releasing) => return None,
            Some(State::Held {
                leadership,
                awaiting,
            }) => {
                if !leadership.is_held() {
                    // The session is gone; the daemon starts a new one.
                    entries.remove(&key);
                    return None;
                }
                (true, *awaiting)
            }
            None => (false, None),
        };
        match roll_step(replicas, held, awaiting) {
            RollStep::Nothing | RollStep::Wait => None,
            RollStep::Campaign => {
                entries.insert(key.clone(), State::Campaigning { wanted: true });
                let lock_key =
                    StoreKey::EnvRoll(project.clone(), service.clone()).render(&self.prefix);
                let task = tokio::spawn(campaign(
                    self.store.clone(),
                    session,
                    lock_key,
                    value.as_bytes().to_vec(),
                    self.entries.clone(),
                    key,
                    lock(&self.triggers).clone(),
                ));
                self.keep_task(task);
                None
            }
            RollStep::Recreate(r) => {
                if let Some(State::Held { awaiting, .. }) = entries.get_mut(&key) {
                    *awaiting = Some(r);
                }
                Some(r)
            }
            RollStep::Release => {
                self.release(&mut entries, key);
                None
            }
        }
    }

    /// Releases (or stops wanting) the locks of `project`'s services not in
    /// `keep` (no longer restart mode, or the project is gone).
    pub fn forget(&self, project: &ProjectName, keep: &[ServiceName]) {
        let mut entries = lock(&self.entries);
        let gone: Vec<Key> = entries
            .keys()
            .filter(|(p, s)| p == project && !keep.contains(s))
            .cloned()
            .collect();
        for key in gone {
            match entries.get_mut(&key) {
                Some(State::Campaigning { wanted }) => *wanted = false,
                Some(State::Held { .. }) => self.release(&mut entries, key),
                _ => {}
            }
        }
    }

    /// Whether this agent holds the roll lock of `service` (for tests).
    pub fn holds(&self, project: &ProjectName, service: &ServiceName) -> bool {
        matches!(
            lock(&self.entries).get(&(project.clone(), service.clone())),
            Some(State::Held { .. })
        )
    }

    /// Stops campaigning; held locks go with the session (closed by the
    /// daemon right after).
    pub fn shutdown(&self) {
        for t in std::mem::take(&mut *lock(&self.tasks)) {
            t.abort();
        }
        lock(&self.entries).clear();
    }

    fn release(&self, entries: &mut BTreeMap<Key, State>, key: Key) {
        let Some(State::Held { leadership, .. }) = entries.insert(key.clone(), State::Releasing)
        else {
            return;
        };
        let (store, shared) = (self.store.clone(), self.entries.clone());
        let trigger = lock(&self.triggers).clone();
        let task = tokio::spawn(async move {
            let (project, service) = &key;
            tracing::info!(project = %project, service = %service, "env sync: roll lock released");
            if let Err(e) = store.resign(leadership).await {
                tracing::warn!(project = %project, service = %service, key = %format!("envroll/{project}/{service}"),
                    error = %e, "env sync: releasing the roll lock failed (it goes with the session)");
            }
            lock(&shared).remove(&key);
            if let Some(t) = &trigger {
                let _ = t.send(project.clone());
            }
        });
        self.keep_task(task);
    }

    fn keep_task(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

async fn campaign(
    store: DynStore,
    session: Arc<Session>,
    lock_key: String,
    value: Vec<u8>,
    entries: Arc<Mutex<BTreeMap<Key, State>>>,
    key: Key,
    trigger: Option<mpsc::UnboundedSender<ProjectName>>,
) {
    let (project, service) = (&key.0, &key.1);
    let mut delay = Duration::from_millis(200);
    loop {
        match store.campaign(&session, &lock_key, &value).await {
            Ok(leadership) => {
                let wanted = {
                    let mut e = lock(&entries);
                    let wanted = matches!(e.get(&key), Some(State::Campaigning { wanted: true }));
                    if wanted {
                        e.insert(
                            key.clone(),
                            State::Held {
                                leadership,
                                awaiting: None,
                            },
                        );
                        None
                    } else {
                        Some(leadership)
                    }
                };
                match wanted {
                    None => {
                        tracing::info!(project = %project, service = %service, key = %lock_key,
                            "env sync: roll lock acquired");
                        if let Some(t) = &trigger {
                            let _ = t.send(project.clone());
                        }
                    }
                    Some(leadership) => {
                        // Not needed any more: give it straight back, then
                        // forget the entry (a new campaign may start).
                        let _ = store.resign(leadership).await;
                        {
                            let mut e = lock(&entries);
                            if matches!(e.get(&key), Some(State::Campaigning { .. })) {
                                e.remove(&key);
                            }
                        }
                        if let Some(t) = &trigger {
                            let _ = t.send(project.clone());
                        }
                    }
                }
                return;
            }
            Err(cntnr_kv::Error::SessionLost { .. }) => {
                lock(&entries).remove(&key);
                return;
            }
            Err(e) => {
                tracing::warn!(project = %project, service = %service, key = %lock_key, error = %e, ?delay,
                    "env sync: campaigning for the roll lock failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(replica: u32, stale: bool, ready: bool) -> ReplicaEnvState {
        ReplicaEnvState {
            replica,
            stale,
            ready,
        }
    }

    #[test]
    fn campaigns_only_when_a_replica_may_go() {
        assert_eq!(
            roll_step(&[r(1, false, true)], false, None),
            RollStep::Nothing
        );
        assert_eq!(
            roll_step(&[r(1, true, true)], false, None),
            RollStep::Campaign
        );
        // A local replica is down: no campaign (it would block other nodes).
        assert_eq!(
            roll_step(&[r(1, true, true), r(2, false, false)], false, None),
            RollStep::Nothing
        );
        assert_eq!(roll_step(&[], false, None), RollStep::Nothing);
    }

    #[test]
    fn holds_until_the_recreated_replica_is_healthy_then_releases() {
        // Won: recreate the lowest stale replica.
        assert_eq!(
            roll_step(&[r(1, true, true), r(2, true, true)], true, None),
            RollStep::Recreate(1)
        );
        // Replica 1 is gone, then back but not healthy: wait, keep the lock.
        assert_eq!(
            roll_step(&[r(1, false, false), r(2, true, true)], true, Some(1)),
            RollStep::Wait
        );
        // Healthy: the next local one goes under the same lock.
        assert_eq!(
            roll_step(&[r(1, false, true), r(2, true, true)], true, Some(1)),
            RollStep::Recreate(2)
        );
        assert_eq!(
            roll_step(&[r(1, false, true), r(2, false, false)], true, Some(2)),
            RollStep::Wait
        );
        // All fresh and healthy: release.
        assert_eq!(
            roll_step(&[r(1, false, true), r(2, false, true)], true, Some(2)),
            RollStep::Release
        );
        // Won after nothing is stale any more: release at once.
        assert_eq!(
            roll_step(&[r(1, false, true)], true, None),
            RollStep::Release
        );
        // The awaited replica moved away from this node: not waited for.
        assert_eq!(
            roll_step(&[r(2, false, true)], true, Some(1)),
            RollStep::Release
        );
        // Another local replica is down (not ours): release rather than
        // block the other nodes.
        assert_eq!(
            roll_step(&[r(1, true, true), r(2, false, false)], true, None),
            RollStep::Release
        );
    }
}
