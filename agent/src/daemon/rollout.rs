//! Rolling updates (`deploy.update_config`, issue 9): the leader's side and
//! the node's side. The state machine is pure
//! ([`cntnr_reconcile::rollout`]); this module feeds it and carries its
//! result through the schedule record.
//!
//! **Leader.** [`Leader`] follows every `status/<project>/<node>` record
//! with one resumable watch (while this agent leads) and the
//! `rollback/<project>` requests `cntnr rollback` writes. At each placement
//! pass the scheduler calls [`Leader::apply`] for each project: a service
//! with a `deploy.update_config` key (any value; others update every
//! replica at once) whose config hash differs from the one in
//! [`ScheduleRecord::healthy_spec`] (the last fully healthy revision) gets a
//! [`ServiceRollout`] in [`ScheduleRecord::rollouts`], stepped with what the
//! status records say about each replica and the time; it names the hash
//! each replica must run. A status change of a project with a rollout left
//! or not yet recorded healthy, or the end of a `monitor`/`delay`, wakes
//! the scheduler ([`Leader::wait`]); nothing polls. When every
//! replica of every service runs the project's hashes and is ready (running
//! and healthy, or running with no check, or exited 0) and no rollout is
//! left, the project's text becomes the new `healthy_spec`. A rollout that
//! completed with no failure is dropped; a paused one, a rolled-back one
//! and one completed with failures stay (shown by `cntnr ps`) until the
//! next deploy. A project deployed before it was ever fully healthy has no
//! `healthy_spec`: it is updated as before, every replica at once.
//!
//! **Node.** [`cntnr_reconcile::plan::Desired::for_node`] already gives each
//! replica the hash its rollout names; [`hold_stale`] keeps replicas at the
//! healthy revision while the schedule still describes an older project
//! revision (a node sees `projects/<p>` change before the leader's new
//! schedule), and [`spec_for`] builds a held replica from `healthy_spec`.
//!
//! Order: a replica is one container id on one node, so the old and the new
//! container cannot run side by side: `start-first` runs surge replicas
//! (numbered after the service's last) on nodes
//! [`cntnr_reconcile::schedule::extra_nodes`] finds room on, named in the
//! rollout record ([`ServiceRollout::surge`]; nodes run them through
//! `ScheduleRecord::replicas_on`). With no room at all the rollout runs
//! `stop-first`, logged and shown in its progress line.
//!
//! Settings: `update_config` while updating, `rollback_config` (or swarm's
//! rollback defaults) while rolling back; a replica must be ready within
//! its check's worst case + `monitor` + 60 s
//! ([`cntnr_reconcile::rollout::READY_MARGIN`]) or it counts as failed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use cntnr_kv::{DynStore, EventKind, WatchFrom};
use cntnr_model::records::{
    CheckStatus, ContainerState, ContainerStatus, Health, ScheduleRecord, StatusRecord,
};
use cntnr_model::rollout::Step;
use cntnr_model::{
    load_stored, ConfigHash, HealthTest, NodeName, Project, ProjectName, Replica, ServiceName,
    ServiceSpec, StoreKey, UpdateOrder,
};
use cntnr_reconcile::plan::Desired;
use cntnr_reconcile::rollout::{
    check_time, Millis, Observed, Phase, Rollout, ServiceRollout, Settings,
};
use cntnr_reconcile::schedule::{extra_nodes, Cluster, Placement};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Seen {
    status: BTreeMap<ProjectName, BTreeMap<NodeName, StatusRecord>>,
    rollback: BTreeSet<ProjectName>,
    /// Projects whose status changes matter: a rollout is left, or the
    /// current revision is not yet recorded as healthy. Other status
    /// changes do not wake the scheduler.
    watched: BTreeSet<ProjectName>,
}

