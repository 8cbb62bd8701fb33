//! The leader's placement loop: while this agent leads, it keeps
//! `schedule/<project>` equal to [`schedule`] of (the project, the live
//! nodes in `nodes/`, the previous schedule) for every valid project, and
//! writes each change as a **fenced** write with its leadership, so a
//! deposed leader's late write is rejected by the store.
//!
//! Inputs are followed, not polled: `nodes/` with a list + resumable watch,
//! projects and schedules through the desired state's change counter. A
//! burst of changes is coalesced into one pass. An invalid project keeps its
//! previous schedule (its last good containers keep running); the schedule
//! of a project removed from the store is deleted.
//!
//! Node loss (issue 9): the leader remembers since when each node is gone
//! from `nodes/` (a delete event, else the `gone_since` of the schedule
//! records a former leader wrote, else the first pass that finds it
//! missing), passes it to [`schedule`] with the current time, and writes it
//! into the records; it sleeps until the earliest grace ends
//! ([`cntnr_reconcile::schedule::Schedule::recheck_at`]) and places again
//! then. A new leader therefore neither reschedules at once nor restarts
//! the grace of a node a former leader already saw leave.
//!
//! Rebalance: `cntnr rebalance PROJECT` writes `rebalance/<project>`; the
//! leader follows `rebalance/` with a watch, places that project with no
//! previous schedule (from scratch), writes it, and then deletes the
//! request. A request outlives a leader change (the next leader lists it).
//!
//! Fault injection (tests only): [`FAULT_WRITE_DELAY`] makes the leader
//! pause between computing a schedule and its fenced write, so a test can
//! freeze it at the worst moment (as a GC pause or SIGSTOP would) and see
//! the late write rejected. A rejected write is logged (`schedule write
//! rejected: fenced out`) and counted (`cntnr_schedule_writes_fenced_out`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cntnr_kv::{DynStore, EventKind, Leadership, WatchFrom};
use cntnr_model::records::{NodeRecord, ScheduleRecord};
use cntnr_model::{NodeName, ProjectName, StoreKey};
use cntnr_reconcile::schedule::{node_load, schedule, Cluster, PendingReason};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Passes are at least this far apart (a burst of changes is coalesced).
const SETTLE: Duration = Duration::from_millis(50);

/// Test-only environment variable: a duration (`5s`) the leader sleeps
/// between computing each schedule and its fenced write, after logging
/// `fault injection: pausing before the fenced schedule write`. The pause
/// is not cancelled by a leadership loss: like a frozen process, the
/// leader attempts the write when it wakes. Never set it in production.
pub const FAULT_WRITE_DELAY: &str = "CNTNR_FAULT_SCHEDULE_WRITE_DELAY";

/// [`FAULT_WRITE_DELAY`], if set to a valid duration (an invalid value is
/// logged and ignored).
fn fault_write_delay() -> Option<Duration> {
    let v = std::env::var(FAULT_WRITE_DELAY).ok()?;
    match cntnr_model::units::parse_duration(&v) {
        Ok(d) => {
            tracing::warn!(delay = ?d, "fault injection ({FAULT_WRITE_DELAY}): every schedule write pauses first; for tests only");
            Some(d)
        }
        Err(e) => {
            tracing::error!(error = %e, "ignoring {FAULT_WRITE_DELAY}");
            None
        }
    }
}

