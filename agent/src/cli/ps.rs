//! `cntnr ps [PROJECT]`: every container on every node, as the agents
//! report it in `status/<project>/<node>`, plus project-level errors. IPs
//! and published ports (`127.0.0.1:8080->80/tcp`) are those of bridge
//! containers; `--json` prints the records as stored.

use anyhow::Result;
use clap::Args;
use cntnr_model::records::{ContainerState, ScheduleRecord, StatusRecord};
use cntnr_model::{ProjectName, StoreKey};
use serde_json::json;

use super::Ctx;
use crate::table::Table;

/// Arguments of `cntnr ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only this project.
    pub project: Option<String>,
}

/// One `status/<project>/<node>` key, parsed or not.
pub struct NodeStatus {
    /// The project.
    pub project: ProjectName,
    /// The node reporting (from the key).
    pub node: String,
    /// The record, or why it does not parse.
    pub record: std::result::Result<StatusRecord, String>,
}

/// Reads every status key (of one project, or of all).
pub async fn read_status(ctx: &Ctx, project: Option<&ProjectName>) -> Result<Vec<NodeStatus>> {
    let prefix = match project {
        Some(p) => ctx.config.prefix.status_dir(p),
        None => ctx.config.prefix.status_root(),
    };
    let snap = ctx.store.list(&prefix).await?;
    let mut out = Vec::new();
    for (key, entry) in &snap.entries {
        let Ok(StoreKey::Status(project, node)) = StoreKey::parse(&ctx.config.prefix, key) else {
            continue;
        };
        out.push(NodeStatus {
            project,
            node: node.to_string(),
            record: serde_json::from_slice(&entry.value)
                .map_err(|e| format!("invalid status record: {e}")),
        });
    }
    Ok(out)
}

fn state_name(s: ContainerState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `a,b` (IPs, published ports).
fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `ps`.
pub async fn run(ctx: &Ctx, args: &PsArgs) -> Result<()> {
    let project = args
        .project
        .as_deref()
        .map(super::project_name)
        .transpose()?;
    let statuses = read_status(ctx, project.as_ref()).await?;
    if ctx.json {
        let v: Vec<_> = statuses
            .iter()
            .map(|s| match &s.record {
                Ok(r) => json!({ "project": s.project.as_str(), "node": s.node, "status": r }),
                Err(e) => json!({ "project": s.project.as_str(), "node": s.node, "error": e }),
            })
            .collect();
        ctx.print_json(&json!(v));
        return Ok(());
    }
    let mut t = Table::new(&[
        "PROJECT",
        "NODE",
        "CONTAINER",
        "STATE",
        "HEALTH",
        "RESTARTS",
        "EXIT",
        "CONFIG",
        "UP",
        "IP",
        "PORTS",
        "ERROR",
    ]);
    for s in statuses {
        let record = match s.record {
            Ok(r) => r,
            Err(e) => {
                t.row(vec![
                    s.project.to_string(),
                    s.node,
                    "-".into(),
                    "error".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    e,
                ]);
                continue;
            }
        };
        for e in &record.errors {
            t.row(vec![
                s.project.to_string(),
                s.node.clone(),
                "-".into(),
                "error".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                e.clone(),
            ]);
        }
        for c in &record.containers {
            let hash = c.config_hash.to_string();
            t.row(vec![
                s.project.to_string(),
                s.node.clone(),
                c.id.to_string(),
                state_name(c.state),
                serde_json::to_value(c.health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                c.restarts.to_string(),
                c.exit_code.map(|x| x.to_string()).unwrap_or_default(),
                hash.chars().take(15).collect(),
                c.started_at.map(super::age).unwrap_or_default(),
                join(&c.ips),
                join(&c.ports),
                c.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    print!("{}", t.render());
    // Rolling updates, from the leader's schedule records.
    let sdir = ctx.config.prefix.schedule_dir();
    for (key, entry) in &ctx.store.list(&sdir).await?.entries {
        let Ok(StoreKey::Schedule(p)) = StoreKey::parse(&ctx.config.prefix, key) else {
            continue;
        };
        if project.as_ref().is_some_and(|q| *q != p) {
            continue;
        }
        if let Ok(rec) = serde_json::from_slice::<ScheduleRecord>(&entry.value) {
            for line in crate::daemon::rollout::progress_lines(&rec) {
                println!("{p}: {line}");
            }
        }
    }
    Ok(())
}