/// The leader's rollout state: status records, rollback requests, timers.
pub struct Leader {
    seen: Arc<Mutex<Seen>>,
    wake: Arc<Notify>,
    recheck: Option<tokio::time::Instant>,
    /// Requests handled by the last pass, deleted once its writes are done.
    served: Vec<ProjectName>,
    /// The project revision each `healthy_spec` this leader wrote renders
    /// (so a steady project is not rendered again at every pass).
    rendered: BTreeMap<ProjectName, u64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        self._task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Leader {
    /// Starts following `status/` and `rollback/` (ends with `cancel` or
    /// when dropped).
    pub fn start(store: DynStore, shared: Arc<Shared>, cancel: CancellationToken) -> Leader {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(follow(store, shared, seen.clone(), wake.clone(), cancel));
        Leader {
            seen,
            wake,
            recheck: None,
            served: Vec::new(),
            rendered: BTreeMap::new(),
            _task: task,
        }
    }

    /// Resolves when a status record or a rollback request changed, or a
    /// `monitor`/`delay` ended.
    pub async fn wait(&mut self) {
        match self.recheck {
            Some(at) => {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => { self.recheck = None; }
                }
            }
            None => self.wake.notified().await,
        }
    }

    /// Fills `rec.rollouts` and `rec.healthy_spec` for `project` from the
    /// previous record, the status records and the time (`cluster`: where
    /// surge replicas may go). Returns whether they differ from `prev`'s
    /// (the record must then be written).
    pub fn apply(
        &mut self,
        name: &ProjectName,
        project: &Project,
        prev: Option<&ScheduleRecord>,
        rec: &mut ScheduleRecord,
        cluster: &Cluster,
    ) -> bool {
        let now = now_ms();
        rec.rollouts = prev.map(|p| p.rollouts.clone()).unwrap_or_default();
        rec.healthy_spec = prev.and_then(|p| p.healthy_spec.clone());
        let (status, rollback) = {
            let mut seen = lock(&self.seen);
            let rollback = seen.rollback.remove(name);
            (seen.status.get(name).cloned().unwrap_or_default(), rollback)
        };
        if rollback {
            self.served.push(name.clone());
        }
        let key = format!("projects/{name}");
        let healthy: Option<Project> = rec
            .healthy_spec
            .as_deref()
            .and_then(|t| load_stored(name, &key, t).ok());
        let mut all_ready = true;
        let mut keep: BTreeMap<ServiceName, ServiceRollout> = BTreeMap::new();
        // The project's placement with the surge replicas it runs, for the
        // per-node limits of new surge replicas.
        let mut occupied: Placement = rec.services.clone();
        for (svc, ro) in &rec.rollouts {
            for (r, sg) in &ro.surge {
                if !matches!(sg.step, Step::Failed { .. }) {
                    occupied
                        .entry(svc.clone())
                        .or_default()
                        .entry(*r)
                        .or_insert_with(|| sg.node.clone());
                }
            }
        }
        for (svc, spec) in &project.services {
            let to = spec.config_hash();
            let placed = rec.services.get(svc).cloned().unwrap_or_default();
            let replicas: BTreeSet<u32> = placed.keys().copied().collect();
            // Surge replicas are looked up on their node too.
            let surge_at: BTreeMap<Replica, NodeName> = rec
                .rollouts
                .get(svc)
                .map(|ro| {
                    ro.surge
                        .iter()
                        .map(|(r, sg)| (*r, sg.node.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let observed: BTreeMap<u32, Observed> = placed
                .iter()
                .chain(surge_at.iter().filter(|(r, _)| !placed.contains_key(r)))
                .filter_map(|(r, node)| {
                    let c = status
                        .get(node)?
                        .containers
                        .iter()
                        .find(|c| &c.service == svc && c.replica == *r)?;
                    Some((
                        *r,
                        Observed {
                            hash: c.config_hash.clone(),
                            state: c.state,
                            health: visible_health(c),
                            exit_code: c.exit_code,
                        },
                    ))
                })
                .collect();
            let checked = has_check(spec);
            all_ready &= replicas.iter().all(|r| {
                let Some(o) = observed.get(r) else {
                    return false;
                };
                let exit0 = o.exit_code == Some(0);
                o.hash == to
                    && match o.state {
                        ContainerState::Running => {
                            o.health == Health::Healthy || (!checked && o.health == Health::None)
                        }
                        ContainerState::Stopped => exit0,
                        _ => false,
                    }
            });
            let from = healthy
                .as_ref()
                .and_then(|h| h.services.get(svc))
                .map(ServiceSpec::config_hash);
            let existing = rec.rollouts.get(svc).filter(|ro| ro.to == to).cloned();
            let mut ro = match (existing, from) {
                (Some(ro), _) => ro,
                // Only a service whose compose file has an update_config
                // key is rolled; others are updated at once, as before.
                (None, Some(from)) if from != to && spec.deploy.update_config.is_some() => {
                    let old = rec.rollouts.get(svc);
                    let current: BTreeMap<u32, Option<ConfigHash>> = replicas
                        .iter()
                        .map(|r| {
                            let h = old
                                .and_then(|o| o.wanted().remove(r))
                                .or_else(|| observed.get(r).map(|o| o.hash.clone()));
                            (*r, h)
                        })
                        .collect();
                    tracing::info!(project = %name, service = %svc, "rolling update started");
                    ServiceRollout::start(from, to.clone(), &current)
                }
                _ => continue,
            };
            if rollback && ro.request_rollback("rollback requested by hand") {
                tracing::info!(project = %name, service = %svc, "rolling back by hand");
            }
            let before = ro.phase;
            let update = spec.deploy.update_config.clone().unwrap_or_default();
            let rollback = spec.deploy.rollback();
            let mut settings = Settings {
                update: &update,
                rollback: &rollback,
                has_check: checked,
                check_ms: check_ms(spec),
                surge: Err(String::new()),
            };
            // Room for surge replicas, if either direction is start-first
            // (a step may turn an update into a rollback).
            let start_first: Vec<&cntnr_model::UpdateConfig> = [&update, &rollback]
                .into_iter()
                .filter(|c| c.order == UpdateOrder::StartFirst)
                .collect();
            if !start_first.is_empty() {
                let want = start_first
                    .iter()
                    .map(|c| match c.parallelism {
                        0 => replicas.len(),
                        n => n as usize,
                    })
                    .max()
                    .unwrap_or(1);
                settings.surge = extra_nodes(project, svc, cluster, &occupied, want)
                    .map_err(|e| format!("no node can take one ({e})"));
            }
            let adv = ro.step(&settings, &replicas, &observed, now);
            if let Some(why) = &adv.fell_back {
                tracing::warn!(project = %name, service = %svc, "rolling update: {why}");
            }
            for (r, sg) in &ro.surge {
                occupied
                    .entry(svc.clone())
                    .or_default()
                    .entry(*r)
                    .or_insert_with(|| sg.node.clone());
            }
            if ro.phase != before {
                tracing::info!(project = %name, service = %svc, progress = %ro.progress(), reason = ro.reason.as_deref().unwrap_or(""), "rolling update: {}", ro.phase);
            }
            if let Some(at) = adv.recheck_at {
                let at = tokio::time::Instant::now()
                    + Duration::from_millis(at.saturating_sub(now_ms()));
                self.recheck = Some(self.recheck.map_or(at, |c| c.min(at)));
            }
            keep.insert(svc.clone(), ro);
        }
        // A rollout that completed with no failure stays (it names the
        // replicas' hashes) until the whole project is ready on its
        // hashes; then the project is the new healthy revision.
        let clean = |ro: &ServiceRollout| ro.phase == Phase::Completed && ro.healthy() == &ro.to;
        let fresh = self.rendered.get(name) == Some(&rec.generation)
            && keep.is_empty()
            && rec.healthy_spec.is_some();
        if all_ready && !fresh && keep.values().all(clean) {
            self.rendered.insert(name.clone(), rec.generation);
            match cntnr_model::render::to_yaml(project) {
                Ok(text) => {
                    rec.healthy_spec = Some(text);
                    keep.clear();
                }
                Err(e) => {
                    tracing::warn!(project = %name, error = %e, "cannot render the healthy spec")
                }
            }
        }
        rec.rollouts = keep;
        let settled = rec.rollouts.is_empty()
            && rec.healthy_spec.is_some()
            && self.rendered.get(name) == Some(&rec.generation);
        let mut seen = lock(&self.seen);
        if settled {
            seen.watched.remove(name);
        } else {
            seen.watched.insert(name.clone());
        }
        drop(seen);
        prev.is_none_or(|p| p.rollouts != rec.rollouts || p.healthy_spec != rec.healthy_spec)
    }

    /// The `rollback/<project>` request keys the last passes served, for
    /// the leader to delete (fenced). Taken: a failed delete leaves the
    /// request, which a later pass serves (idempotently) again.
    pub fn take_served(&mut self, prefix: &cntnr_model::Prefix) -> Vec<String> {
        let dir = prefix.rollback_dir();
        std::mem::take(&mut self.served)
            .into_iter()
            .map(|p| format!("{dir}{p}"))
            .collect()
    }
}

/// A replica's health as a rollout judges it: a replica with a registry
/// entry not yet written passing (status `registry` other than `passing`)
/// counts as still starting, however healthy its check is, so the next
/// replica is taken down only once load balancers list this one (the check
/// result and the registry write race otherwise). A replica without an
/// entry (`registry` absent: not registered, `network_mode: none`, or an
/// older agent) is judged by its health alone. Failures pass through.
fn visible_health(c: &ContainerStatus) -> Health {
    let up = matches!(c.health, Health::Healthy | Health::None);
    let unlisted = c.registry.is_some_and(|r| r != CheckStatus::Passing);
    if up && unlisted && c.state == ContainerState::Running {
        Health::Starting
    } else {
        c.health
    }
}

/// Whether the service has a health check (compose's or `cntnr.check.*`).
pub fn has_check(spec: &ServiceSpec) -> bool {
    spec.healthcheck
        .as_ref()
        .is_some_and(|h| !matches!(h.test, Some(HealthTest::Disabled)))
        || spec
            .annotations
            .keys()
            .any(|k| k.starts_with("cntnr.check."))
}

async fn follow(
    store: DynStore,
    shared: Arc<Shared>,
    seen: Arc<Mutex<Seen>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let prefix = shared.prefix.clone();
    let sdir = prefix.status_root();
    let rdir = prefix.rollback_dir();
    let mut swatch = store.watch(&sdir, WatchFrom::Start);
    let mut rwatch = store.watch(&rdir, WatchFrom::Start);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = swatch.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "status watch error (it resumes by itself)");
                }
                Some(Ok(ev)) => {
                    let Ok(StoreKey::Status(p, n)) = StoreKey::parse(&prefix, &ev.key) else {
                        continue;
                    };
                    let mut s = lock(&seen);
                    let wanted = s.watched.contains(&p);
                    match ev.kind {
                        EventKind::Put => match serde_json::from_slice::<StatusRecord>(&ev.value) {
                            Ok(r) => {
                                s.status.entry(p).or_default().insert(n, r);
                            }
                            Err(_) => continue,
                        },
                        EventKind::Delete => {
                            if let Some(m) = s.status.get_mut(&p) {
                                m.remove(&n);
                            }
                        }
                    }
                    drop(s);
                    if wanted {
                        wake.notify_one();
                    }
                }
            },
            ev = rwatch.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "rollback watch error (it resumes by itself)");
                }
                Some(Ok(ev)) => {
                    let Some(p) = ev.key.strip_prefix(&rdir).and_then(|p| ProjectName::new(p).ok()) else {
                        continue;
                    };
                    if ev.kind == EventKind::Put {
                        tracing::info!(project = %p, "rollback requested");
                        lock(&seen).rollback.insert(p);
                        wake.notify_one();
                    }
                }
            },
        }
    }
}