/// Places every project while `leadership` holds; returns `Ok` on cancel
/// and an error when a fenced write is rejected (leadership is gone).
pub async fn run(
    store: DynStore,
    shared: Arc<Shared>,
    leadership: &Leadership,
    cancel: CancellationToken,
) -> Result<()> {
    let prefix = shared.prefix.clone();
    let ndir = prefix.nodes_dir();
    let mut changes = shared.desired_changes();
    let mut nodes: BTreeMap<NodeName, NodeRecord> = BTreeMap::new();
    let mut watch = store.watch(&ndir, WatchFrom::Start);
    let rdir = prefix.rebalance_dir();
    let mut rwatch = store.watch(&rdir, WatchFrom::Start);
    // Projects an operator asked to place from scratch.
    let mut rebalance: BTreeSet<ProjectName> = BTreeSet::new();
    // Written here, not yet seen back through the watch of schedule/.
    let mut written: BTreeMap<ProjectName, ScheduleRecord> = BTreeMap::new();
    let mut delay = Duration::from_millis(200);
    let mut last_pass: Option<tokio::time::Instant> = None;
    // Since when each node is gone (Unix seconds).
    let mut gone: BTreeMap<NodeName, u64> = BTreeMap::new();
    // When placement must run again for a grace that ends.
    let mut recheck: Option<tokio::time::Instant> = None;
    let mut rollout =
        super::rollout::Leader::start(store.clone(), shared.clone(), cancel.child_token());
    let fault_delay = fault_write_delay();
    loop {
        // Wait for a change (the first pass runs once nodes are listed).
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = rollout.wait() => {}
            _ = sleep_until(recheck) => {
                recheck = None;
                tracing::info!("a grace period ended: placing again");
            }
            ev = watch.next() => match ev {
                None => anyhow::bail!("the watch of {ndir} ended"),
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "nodes watch error (it resumes by itself)");
                    continue;
                }
                Some(Ok(ev)) => {
                    shared.metrics.watch_event("nodes");
                    apply_node(&prefix, &mut nodes, &mut gone, ev.kind, &ev.key, &ev.value);
                }
            },
            r = changes.changed() => if r.is_err() { return Ok(()) },
            ev = rwatch.next() => match ev {
                None => anyhow::bail!("the watch of {rdir} ended"),
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "rebalance watch error (it resumes by itself)");
                    continue;
                }
                Some(Ok(ev)) => apply_rebalance(&rdir, &mut rebalance, ev.kind, &ev.key),
            },
        }
        // Coalesce a burst: a change right after a pass waits until SETTLE
        // after that pass; a lone change is placed at once (a fixed wait
        // here was most of a one-service deploy's latency).
        let now = tokio::time::Instant::now();
        let settle = tokio::time::sleep_until(last_pass.map_or(now, |t| (t + SETTLE).max(now)));
        tokio::pin!(settle);
        loop {
            tokio::select! {
                _ = &mut settle => break,
                _ = cancel.cancelled() => return Ok(()),
                ev = watch.next() => match ev {
                    None => anyhow::bail!("the watch of {ndir} ended"),
                    Some(Ok(ev)) => apply_node(&prefix, &mut nodes, &mut gone, ev.kind, &ev.key, &ev.value),
                    Some(Err(_)) => shared.metrics.store_error("watch"),
                },
                r = changes.changed() => if r.is_err() { return Ok(()) },
                ev = rwatch.next() => match ev {
                    None => anyhow::bail!("the watch of {rdir} ended"),
                    Some(Ok(ev)) => apply_rebalance(&rdir, &mut rebalance, ev.kind, &ev.key),
                    Some(Err(_)) => shared.metrics.store_error("watch"),
                },
            }
        }
        changes.borrow_and_update();
        // This agent registered its node before campaigning: until the
        // watch shows it, the node list is not loaded yet, and placing on
        // it would unschedule every replica (seen on a restart, when a
        // desired-state change arrives before the nodes listing).
        if !shared.is_synced() || !nodes.contains_key(&shared.node) {
            continue;
        }
        last_pass = Some(tokio::time::Instant::now());
        let state = PlaceState {
            nodes: &nodes,
            gone: &mut gone,
            written: &mut written,
            rebalance: &mut rebalance,
            rollout: &mut rollout,
            fault_delay,
        };
        match place_all(&store, &shared, leadership, state).await {
            Ok(at) => {
                delay = Duration::from_millis(200);
                let now = super::now_secs();
                let audit_at =
                    super::audit::run_once(&store, &shared, leadership, &nodes, &mut gone, now)
                        .await;
                let at = match (at, audit_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                recheck = at.map(|at| {
                    let wait = Duration::from_secs(at.saturating_sub(super::now_secs()));
                    tokio::time::Instant::now() + wait
                });
            }
            Err(PlaceError::Fenced(e)) => return Err(e),
            Err(PlaceError::Store(e)) => {
                shared.metrics.store_error("schedule");
                tracing::warn!(error = %format!("{e:#}"), ?delay, "writing schedules failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                // Retry even without news.
                shared.desired_changed();
            }
        }
    }
}

