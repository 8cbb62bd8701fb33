//! `cntnr nodes`: the live agents (`nodes/`, session-bound, so a dead
//! agent's record is gone) and which of them leads.

use anyhow::Result;
use cntnr_model::records::NodeRecord;
use serde_json::json;

use super::Ctx;
use crate::table::Table;

/// Runs `nodes`.
pub async fn run(ctx: &Ctx) -> Result<()> {
    let dir = ctx.config.prefix.nodes_dir();
    let snap = ctx.store.list(&dir).await?;
    let leader = ctx
        .store
        .holder(&ctx.config.leader_key())
        .await?
        .map(|h| String::from_utf8_lossy(&h.value).into_owned());
    let mut rows = Vec::new();
    for (key, entry) in &snap.entries {
        let name = key.strip_prefix(&dir).unwrap_or(key).to_string();
        let record = serde_json::from_slice::<NodeRecord>(&entry.value)
            .map_err(|e| format!("invalid node record: {e}"));
        rows.push((name, record));
    }
    if ctx.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(name, r)| match r {
                Ok(r) => json!({
                    "node": name,
                    "leader": leader.as_deref() == Some(name.as_str()),
                    "record": r,
                }),
                Err(e) => json!({ "node": name, "leader": leader.as_deref() == Some(name.as_str()), "error": e }),
            })
            .collect();
        ctx.print_json(&json!({ "leader": leader, "nodes": nodes }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "NODE", "LEADER", "ADDRESS", "VERSION", "ROOTLESS", "UP", "LABELS",
    ]);
    for (name, r) in rows {
        let lead = if leader.as_deref() == Some(name.as_str()) {
            "*"
        } else {
            ""
        };
        match r {
            Ok(r) => t.row(vec![
                name,
                lead.into(),
                r.address,
                r.version,
                r.rootless.to_string(),
                super::age(r.started),
                r.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]),
            Err(e) => t.row(vec![
                name,
                lead.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                e,
            ]),
        }
    }
    print!("{}", t.render());
    Ok(())
}
