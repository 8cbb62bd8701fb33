//! What the reconciler calls for env sync and replica elections: one
//! [`EnvSync`] per agent holds every project's [`ProjectSync`] and every
//! local elected replica's [`ReplicaElection`], and turns their state into
//! steps for the reconciler (recreate one stale replica, signal one) —
//! the reconciler keeps doing all runtime work.
//!
//! Call sites (see `ARCHITECTURE.md`, env sync):
//! - [`EnvSync::set_triggers`] with the reconciler's trigger sender: a
//!   debounced change of a project's sources requeues the project.
//! - [`EnvSync::sync_project`] at the start of every pass (starts, restarts
//!   or stops the project's watches to match the spec).
//! - [`EnvSync::prepare`] before building a container's bundle: `Ready`
//!   values go into its environment and, after the build,
//!   [`EnvSync::write_env_file`] into `/run/cntnr/env`; `Wait`/`Fail` lines
//!   are the container's status error (names only) and it is not created.
//! - [`EnvSync::plan_env`] after a pass with the project's local
//!   containers: `Recreate` (restart mode, one replica at a time, only
//!   while every replica of the service is ready, and across the cluster
//!   only under the service's roll lock: [`super::roll`]) and `Signal`
//!   (signal mode; the file is already written) steps.
//! - [`EnvSync::set_session`] with the agent's session: the roll locks are
//!   held on it (without one, restarts are one at a time per node only).
//! - [`EnvSync::sync_elections`] after a pass with the same containers:
//!   campaigns for running healthy replicas of `cntnr.election` services,
//!   resigns for stopped or unhealthy ones; a flip of a replica's leader
//!   file is sent on the signal channel [`EnvSync::new`] returns, for the
//!   daemon to deliver with `runc kill`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cntnr_kv::{DynStore, Session};
use cntnr_model::{EnvOnChange, Prefix, Project, ProjectName, ServiceName, ServiceSpec};
use tokio::sync::mpsc;

use super::roll::RollLocks;
use super::watch::{ProjectSync, SyncConfig};
use super::{on_change, render_env_file, resolve, EnvAction, Needs, Readiness, ReplicaEnvState};
use crate::election_replica::{Candidate, ElectionTiming, ReplicaElection};

/// A signal the daemon should deliver to a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRequest {
    /// The container (`<project>-<service>-<replica>`).
    pub container: String,
    /// Canonical signal name, e.g. `SIGHUP`.
    pub signal: String,
    /// Why (for logs): `env` or `leader`.
    pub why: &'static str,
}

/// What [`EnvSync::prepare`] says about a container about to be created.
#[derive(Clone, PartialEq, Eq)]
pub enum Prepared {
    /// No synced variables.
    Nothing,
    /// Add these variables; write this `/run/cntnr/env`.
    Ready {
        /// Variable → value.
        vars: BTreeMap<String, String>,
        /// The env file's text.
        file: String,
    },
    /// Do not create it yet; the status line (names only).
    Wait(String),
    /// Do not create it; report this (names only).
    Fail(String),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Nothing => f.write_str("Nothing"),
            Prepared::Ready { vars, .. } => {
                write!(f, "Ready({:?})", vars.keys().collect::<Vec<_>>())
            }
            Prepared::Wait(l) => write!(f, "Wait({l:?})"),
            Prepared::Fail(l) => write!(f, "Fail({l:?})"),
        }
    }
}

/// One local replica, as the reconciler sees it after a pass. Pass every
/// replica the schedule puts on this node, with `running: false` for one
/// that is missing (e.g. being recreated): it holds back the rolling
/// restart until it is back and healthy.
#[derive(Clone, Debug)]
pub struct LocalReplica {
    /// Container id.
    pub id: String,
    /// Its service.
    pub service: ServiceName,
    /// Replica number.
    pub replica: u32,
    /// Running.
    pub running: bool,
    /// Running and healthy (or without a health check).
    pub healthy: bool,
    /// Its bundle dir.
    pub bundle: PathBuf,
    /// `<node>/<container id>`.
    pub instance: String,
    /// The node's `--address`. What `leader:` consumers get when it leads
    /// is [`leader_address`]: this for host/none services, where its
    /// registration points for bridge ones.
    pub address: String,
}

