//! `cntnr ls`: deployed projects (`projects/`), each with its services and
//! desired replicas, and a summary of what the agents report under
//! `status/<project>/` when they have reported anything.

use std::collections::BTreeMap;

use anyhow::Result;
use cntnr_model::records::ContainerState;
use cntnr_model::{load_stored, ProjectName, StoreKey};
use serde_json::json;

use super::ps::read_status;
use super::Ctx;
use crate::table::Table;

/// Runs `ls`.
pub async fn run(ctx: &Ctx) -> Result<()> {
    let snap = ctx.store.list(&ctx.config.prefix.projects_dir()).await?;
    let statuses = read_status(ctx, None).await?;
    let mut by_project: BTreeMap<ProjectName, Vec<_>> = BTreeMap::new();
    for s in statuses {
        by_project.entry(s.project.clone()).or_default().push(s);
    }
    let mut t = Table::new(&[
        "PROJECT", "SERVICES", "NODES", "RUNNING", "ERRORS", "STATUS",
    ]);
    let mut out = Vec::new();
    for (key, entry) in &snap.entries {
        let Ok(StoreKey::Project(name)) = StoreKey::parse(&ctx.config.prefix, key) else {
            continue;
        };
        let text = String::from_utf8_lossy(&entry.value);
        let (services, invalid) = match load_stored(&name, key, &text) {
            Ok(p) => (p.services.len(), None),
            Err(e) => (0, Some(e.lines().first().cloned().unwrap_or_default())),
        };
        let reports = by_project.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        let (mut running, mut total, mut errors) = (0usize, 0usize, Vec::new());
        for r in reports {
            match &r.record {
                Ok(rec) => {
                    total += rec.containers.len();
                    running += rec
                        .containers
                        .iter()
                        .filter(|c| c.state == ContainerState::Running)
                        .count();
                    errors.extend(rec.errors.iter().map(|e| format!("{}: {e}", r.node)));
                }
                Err(e) => errors.push(format!("{}: {e}", r.node)),
            }
        }
        let status = match (&invalid, errors.first(), reports.is_empty()) {
            (Some(e), _, _) => format!("invalid: {e}"),
            (None, Some(e), _) => e.clone(),
            (None, None, true) => "no status yet".to_string(),
            (None, None, false) if total > 0 && running == total => "running".to_string(),
            (None, None, false) => "ok".to_string(),
        };
        if ctx.json {
            out.push(json!({
                "project": name.as_str(),
                "version": entry.version,
                "services": services,
                "valid": invalid.is_none(),
                "nodes": reports.len(),
                "containers": total,
                "running": running,
                "errors": errors,
            }));
        } else {
            t.row(vec![
                name.to_string(),
                services.to_string(),
                reports.len().to_string(),
                format!("{running}/{total}"),
                errors.len().to_string(),
                status,
            ]);
        }
    }
    if ctx.json {
        ctx.print_json(&json!(out));
    } else {
        print!("{}", t.render());
    }
    Ok(())
}
