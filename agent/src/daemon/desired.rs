//! The desired state: every project in `projects/` and every schedule in
//! `schedule/`, kept in memory from one list + resumable watch of each
//! prefix (never a polling loop).
//!
//! Each project is parsed with [`load_stored`]. One that does not parse is
//! kept as an error and reported in its status key; it never stops the
//! agent or touches other projects. [`DesiredState`] is pure (tested by
//! tables below); [`run`] feeds it from the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use cntnr_kv::{DynStore, EventKind, Snapshot, WatchEvent, WatchFrom};
use cntnr_model::records::{ScheduleRecord, StatusRecord};
use cntnr_model::{load_stored, Prefix, Project, ProjectName, StoreKey};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;

/// One project as last seen in the store.
#[derive(Debug, Clone)]
pub struct DesiredProject {
    /// Version of `projects/<p>` (the project's generation).
    pub version: u64,
    /// The parsed project, or every problem found, one line each.
    pub spec: std::result::Result<Project, Vec<String>>,
}

/// A schedule as last seen: the record, or why it does not parse.
pub type DesiredSchedule = std::result::Result<ScheduleRecord, String>;

/// Projects and schedules by project.
#[derive(Debug, Default, Clone)]
pub struct DesiredState {
    /// `projects/<p>`.
    pub projects: BTreeMap<ProjectName, DesiredProject>,
    /// `schedule/<p>`.
    pub schedules: BTreeMap<ProjectName, DesiredSchedule>,
}

/// What a change means for a project's status key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// The project's status must be rewritten.
    Project(ProjectName),
    /// The key is not part of the layout (logged, otherwise ignored).
    Ignored(String),
}

impl DesiredState {
    /// Applies one put or delete under `projects/` or `schedule/`.
    pub fn apply(
        &mut self,
        prefix: &Prefix,
        kind: EventKind,
        key: &str,
        value: &[u8],
        version: u64,
    ) -> Affected {
        match StoreKey::parse(prefix, key) {
            Ok(StoreKey::Project(p)) => {
                match kind {
                    EventKind::Put => {
                        let spec = match std::str::from_utf8(value) {
                            Ok(text) => load_stored(&p, key, text).map_err(|e| e.lines()),
                            Err(e) => Err(vec![format!("{key}: not UTF-8 text: {e}")]),
                        };
                        self.projects
                            .insert(p.clone(), DesiredProject { version, spec });
                    }
                    EventKind::Delete => {
                        self.projects.remove(&p);
                    }
                }
                Affected::Project(p)
            }
            Ok(StoreKey::Schedule(p)) => {
                match kind {
                    EventKind::Put => {
                        let rec = serde_json::from_slice::<ScheduleRecord>(value)
                            .map_err(|e| format!("{key}: invalid schedule record: {e}"));
                        self.schedules.insert(p.clone(), rec);
                    }
                    EventKind::Delete => {
                        self.schedules.remove(&p);
                    }
                }
                Affected::Project(p)
            }
            Ok(_) => Affected::Ignored(key.to_string()),
            Err(e) => Affected::Ignored(format!("{key}: {e}")),
        }
    }

    /// The status this node reports for `project` (no containers yet: the
    /// runtime fills those in), or `None` when the project is gone.
    pub fn status(
        &self,
        project: &ProjectName,
        node: &cntnr_model::NodeName,
        now: u64,
    ) -> Option<StatusRecord> {
        let p = self.projects.get(project)?;
        let (mut errors, warnings) = match &p.spec {
            Ok(spec) => (Vec::new(), spec.warnings.clone()),
            Err(lines) => (lines.clone(), Vec::new()),
        };
        if let Some(Err(e)) = self.schedules.get(project) {
            errors.push(e.clone());
        }
        Some(StatusRecord {
            node: node.clone(),
            generation: p.version,
            updated: now,
            containers: Vec::new(),
            errors,
            warnings,
        })
    }

    /// (valid, invalid) project counts.
    pub fn counts(&self) -> (usize, usize) {
        let valid = self.projects.values().filter(|p| p.spec.is_ok()).count();
        (valid, self.projects.len() - valid)
    }
}

