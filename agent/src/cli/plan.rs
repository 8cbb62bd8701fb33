//! `cntnr plan -f FILE… [-p NAME]`: what deploying these files would
//! change, per node and per container, and why. Writes nothing.
//!
//! The files are loaded exactly as `deploy` loads them. The placement is
//! what the leader would compute: [`schedule`] over the live nodes in
//! `nodes/`, the other projects' load and the current `schedule/<p>`
//! (placement is sticky). What runs now comes from the agents' reports in
//! `status/<p>/<node>`: a container is recreated when the config hash it
//! reports differs from the new spec's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use cntnr_model::records::{ContainerState, NodeRecord, ScheduleRecord};
use cntnr_model::{ContainerId, NodeName, Project, ProjectName, Replica, ServiceName, StoreKey};
use cntnr_reconcile::schedule::{schedule, Schedule};
use serde_json::{json, Value};

use super::Ctx;
use crate::table::Table;

/// Arguments of `cntnr plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Compose file; repeat to merge several files in order.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Project name (default: top-level `name:`, else the first file's
    /// directory name).
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
}

/// What happens to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It does not exist on this node yet.
    Create {
        /// Where it runs now, if it moves here.
        from: Option<String>,
    },
    /// It exists with another config hash.
    Recreate {
        /// The hash it reports.
        old: String,
        /// The new spec's hash.
        new: String,
    },
    /// It exists and is no longer placed on this node.
    Remove {
        /// Why.
        reason: String,
    },
    /// It exists with the same config hash.
    Unchanged,
}

impl Change {
    fn name(&self) -> &'static str {
        match self {
            Change::Create { .. } => "create",
            Change::Recreate { .. } => "recreate",
            Change::Remove { .. } => "remove",
            Change::Unchanged => "unchanged",
        }
    }

    fn why(&self) -> String {
        match self {
            Change::Create { from: None } => "not running".to_string(),
            Change::Create { from: Some(n) } => format!("moves from node {n}"),
            Change::Recreate { old, new } => {
                format!("config hash {} → {}", short(old), short(new))
            }
            Change::Remove { reason } => reason.clone(),
            Change::Unchanged => "same config hash".to_string(),
        }
    }
}

/// A hash as shown in the table: its version and first 12 hex digits.
fn short(hash: &str) -> &str {
    let cut = hash.find('-').map_or(0, |i| i + 1) + 12;
    hash.get(..cut).unwrap_or(hash)
}

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The node.
    pub node: String,
    /// The container.
    pub container: String,
    /// Its service.
    pub service: String,
    /// Its replica.
    pub replica: Replica,
    /// What happens.
    pub change: Change,
}

/// A container some node reports now.
#[derive(Debug, Clone)]
pub struct Current {
    /// Its service.
    pub service: ServiceName,
    /// Its replica.
    pub replica: Replica,
    /// The config hash it runs.
    pub hash: String,
}

/// The plan: container steps (by node, then container) and the replicas
/// that fit nowhere.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per node, per container.
    pub steps: Vec<Step>,
    /// The placement computed for the new project.
    pub placed: Schedule,
}

/// Compares the new placement of `project` with what runs now (`current`:
/// node → container id → container). Pure.
pub fn compute(
    project: &Project,
    placed: Schedule,
    current: &BTreeMap<String, BTreeMap<String, Current>>,
) -> Plan {
    let mut steps = Vec::new();
    // Where each container id is wanted.
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for (svc, replicas) in &placed.services {
        let Some(spec) = project.services.get(svc) else {
            continue;
        };
        let new = spec.config_hash().as_str().to_string();
        for (replica, node) in replicas {
            let id = ContainerId::new(&project.name, svc, *replica).to_string();
            wanted.insert(id.clone(), node.to_string());
            let here = current.get(node.as_str()).and_then(|c| c.get(&id));
            let change = match here {
                Some(c) if c.hash == new => Change::Unchanged,
                Some(c) => Change::Recreate {
                    old: c.hash.clone(),
                    new: new.clone(),
                },
                None => Change::Create {
                    from: current
                        .iter()
                        .find(|(n, cs)| *n != node.as_str() && cs.contains_key(&id))
                        .map(|(n, _)| n.clone()),
                },
            };
            steps.push(Step {
                node: node.to_string(),
                container: id,
                service: svc.to_string(),
                replica: *replica,
                change,
            });
        }
    }
    for (node, containers) in current {
        for (id, c) in containers {
            let reason = match wanted.get(id) {
                Some(n) if n == node => continue,
                Some(n) => format!("moves to node {n}"),
                None if project.services.contains_key(&c.service) => {
                    let placed_n = placed.services.get(&c.service).map_or(0, BTreeMap::len);
                    let pending = placed
                        .pending
                        .iter()
                        .any(|p| p.service == c.service && p.replica == Some(c.replica));
                    if pending {
                        "no node fits it any more (see pending)".to_string()
                    } else {
                        format!("scaled down to {placed_n} replica(s)")
                    }
                }
                None => "service gone from the project".to_string(),
            };
            steps.push(Step {
                node: node.clone(),
                container: id.clone(),
                service: c.service.to_string(),
                replica: c.replica,
                change: Change::Remove { reason },
            });
        }
    }
    steps.sort_by(|a, b| (&a.node, &a.service, a.replica).cmp(&(&b.node, &b.service, b.replica)));
    Plan { steps, placed }
}