/// A step for the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvStep {
    /// Stop, delete and create this container again (its new bundle gets
    /// the fresh values).
    Recreate(String),
    /// Its env file was rewritten: send this signal.
    Signal(SignalRequest),
}

struct ProjectEntry {
    sync: ProjectSync,
    forwarder: tokio::task::JoinHandle<()>,
}

struct ElectionEntry {
    project: ProjectName,
    election: ReplicaElection,
    forwarder: tokio::task::JoinHandle<()>,
}

/// The agent's env sync and replica elections.
pub struct EnvSync {
    store: DynStore,
    prefix: Prefix,
    cfg: SyncConfig,
    timing: ElectionTiming,
    triggers: Mutex<Option<mpsc::UnboundedSender<ProjectName>>>,
    projects: Mutex<BTreeMap<ProjectName, ProjectEntry>>,
    elections: Mutex<BTreeMap<String, ElectionEntry>>,
    rolls: RollLocks,
    signals: mpsc::UnboundedSender<SignalRequest>,
}

impl std::fmt::Debug for EnvSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only.
        f.debug_struct("EnvSync")
            .field("projects", &lock(&self.projects).keys().collect::<Vec<_>>())
            .field(
                "elections",
                &lock(&self.elections).keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal a service's replicas get on a change (`signal:SIG`, else
/// SIGHUP).
pub fn change_signal(svc: &ServiceSpec) -> String {
    match &svc.agent.env_on_change {
        EnvOnChange::Signal(s) => s.clone(),
        _ => "SIGHUP".to_string(),
    }
}

impl EnvSync {
    /// An env sync over `store`; the receiver gets the signals to deliver.
    pub fn new(
        store: DynStore,
        prefix: Prefix,
        cfg: SyncConfig,
        timing: ElectionTiming,
    ) -> (Arc<EnvSync>, mpsc::UnboundedReceiver<SignalRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(EnvSync {
                rolls: RollLocks::new(store.clone(), prefix.clone()),
                store,
                prefix,
                cfg,
                timing,
                triggers: Mutex::new(None),
                projects: Mutex::new(BTreeMap::new()),
                elections: Mutex::new(BTreeMap::new()),
                signals: tx,
            }),
            rx,
        )
    }

    /// The agent's session, on which restart mode's roll locks are held
    /// (`None`: one at a time per node only).
    pub fn set_session(&self, session: Option<Arc<Session>>) {
        self.rolls.set_session(session);
    }

    /// Whether this agent holds `service`'s roll lock (for tests).
    pub fn holds_roll_lock(&self, project: &ProjectName, service: &ServiceName) -> bool {
        self.rolls.holds(project, service)
    }

    /// Where a debounced change of a project's sources is sent.
    pub fn set_triggers(&self, tx: Option<mpsc::UnboundedSender<ProjectName>>) {
        self.rolls.set_triggers(tx.clone());
        *lock(&self.triggers) = tx;
    }

    /// Matches `project`'s watches to its spec (`None`: gone). For a
    /// project whose spec does not parse, do not call it: its containers
    /// keep running on the watches they have.
    pub fn sync_project(&self, project: &ProjectName, spec: Option<&Project>) {
        let needs = spec
            .map(|p| Needs::of(p.services.values().map(|s| &s.agent)))
            .unwrap_or_default();
        if spec.is_none() {
            self.rolls.forget(project, &[]);
        }
        let mut projects = lock(&self.projects);
        if let Some(e) = projects.get(project) {
            if *e.sync.needs() == needs {
                return;
            }
        }
        if let Some(old) = projects.remove(project) {
            old.forwarder.abort();
        }
        if needs.is_empty() {
            return;
        }
        let sync = ProjectSync::start(self.store.clone(), &self.prefix, project, needs, self.cfg);
        let mut rx = sync.subscribe();
        let triggers = lock(&self.triggers).clone();
        let p = project.clone();
        let forwarder = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(t) = &triggers {
                    let _ = t.send(p.clone());
                }
            }
        });
        projects.insert(project.clone(), ProjectEntry { sync, forwarder });
    }

    /// Whether the project's sources are loaded (or it needs none).
    pub fn is_loaded(&self, project: &ProjectName) -> bool {
        lock(&self.projects)
            .get(project)
            .is_none_or(|e| e.sync.current().is_some())
    }

    /// The values of `svc`'s synced variables for a new container.
    pub fn prepare(&self, project: &ProjectName, svc: &ServiceSpec) -> Prepared {
        if svc.agent.env.is_empty() {
            return Prepared::Nothing;
        }
        let current = lock(&self.projects)
            .get(project)
            .and_then(|e| e.sync.current());
        let Some(synced) = current else {
            return Prepared::Wait("waiting: env sync sources are loading".to_string());
        };
        let r = resolve(&svc.agent, &synced.sources);
        let line = || r.status_line().unwrap_or_default();
        match r.readiness(svc.agent.env_missing) {
            Readiness::Ready => Prepared::Ready {
                file: render_env_file(&r.values),
                vars: r.values,
            },
            Readiness::Wait(_) => Prepared::Wait(format!("waiting: {}", line())),
            Readiness::Fail(_) => Prepared::Fail(line()),
        }
    }

    /// Writes a new container's `/run/cntnr/env` into its bundle (before
    /// `runc create`). An error names the path only.
    pub fn write_env_file(bundle: &std::path::Path, file: &str) -> std::io::Result<()> {
        let path = cntnr_reconcile::bundle::env_path(bundle);
        super::write_atomic(&path, file.as_bytes())
    }

    /// What the project's running containers need after their sources
    /// changed. Signal mode: the file is rewritten here, the step asks for
    /// the signal. Restart mode: at most one `Recreate` per service, only
    /// while all its local replicas are ready and this agent holds the
    /// service's roll lock (the campaign runs in the background and
    /// requeues the project when won).
    pub fn plan_env(
        &self,
        project: &ProjectName,
        spec: &Project,
        containers: &[LocalReplica],
    ) -> Vec<EnvStep> {
        let mut steps = Vec::new();
        let rolling_services: Vec<ServiceName> = spec
            .services
            .iter()
            .filter(|(_, s)| {
                !s.agent.env.is_empty() && s.agent.env_on_change == EnvOnChange::Restart
            })
            .map(|(n, _)| n.clone())
            .collect();
        self.rolls.forget(project, &rolling_services);
        for (name, svc) in &spec.services {
            if svc.agent.env.is_empty() {
                continue;
            }
            let prepared = self.prepare(project, svc);
            let Prepared::Ready { file, .. } = prepared else {
                // Missing or loading: running containers keep what they have.
                continue;
            };
            let mine: Vec<&LocalReplica> =
                containers.iter().filter(|c| &c.service == name).collect();
            let mut rolling = Vec::new();
            for c in &mine {
                let path = cntnr_reconcile::bundle::env_path(&c.bundle);
                let current = std::fs::read_to_string(&path).ok();
                let action = on_change(&svc.agent.env_on_change, current.as_deref(), &file);
                if !c.running {
                    // Stopped, or desired but not there (being recreated):
                    // the plan brings it back (a new container gets fresh
                    // values); until it is ready, no other replica goes.
                    rolling.push(ReplicaEnvState {
                        replica: c.replica,
                        stale: false,
                        ready: false,
                    });
                    continue;
                }
                match action {
                    EnvAction::Nothing => {}
                    EnvAction::WriteAndSignal(sig) => {
                        match super::write_atomic(&path, file.as_bytes()) {
                            Ok(()) => steps.push(EnvStep::Signal(SignalRequest {
                                container: c.id.clone(),
                                signal: sig,
                                why: "env",
                            })),
                            Err(e) => tracing::warn!(project = %project, service = %name,
                                container = %c.id, path = %path.display(), error = %e,
                                "writing the env file failed"),
                        }
                    }
                    EnvAction::Recreate => {}
                }
                rolling.push(ReplicaEnvState {
                    replica: c.replica,
                    stale: current.as_deref() != Some(file.as_str()),
                    ready: c.healthy,
                });
            }
            if svc.agent.env_on_change == EnvOnChange::Restart {
                // The lock's value: the instance that goes first (no value).
                let first = rolling
                    .iter()
                    .filter(|r| r.stale)
                    .map(|r| r.replica)
                    .min()
                    .and_then(|r| mine.iter().find(|c| c.replica == r))
                    .map(|c| c.instance.clone())
                    .unwrap_or_default();
                if let Some(r) = self.rolls.step(project, name, &rolling, &first) {
                    if let Some(c) = mine.iter().find(|c| c.replica == r) {
                        steps.push(EnvStep::Recreate(c.id.clone()));
                    }
                }
            }
        }
        steps
    }

    /// Campaigns for running healthy replicas of elected services; resigns
    /// for the others (at once when stopped, after the deadline they saw
    /// when unhealthy) and for containers no longer listed.
    pub fn sync_elections(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        containers: &[LocalReplica],
    ) {
        let mut elections = lock(&self.elections);
        let mut keep: Vec<String> = Vec::new();
        for c in containers {
            let Some(svc) = spec.and_then(|p| p.services.get(&c.service)) else {
                continue;
            };
            if !svc.agent.election || !c.running || !c.healthy {
                continue;
            }
            keep.push(c.id.clone());
            if elections.contains_key(&c.id) {
                continue;
            }
            let election = ReplicaElection::start(
                self.store.clone(),
                &self.prefix,
                Candidate {
                    project: project.clone(),
                    service: c.service.clone(),
                    instance: c.instance.clone(),
                    address: leader_address(project, svc, c),
                    leader_file: cntnr_reconcile::bundle::leader_path(&c.bundle),
                },
                self.timing,
            );
            let mut rx = election.subscribe();
            let signals = self.signals.clone();
            let container = c.id.clone();
            let signal = change_signal(svc);
            let forwarder = tokio::spawn(async move {
                let mut was = rx.borrow_and_update().leader;
                while rx.changed().await.is_ok() {
                    let now = rx.borrow_and_update().leader;
                    if now != was {
                        let _ = signals.send(SignalRequest {
                            container: container.clone(),
                            signal: signal.clone(),
                            why: "leader",
                        });
                        was = now;
                    }
                }
            });
            elections.insert(
                c.id.clone(),
                ElectionEntry {
                    project: project.clone(),
                    election,
                    forwarder,
                },
            );
        }
        let gone: Vec<String> = elections
            .iter()
            .filter(|(id, e)| &e.project == project && !keep.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let Some(e) = elections.remove(&id) else {
                continue;
            };
            let running = containers.iter().any(|c| c.id == id && c.running);
            tokio::spawn(async move {
                // Resigning flips the file to false: the replica still gets
                // its signal.
                if running {
                    e.election.resign().await;
                } else {
                    e.election.resign_now().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                e.forwarder.abort();
            });
        }
    }

    /// The election of a local container, if it campaigns (for tests and
    /// status).
    pub fn leader_state(&self, id: &str) -> Option<crate::election_replica::LeaderState> {
        lock(&self.elections).get(id).map(|e| e.election.state())
    }

    /// Stops everything (end of a session, agent shutdown): watches end;
    /// elections are dropped, so leaders' files say `false` at once and
    /// their locks go after the deadlines they wrote (or when their
    /// sessions lapse, if the agent exits first).
    pub fn shutdown(&self) {
        for (_, e) in std::mem::take(&mut *lock(&self.projects)) {
            e.forwarder.abort();
        }
        for (_, e) in std::mem::take(&mut *lock(&self.elections)) {
            e.forwarder.abort();
        }
        self.rolls.shutdown();
    }
}

