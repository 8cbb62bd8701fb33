//! Health checks and service registration, wired into the daemon (issue 6).
//!
//! Two halves:
//! - [`Supervisor`] (lives as long as the agent, like the reconciler's
//!   engine): one [`Checker`] per running container whose service has a
//!   check, and the *desired* registry entry of every registered replica
//!   with its current health. The reconciler tells it when a container
//!   started ([`Supervisor::started`]), is about to stop
//!   ([`Supervisor::before_stop`]: deregister first, then `cntnr.drain`),
//!   exited ([`Supervisor::exited`]: critical at once) or is gone; every
//!   pass adopts running containers it does not know yet
//!   ([`Supervisor::sync_project`]; after an agent restart the last status
//!   is resumed from a small hints file, so a healthy container does not
//!   flap through `starting`). Health changes trigger the container's
//!   project (status, `depends_on`, unhealthy → restart) and wake the
//!   registry writer.
//! - [`run`] (one per store session): the only writer of the registry. It
//!   makes the store match the desired entries — register what is missing
//!   or changed, deregister what is no longer desired, and write each TTL
//!   check on change or when its refresh is due ([`CheckWrites`]) — woken
//!   by every change (event-driven), else at the next refresh. A new
//!   session starts from nothing written, so every entry is registered
//!   again (etcd/dir records are bound to the session). Once the first full
//!   reconcile is done it removes entries this node owns whose containers
//!   no longer exist, under any service name the store holds, and nothing
//!   else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use cntnr_kv::{DynStore, Registration, Session};
use cntnr_model::records::{CheckStatus, Health, HEALTH_OUTPUT_MAX};
use cntnr_model::{NetworkMode, NodeName, Project, ProjectName, ServiceName, ServiceSpec};
use cntnr_reconcile::runtime::{annotations, ContainerId, ContainerState, Runtime, Status};
use tokio::sync::{mpsc, watch};

use super::host::Runc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::health::{
    registry_health, Checker, CheckerStart, ContainerProbes, HealthConfig, HealthEvent,
    HealthReport,
};
use crate::registration::{
    owned_container, registration, CheckWrites, RegistrationTimings, RunningReplica,
};

/// How long [`Supervisor::before_stop`] waits for the registry writer to
/// confirm a deregistration (a store outage must not block stops).
const DEREGISTER_WAIT: Duration = Duration::from_secs(5);
/// How often the writer retries after a failed write.
const RETRY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One container the supervisor follows.
#[derive(Debug)]
struct Tracked {
    project: ProjectName,
    service: ServiceName,
    /// Its checks (`None`: health `none`).
    config: Option<HealthConfig>,
    /// Where direct probes reach it (see [`Supervisor::probe_address`]).
    probe_ip: Option<IpAddr>,
    /// `cntnr.drain`.
    drain: Duration,
    checker: Option<Checker>,
    /// Followed from the hints file only, with this last known health,
    /// until the reconciler adopts it.
    provisional: Option<Health>,
    /// Its registry entry while it should be registered.
    entry: Option<Registration>,
    /// It exited: critical until it runs again.
    dead: bool,
}

impl Tracked {
    fn report(&self) -> Option<HealthReport> {
        match (&self.checker, self.provisional) {
            (Some(c), _) => Some(c.current()),
            (None, Some(h)) if h != Health::None => Some(HealthReport {
                status: h,
                failing_streak: 0,
                output: String::new(),
                probes: 0,
                changed_at: None,
            }),
            _ => None,
        }
    }

    fn health(&self) -> Health {
        self.report().map_or(Health::None, |r| r.status)
    }
}

/// What is kept across agent restarts per running container
/// (`<state-dir>/health.json`): its last health and registry entry. Only a
/// hint: a container that no longer runs is ignored, and one that does is
/// re-probed; the hint decides where its state machine resumes, and keeps
/// its entry refreshed from the moment the agent has a session until the
/// reconciler adopts it (so an agent restart is no critical flap).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Hint {
    project: String,
    health: Health,
    #[serde(default)]
    entry: Option<Registration>,
}

type Hints = BTreeMap<String, Hint>;