/// Runs `plan`.
pub async fn run(ctx: &Ctx, args: &PlanArgs) -> Result<()> {
    let project =
        super::deploy::load_checked(&args.files, args.project_name.as_deref(), "nothing planned")?;
    let prefix = &ctx.config.prefix;
    let name = project.name.clone();

    let deployed = ctx
        .store
        .get(&ctx.key(&StoreKey::Project(name.clone())))
        .await?
        .is_some();
    let mut nodes: BTreeMap<NodeName, NodeRecord> = BTreeMap::new();
    for (key, e) in &ctx.store.list(&prefix.nodes_dir()).await?.entries {
        if let Ok(StoreKey::Node(n)) = StoreKey::parse(prefix, key) {
            // The leader ignores a record that does not parse; so does plan.
            if let Ok(r) = serde_json::from_slice::<NodeRecord>(&e.value) {
                nodes.insert(n, r);
            }
        }
    }
    let mut schedules: BTreeMap<ProjectName, ScheduleRecord> = BTreeMap::new();
    for (key, e) in &ctx.store.list(&prefix.schedule_dir()).await?.entries {
        if let Ok(StoreKey::Schedule(p)) = StoreKey::parse(prefix, key) {
            if let Ok(r) = serde_json::from_slice::<ScheduleRecord>(&e.value) {
                schedules.insert(p, r);
            }
        }
    }
    let mut current: BTreeMap<String, BTreeMap<String, Current>> = BTreeMap::new();
    for s in super::ps::read_status(ctx, Some(&name)).await? {
        let Ok(rec) = s.record else { continue };
        let on = current.entry(s.node.clone()).or_default();
        for c in rec.containers {
            // Scheduled but not created yet: nothing to recreate or remove.
            if c.state == ContainerState::Pending {
                continue;
            }
            on.insert(
                c.id.to_string(),
                Current {
                    service: c.service,
                    replica: c.replica,
                    hash: c.config_hash.as_str().to_string(),
                },
            );
        }
    }
    current.retain(|_, cs| !cs.is_empty());

    let mut cluster = crate::daemon::scheduler::cluster_for(&name, &nodes, schedules.iter());
    // Gone nodes as the leader sees them (from the records; a node no
    // record dates is taken as gone from now, as a new leader would).
    let now = crate::daemon::now_secs();
    crate::daemon::scheduler::note_gone_nodes(
        &mut cluster.gone_since,
        &nodes,
        schedules.values(),
        now,
    );
    cluster.now = now;
    let placed = schedule(&project, &cluster, schedules.get(&name));
    let plan = compute(&project, placed, &current);

    if ctx.json {
        let steps: Vec<Value> = plan
            .steps
            .iter()
            .map(|s| {
                let mut v = json!({
                    "node": s.node,
                    "container": s.container,
                    "service": s.service,
                    "replica": s.replica,
                    "change": s.change.name(),
                    "reason": s.change.why(),
                });
                if let Change::Recreate { old, new } = &s.change {
                    v["old_hash"] = json!(old);
                    v["new_hash"] = json!(new);
                }
                v
            })
            .collect();
        let pending: Vec<Value> = plan
            .placed
            .pending
            .iter()
            .map(|p| {
                json!({
                    "service": p.service.as_str(),
                    "replica": p.replica,
                    "reason": p.reason.to_string(),
                })
            })
            .collect();
        ctx.print_json(&json!({
            "project": name.as_str(),
            "deployed": deployed,
            "nodes": nodes.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
            "changes": steps,
            "pending": pending,
        }));
        return Ok(());
    }
    println!(
        "project {name} ({}), {} live node(s)",
        if deployed {
            "deployed: changes against what runs"
        } else {
            "not deployed yet"
        },
        nodes.len()
    );
    let mut t = Table::new(&["NODE", "CONTAINER", "CHANGE", "WHY"]);
    for s in &plan.steps {
        t.row(vec![
            s.node.clone(),
            s.container.clone(),
            s.change.name().to_string(),
            s.change.why(),
        ]);
    }
    for p in &plan.placed.pending {
        let container = match p.replica {
            Some(r) => ContainerId::new(&name, &p.service, r).to_string(),
            None => format!("{name}-{}-*", p.service),
        };
        t.row(vec![
            "-".to_string(),
            container,
            "pending".to_string(),
            p.reason.to_string(),
        ]);
    }
    if t.is_empty() {
        println!("nothing to do");
    } else {
        print!("{}", t.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(yaml: &str) -> Project {
        let p = ProjectName::new("shop").unwrap();
        cntnr_model::load_stored(&p, "cntnr/projects/shop", yaml).unwrap()
    }

    fn placed(project: &Project, nodes: &[&str]) -> Schedule {
        let recs: BTreeMap<NodeName, NodeRecord> = nodes
            .iter()
            .map(|n| {
                (
                    NodeName::new(*n).unwrap(),
                    serde_json::from_str(r#"{"address":"","version":"","started":0}"#).unwrap(),
                )
            })
            .collect();
        let cluster = crate::daemon::scheduler::cluster_for(&project.name, &recs, []);
        schedule(project, &cluster, None)
    }

    #[test]
    fn creates_recreates_removes_and_unchanged() {
        let old = project(
            "services:\n  web:\n    image: x\n    deploy: {replicas: 3}\n  db:\n    image: y\n  gone:\n    image: z\n",
        );
        let new = project(
            "services:\n  web:\n    image: x\n    deploy: {replicas: 2}\n  db:\n    image: y2\n  api:\n    image: a\n",
        );
        let hash = |p: &Project, s: &str| {
            p.services[&ServiceName::new(s).unwrap()]
                .config_hash()
                .as_str()
                .to_string()
        };
        let cur = |s: &str, r: Replica, h: String| {
            (
                format!("shop-{s}-{r}"),
                Current {
                    service: ServiceName::new(s).unwrap(),
                    replica: r,
                    hash: h,
                },
            )
        };
        let current = BTreeMap::from([(
            "n1".to_string(),
            BTreeMap::from([
                cur("web", 1, hash(&old, "web")),
                cur("web", 2, hash(&old, "web")),
                cur("web", 3, hash(&old, "web")),
                cur("db", 1, hash(&old, "db")),
                cur("gone", 1, hash(&old, "gone")),
            ]),
        )]);
        let plan = compute(&new, placed(&new, &["n1"]), &current);
        let got: Vec<(&str, &str)> = plan
            .steps
            .iter()
            .map(|s| (s.container.as_str(), s.change.name()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("shop-api-1", "create"),
                ("shop-db-1", "recreate"),
                ("shop-gone-1", "remove"),
                ("shop-web-1", "unchanged"),
                ("shop-web-2", "unchanged"),
                ("shop-web-3", "remove"),
            ]
        );
        assert!(plan.steps[2].change.why().contains("service gone"));
        assert!(plan.steps[5].change.why().contains("scaled down to 2"));
        assert!(plan.steps[1].change.why().contains(" → "));
    }

    #[test]
    fn no_node_means_pending_and_short_hashes() {
        let p = project("services:\n  web:\n    image: x\n");
        let plan = compute(&p, placed(&p, &[]), &BTreeMap::new());
        assert!(plan.steps.is_empty());
        assert_eq!(plan.placed.pending.len(), 1);
        assert_eq!(short("v1-0123456789abcdef"), "v1-0123456789ab");
        assert_eq!(short("odd"), "odd");
    }
}