/// A `rebalance/<project>` request appeared or went.
fn apply_rebalance(rdir: &str, set: &mut BTreeSet<ProjectName>, kind: EventKind, key: &str) {
    let Some(p) = key
        .strip_prefix(rdir)
        .and_then(|p| ProjectName::new(p).ok())
    else {
        return;
    };
    match kind {
        EventKind::Put => {
            tracing::info!(project = %p, "rebalance requested");
            set.insert(p);
        }
        EventKind::Delete => {
            set.remove(&p);
        }
    }
}

/// What the placement loop keeps between passes.
struct PlaceState<'a> {
    nodes: &'a BTreeMap<NodeName, NodeRecord>,
    gone: &'a mut BTreeMap<NodeName, u64>,
    written: &'a mut BTreeMap<ProjectName, ScheduleRecord>,
    rebalance: &'a mut BTreeSet<ProjectName>,
    rollout: &'a mut super::rollout::Leader,
    /// [`FAULT_WRITE_DELAY`].
    fault_delay: Option<Duration>,
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn apply_node(
    prefix: &cntnr_model::Prefix,
    nodes: &mut BTreeMap<NodeName, NodeRecord>,
    gone: &mut BTreeMap<NodeName, u64>,
    kind: EventKind,
    key: &str,
    value: &[u8],
) {
    let Ok(StoreKey::Node(n)) = StoreKey::parse(prefix, key) else {
        return;
    };
    match kind {
        EventKind::Put => match serde_json::from_slice::<NodeRecord>(value) {
            Ok(r) => {
                gone.remove(&n);
                nodes.insert(n, r);
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "ignoring a node record that does not parse");
                if nodes.remove(&n).is_some() {
                    gone.insert(n, super::now_secs());
                }
            }
        },
        EventKind::Delete => {
            if nodes.remove(&n).is_some() {
                tracing::info!(node = %n, "node gone from nodes/");
            }
            gone.insert(n, super::now_secs());
        }
    }
}

/// Completes `gone` for this pass: every node a schedule places replicas
/// on that is not live gets a gone-since time: the one a former leader
/// wrote in the record, else now (never earlier than we know).
pub fn note_gone_nodes<'a>(
    gone: &mut BTreeMap<NodeName, u64>,
    nodes: &BTreeMap<NodeName, NodeRecord>,
    schedules: impl IntoIterator<Item = &'a ScheduleRecord>,
    now: u64,
) {
    let schedules: Vec<&ScheduleRecord> = schedules.into_iter().collect();
    for rec in &schedules {
        for (n, since) in &rec.gone_since {
            if !nodes.contains_key(n) {
                // What this leader saw itself (a delete event) wins: a
                // record may lag behind a node that came back and left.
                gone.entry(n.clone()).or_insert(*since);
            }
        }
    }
    for rec in &schedules {
        for n in rec.services.values().flat_map(BTreeMap::values) {
            if !nodes.contains_key(n) {
                gone.entry(n.clone()).or_insert(now);
            }
        }
    }
    gone.retain(|n, _| !nodes.contains_key(n));
}

/// The cluster the leader places `project` on: the live `nodes` (from
/// `nodes/`) with the load of every *other* project's schedule (`schedules`
/// may include `project`'s own; it is skipped). `cntnr plan` uses the same
/// function, so its preview matches what the leader would write.
pub fn cluster_for<'a>(
    project: &ProjectName,
    nodes: &BTreeMap<NodeName, NodeRecord>,
    schedules: impl IntoIterator<Item = (&'a ProjectName, &'a ScheduleRecord)>,
) -> Cluster {
    let mut cluster = Cluster::from_records(nodes.iter());
    cluster.other_load = node_load(
        schedules
            .into_iter()
            .filter(|(q, _)| *q != project)
            .map(|(_, s)| s),
    );
    cluster
}

enum PlaceError {
    Fenced(anyhow::Error),
    Store(anyhow::Error),
}