/// Node side: while `rec` was computed for an older revision than the
/// project's (`version`), replicas that no rollout names keep the hash of
/// the healthy revision instead of jumping to the new one before the
/// leader has decided how to roll it out.
pub fn hold_stale(d: &mut Desired, project: &Project, rec: &ScheduleRecord, version: u64) {
    let name = &project.name;
    if rec.generation >= version {
        return;
    }
    let Some(text) = rec.healthy_spec.as_deref() else {
        return;
    };
    let key = format!("projects/{name}");
    let Ok(healthy) = load_stored(name, &key, text) else {
        return;
    };
    for r in &mut d.replicas {
        if rec.rollouts.contains_key(&r.service) {
            continue;
        }
        // Only services the leader rolls (see `Leader::apply`).
        let rolled = rolls(&r.service, project);
        if let (true, Some(s)) = (rolled, healthy.services.get(&r.service)) {
            r.config_hash = s.config_hash();
        }
    }
}

/// Whether the leader rolls updates of `service` out replica by replica.
fn rolls(service: &ServiceName, project: &Project) -> bool {
    project
        .services
        .get(service)
        .is_some_and(|s| s.deploy.update_config.is_some())
}

/// The worst time the service's health check takes to decide
/// ([`check_time`]; 0 without a check), for the readiness deadline.
fn check_ms(spec: &ServiceSpec) -> Millis {
    crate::health::probe::HealthConfig::from_spec(spec).map_or(0, |h| {
        let p = h.policy;
        check_time(p.start_period, p.interval, p.timeout, p.retries)
    })
}

