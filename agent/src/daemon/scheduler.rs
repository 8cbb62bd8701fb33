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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cntnr_kv::{DynStore, EventKind, Leadership, WatchFrom};
use cntnr_model::records::{NodeRecord, ScheduleRecord};
use cntnr_model::{NodeName, ProjectName, StoreKey};
use cntnr_reconcile::schedule::{node_load, schedule, Cluster};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// Passes are at least this far apart (a burst of changes is coalesced).
const SETTLE: Duration = Duration::from_millis(50);

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
    // Written here, not yet seen back through the watch of schedule/.
    let mut written: BTreeMap<ProjectName, ScheduleRecord> = BTreeMap::new();
    let mut delay = Duration::from_millis(200);
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        // Wait for a change (the first pass runs once nodes are listed).
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = watch.next() => match ev {
                None => anyhow::bail!("the watch of {ndir} ended"),
                Some(Err(e)) => {
                    shared.metrics.store_error("watch");
                    tracing::warn!(error = %e, "nodes watch error (it resumes by itself)");
                    continue;
                }
                Some(Ok(ev)) => {
                    shared.metrics.watch_event("nodes");
                    apply_node(&prefix, &mut nodes, ev.kind, &ev.key, &ev.value);
                }
            },
            r = changes.changed() => if r.is_err() { return Ok(()) },
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
                    Some(Ok(ev)) => apply_node(&prefix, &mut nodes, ev.kind, &ev.key, &ev.value),
                    Some(Err(_)) => shared.metrics.store_error("watch"),
                },
                r = changes.changed() => if r.is_err() { return Ok(()) },
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
        match place_all(&store, &shared, leadership, &nodes, &mut written).await {
            Ok(()) => delay = Duration::from_millis(200),
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

fn apply_node(
    prefix: &cntnr_model::Prefix,
    nodes: &mut BTreeMap<NodeName, NodeRecord>,
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
                nodes.insert(n, r);
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "ignoring a node record that does not parse");
                nodes.remove(&n);
            }
        },
        EventKind::Delete => {
            nodes.remove(&n);
        }
    }
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

/// One pass over every project.
async fn place_all(
    store: &DynStore,
    shared: &Shared,
    leadership: &Leadership,
    nodes: &BTreeMap<NodeName, NodeRecord>,
    written: &mut BTreeMap<ProjectName, ScheduleRecord>,
) -> std::result::Result<(), PlaceError> {
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
        for (p, dp) in &d.projects {
            let Ok(project) = &dp.spec else { continue };
            let prev = previous(p);
            let cluster = cluster_for(p, nodes, seen.iter().map(|(q, s)| (*q, *s)));
            let placed = schedule(project, &cluster, prev.as_ref());
            let lines: Vec<String> = placed
                .pending
                .iter()
                .map(|pending| format!("not placed: {pending}"))
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
            if placed.same_placement(prev.as_ref())
                && prev.as_ref().is_some_and(|r| {
                    r.fencing_token == leadership.token && r.generation == dp.version
                })
            {
                continue;
            }
            puts.push((
                p.clone(),
                placed.into_record(leadership.token, shared.node.clone(), dp.version),
            ));
        }
        for p in d.schedules.keys() {
            if !d.projects.contains_key(p) {
                deletes.push(p.clone());
            }
        }
        shared
            .unplaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p, _| d.projects.contains_key(p));
    }
    for (p, rec) in puts {
        let key = StoreKey::Schedule(p.clone()).render(&shared.prefix);
        let bytes = serde_json::to_vec(&rec).map_err(|e| PlaceError::Store(e.into()))?;
        match store.put_fenced(&key, &bytes, leadership).await {
            Ok(_) => {
                tracing::info!(project = %p, token = rec.fencing_token, "schedule written");
                written.insert(p, rec);
            }
            Err(e @ cntnr_kv::Error::FencedOut { .. }) => {
                return Err(PlaceError::Fenced(anyhow::anyhow!(e)))
            }
            Err(e) => return Err(PlaceError::Store(e.into())),
        }
    }
    for p in deletes {
        let key = StoreKey::Schedule(p.clone()).render(&shared.prefix);
        store
            .delete(&key)
            .await
            .map_err(|e| PlaceError::Store(e.into()))?;
        written.remove(&p);
        tracing::info!(project = %p, "schedule of a removed project deleted");
    }
    Ok(())
}
