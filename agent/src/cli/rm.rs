//! `cntnr rm PROJECT`: deletes `projects/<project>`; every agent then stops
//! and removes the project's containers.

use anyhow::{bail, Result};
use clap::Args;
use cntnr_model::StoreKey;
use serde_json::json;

use super::Ctx;

/// Arguments of `cntnr rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The project to remove.
    pub project: String,
}

/// Runs `rm`. Removing a project that is not deployed is a user error.
pub async fn run(ctx: &Ctx, args: &RmArgs) -> Result<()> {
    let project = super::project_name(&args.project)?;
    let key = ctx.key(&StoreKey::Project(project.clone()));
    if ctx.store.get(&key).await?.is_none() {
        bail!("project {project} is not deployed (no key {key})");
    }
    ctx.store.delete(&key).await?;
    if ctx.json {
        ctx.print_json(&json!({ "project": project.as_str(), "removed": key }));
    } else {
        println!("removed project {project}; the agents stop its containers");
    }
    Ok(())
}