/// Node side: the spec a replica that must carry `hash` is built from: the
/// project's, or the schedule's healthy revision when a rolling update
/// holds the replica there.
pub fn spec_for<'a>(
    shared: &Shared,
    name: &ProjectName,
    spec: Option<&'a Project>,
    service: &ServiceName,
    hash: &ConfigHash,
) -> Result<Cow<'a, ServiceSpec>> {
    let current = spec.and_then(|p| p.services.get(service));
    if let Some(s) = current.filter(|s| &s.config_hash() == hash) {
        return Ok(Cow::Borrowed(s));
    }
    let text = {
        let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
        d.schedules
            .get(name)
            .and_then(|s| s.as_ref().ok())
            .and_then(|s| s.healthy_spec.clone())
    };
    let key = format!("projects/{name}");
    if let Some(s) = text
        .and_then(|t| load_stored(name, &key, &t).ok())
        .and_then(|p| p.services.get(service).cloned())
        .filter(|s| &s.config_hash() == hash)
    {
        return Ok(Cow::Owned(s));
    }
    match current {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => Err(anyhow!(
            "project {name}, service {service}: not in the project any more"
        )),
    }
}

/// One line per rolling update of `rec`, for `cntnr ps` and the status
/// record's warnings: `rolling update of web: updating 1/3, 1 in flight`.
pub fn progress_lines(rec: &ScheduleRecord) -> Vec<String> {
    rec.rollouts
        .iter()
        .map(|(svc, ro)| {
            let mut l = format!("rolling update of {svc}: {}", ro.progress());
            if let Some(r) = &ro.reason {
                l.push_str(&format!(" ({r})"));
            }
            if let Some(f) = &ro.fallback {
                l.push_str(&format!(" ({f})"));
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_replica_is_ready_only_once_its_entry_is_passing() {
        let c: ContainerStatus = serde_json::from_value(serde_json::json!({
            "id": "p-web-1", "service": "web", "replica": 1, "state": "running",
            "health": "healthy",
            "config_hash": format!("v1-{}", "0".repeat(64)),
        }))
        .unwrap();
        let with = |health: Health, registry: Option<CheckStatus>| ContainerStatus {
            health,
            registry,
            ..c.clone()
        };
        // Not written yet, or written critical: still starting.
        for r in [CheckStatus::Pending, CheckStatus::Critical] {
            assert_eq!(
                visible_health(&with(Health::Healthy, Some(r))),
                Health::Starting
            );
            assert_eq!(
                visible_health(&with(Health::None, Some(r))),
                Health::Starting
            );
        }
        // Passing: as its check says.
        let passing = Some(CheckStatus::Passing);
        assert_eq!(
            visible_health(&with(Health::Healthy, passing)),
            Health::Healthy
        );
        assert_eq!(visible_health(&with(Health::None, passing)), Health::None);
        // Failures pass through; a replica without an entry is not gated.
        assert_eq!(
            visible_health(&with(Health::Unhealthy, passing)),
            Health::Unhealthy
        );
        assert_eq!(
            visible_health(&with(Health::Healthy, None)),
            Health::Healthy
        );
        assert_eq!(visible_health(&with(Health::None, None)), Health::None);
    }

    fn project(v: u32) -> (Project, String) {
        let text = format!(
            "services:\n  rolled:\n    image: busybox\n    environment: {{V: '{v}'}}\n    deploy: {{replicas: 2, update_config: {{parallelism: 1}}}}\n  plain:\n    image: busybox\n    environment: {{V: '{v}'}}\n"
        );
        let name = ProjectName::new("p").unwrap();
        (load_stored(&name, "projects/p", &text).unwrap(), text)
    }

    fn record(healthy: &str, generation: u64) -> ScheduleRecord {
        let n = NodeName::new("n1").unwrap();
        let svc = |s: &str| ServiceName::new(s).unwrap();
        ScheduleRecord {
            fencing_token: 1,
            leader: n.clone(),
            generation,
            services: [
                (svc("rolled"), [(1, n.clone()), (2, n.clone())].into()),
                (svc("plain"), [(1, n.clone())].into()),
            ]
            .into(),
            gone_since: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            healthy_spec: Some(healthy.to_string()),
        }
    }

    fn hashes(d: &Desired) -> Vec<(String, ConfigHash)> {
        d.replicas
            .iter()
            .map(|r| (r.id.to_string(), r.config_hash.clone()))
            .collect()
    }

    #[test]
    fn progress_lines_say_why_start_first_fell_back() {
        let (v1, t1) = project(1);
        let (v2, _) = project(2);
        let svc = ServiceName::new("rolled").unwrap();
        let h = |p: &Project| p.services[&svc].config_hash();
        let mut rec = record(&t1, 2);
        let start: BTreeMap<u32, Option<ConfigHash>> =
            [(1, Some(h(&v1))), (2, Some(h(&v1)))].into();
        let mut ro = ServiceRollout::start(h(&v1), h(&v2), &start);
        let update = cntnr_model::UpdateConfig {
            order: UpdateOrder::StartFirst,
            ..Default::default()
        };
        let settings = Settings {
            update: &update,
            rollback: &update,
            has_check: false,
            check_ms: 0,
            surge: Err(
                "no node can take one (max_replicas_per_node 1 reached on the 1 eligible node)"
                    .into(),
            ),
        };
        let adv = ro.step(&settings, &[1, 2].into(), &BTreeMap::new(), 1);
        assert_eq!(adv.advanced, vec![1]);
        rec.rollouts.insert(svc, ro);
        assert_eq!(
            progress_lines(&rec),
            vec!["rolling update of rolled: updating 0/2, 1 in flight (start-first needs a surge replica: no node can take one (max_replicas_per_node 1 reached on the 1 eligible node); running stop-first)".to_string()]
        );
    }

    #[test]
    fn a_stale_schedule_holds_rolled_services_at_the_healthy_revision() {
        let (v1, t1) = project(1);
        let (v2, _) = project(2);
        let h = |p: &Project, s: &str| p.services[&ServiceName::new(s).unwrap()].config_hash();
        let node = NodeName::new("n1").unwrap();
        // The schedule was computed for revision 1; the project is at 2.
        let rec = record(&t1, 1);
        let mut d = Desired::for_node(&v2, &rec, &node).unwrap();
        hold_stale(&mut d, &v2, &rec, 2);
        assert_eq!(
            hashes(&d),
            vec![
                ("p-plain-1".into(), h(&v2, "plain")),
                ("p-rolled-1".into(), h(&v1, "rolled")),
                ("p-rolled-2".into(), h(&v1, "rolled")),
            ]
        );
        // Once the leader wrote the schedule for revision 2, nothing held.
        let rec = record(&t1, 2);
        let mut d = Desired::for_node(&v2, &rec, &node).unwrap();
        hold_stale(&mut d, &v2, &rec, 2);
        assert!(hashes(&d)
            .iter()
            .all(|(id, x)| *x == h(&v2, id.split('-').nth(1).unwrap())));
    }
}