/// One pass over every project; returns when (Unix seconds) the earliest
/// grace of a replica kept on a gone node ends.
async fn place_all(
    store: &DynStore,
    shared: &Shared,
    leadership: &Leadership,
    state: PlaceState<'_>,
) -> std::result::Result<Option<u64>, PlaceError> {
    let PlaceState {
        nodes,
        gone,
        written,
        rebalance,
        rollout,
        fault_delay,
    } = state;
    // Rebalance requests served by this pass (deleted after the writes).
    let mut served: Vec<ProjectName> = Vec::new();
    let now = super::now_secs();
    let mut recheck_at: Option<u64> = None;
    // Decide under the lock, write without it.
    let mut puts: Vec<(ProjectName, ScheduleRecord)> = Vec::new();
    let mut deletes: Vec<ProjectName> = Vec::new();
    {
        let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
        let seen: BTreeMap<&ProjectName, &ScheduleRecord> = d
            .schedules
            .iter()
            .filter_map(|(p, s)| s.as_ref().ok().map(|s| (p, s)))
            .collect();
        // Our own writes count as previous until the watch brings them back.
        let previous = |p: &ProjectName| -> Option<ScheduleRecord> {
            match (written.get(p), seen.get(p)) {
                (Some(w), Some(s))
                    if (s.fencing_token, s.generation) >= (w.fencing_token, w.generation) =>
                {
                    Some((*s).clone())
                }
                (Some(w), _) => Some(w.clone()),
                (None, s) => s.map(|s| (*s).clone()),
            }
        };
        let prevs: Vec<ScheduleRecord> = d.schedules.keys().filter_map(&previous).collect();
        note_gone_nodes(gone, nodes, &prevs, now);
        for (p, dp) in &d.projects {
            let Ok(project) = &dp.spec else { continue };
            let prev = previous(p);
            let mut cluster = cluster_for(p, nodes, seen.iter().map(|(q, s)| (*q, *s)));
            cluster.gone_since = gone.clone();
            cluster.now = now;
            let from_scratch = rebalance.contains(p);
            let placed = if from_scratch {
                served.push(p.clone());
                tracing::info!(project = %p, "rebalancing: placing from scratch");
                schedule(project, &cluster, None)
            } else {
                schedule(project, &cluster, prev.as_ref())
            };
            if let Some(at) = placed.recheck_at {
                recheck_at = Some(recheck_at.map_or(at, |t| t.min(at)));
            }
            let lines: Vec<String> = placed
                .pending
                .iter()
                .map(|pending| match pending.reason {
                    PendingReason::NodeGone { .. } => format!("waiting: {pending}"),
                    _ => format!("not placed: {pending}"),
                })
                .collect();
            {
                let mut unplaced = shared.unplaced.lock().unwrap_or_else(|e| e.into_inner());
                if unplaced
                    .get(p)
                    .map_or(!lines.is_empty(), |old| *old != lines)
                {
                    for l in &lines {
                        tracing::warn!(project = %p, "{l}");
                    }
                }
                if lines.is_empty() {
                    unplaced.remove(p);
                } else {
                    unplaced.insert(p.clone(), lines);
                }
            }
            // Rewritten when placement changes, when this leader has not
            // claimed the record yet, or for a new project revision (so
            // every agent re-reconciles it and sees the generation).
            let same = placed.same_placement(prev.as_ref());
            let mut rec = placed.into_record(leadership.token, shared.node.clone(), dp.version);
            let rolled = rollout.apply(p, project, prev.as_ref(), &mut rec, &cluster);
            if same
                && !rolled
                && prev.as_ref().is_some_and(|r| {
                    r.fencing_token == leadership.token && r.generation == dp.version
                })
            {
                continue;
            }
            puts.push((p.clone(), rec));
        }
        for p in d.schedules.keys() {
            if !d.projects.contains_key(p) {
                deletes.push(p.clone());
            }
        }
        served.extend(
            rebalance
                .iter()
                .filter(|p| !d.projects.contains_key(*p))
                .cloned(),
        );
        shared
            .unplaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p, _| d.projects.contains_key(p));
    }
    for (p, rec) in puts {
        let key = StoreKey::Schedule(p.clone()).render(&shared.prefix);
        let bytes = serde_json::to_vec(&rec).map_err(|e| PlaceError::Store(e.into()))?;
        if let Some(d) = fault_delay {
            // Not raced against cancellation: a frozen leader does not
            // know it was frozen, and writes when it wakes.
            tracing::warn!(project = %p, token = rec.fencing_token, delay = ?d, "fault injection: pausing before the fenced schedule write");
            tokio::time::sleep(d).await;
        }
        // Whether the client already knew (then the store is not asked).
        let known_lost = !leadership.is_held();
        match store.put_fenced(&key, &bytes, leadership).await {
            Ok(_) => {
                tracing::info!(project = %p, token = rec.fencing_token, "schedule written");
                written.insert(p, rec);
            }
            Err(e @ cntnr_kv::Error::FencedOut { .. }) => {
                shared.metrics.schedule_fenced_out();
                tracing::warn!(project = %p, token = rec.fencing_token, session_known_lost = known_lost, error = %e, "schedule write rejected: fenced out");
                return Err(PlaceError::Fenced(anyhow::anyhow!(e)));
            }
            Err(e) => return Err(PlaceError::Store(e.into())),
        }
    }
    for p in deletes {
        let key = StoreKey::Schedule(p.clone()).render(&shared.prefix);
        delete_fenced(store, &key, leadership, shared).await?;
        written.remove(&p);
        tracing::info!(project = %p, "schedule of a removed project deleted");
    }
    for key in rollout.take_served(&shared.prefix) {
        delete_fenced(store, &key, leadership, shared).await?;
    }
    let rdir = shared.prefix.rebalance_dir();
    for p in served {
        delete_fenced(store, &format!("{rdir}{p}"), leadership, shared).await?;
        rebalance.remove(&p);
    }
    Ok(recheck_at)
}

