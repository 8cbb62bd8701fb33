//! `cntnr rebalance PROJECT`: asks the leader to place the project from
//! scratch, as if it were new (placement is otherwise sticky: a node that
//! joins takes only new replicas). Writes `rebalance/<project>` (value: the
//! request time); the leader consumes the key: it computes the schedule
//! with no previous one, writes it fenced, then deletes the request.
//! Replicas that change node are stopped where they ran and created where
//! they go.

use anyhow::{bail, Result};
use clap::Args;
use cntnr_model::StoreKey;
use serde_json::json;

use super::Ctx;

/// Arguments of `cntnr rebalance`.
#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// The project to place again from scratch.
    pub project: String,
}

/// Runs `rebalance`. A project that is not deployed is a user error.
pub async fn run(ctx: &Ctx, args: &RebalanceArgs) -> Result<()> {
    let project = super::project_name(&args.project)?;
    let pkey = ctx.key(&StoreKey::Project(project.clone()));
    if ctx.store.get(&pkey).await?.is_none() {
        bail!("project {project} is not deployed (no key {pkey})");
    }
    let key = format!("{}{project}", ctx.config.prefix.rebalance_dir());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ctx.store
        .put(&key, json!({ "requested": now }).to_string().as_bytes())
        .await?;
    if ctx.json {
        ctx.print_json(&json!({ "project": project.as_str(), "requested": key }));
    } else {
        println!("asked the leader to place project {project} from scratch");
    }
    Ok(())
}
