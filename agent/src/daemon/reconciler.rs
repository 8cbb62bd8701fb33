//! The reconciler: makes this node's runc containers match its share of
//! each project's schedule, kube-rs controller style.
//!
//! - **One reconcile per project at a time.** A trigger for a project that
//!   is being reconciled marks it dirty; it runs again as soon as the
//!   current pass ends. Different projects reconcile concurrently.
//! - **Level-based and idempotent.** A pass reads the desired state
//!   (`projects/`, `schedule/`, kept by [`super::desired`]) and the runtime
//!   (`runc list` + `cntnr.*` annotations, the only truth: no local
//!   database), asks the pure [`plan_stages`] what to do, does it, and
//!   publishes the project's status. Re-running a pass after a crash
//!   finishes the job (a container left `created` is started, one left
//!   half-created is recreated).
//! - **Always requeued**: right away after it changed something (to verify
//!   and to let dependents follow), at the deadline of a pending restart,
//!   with backoff after a failure, and at the latest after the resync
//!   period, which heals whatever a missed event left behind.
//! - **Event-driven exits**: every container has a watcher on the runtime's
//!   `wait_exit` (a pidfd); an exit triggers its project. No polling.
//! - **Bounded parallelism**: the actions of one stage (see
//!   [`plan_stages`]) on different containers run concurrently, at most
//!   `parallel` at once; stages run in order, so `depends_on` holds.
//! - **A broken project stays contained**: bad YAML, an invalid spec or an
//!   image that cannot be fetched become errors in its status; its running
//!   containers are left alone (a recreate fetches the new image before it
//!   stops the old container), and other projects are unaffected.
//!
//! What the plan needs beyond runc's state (exit codes, start and exit
//! times, restart counts and backoff) is kept in memory per container; it
//! starts empty after an agent restart, which the plan tolerates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context as _, Result};
use cntnr_model::records::{ContainerState as StatusState, ContainerStatus, Health, StatusRecord};
use cntnr_model::{ConfigHash, Project, ProjectName, PullPolicy, ServiceName, ServiceSpec};
use cntnr_reconcile::bundle::{self, ContainerRequest};
use cntnr_reconcile::images::{ImageError, ImageRecord};
use cntnr_reconcile::plan::{
    plan_stages, Action, Backoff, Context, Desired, Idle, Observed, RestartState, SeededJitter,
    Step,
};
use cntnr_reconcile::runtime::{annotations, ContainerId, ContainerState, Runtime, Signal, Status};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::desired::DesiredProject;
use super::host::{failpoint, Host};
use super::registrar::Supervisor;
use super::status::StatusMsg;
use super::Shared;
use crate::envsync::engine::{local_replicas, EnvStep, EnvSync, Prepared, SignalRequest};

/// How the reconciler is tuned (`--resync`, `--parallel`).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// The longest time between two passes of a project.
    pub resync: Duration,
    /// Container actions running at once, per project.
    pub parallel: usize,
    /// Restart backoff.
    pub backoff: Backoff,
}

/// What the agent remembers about one container (in memory only).
#[derive(Debug, Clone, Default)]
struct Memo {
    exit_code: Option<i32>,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    restart: RestartState,
    last_error: Option<String>,
    generation: Option<u64>,
    /// Killed for being unhealthy: its exit counts as a failure.
    killed_unhealthy: bool,
}

/// The reconciler's state; it outlives store sessions (containers and
/// their bookkeeping do not care about the store's health).
#[derive(Debug)]
pub struct Engine {
    host: Host,
    shared: Arc<Shared>,
    tuning: Tuning,
    jitter: SeededJitter,
    memos: Mutex<BTreeMap<ContainerId, Memo>>,
    watchers: Mutex<BTreeMap<ContainerId, tokio::task::AbortHandle>>,
    failures: Mutex<BTreeMap<ProjectName, u32>>,
    last_status: Mutex<BTreeMap<ProjectName, StatusRecord>>,
    states: Mutex<BTreeMap<ProjectName, BTreeMap<&'static str, i64>>>,
    health: Arc<Supervisor>,
    /// Env sync and replica elections of the current session (issue 7).
    envsync: Mutex<Option<Arc<EnvSync>>>,
}

/// How long a requeue after a change waits (lets a burst of exits settle).
const AFTER_CHANGE: Duration = Duration::from_millis(100);
/// How long to wait for the desired state's first sync.
const NOT_READY: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// An engine over `host`.
    pub fn new(host: Host, shared: Arc<Shared>, tuning: Tuning, health: Arc<Supervisor>) -> Engine {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        Engine {
            host,
            shared,
            tuning,
            jitter: SeededJitter(seed),
            memos: Mutex::new(BTreeMap::new()),
            watchers: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            last_status: Mutex::new(BTreeMap::new()),
            states: Mutex::new(BTreeMap::new()),
            health,
            envsync: Mutex::new(None),
        }
    }

    /// Health checks and the registry's desired entries.
    pub fn health(&self) -> &Arc<Supervisor> {
        &self.health
    }

    /// The host machinery.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Sets (per session) or clears the env sync the passes use.
    pub fn set_envsync(&self, e: Option<Arc<EnvSync>>) {
        *lock(&self.envsync) = e;
    }

    fn envsync(&self) -> Option<Arc<EnvSync>> {
        lock(&self.envsync).clone()
    }

    /// Delivers a signal env sync asks for (a rewritten env file, a leader
    /// file that flipped).
    pub async fn deliver_signal(&self, req: &SignalRequest) {
        let (Ok(id), Some(sig)) = (
            ContainerId::new(req.container.as_str()),
            Signal::parse(&req.signal),
        ) else {
            return;
        };
        match self.host.runc.kill(&id, sig).await {
            Ok(()) => {
                tracing::info!(container = %id, signal = %req.signal, why = req.why, "signalled")
            }
            Err(e) => {
                tracing::warn!(container = %id, signal = %req.signal, why = req.why, error = %e, "signalling failed")
            }
        }
    }
}