/// A leader's clean-up delete, conditional on its leadership like its
/// schedule writes: a deposed leader's late delete is rejected by the store.
async fn delete_fenced(
    store: &DynStore,
    key: &str,
    leadership: &Leadership,
    shared: &Shared,
) -> Result<(), PlaceError> {
    match store.delete_fenced(key, leadership).await {
        Ok(()) => Ok(()),
        Err(e @ cntnr_kv::Error::FencedOut { .. }) => {
            shared.metrics.schedule_fenced_out();
            tracing::warn!(key, token = leadership.token, error = %e, "leader clean-up delete rejected: fenced out");
            Err(PlaceError::Fenced(anyhow::anyhow!(e)))
        }
        Err(e) => Err(PlaceError::Store(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn rec(services: &[(&str, &str)], gone: &[(&str, u64)]) -> ScheduleRecord {
        let mut placed: BTreeMap<cntnr_model::ServiceName, BTreeMap<u32, NodeName>> =
            BTreeMap::new();
        for (i, (svc, node)) in services.iter().enumerate() {
            placed
                .entry(cntnr_model::ServiceName::new(*svc).unwrap())
                .or_default()
                .insert(i as u32 + 1, n(node));
        }
        ScheduleRecord {
            fencing_token: 1,
            leader: n("l"),
            generation: 1,
            services: placed,
            gone_since: gone.iter().map(|(x, t)| (n(x), *t)).collect(),
            rollouts: BTreeMap::new(),
            healthy_spec: None,
        }
    }

    fn live(names: &[&str]) -> BTreeMap<NodeName, NodeRecord> {
        names
            .iter()
            .map(|x| {
                (
                    n(x),
                    NodeRecord {
                        labels: BTreeMap::new(),
                        address: x.to_string(),
                        version: "0".into(),
                        rootless: false,
                        started: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn gone_since_comes_from_events_then_records_then_now() {
        let nodes = live(&["a"]);
        // b: a former leader saw it leave at 100; c: nobody recorded it;
        // d: this leader saw it leave at 150 (wins over a stale record).
        let records = [
            rec(&[("web", "a"), ("web", "b"), ("web", "c")], &[("b", 100)]),
            rec(&[("db", "d")], &[("d", 90)]),
        ];
        let mut gone: BTreeMap<NodeName, u64> = [(n("d"), 150), (n("a"), 5)].into();
        note_gone_nodes(&mut gone, &nodes, &records, 200);
        assert_eq!(gone, [(n("b"), 100), (n("c"), 200), (n("d"), 150)].into());
        // Again later: nothing restarts counting.
        note_gone_nodes(&mut gone, &nodes, &records, 300);
        assert_eq!(gone, [(n("b"), 100), (n("c"), 200), (n("d"), 150)].into());
    }
}