/// The [`LocalReplica`]s of a pass: every replica `desired` puts on this
/// node, with what the runtime says of it (`mine`: the project's
/// containers) and its health (`health`). A replica with a health check
/// counts as healthy only once `Healthy`; one without, once running.
pub fn local_replicas(
    desired: &cntnr_reconcile::plan::Desired,
    mine: &[cntnr_reconcile::runtime::ContainerState],
    bundles: &cntnr_reconcile::bundle::BundleConfig,
    node: &str,
    address: &str,
    health: impl Fn(&cntnr_reconcile::runtime::ContainerId) -> cntnr_model::records::Health,
) -> Vec<LocalReplica> {
    use cntnr_model::records::Health;
    use cntnr_reconcile::runtime::Status;
    desired
        .replicas
        .iter()
        .map(|r| {
            let running = mine
                .iter()
                .any(|c| c.id == r.id && c.status == Status::Running);
            let healthy = running && matches!(health(&r.id), Health::None | Health::Healthy);
            LocalReplica {
                id: r.id.as_str().to_string(),
                service: r.service.clone(),
                replica: r.replica,
                running,
                healthy,
                bundle: bundles.bundle_path(&r.id),
                instance: format!("{node}/{}", r.id),
                address: address.to_string(),
            }
        })
        .collect()
}

