//! `cntnr services [NAME…]`: registered instances, through the store's
//! registry API (Consul's catalog, or `services/` records on etcd and
//! dir). Without names, every service the deployed projects register is
//! shown (the registry API lists instances per service name).

use std::collections::BTreeSet;

use anyhow::Result;
use clap::Args;
use cntnr_model::{load_stored, StoreKey};
use serde_json::json;

use super::Ctx;
use crate::table::Table;

/// Arguments of `cntnr services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Registered service names (default: those of every deployed project).
    pub names: Vec<String>,
    /// Only instances whose checks pass.
    #[arg(long)]
    pub passing: bool,
}

/// Runs `services`.
pub async fn run(ctx: &Ctx, args: &ServicesArgs) -> Result<()> {
    let mut names: BTreeSet<String> = args.names.iter().cloned().collect();
    if names.is_empty() {
        let snap = ctx.store.list(&ctx.config.prefix.projects_dir()).await?;
        for (key, entry) in &snap.entries {
            let Ok(StoreKey::Project(p)) = StoreKey::parse(&ctx.config.prefix, key) else {
                continue;
            };
            if let Ok(project) = load_stored(&p, key, &String::from_utf8_lossy(&entry.value)) {
                for s in project.services.keys() {
                    if let Some(n) = project.registered_name(s) {
                        names.insert(n.to_string());
                    }
                }
            }
        }
    }
    let mut all = Vec::new();
    for name in &names {
        all.extend(ctx.store.instances(name, args.passing).await?);
    }
    if ctx.json {
        ctx.print_json(&json!(all));
        return Ok(());
    }
    let mut t = Table::new(&["SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "TAGS"]);
    for i in all {
        t.row(vec![
            i.name,
            i.id,
            format!("{}:{}", i.address, i.port),
            i.health.as_str().to_string(),
            i.tags.join(","),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