/// Runs the controller until `cancel`: reconciles every project it is
/// triggered for (by the desired-state task, by exit watchers, by its own
/// requeues), and the projects it finds containers of at start. In-flight
/// passes finish before it returns; exit watchers stop with it.
pub async fn run(
    engine: Arc<Engine>,
    triggers: mpsc::UnboundedSender<ProjectName>,
    mut rx: mpsc::UnboundedReceiver<ProjectName>,
    status: mpsc::UnboundedSender<StatusMsg>,
    cancel: CancellationToken,
) -> Result<()> {
    // Projects with containers here, whether or not the store still has
    // them (one removed while the agent was down must be cleaned up).
    let found: BTreeSet<ProjectName> = match engine.host.runc.list().await {
        Ok(list) => list
            .iter()
            .filter_map(|c| c.annotations.get(annotations::PROJECT))
            .filter_map(|p| ProjectName::new(p.as_str()).ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing containers at start");
            BTreeSet::new()
        }
    };
    for p in &found {
        let _ = triggers.send(p.clone());
    }
    engine.health.set_triggers(Some(triggers.clone()));
    // Ready (READY=1) once every project known at the first sync, and every
    // project with containers here, has had a full pass.
    let mut synced = engine.shared.desired_changes();
    let mut first_round: Option<BTreeSet<ProjectName>> = None;
    let mut passed: BTreeSet<ProjectName> = BTreeSet::new();
    // A new session: status keys bound to the old one are gone, so every
    // project's status is written afresh.
    lock(&engine.last_status).clear();
    let mut running: JoinSet<(ProjectName, Option<Duration>, bool)> = JoinSet::new();
    let mut active: BTreeSet<ProjectName> = BTreeSet::new();
    let mut dirty: BTreeSet<ProjectName> = BTreeSet::new();
    let mut due: BTreeMap<ProjectName, tokio::time::Instant> = BTreeMap::new();
    // Image garbage collection, once per resync period, between passes (a
    // pass may be fetching an image its containers do not run from yet).
    let mut gc_tick = tokio::time::interval(engine.tuning.resync);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let spawn = |p: ProjectName,
                 running: &mut JoinSet<(ProjectName, Option<Duration>, bool)>,
                 active: &mut BTreeSet<ProjectName>,
                 dirty: &mut BTreeSet<ProjectName>,
                 due: &mut BTreeMap<ProjectName, tokio::time::Instant>| {
        if active.contains(&p) {
            dirty.insert(p);
            return;
        }
        due.remove(&p);
        active.insert(p.clone());
        let engine = engine.clone();
        let triggers = triggers.clone();
        let status = status.clone();
        running.spawn(async move {
            // Before the first sync a pass only waits; it does not count.
            let real = engine.shared.is_synced();
            let next = if real {
                engine.reconcile(&p, &triggers, &status).await
            } else {
                Some(NOT_READY)
            };
            (p, next, real)
        });
    };
    loop {
        if first_round.is_none() && engine.shared.is_synced() {
            let mut all: BTreeSet<ProjectName> = found.clone();
            all.extend(lock(&engine.shared.desired).projects.keys().cloned());
            first_round = Some(all);
        }
        if let Some(round) = &first_round {
            if !engine.shared.is_ready() && round.iter().all(|p| passed.contains(p)) {
                engine.shared.mark_ready();
            }
        }
        let next_due = due.values().min().copied();
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = synced.changed(), if first_round.is_none() => {
                if r.is_err() {
                    break;
                }
            }
            Some(p) = rx.recv() => spawn(p, &mut running, &mut active, &mut dirty, &mut due),
            Some(done) = running.join_next(), if !running.is_empty() => match done {
                Ok((p, next, real)) => {
                    active.remove(&p);
                    if real && !engine.shared.is_ready() {
                        passed.insert(p.clone());
                    }
                    if dirty.remove(&p) {
                        spawn(p, &mut running, &mut active, &mut dirty, &mut due);
                    } else if let Some(after) = next {
                        due.insert(p, tokio::time::Instant::now() + after);
                    }
                }
                Err(e) => return Err(anyhow!("a reconcile task panicked: {e}")),
            },
            _ = gc_tick.tick(), if running.is_empty() && engine.shared.is_synced() => {
                engine.collect_images().await;
            }
            _ = sleep_until(next_due), if next_due.is_some() => {
                let now = tokio::time::Instant::now();
                let ready: Vec<ProjectName> = due
                    .iter()
                    .filter(|(_, t)| **t <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in ready {
                    spawn(p, &mut running, &mut active, &mut dirty, &mut due);
                }
            }
        }
    }
    // Let in-flight passes finish their actions (the epoch's drain
    // deadline bounds this); watchers stop with this session.
    while running.join_next().await.is_some() {}
    engine.health.set_triggers(None);
    for (_, w) in std::mem::take(&mut *lock(&engine.watchers)) {
        w.abort();
    }
    Ok(())
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What one pass found and did, for the status record.
#[derive(Debug, Default)]
struct Outcome {
    /// Something changed: verify soon.
    changed: bool,
    /// The earliest pending restart.
    restart_after: Option<Duration>,
    /// Action failures.
    failed: bool,
    /// Why containers need nothing (other than being up to date).
    idle: BTreeMap<ContainerId, Idle>,
}

impl Engine {
    /// Image garbage collection: drops every image no desired project
    /// names (with its blobs and unpacked layers). A layer a container still
    /// runs from stays, whatever its image: the store never deletes a layer
    /// a mounted rootfs uses. Skipped while any project does not parse: its
    /// last good containers keep running and may need their image again.
    async fn collect_images(&self) {
        let in_use: Option<Vec<String>> = lock(&self.shared.desired)
            .projects
            .values()
            .map(|p| {
                p.spec.as_ref().ok().map(|project| {
                    project
                        .services
                        .values()
                        .map(|s| s.image.to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        let Some(in_use) = in_use else {
            tracing::debug!("image gc skipped: a project does not parse");
            return;
        };
        let images = self.host.images.clone();
        match tokio::task::spawn_blocking(move || images.gc(&in_use)).await {
            Ok(Ok(r)) if !r.images.is_empty() || r.blobs > 0 || r.layers > 0 => {
                tracing::info!(
                    images = ?r.images,
                    blobs = r.blobs,
                    layers = r.layers,
                    busy_layers = r.busy_layers,
                    "removed unused images"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "image gc failed"),
            Err(e) => tracing::warn!(error = %e, "image gc task failed"),
        }
    }

    /// One pass over `project`; returns when to requeue (`None`: the
    /// project is gone and so are its containers).
    async fn reconcile(
        self: &Arc<Self>,
        project: &ProjectName,
        triggers: &mpsc::UnboundedSender<ProjectName>,
        status: &mpsc::UnboundedSender<StatusMsg>,
    ) -> Option<Duration> {
        let started = Instant::now();
        let r = self.pass(project, triggers, status).await;
        let ok = matches!(&r, Ok(Some(o)) if !o.failed) || matches!(r, Ok(None));
        self.shared.metrics.reconciled(started.elapsed(), ok);
        let failures = {
            let mut f = lock(&self.failures);
            if ok {
                f.remove(project);
                0
            } else {
                let n = f.entry(project.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
        };
        let outcome = match r {
            Ok(None) => return None,
            Ok(Some(o)) => o,
            Err(e) => {
                tracing::warn!(project = %project, error = %format!("{e:#}"), "reconcile failed");
                return Some(failure_backoff(failures));
            }
        };
        // After a failure, back off (a crash-looping create must not spin);
        // after a change, look again soon; a pending restart is due at its
        // deadline; and never later than the resync period.
        let mut next = if outcome.failed {
            failure_backoff(failures)
        } else if outcome.changed {
            AFTER_CHANGE
        } else {
            self.tuning.resync
        };
        if let Some(a) = outcome.restart_after {
            next = next.min(a.max(Duration::from_millis(10)));
        }
        Some(next.min(self.tuning.resync))
    }

    /// The pass proper: what it did, or `None` when the project is gone
    /// from the store and from this node.
    async fn pass(
        self: &Arc<Self>,
        project: &ProjectName,
        triggers: &mpsc::UnboundedSender<ProjectName>,
        status: &mpsc::UnboundedSender<StatusMsg>,
    ) -> Result<Option<Outcome>> {
        let (dp, schedule) = {
            let d = lock(&self.shared.desired);
            (
                d.projects.get(project).cloned(),
                d.schedules.get(project).cloned(),
            )
        };
        let list = self.host.runc.list().await.context("listing containers")?;
        let mine: Vec<ContainerState> = list
            .into_iter()
            .filter(|c| {
                c.annotations.get(annotations::PROJECT).map(String::as_str)
                    == Some(project.as_str())
            })
            .collect();
        let now = SystemTime::now();
        let spec_now = dp.as_ref().and_then(|p| p.spec.as_ref().ok());
        let envsync = self.envsync();
        if let Some(es) = &envsync {
            match &dp {
                None => es.sync_project(project, None),
                Some(DesiredProject { spec: Ok(s), .. }) => es.sync_project(project, Some(s)),
                // A broken spec: its containers keep their watches.
                Some(_) => {}
            }
        }
        self.health
            .sync_project(project, spec_now, &mine, |id| self.started_at(id));
        let observed = self.observe(project, &mine, now, triggers);

        let mut errors: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        let desired: Option<(Desired, Option<&Project>)> = match &dp {
            None => Some((Desired::removed(project.clone()), None)),
            Some(DesiredProject {
                spec: Err(lines), ..
            }) => {
                errors.extend(lines.iter().cloned());
                None
            }
            Some(DesiredProject { spec: Ok(spec), .. }) => {
                warnings.extend(spec.warnings.iter().cloned());
                if let Some(lines) = lock(&self.shared.unplaced).get(project) {
                    errors.extend(lines.iter().cloned());
                }
                match &schedule {
                    None => None,
                    Some(Err(e)) => {
                        errors.push(e.clone());
                        None
                    }
                    Some(Ok(rec)) => match Desired::for_node(spec, rec, &self.shared.node) {
                        Ok(mut d) => {
                            let version = dp.as_ref().map_or(0, |p| p.version);
                            super::rollout::hold_stale(&mut d, spec, rec, version);
                            warnings.extend(super::rollout::progress_lines(rec));
                            Some((d, Some(spec)))
                        }
                        Err(e) => {
                            errors.push(format!("project {project}: {e}"));
                            None
                        }
                    },
                }
            }
        };
        let generation = dp.as_ref().map_or(0, |p| p.version);
        let net_spec = dp.as_ref().and_then(|p| p.spec.as_ref().ok());
        self.host.net.sync(project, net_spec, &mine).await;
        let mut outcome = Outcome::default();
        if let Some((d, spec)) = &desired {
            let steps = {
                let ctx = Context {
                    now,
                    backoff: self.tuning.backoff,
                    jitter: &self.jitter,
                };
                plan_stages(d, &observed, &ctx)
            };
            outcome = self.execute(project, d, *spec, generation, steps).await;
            if let (Some(es), Some(spec)) = (&envsync, spec) {
                if self.env_steps(es, project, d, spec).await {
                    outcome.changed = true;
                }
            }
        }
        if dp.is_none() && mine.is_empty() {
            // Gone from the store, and nothing left here.
            self.host.net.release_project(project).await;
            lock(&self.last_status).remove(project);
            lock(&self.states).remove(project);
            self.publish_states();
            let _ = status.send(StatusMsg::Delete(project.clone()));
            return Ok(None);
        }
        let desired_ref = desired.as_ref().map(|(d, _)| d);
        let mut record =
            self.status_record(&mine, desired_ref, &outcome, generation, errors, warnings);
        self.host.net.annotate(project, &mut record);
        self.count_states(project, &record);
        let changed_status = {
            let mut last = lock(&self.last_status);
            let same = last.get(project).is_some_and(|old| {
                old.containers == record.containers
                    && old.errors == record.errors
                    && old.warnings == record.warnings
                    && old.generation == record.generation
            });
            if !same {
                last.insert(project.clone(), record.clone());
            }
            !same
        };
        tracing::debug!(project = %project, changed = outcome.changed, failed = outcome.failed, status_changed = changed_status, "reconciled");
        if changed_status {
            let _ = status.send(StatusMsg::Put(project.clone(), record));
        }
        Ok(Some(outcome))
    }

    /// Env sync after a pass: signals and one-at-a-time recreates for
    /// changed values, campaigns and resigns for elected replicas. Only for
    /// projects that use either (one more `runc list`). True if a
    /// container was recreated.
    async fn env_steps(
        &self,
        es: &EnvSync,
        project: &ProjectName,
        d: &Desired,
        spec: &Project,
    ) -> bool {
        if !spec
            .services
            .values()
            .any(|s| !s.agent.env.is_empty() || s.agent.election)
        {
            return false;
        }
        let Ok(list) = self.host.runc.list().await else {
            return false;
        };
        let mine: Vec<ContainerState> = list
            .into_iter()
            .filter(|c| {
                c.annotations.get(annotations::PROJECT).map(String::as_str)
                    == Some(project.as_str())
            })
            .collect();
        let address = self.shared.info["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let locals = local_replicas(
            d,
            &mine,
            &self.host.bundles,
            self.shared.node.as_str(),
            &address,
            |id| self.health.health(id),
        );
        let mut changed = false;
        for step in es.plan_env(project, spec, &locals) {
            match step {
                EnvStep::Signal(req) => self.deliver_signal(&req).await,
                EnvStep::Recreate(id) => {
                    let Ok(id) = ContainerId::new(id) else {
                        continue;
                    };
                    let (signal, grace) = mine
                        .iter()
                        .find(|c| c.id == id)
                        .map(|c| {
                            let sig = c
                                .annotations
                                .get(annotations::STOP_SIGNAL)
                                .and_then(|s| Signal::parse(s))
                                .unwrap_or(Signal::TERM);
                            let grace = locals
                                .iter()
                                .find(|l| l.id == id.as_str())
                                .and_then(|l| d.services.get(&l.service))
                                .map_or(Duration::from_secs(10), |s| s.stop_grace);
                            (sig, grace)
                        })
                        .unwrap_or((Signal::TERM, Duration::from_secs(10)));
                    tracing::info!(project = %project, container = %id, "env sync: values changed; recreating");
                    self.shared.metrics.action("recreate");
                    self.health.before_stop(&id).await;
                    let r = async {
                        self.host.runc.stop(&id, signal, grace).await?;
                        self.host.runc.delete(&id, true).await?;
                        self.remove_bundle(&id).await
                    }
                    .await;
                    self.health.removed(&id);
                    lock(&self.memos).remove(&id);
                    if let Err(e) = r {
                        tracing::warn!(project = %project, container = %id, error = %format!("{e:#}"), "env sync recreate failed");
                    }
                    changed = true;
                }
            }
        }
        es.sync_elections(project, Some(spec), &locals);
        changed
    }

    /// The plan's view of the containers: runc's state plus the memos;
    /// makes sure each has an exit watcher.
    fn observe(
        self: &Arc<Self>,
        project: &ProjectName,
        mine: &[ContainerState],
        now: SystemTime,
        triggers: &mpsc::UnboundedSender<ProjectName>,
    ) -> Vec<Observed> {
        let mut out = Vec::with_capacity(mine.len());
        let mut memos = lock(&self.memos);
        for c in mine {
            let memo = memos.entry(c.id.clone()).or_default();
            match c.status {
                Status::Running | Status::Paused => {
                    if memo.started_at.is_none() {
                        memo.started_at = self.started_guess(&c.id);
                    }
                }
                Status::Stopped => {
                    // Backoff deadlines count from the exit: record when we
                    // first saw it, if the watcher has not.
                    memo.finished_at.get_or_insert(now);
                }
                Status::Created | Status::Creating => {}
            }
            let watch = match c.status {
                Status::Running | Status::Paused | Status::Created => true,
                Status::Stopped => memo.exit_code.is_none(),
                Status::Creating => false,
            };
            let mut o = Observed::new(c.clone());
            // A container killed for being unhealthy failed, whatever its
            // exit code says (no code counts as a failure).
            o.exit_code = memo
                .exit_code
                .filter(|c| !(memo.killed_unhealthy && *c == 0));
            o.started_at = memo.started_at;
            o.finished_at = memo.finished_at;
            o.health = self.health.health(&c.id);
            o.restart = memo.restart.clone();
            out.push(o);
            if watch {
                self.ensure_watcher(&c.id, project, triggers);
            }
        }
        out
    }

    /// When a running container started: as remembered, else guessed.
    fn started_at(&self, id: &ContainerId) -> Option<SystemTime> {
        let known = lock(&self.memos).get(id).and_then(|m| m.started_at);
        known.or_else(|| self.started_guess(id))
    }

    /// When a running container we know nothing about started: the mtime
    /// of runc's pid file for it (written at create).
    fn started_guess(&self, id: &ContainerId) -> Option<SystemTime> {
        let pid = self
            .host
            .runc
            .config()
            .state_dir
            .join("run")
            .join(format!("{id}.pid"));
        std::fs::metadata(pid).and_then(|m| m.modified()).ok()
    }

    fn ensure_watcher(
        self: &Arc<Self>,
        id: &ContainerId,
        project: &ProjectName,
        triggers: &mpsc::UnboundedSender<ProjectName>,
    ) {
        let mut watchers = lock(&self.watchers);
        if watchers.get(id).is_some_and(|w| !w.is_finished()) {
            return;
        }
        let engine = self.clone();
        let id2 = id.clone();
        let project = project.clone();
        let triggers = triggers.clone();
        let handle = tokio::spawn(async move {
            let r = engine.host.runc.wait_exit(&id2).await;
            let now = SystemTime::now();
            match r {
                Ok(exit) => {
                    tracing::info!(container = %id2, code = ?exit.code, "container exited");
                    engine.health.exited(&id2);
                    let mut memos = lock(&engine.memos);
                    let m = memos.entry(id2.clone()).or_default();
                    m.exit_code = exit.code;
                    m.finished_at = Some(now);
                }
                // Gone (removed meanwhile) or not waitable: the next pass
                // sees the runtime's state either way.
                Err(e) => tracing::debug!(container = %id2, error = %e, "exit watch ended"),
            }
            lock(&engine.watchers).remove(&id2);
            let _ = triggers.send(project);
        });
        watchers.insert(id.clone(), handle.abort_handle());
    }

    /// Runs the steps: stages in order; within a stage, each container's
    /// actions in order and different containers concurrently (bounded).
    /// A container whose dependency failed in this pass is skipped.
    async fn execute(
        self: &Arc<Self>,
        project: &ProjectName,
        desired: &Desired,
        spec: Option<&Project>,
        generation: u64,
        steps: Vec<Step>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let mut stages: BTreeMap<u32, Vec<(ContainerId, Vec<Action>)>> = BTreeMap::new();
        for step in steps {
            let per = stages.entry(step.stage).or_default();
            match per.iter_mut().find(|(id, _)| id == step.action.id()) {
                Some((_, actions)) => actions.push(step.action),
                None => per.push((step.action.id().clone(), vec![step.action])),
            }
        }
        let service_of: BTreeMap<&ContainerId, &ServiceName> = desired
            .replicas
            .iter()
            .map(|r| (&r.id, &r.service))
            .collect();
        let mut failed_services: BTreeSet<ServiceName> = BTreeSet::new();
        for (_, containers) in stages {
            let mut work = Vec::new();
            for (id, actions) in containers {
                let blocked = service_of
                    .get(&id)
                    .and_then(|s| desired.services.get(*s))
                    .and_then(|s| {
                        s.depends_on
                            .keys()
                            .find(|dep| failed_services.contains(*dep))
                    })
                    .cloned();
                if let Some(dep) = blocked {
                    let why = format!("waiting: dependency {dep} failed");
                    lock(&self.memos).entry(id.clone()).or_default().last_error = Some(why);
                    outcome.failed = true;
                    continue;
                }
                work.push((id, actions));
            }
            let results: Vec<(ContainerId, ContainerResult)> = futures::stream::iter(work)
                .map(|(id, actions)| {
                    let engine = self.clone();
                    async move {
                        let r = engine
                            .run_container(project, spec, generation, &actions)
                            .await;
                        (id, r)
                    }
                })
                .buffer_unordered(self.tuning.parallel.max(1))
                .collect()
                .await;
            for (id, r) in results {
                outcome.changed |= r.changed;
                if let Some(a) = r.restart_after {
                    outcome.restart_after =
                        Some(outcome.restart_after.map_or(a, |b: Duration| b.min(a)));
                }
                if let Some(why) = r.idle {
                    outcome.idle.insert(id.clone(), why);
                }
                if r.failed {
                    outcome.failed = true;
                    if let Some(s) = service_of.get(&id) {
                        failed_services.insert((*s).clone());
                    }
                }
            }
        }
        outcome
    }
}

/// What running one container's actions did.
#[derive(Debug, Default)]
struct ContainerResult {
    changed: bool,
    failed: bool,
    restart_after: Option<Duration>,
    idle: Option<Idle>,
}

impl Engine {
    async fn run_container(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        generation: u64,
        actions: &[Action],
    ) -> ContainerResult {
        let mut r = ContainerResult::default();
        for action in actions {
            if let Action::Nothing { why, .. } = action {
                r.idle = Some(why.clone());
                continue;
            }
            if let Action::Restart { after, .. } = action {
                if !after.is_zero() {
                    r.restart_after = Some(*after);
                    continue;
                }
            }
            tracing::info!(project = %project, action = %action, "applying");
            self.shared.metrics.action(action.kind());
            match self.apply(project, spec, generation, action).await {
                Ok(()) => {
                    r.changed = true;
                    if let Some(m) = lock(&self.memos).get_mut(action.id()) {
                        m.last_error = None;
                    }
                }
                Err(e) => {
                    let line = format!("{e:#}").replace(['\n', '\r'], " ");
                    tracing::warn!(project = %project, action = %action, error = %line, "action failed");
                    self.shared.metrics.action_failed(action.kind());
                    lock(&self.memos)
                        .entry(action.id().clone())
                        .or_default()
                        .last_error = Some(line);
                    r.failed = true;
                    // A failed create can leave the container half-made:
                    // the next pass sees it and cleans it up.
                    r.changed = true;
                    break;
                }
            }
        }
        r
    }

    async fn apply(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        generation: u64,
        action: &Action,
    ) -> Result<()> {
        let runc = &self.host.runc;
        match action {
            Action::Create {
                id,
                service,
                replica,
                config_hash,
            } => {
                let svc =
                    super::rollout::spec_for(&self.shared, project, spec, service, config_hash)?;
                let svc = &*svc;
                let image = self.ensure_image(svc).await?;
                self.build_and_create(project, service, svc, *replica, config_hash, &image, id)
                    .await?;
                self.reset_memo(id, generation);
                failpoint("after-create");
            }
            Action::Start { id } => {
                runc.start(id).await?;
                self.mark_started(id);
                self.health.started(project, spec, id).await;
                failpoint("after-start");
            }
            Action::Stop { id, signal, grace } => {
                self.health.before_stop(id).await;
                let exit = runc.stop(id, *signal, *grace).await?;
                self.health.exited(id);
                let mut memos = lock(&self.memos);
                let m = memos.entry(id.clone()).or_default();
                m.exit_code = exit.and_then(|e| e.code);
                m.finished_at = Some(SystemTime::now());
            }
            Action::Kill { id, signal, grace } => {
                lock(&self.memos)
                    .entry(id.clone())
                    .or_default()
                    .killed_unhealthy = true;
                self.health.before_stop(id).await;
                self.kill_and_wait(id, *signal, *grace).await?;
                self.health.exited(id);
                let mut memos = lock(&self.memos);
                let m = memos.entry(id.clone()).or_default();
                m.finished_at.get_or_insert_with(SystemTime::now);
            }
            Action::Remove { id } => {
                runc.delete(id, true).await?;
                self.remove_bundle(id).await?;
                lock(&self.memos).remove(id);
                self.health.removed(id);
            }
            Action::Recreate {
                id,
                service,
                replica,
                config_hash,
                signal,
                grace,
            } => {
                let svc =
                    super::rollout::spec_for(&self.shared, project, spec, service, config_hash)?;
                let svc = &*svc;
                // Fetch first: an image that cannot be had leaves the old
                // container running.
                let image = self.ensure_image(svc).await?;
                self.health.before_stop(id).await;
                runc.stop(id, *signal, *grace).await?;
                runc.delete(id, true).await?;
                self.health.removed(id);
                self.build_and_create(project, service, svc, *replica, config_hash, &image, id)
                    .await?;
                self.reset_memo(id, generation);
                failpoint("after-create");
                runc.start(id).await?;
                self.mark_started(id);
                self.health.started(project, spec, id).await;
                failpoint("after-start");
            }
            Action::Restart { id, backoff, .. } => {
                let bundle = self.host.bundles.bundle_path(id);
                runc.run(id, &bundle).await?;
                let now = SystemTime::now();
                let mut memos = lock(&self.memos);
                let m = memos.entry(id.clone()).or_default();
                m.restart.restarted(*backoff, now);
                m.killed_unhealthy = false;
                m.started_at = Some(now);
                m.exit_code = None;
                m.finished_at = None;
                drop(memos);
                self.health.restarted(id);
            }
            Action::Nothing { .. } => {}
        }
        Ok(())
    }

    /// `signal`, up to `grace` for the exit, then SIGKILL; the container
    /// stays (stopped) for its restart policy.
    async fn kill_and_wait(
        &self,
        id: &ContainerId,
        signal: cntnr_reconcile::runtime::Signal,
        grace: Duration,
    ) -> Result<()> {
        let runc = &self.host.runc;
        let exited = || async {
            matches!(
                runc.state(id).await,
                Ok(None)
                    | Ok(Some(ContainerState {
                        status: Status::Stopped,
                        ..
                    }))
            )
        };
        // Signal errors mean it already exited; the state check decides.
        let _ = runc.kill(id, signal).await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if exited().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = runc.kill(id, cntnr_reconcile::runtime::Signal::KILL).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if exited().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(anyhow!("{id}: still running 10s after SIGKILL"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_and_create(
        &self,
        project: &ProjectName,
        service: &ServiceName,
        svc: &ServiceSpec,
        replica: u32,
        config_hash: &ConfigHash,
        image: &ImageRecord,
        id: &ContainerId,
    ) -> Result<()> {
        let mut req = ContainerRequest::from_service(project, service, svc, replica);
        let env_file = match self.envsync().map(|es| es.prepare(project, svc)) {
            None | Some(Prepared::Nothing) => None,
            Some(Prepared::Ready { vars, file }) => {
                req.environment.extend(vars);
                Some(file)
            }
            // Names only: these lines become the container's status error.
            Some(Prepared::Wait(line)) | Some(Prepared::Fail(line)) => anyhow::bail!("{line}"),
        };
        if req.config_hash != config_hash.as_str() {
            // The plan and the spec disagree: the spec changed between
            // reading and planning; the next pass sorts it out.
            anyhow::bail!("{id}: the spec changed while planning; retrying");
        }
        self.host.net.wire(project, service, svc, &mut req)?;
        let cfg = self.host.bundles.clone();
        let images = self.host.images.clone();
        let image = image.clone();
        let built = tokio::task::spawn_blocking(move || bundle::build(&cfg, &images, &image, &req))
            .await
            .map_err(|e| anyhow!("building the bundle: {e}"))??;
        if let Some(file) = env_file {
            if let Err(e) = EnvSync::write_env_file(&built.path, &file) {
                let _ = self.remove_bundle(id).await;
                anyhow::bail!("{id}: writing /run/cntnr/env: {e}");
            }
        }
        if let Err(e) = self.host.runc.create(id, &built.path).await {
            let _ = self.host.runc.delete(id, true).await;
            let _ = self.remove_bundle(id).await;
            return Err(super::network::explain_create_error(id.as_str(), e.into()));
        }
        let net = &self.host.net;
        net.joined(project, service, replica, id.as_str(), &built.path)
            .await;
        Ok(())
    }

    async fn remove_bundle(&self, id: &ContainerId) -> Result<()> {
        let cfg = self.host.bundles.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || bundle::remove(&cfg, &id))
            .await
            .map_err(|e| anyhow!("removing the bundle: {e}"))??;
        Ok(())
    }

    /// The image of `svc`, per its `pull_policy`. An `oci:` layout is
    /// imported when missing (or always, with `always`): reading a local
    /// directory is not pulling, so `never` allows it.
    async fn ensure_image(&self, svc: &ServiceSpec) -> Result<ImageRecord> {
        let reference = svc.image.to_string();
        let images = &self.host.images;
        let have = images.get(&reference)?;
        let local = reference.starts_with("oci:");
        let rec = match (svc.pull_policy, have) {
            (PullPolicy::Always, _) => images.fetch(&reference).await,
            (_, Some(rec)) => Ok(rec),
            (PullPolicy::Never, None) if !local => Err(ImageError::NotFound(format!(
                "{reference} (pull_policy: never)"
            ))),
            (_, None) => images.fetch(&reference).await,
        };
        rec.with_context(|| format!("image {reference}"))
    }

    fn reset_memo(&self, id: &ContainerId, generation: u64) {
        lock(&self.memos).insert(
            id.clone(),
            Memo {
                generation: Some(generation),
                ..Memo::default()
            },
        );
    }

    fn mark_started(&self, id: &ContainerId) {
        let mut memos = lock(&self.memos);
        let m = memos.entry(id.clone()).or_default();
        m.started_at = Some(SystemTime::now());
        m.exit_code = None;
        m.finished_at = None;
    }

    /// This node's status record of the project.
    fn status_record(
        &self,
        mine: &[ContainerState],
        desired: Option<&Desired>,
        outcome: &Outcome,
        generation: u64,
        mut errors: Vec<String>,
        warnings: Vec<String>,
    ) -> StatusRecord {
        let memos = lock(&self.memos);
        let mut containers = Vec::new();
        let mut seen = BTreeSet::new();
        let desired_hash: BTreeMap<&ContainerId, &ConfigHash> = desired
            .map(|d| d.replicas.iter().map(|r| (&r.id, &r.config_hash)).collect())
            .unwrap_or_default();
        for c in mine {
            let (Some(service), Some(replica), Some(hash)) = (
                c.annotations
                    .get(annotations::SERVICE)
                    .and_then(|s| ServiceName::new(s.as_str()).ok()),
                c.annotations
                    .get(annotations::REPLICA)
                    .and_then(|r| r.parse::<u32>().ok()),
                c.annotations
                    .get(annotations::CONFIG_HASH)
                    .and_then(|h| ConfigHash::parse(h)),
            ) else {
                continue;
            };
            let Ok(model_id) = cntnr_model::ContainerId::parse(c.id.as_str()) else {
                continue;
            };
            seen.insert(c.id.clone());
            let memo = memos.get(&c.id).cloned().unwrap_or_default();
            let state = match c.status {
                Status::Creating => StatusState::Pending,
                Status::Created => StatusState::Created,
                Status::Running => StatusState::Running,
                Status::Paused => StatusState::Paused,
                Status::Stopped => StatusState::Stopped,
            };
            let up_to_date = desired_hash.get(&c.id).is_some_and(|h| **h == hash);
            // A failed recreate (or restart) is a project error too.
            if let Some(e) = &memo.last_error {
                errors.push(format!("{}: {e}", c.id));
            }
            let last_error = memo.last_error.clone().or_else(|| {
                outcome
                    .idle
                    .get(&c.id)
                    .filter(|i| !matches!(i, Idle::UpToDate))
                    .map(ToString::to_string)
            });
            let (health, failing_streak, health_output) = self.health.status_fields(&c.id);
            containers.push(ContainerStatus {
                id: model_id,
                service,
                replica,
                state,
                health,
                failing_streak,
                health_output,
                registry: self.health.registry_status(&c.id),
                restarts: memo.restart.restarts,
                exit_code: if c.status == Status::Stopped {
                    memo.exit_code
                } else {
                    None
                },
                last_error,
                config_hash: hash,
                started_at: memo.started_at.and_then(unix_secs),
                generation: memo
                    .generation
                    .unwrap_or(if up_to_date { generation } else { 0 }),
                ips: Vec::new(),
                ports: Vec::new(),
            });
        }
        if let Some(d) = desired {
            for r in &d.replicas {
                if seen.contains(&r.id) {
                    continue;
                }
                let memo = memos.get(&r.id).cloned().unwrap_or_default();
                let why = memo
                    .last_error
                    .clone()
                    .or_else(|| outcome.idle.get(&r.id).map(ToString::to_string));
                let failed = memo.last_error.is_some();
                if let Some(e) = &memo.last_error {
                    errors.push(format!("{}: {e}", r.id));
                }
                containers.push(ContainerStatus {
                    id: cntnr_model::ContainerId::new(&d.project, &r.service, r.replica),
                    service: r.service.clone(),
                    replica: r.replica,
                    state: if failed {
                        StatusState::Failed
                    } else {
                        StatusState::Pending
                    },
                    health: Health::None,
                    failing_streak: 0,
                    health_output: None,
                    registry: None,
                    restarts: 0,
                    exit_code: None,
                    last_error: why,
                    config_hash: r.config_hash.clone(),
                    started_at: None,
                    generation,
                    ips: Vec::new(),
                    ports: Vec::new(),
                });
            }
        }
        containers.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
        StatusRecord {
            node: self.shared.node.clone(),
            generation,
            updated: super::now_secs(),
            containers,
            errors,
            warnings,
        }
    }

    fn count_states(&self, project: &ProjectName, record: &StatusRecord) {
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        for c in &record.containers {
            *counts.entry(state_label(c.state)).or_insert(0) += 1;
            if c.state == StatusState::Running {
                *counts.entry(health_label(c.health)).or_insert(0) += 1;
            }
        }
        lock(&self.states).insert(project.clone(), counts);
        self.publish_states();
    }

    fn publish_states(&self) {
        let states = lock(&self.states);
        let mut total: BTreeMap<&'static str, i64> = BTreeMap::new();
        for counts in states.values() {
            for (s, n) in counts {
                *total.entry(s).or_insert(0) += n;
            }
        }
        self.shared.metrics.set_containers(&total);
        self.shared.metrics.set_health(&total);
    }
}

/// Health counts share the per-project map with the states, prefixed.
fn health_label(h: Health) -> &'static str {
    match h {
        Health::None => "health:none",
        Health::Starting => "health:starting",
        Health::Healthy => "health:healthy",
        Health::Unhealthy => "health:unhealthy",
    }
}

fn state_label(s: StatusState) -> &'static str {
    match s {
        StatusState::Pending => "pending",
        StatusState::Created => "created",
        StatusState::Running => "running",
        StatusState::Paused => "paused",
        StatusState::Stopped => "stopped",
        StatusState::Failed => "failed",
    }
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Requeue delay after `n` failed passes in a row: 1 s doubling to 60 s.
pub fn failure_backoff(n: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(6)))
        .min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_and_caps() {
        assert_eq!(failure_backoff(1), Duration::from_secs(1));
        assert_eq!(failure_backoff(2), Duration::from_secs(2));
        assert_eq!(failure_backoff(4), Duration::from_secs(8));
        assert_eq!(failure_backoff(50), Duration::from_secs(60));
    }
}