/// The address `leader:` consumers get when `c` leads: where its
/// registration points ([`crate::registration::endpoint`]). For a bridge
/// service that is the node's address when it publishes a port, else its
/// container IP (from the hook's result in its bundle); for host and none
/// services, or a bridge replica without either yet, the node's address
/// (`c.address`).
pub fn leader_address(project: &ProjectName, svc: &ServiceSpec, c: &LocalReplica) -> String {
    if svc.network_mode != cntnr_model::NetworkMode::Bridge {
        return c.address.clone();
    }
    let node = c
        .instance
        .split_once('/')
        .and_then(|(n, _)| cntnr_model::NodeName::new(n).ok());
    let (Ok(node_address), Some(node)) = (c.address.parse::<std::net::IpAddr>(), node) else {
        return c.address.clone();
    };
    let (container_ip, published) = crate::daemon::network::container_addresses(&c.bundle);
    let r = crate::registration::RunningReplica {
        project,
        service: &c.service,
        spec: svc,
        replica: c.replica,
        config_hash: "",
        node: &node,
        node_address,
        container_ip,
        published: &published,
    };
    crate::registration::endpoint(&r).map_or_else(|| c.address.clone(), |(ip, _)| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntnr_hook::request::{NetResult, NetworkResult, PortMapping4Cni};
    use cntnr_hook::{PortProtocol, RESULT_FILE};

    fn hook_result(bundle: &std::path::Path, ip: &str, published: Option<(u16, u16)>) {
        let r = NetResult {
            container_id: "shop-db-1".into(),
            networks: vec![NetworkResult {
                name: "cntnr.shop.default".into(),
                ifname: "eth0".into(),
                ips: vec![ip.parse().unwrap()],
                cni_result: serde_json::Value::Null,
                conflist: serde_json::Value::Null,
            }],
            ports: published
                .into_iter()
                .map(|(container_port, host_port)| PortMapping4Cni {
                    host_port,
                    container_port,
                    protocol: PortProtocol::Tcp,
                    host_ip: "0.0.0.0".into(),
                })
                .collect(),
        };
        std::fs::write(bundle.join(RESULT_FILE), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    #[test]
    fn leader_address_is_where_the_replica_registers() {
        let project = ProjectName::new("shop").unwrap();
        let spec = cntnr_model::load_stored(
            &project,
            "projects/shop",
            "services:\n  db:\n    image: x\n    expose: [\"5432\"]\n  pub:\n    image: x\n    ports: [\"8080:80\"]\n  host:\n    image: x\n    network_mode: host\n",
        )
        .unwrap();
        let svc = |n: &str| &spec.services[&ServiceName::new(n).unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let local = |service: &str| LocalReplica {
            id: format!("shop-{service}-1"),
            service: ServiceName::new(service).unwrap(),
            replica: 1,
            running: true,
            healthy: true,
            bundle: dir.path().to_path_buf(),
            instance: format!("n1/shop-{service}-1"),
            address: "192.0.2.10".into(),
        };
        // No hook result yet: the node's address.
        assert_eq!(
            leader_address(&project, svc("db"), &local("db")),
            "192.0.2.10"
        );
        // Bridge without a published port: its container IP.
        hook_result(dir.path(), "10.90.0.7", None);
        assert_eq!(
            leader_address(&project, svc("db"), &local("db")),
            "10.90.0.7"
        );
        // Host networking: the node's address, whatever the bundle says.
        assert_eq!(
            leader_address(&project, svc("host"), &local("host")),
            "192.0.2.10"
        );
        // A published port: reached at the node's address.
        hook_result(dir.path(), "10.90.0.8", Some((80, 8080)));
        assert_eq!(
            leader_address(&project, svc("pub"), &local("pub")),
            "192.0.2.10"
        );
    }
}