/// Lists `dir` until it works (or `cancel`), counting and logging failures.
async fn list_until_ok(
    store: &DynStore,
    dir: &str,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Option<Snapshot> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = store.list(dir) => match r {
                Ok(s) => return Some(s),
                Err(e) => {
                    shared.metrics.store_error("list");
                    tracing::warn!(%dir, error = %e, ?delay, "listing failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Lists and then watches `projects/` and `schedule/`, keeping
/// `shared.desired` current and triggering a reconcile of each affected
/// project (the reconciler writes its status). Marks the desired state
/// synced after the first full list.
/// Returns when cancelled, or with an error when a watch ends for good.
pub async fn run(
    store: DynStore,
    shared: Arc<Shared>,
    triggers: mpsc::UnboundedSender<ProjectName>,
    cancel: CancellationToken,
) -> Result<()> {
    let prefix = shared.prefix.clone();
    let pdir = prefix.projects_dir();
    let sdir = prefix.schedule_dir();
    let Some(psnap) = list_until_ok(&store, &pdir, &shared, &cancel).await else {
        return Ok(());
    };
    let Some(ssnap) = list_until_ok(&store, &sdir, &shared, &cancel).await else {
        return Ok(());
    };
    // The lists are the full desired state: replace what an earlier
    // session knew (a key deleted meanwhile must vanish too).
    let mut fresh = DesiredState::default();
    let mut affected = Vec::new();
    for e in psnap.entries.values().chain(ssnap.entries.values()) {
        affected.push(fresh.apply(&prefix, EventKind::Put, &e.key, &e.value, e.version));
    }
    let gone: Vec<ProjectName> = {
        let old = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
        old.projects
            .keys()
            .filter(|p| !fresh.projects.contains_key(*p))
            .cloned()
            .collect()
    };
    affected.extend(gone.into_iter().map(Affected::Project));
    *shared.desired.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    shared.mark_synced();
    for a in affected {
        publish(&shared, &triggers, a);
    }
    shared.desired_changed();

    let mut projects = store.watch(&pdir, WatchFrom::Snapshot(psnap));
    let mut schedules = store.watch(&sdir, WatchFrom::Snapshot(ssnap));
    loop {
        let (what, ev): (&str, Option<cntnr_kv::Result<WatchEvent>>) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = projects.next() => ("projects", ev),
            ev = schedules.next() => ("schedule", ev),
        };
        match ev {
            None => anyhow::bail!("the watch of {what}/ ended"),
            Some(Err(e)) => {
                shared.metrics.store_error("watch");
                tracing::warn!(watch = what, error = %e, "watch error (the watch resumes by itself)");
            }
            Some(Ok(ev)) => {
                // Delivered now: the lag runs until the reconcile is triggered.
                let delivered = std::time::Instant::now();
                shared.metrics.watch_event(what);
                tracing::debug!(key = %ev.key, kind = ?ev.kind, synthetic = ev.synthetic, "desired state changed");
                let a = shared
                    .desired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&prefix, ev.kind, &ev.key, &ev.value, ev.version);
                publish(&shared, &triggers, a);
                shared.desired_changed();
                shared.metrics.watch_lag(what, delivered.elapsed());
            }
        }
    }
}

/// Triggers a reconcile of an affected project (which writes its status)
/// and updates the metrics.
fn publish(shared: &Shared, triggers: &mpsc::UnboundedSender<ProjectName>, a: Affected) {
    match a {
        Affected::Project(p) => {
            let (record, counts) = {
                let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
                (d.status(&p, &shared.node, super::now_secs()), d.counts())
            };
            shared.metrics.set_projects(counts.0, counts.1);
            if let Some(r) = &record {
                for e in &r.errors {
                    tracing::warn!(project = %p, error = %e, "project is broken");
                }
            }
            // The reconciler outlives this task within a session.
            let _ = triggers.send(p);
        }
        Affected::Ignored(what) => {
            tracing::warn!(key = %what, "ignoring a key that is not part of the store layout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "services:\n  web:\n    image: nginx:1.25\n";

    fn node() -> cntnr_model::NodeName {
        cntnr_model::NodeName::new("n1").unwrap()
    }

    #[test]
    fn a_broken_project_is_an_error_and_others_are_untouched() {
        let prefix = Prefix::default();
        let mut d = DesiredState::default();
        let a = ProjectName::new("a").unwrap();
        let b = ProjectName::new("b").unwrap();
        assert_eq!(
            d.apply(
                &prefix,
                EventKind::Put,
                "cntnr/projects/a",
                b"services: [",
                5
            ),
            Affected::Project(a.clone())
        );
        d.apply(
            &prefix,
            EventKind::Put,
            "cntnr/projects/b",
            GOOD.as_bytes(),
            6,
        );
        assert_eq!(d.counts(), (1, 1));
        let sa = d.status(&a, &node(), 1).unwrap();
        assert_eq!(sa.generation, 5);
        assert_eq!(sa.errors.len(), 1);
        assert!(
            sa.errors[0].starts_with("cntnr/projects/a: "),
            "{:?}",
            sa.errors
        );
        let sb = d.status(&b, &node(), 1).unwrap();
        assert!(sb.errors.is_empty() && sb.generation == 6);

        // Fixing A clears its error; deleting it removes its status.
        d.apply(
            &prefix,
            EventKind::Put,
            "cntnr/projects/a",
            GOOD.as_bytes(),
            7,
        );
        assert!(d.status(&a, &node(), 1).unwrap().errors.is_empty());
        d.apply(&prefix, EventKind::Delete, "cntnr/projects/a", b"", 8);
        assert!(d.status(&a, &node(), 1).is_none());
        assert_eq!(d.counts(), (1, 0));
    }

    #[test]
    fn schedules_and_stray_keys() {
        let prefix = Prefix::default();
        let mut d = DesiredState::default();
        let p = ProjectName::new("p").unwrap();
        d.apply(
            &prefix,
            EventKind::Put,
            "cntnr/projects/p",
            GOOD.as_bytes(),
            1,
        );
        d.apply(&prefix, EventKind::Put, "cntnr/schedule/p", b"{}", 2);
        let s = d.status(&p, &node(), 1).unwrap();
        assert_eq!(s.errors.len(), 1);
        assert!(
            s.errors[0].contains("invalid schedule record"),
            "{:?}",
            s.errors
        );
        let good = r#"{"fencing_token":3,"leader":"n1","services":{"web":{"1":"n1"}}}"#;
        d.apply(
            &prefix,
            EventKind::Put,
            "cntnr/schedule/p",
            good.as_bytes(),
            3,
        );
        assert!(d.status(&p, &node(), 1).unwrap().errors.is_empty());
        assert!(matches!(d.schedules.get(&p), Some(Ok(r)) if r.fencing_token == 3));
        assert!(matches!(
            d.apply(&prefix, EventKind::Put, "cntnr/projects/Bad/x", b"", 4),
            Affected::Ignored(_)
        ));
        assert!(d.projects.len() == 1);
    }
}