/// Checkers and desired registry entries (see the module docs).
#[derive(Debug)]
pub struct Supervisor {
    runc: Arc<Runc>,
    node: NodeName,
    node_address: IpAddr,
    timings: RegistrationTimings,
    hints_path: PathBuf,
    events: mpsc::Sender<HealthEvent>,
    cancel: CancellationToken,
    tracked: Mutex<BTreeMap<ContainerId, Tracked>>,
    hints: Mutex<Hints>,
    /// Bumped on every change of the desired registry.
    rev: watch::Sender<u64>,
    /// Instance id → the entry and check status the registry writer last
    /// wrote in this session (what a stop waits to see gone, and what
    /// status records show, see [`Supervisor::registry_status`]).
    written: watch::Sender<BTreeMap<String, (Registration, cntnr_kv::Health)>>,
    /// Whether a registry writer runs (a store session exists).
    writing: std::sync::atomic::AtomicBool,
    triggers: Mutex<Option<mpsc::UnboundedSender<ProjectName>>>,
}

impl Supervisor {
    /// A supervisor; its event loop runs until [`Supervisor::shutdown`].
    pub fn start(
        runc: Runc,
        node: NodeName,
        node_address: IpAddr,
        timings: RegistrationTimings,
        state_dir: &std::path::Path,
    ) -> Arc<Supervisor> {
        let hints_path = state_dir.join("health.json");
        let hints: Hints = std::fs::read(&hints_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let (events, mut rx) = mpsc::channel::<HealthEvent>(1024);
        let sup = Arc::new(Supervisor {
            runc: Arc::new(runc),
            node,
            node_address,
            timings,
            hints_path,
            events,
            cancel: CancellationToken::new(),
            tracked: Mutex::new(BTreeMap::new()),
            hints: Mutex::new(hints),
            rev: watch::channel(0).0,
            written: watch::channel(BTreeMap::new()).0,
            writing: std::sync::atomic::AtomicBool::new(false),
            triggers: Mutex::new(None),
        });
        let weak = Arc::downgrade(&sup);
        let cancel = sup.cancel.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = rx.recv() => match ev { Some(ev) => ev, None => return },
                };
                let Some(sup) = weak.upgrade() else { return };
                sup.on_event(ev);
            }
        });
        sup
    }

    /// Stops every checker and the event loop (agent exit; containers keep
    /// running, and their entries stay registered until their TTL lapses).
    pub fn shutdown(&self) {
        self.cancel.cancel();
        lock(&self.tracked).clear();
    }

    /// Where health changes trigger a reconcile of the container's project.
    pub fn set_triggers(&self, tx: Option<mpsc::UnboundedSender<ProjectName>>) {
        *lock(&self.triggers) = tx;
    }

    /// The registry timings.
    pub fn timings(&self) -> RegistrationTimings {
        self.timings
    }

    fn on_event(&self, ev: HealthEvent) {
        let project = {
            let tracked = lock(&self.tracked);
            let Some(t) = tracked.get(&ev.container) else {
                return;
            };
            t.project.clone()
        };
        tracing::info!(
            container = %ev.container,
            health = ?ev.report.status,
            failing_streak = ev.report.failing_streak,
            "health changed"
        );
        self.set_hint(&ev.container, true);
        self.bump();
        if let Some(tx) = lock(&self.triggers).as_ref() {
            let _ = tx.send(project);
        }
    }

    fn bump(&self) {
        self.rev.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Records the hint of a followed container (or drops it).
    fn set_hint(&self, id: &ContainerId, keep: bool) {
        let hint = if keep {
            lock(&self.tracked).get(id).map(|t| Hint {
                project: t.project.to_string(),
                health: t.health(),
                entry: t.entry.clone(),
            })
        } else {
            None
        };
        let mut hints = lock(&self.hints);
        let changed = match hint {
            Some(h) => {
                let same = hints
                    .get(id.as_str())
                    .is_some_and(|o| o.health == h.health && o.entry == h.entry);
                hints.insert(id.to_string(), h);
                !same
            }
            None => hints.remove(id.as_str()).is_some(),
        };
        if !changed {
            return;
        }
        let tmp = self.hints_path.with_extension("json.tmp");
        let r = serde_json::to_vec(&*hints)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.hints_path));
        if let Err(e) = r {
            tracing::warn!(path = %self.hints_path.display(), error = %e, "writing health hints");
        }
    }

    /// The health of a container as the plan and status see it.
    pub fn report(&self, id: &ContainerId) -> Option<HealthReport> {
        lock(&self.tracked).get(id).and_then(Tracked::report)
    }

    /// The health status of a container (`none` when unchecked or unknown).
    pub fn health(&self, id: &ContainerId) -> Health {
        lock(&self.tracked)
            .get(id)
            .map_or(Health::None, Tracked::health)
    }

    /// Where direct probes reach the container: the host's loopback with
    /// `network_mode: host`, the container's own IP on a bridge network
    /// (from the hook's result in its bundle). `none`: nowhere, so its
    /// direct probes are left out (exec checks still run).
    fn probe_address(mode: &NetworkMode, bundle: &std::path::Path) -> Option<IpAddr> {
        match mode {
            NetworkMode::Host => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            NetworkMode::None => None,
            NetworkMode::Bridge => crate::daemon::network::container_addresses(bundle).0,
        }
    }

    fn spawn_checker(
        &self,
        id: &ContainerId,
        config: &HealthConfig,
        probe_ip: Option<IpAddr>,
        start: CheckerStart,
    ) -> Option<Checker> {
        let mut config = config.clone();
        let address = match probe_ip {
            Some(a) => a,
            None => {
                config.http = None;
                config.tcp = None;
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        };
        if config.exec.is_none() && config.http.is_none() && config.tcp.is_none() {
            return None;
        }
        let policy = config.policy;
        let probes = ContainerProbes::new(self.runc.clone(), id.clone(), address, config);
        Some(Checker::spawn(
            id.clone(),
            policy,
            probes,
            start,
            self.events.clone(),
            &self.cancel,
        ))
    }

    fn entry_of(
        &self,
        project: &ProjectName,
        service: &ServiceName,
        spec: &ServiceSpec,
        replica: u32,
        config_hash: &str,
        bundle: &std::path::Path,
    ) -> Option<Registration> {
        // A bridge container's IP and published ports, from the hook's
        // result in its bundle (none for host/none networking).
        let (container_ip, published) = crate::daemon::network::container_addresses(bundle);
        registration(
            &RunningReplica {
                project,
                service,
                spec,
                replica,
                config_hash,
                node: &self.node,
                node_address: self.node_address,
                container_ip,
                published: &published,
            },
            self.timings,
        )
    }

    /// A container of `project` has just been started: a fresh checker
    /// (`starting`), and its entry registered (critical until its first
    /// passing check; passing at once without a check).
    pub async fn started(&self, project: &ProjectName, spec: Option<&Project>, id: &ContainerId) {
        let state = match self.runc.state(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                // The next pass adopts it.
                tracing::debug!(container = %id, error = %e, "reading the state of a started container");
                return;
            }
        };
        if let Some(t) = self.track(project, spec, &state, CheckerStart::FRESH) {
            lock(&self.tracked).insert(id.clone(), t);
            self.set_hint(id, true);
            self.bump();
        } else {
            self.set_hint(id, false);
        }
    }

    /// What to follow of running container `c`, if its service is known.
    fn track(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        c: &ContainerState,
        start: CheckerStart,
    ) -> Option<Tracked> {
        let service = ServiceName::new(c.annotations.get(annotations::SERVICE)?.as_str()).ok()?;
        let svc = spec?.services.get(&service)?;
        let config = HealthConfig::from_spec(svc);
        let probe_ip = Self::probe_address(&svc.network_mode, &c.bundle);
        let checker = config
            .as_ref()
            .and_then(|cfg| self.spawn_checker(&c.id, cfg, probe_ip, start));
        Some(Tracked {
            project: project.clone(),
            service,
            config,
            probe_ip,
            drain: svc.agent.drain,
            checker,
            provisional: None,
            entry: self.replica_entry(project, spec, c),
            dead: false,
        })
    }

    /// A known container was run again by its restart policy: a fresh
    /// checker, alive again. (An unknown one is adopted by the next pass.)
    pub fn restarted(&self, id: &ContainerId) {
        let mut tracked = lock(&self.tracked);
        if let Some(t) = tracked.get_mut(id) {
            t.checker = None;
            t.checker = t
                .config
                .clone()
                .and_then(|c| self.spawn_checker(id, &c, t.probe_ip, CheckerStart::FRESH));
            t.dead = false;
        }
        drop(tracked);
        self.set_hint(id, false);
        self.bump();
    }

    /// The container exited: its checker stops and its entry goes
    /// critical at once.
    pub fn exited(&self, id: &ContainerId) {
        let mut tracked = lock(&self.tracked);
        if let Some(t) = tracked.get_mut(id) {
            t.checker = None;
            t.dead = true;
        }
        drop(tracked);
        self.set_hint(id, false);
        self.bump();
    }

    /// Before stopping a running container: deregister it (waiting for the
    /// registry writer to confirm, at most [`DEREGISTER_WAIT`]), then let it
    /// serve for its `cntnr.drain` (only if it was registered). Its checker
    /// stops.
    pub async fn before_stop(&self, id: &ContainerId) {
        let (registered, drain) = {
            let mut tracked = lock(&self.tracked);
            match tracked.get_mut(id) {
                Some(t) => {
                    t.checker = None;
                    (t.entry.take().map(|e| e.id), t.drain)
                }
                None => (None, Duration::ZERO),
            }
        };
        self.set_hint(id, false);
        let Some(instance) = registered else {
            return;
        };
        self.bump();
        if self.writing.load(std::sync::atomic::Ordering::SeqCst) {
            let mut written = self.written.subscribe();
            let _ = tokio::time::timeout(
                DEREGISTER_WAIT,
                written.wait_for(|w| !w.contains_key(&instance)),
            )
            .await;
        }
        if !drain.is_zero() {
            tracing::info!(container = %id, ?drain, "deregistered; draining before the stop signal");
            tokio::time::sleep(drain).await;
        }
    }

    /// The container is gone (removed): forget it.
    pub fn removed(&self, id: &ContainerId) {
        if lock(&self.tracked).remove(id).is_some() {
            self.bump();
        }
        self.set_hint(id, false);
    }

    /// Brings the supervisor in line with the runtime for one project, at
    /// every pass: running containers it does not follow are adopted (after
    /// an agent restart: checker resumed from the last known status, the
    /// container's age from `started`), stopped ones are marked dead, gone
    /// ones forgotten; entries follow registration-relevant spec changes
    /// (tags, name) that do not recreate the container. `spec` is `None`
    /// when the project is gone or does not parse (nothing is adopted).
    pub fn sync_project(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        mine: &[ContainerState],
        started: impl Fn(&ContainerId) -> Option<SystemTime>,
    ) {
        let mut changed = false;
        let mut adopted = Vec::new();
        let mut tracked = lock(&self.tracked);
        let present: BTreeSet<&ContainerId> = mine.iter().map(|c| &c.id).collect();
        let gone: Vec<ContainerId> = tracked
            .iter()
            .filter(|(id, t)| &t.project == project && !present.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracked.remove(&id);
            changed = true;
        }
        for c in mine {
            let running = matches!(c.status, Status::Running | Status::Paused);
            if let Some(t) = tracked.get_mut(&c.id).filter(|t| t.provisional.is_none()) {
                if !running && !t.dead && c.status == Status::Stopped {
                    t.checker = None;
                    t.dead = true;
                    changed = true;
                }
                // Running: registered as the spec says now (tags or name
                // edited without a recreate; back after an unhealthy
                // kill and restart, whose stop deregistered it).
                if running {
                    if let Some(e) = self.replica_entry(project, spec, c) {
                        if t.entry.as_ref() != Some(&e) {
                            t.entry = Some(e);
                            changed = true;
                        }
                    }
                    // Checks and drain are outside the config hash: an
                    // edit applies to the running container (its checker
                    // restarts where its health stands).
                    if let Some(svc) = spec.and_then(|p| p.services.get(&t.service)) {
                        t.drain = svc.agent.drain;
                        let config = HealthConfig::from_spec(svc);
                        if config != t.config && !t.dead {
                            let resume = t.health();
                            let age = started(&c.id)
                                .and_then(|s| SystemTime::now().duration_since(s).ok())
                                .unwrap_or_default();
                            t.checker = None;
                            t.checker = config.as_ref().and_then(|cfg| {
                                self.spawn_checker(
                                    &c.id,
                                    cfg,
                                    t.probe_ip,
                                    CheckerStart { age, resume },
                                )
                            });
                            t.config = config;
                            tracing::info!(container = %c.id, "health check changed; checker restarted");
                            changed = true;
                        }
                    }
                }
                continue;
            }
            if !running {
                continue;
            }
            let resume = lock(&self.hints)
                .get(c.id.as_str())
                .map_or(Health::Starting, |h| h.health);
            let age = started(&c.id)
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let Some(t) = self.track(project, spec, c, CheckerStart { age, resume }) else {
                continue;
            };
            tracing::info!(container = %c.id, resume = ?resume, "adopted for health checks and registration");
            tracked.insert(c.id.clone(), t);
            adopted.push(c.id.clone());
            changed = true;
        }
        drop(tracked);
        for id in adopted {
            self.set_hint(&id, true);
        }
        if changed {
            self.bump();
        }
    }

    /// At agent start, before any session: follows, provisionally, every
    /// running container the hints file has an entry for, with its last
    /// health, so the first session's registry writer refreshes (Consul) or
    /// re-creates (etcd, dir) its entry at once; the reconciler's adoption
    /// replaces it with a checked one.
    pub async fn preload(&self) {
        let running: BTreeSet<ContainerId> = match self.runc.list().await {
            Ok(list) => list
                .into_iter()
                .filter(|c| matches!(c.status, Status::Running | Status::Paused))
                .map(|c| c.id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing containers to resume registrations");
                return;
            }
        };
        let hints = lock(&self.hints).clone();
        let mut tracked = lock(&self.tracked);
        for (id, h) in hints {
            let Ok(id) = ContainerId::new(id.as_str()) else {
                continue;
            };
            let (Some(entry), true) = (h.entry, running.contains(&id)) else {
                continue;
            };
            let (Ok(project), Some(Ok(service))) = (
                ProjectName::new(h.project.as_str()),
                entry
                    .meta
                    .get(crate::registration::meta::SERVICE)
                    .map(|s| ServiceName::new(s.as_str())),
            ) else {
                continue;
            };
            tracked.insert(
                id,
                Tracked {
                    project,
                    service,
                    config: None,
                    probe_ip: None,
                    drain: Duration::ZERO,
                    checker: None,
                    entry: Some(entry),
                    dead: false,
                    provisional: Some(h.health),
                },
            );
        }
        drop(tracked);
        self.bump();
    }

    fn replica_entry(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        c: &ContainerState,
    ) -> Option<Registration> {
        let service = ServiceName::new(c.annotations.get(annotations::SERVICE)?.as_str()).ok()?;
        let replica: u32 = c.annotations.get(annotations::REPLICA)?.parse().ok()?;
        let hash = c.annotations.get(annotations::CONFIG_HASH)?;
        let svc = spec?.services.get(&service)?;
        self.entry_of(project, &service, svc, replica, hash, &c.bundle)
    }

    /// Every entry that should be in the registry, with its health and
    /// check output.
    fn desired(&self) -> Vec<Desired> {
        lock(&self.tracked)
            .values()
            .filter_map(|t| {
                let e = t.entry.clone()?;
                let (health, output, changed_at) = if t.dead {
                    (
                        cntnr_kv::Health::Critical,
                        "container exited".to_string(),
                        None,
                    )
                } else {
                    match t.report() {
                        Some(r) => (registry_health(r.status), r.output, r.changed_at),
                        None => (cntnr_kv::Health::Passing, String::new(), None),
                    }
                };
                Some(Desired {
                    project: t.project.clone(),
                    entry: e,
                    health,
                    output,
                    changed_at,
                })
            })
            .collect()
    }

    /// A container's health, failing streak and last output (capped), for
    /// its status record.
    pub fn status_fields(&self, id: &ContainerId) -> (Health, u32, Option<String>) {
        match self.report(id) {
            Some(r) => (
                r.status,
                r.failing_streak,
                (!r.output.is_empty()).then(|| cap(&r.output, HEALTH_OUTPUT_MAX)),
            ),
            None => (Health::None, 0, None),
        }
    }

    /// The registry status of a followed container's entry: the check
    /// status this session last wrote for exactly that entry (a new
    /// container of the same replica has another config hash, so another
    /// entry), `Pending` while it should be registered but is not written
    /// (yet); `None` if it has no entry (not registered, or nothing a client
    /// could reach, e.g. `network_mode: none`).
    pub fn registry_status(&self, id: &ContainerId) -> Option<CheckStatus> {
        let entry = lock(&self.tracked).get(id)?.entry.clone()?;
        let written = self.written.borrow();
        Some(match written.get(&entry.id) {
            Some((e, h)) if *e == entry => match h {
                cntnr_kv::Health::Passing => CheckStatus::Passing,
                cntnr_kv::Health::Warning => CheckStatus::Warning,
                cntnr_kv::Health::Critical => CheckStatus::Critical,
            },
            _ => CheckStatus::Pending,
        })
    }

    /// Records what the writer wrote for `entry` (`None`: removed); a
    /// change re-runs `project`'s pass, so its status record shows it.
    fn publish(
        &self,
        instance: &str,
        project: Option<&ProjectName>,
        written: Option<(&Registration, cntnr_kv::Health)>,
    ) {
        let changed = self.written.send_if_modified(|p| match written {
            Some((e, h)) => {
                let new = (e.clone(), h);
                p.insert(instance.to_string(), new.clone()).as_ref() != Some(&new)
            }
            None => p.remove(instance).is_some(),
        });
        if let (true, Some(project)) = (changed, project) {
            if let Some(tx) = lock(&self.triggers).as_ref() {
                let _ = tx.send(project.clone());
            }
        }
    }

    /// The service name of a followed container (for logs).
    pub fn service_of(&self, id: &ContainerId) -> Option<ServiceName> {
        lock(&self.tracked).get(id).map(|t| t.service.clone())
    }
}

fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// One entry as it should be in the registry.
struct Desired {
    project: ProjectName,
    entry: Registration,
    health: cntnr_kv::Health,
    output: String,
    /// When the checker saw the health change.
    changed_at: Option<tokio::time::Instant>,
}

/// What the writer has put in the registry this session.
struct Written {
    entry: Registration,
    writes: CheckWrites,
    /// The check status last written.
    health: Option<cntnr_kv::Health>,
}

/// The registry writer of one session (see the module docs). Never fails:
/// a failed write is retried after [`RETRY`].
pub async fn run(
    store: DynStore,
    session: Arc<Session>,
    sup: Arc<Supervisor>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<()> {
    let mut written: BTreeMap<String, Written> = BTreeMap::new();
    let mut rev = sup.rev.subscribe();
    let mut cleaned = false;
    sup.written.send_replace(BTreeMap::new());
    sup.writing.store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        rev.borrow_and_update();
        let failed = write(&store, &session, &sup, &shared, &mut written).await;
        if !cleaned && shared.is_ready() {
            cleaned = clean_orphans(&store, &sup, &written).await;
        }
        let now = tokio::time::Instant::now();
        let mut next = written
            .values()
            .filter_map(|w| w.writes.next_refresh())
            .min()
            .unwrap_or(now + sup.timings.refresh_every());
        if failed || !cleaned {
            next = next.min(now + RETRY);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = rev.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    sup.writing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    sup.written.send_replace(BTreeMap::new());
    Ok(())
}

/// One round of writes; `true` if any failed.
async fn write(
    store: &DynStore,
    session: &Session,
    sup: &Supervisor,
    shared: &Shared,
    written: &mut BTreeMap<String, Written>,
) -> bool {
    let desired = sup.desired();
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.entry.id.as_str()).collect();
    let mut failed = false;
    let stale: Vec<String> = written
        .keys()
        .filter(|id| !wanted.contains(id.as_str()))
        .cloned()
        .collect();
    for id in stale {
        let name = written[&id].entry.name.clone();
        match store.deregister(&name, &id).await {
            Ok(()) => {
                tracing::info!(service = %name, instance = %id, "deregistered");
                written.remove(&id);
                sup.publish(&id, None, None);
            }
            Err(e) => {
                failed = true;
                tracing::warn!(service = %name, instance = %id, error = %e, "deregistering failed; will retry");
            }
        }
    }
    for Desired {
        project,
        entry,
        health,
        output,
        changed_at,
    } in desired
    {
        let id = entry.id.clone();
        let fresh = match written.get(&id) {
            Some(w) if w.entry == entry => false,
            Some(w) if w.entry.name != entry.name => {
                // Renamed: the old name's entry goes first.
                if let Err(e) = store.deregister(&w.entry.name, &id).await {
                    failed = true;
                    tracing::warn!(service = %w.entry.name, instance = %id, error = %e, "deregistering the old name failed; will retry");
                    continue;
                }
                true
            }
            _ => true,
        };
        if fresh {
            // Registered with its current health: a starting instance is
            // never passing, not even for a moment.
            if let Err(e) = store.register_with_status(session, &entry, health).await {
                failed = true;
                tracing::warn!(service = %entry.name, instance = %id, error = %e, "registering failed; will retry");
                continue;
            }
            tracing::info!(service = %entry.name, instance = %id, address = %entry.address, port = entry.port, "registered");
            sup.publish(&id, Some(&project), Some((&entry, health)));
            written.insert(
                id.clone(),
                Written {
                    entry: entry.clone(),
                    writes: CheckWrites::new(sup.timings),
                    health: None,
                },
            );
        }
        let w = written.get_mut(&id).expect("just written");
        let now = tokio::time::Instant::now();
        if !w.writes.due(now, health) {
            continue;
        }
        match store
            .set_check(session, &entry.name, &id, health, &output)
            .await
        {
            Ok(()) => {
                w.writes.written(now, health);
                // A change reached the registry: how long after the check
                // reported it.
                if w.health.is_some_and(|h| h != health) {
                    if let Some(t) = changed_at {
                        shared.metrics.health_to_registry(t.elapsed());
                    }
                }
                w.health = Some(health);
                sup.publish(&id, Some(&project), Some((&entry, health)));
            }
            Err(e) => {
                failed = true;
                w.writes.reset();
                tracing::warn!(service = %entry.name, instance = %id, error = %e, "writing the check failed; will retry");
            }
        }
    }
    failed
}

/// Deregisters entries this node owns ([`owned_container`]: instance id
/// `<node>/<container>` *and* meta `node` both name this node) whose
/// containers no longer exist, under every service name the store holds
/// ([`cntnr_kv::Store::service_names`]; on Consul, everything the local
/// agent has registered), so the entries of a project removed while the
/// agent was down go too, not only those under names a current project or
/// container uses. Entries of other nodes and other tools are never
/// touched; nor is anything this session has written. `true` when done.
async fn clean_orphans(
    store: &DynStore,
    sup: &Supervisor,
    written: &BTreeMap<String, Written>,
) -> bool {
    let names = match store.service_names().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "listing service names for the registry clean-up; will retry");
            return false;
        }
    };
    let existing: BTreeSet<ContainerId> = match sup.runc.list().await {
        Ok(list) => list.into_iter().map(|c| c.id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing containers for the registry clean-up");
            return false;
        }
    };
    let mut done = true;
    let mut removed = 0usize;
    let services = names.len();
    for name in names {
        let instances = match store.instances(&name, false).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "listing instances for the clean-up");
                done = false;
                continue;
            }
        };
        for i in instances {
            let Some(c) = owned_container(&i.id, &i.meta, &sup.node) else {
                continue;
            };
            let Ok(rid) = ContainerId::new(c.as_str()) else {
                continue;
            };
            if existing.contains(&rid) || written.contains_key(&i.id) {
                continue;
            }
            match store.deregister(&name, &i.id).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(service = %name, instance = %i.id, "removed the entry of a container that no longer exists")
                }
                Err(e) => {
                    done = false;
                    tracing::warn!(service = %name, instance = %i.id, error = %e, "removing an orphaned entry failed; will retry");
                }
            }
        }
    }
    if done {
        tracing::info!(services, removed, "registry clean-up done");
    }
    done
}
