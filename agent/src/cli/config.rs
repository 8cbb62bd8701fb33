//! `cntnr config set|get|rm PROJECT KEY [VALUE]`: the values under
//! `config/<project>/` that containers read through `cntnr.env.*: kv:KEY`.
//! Keys are validated into [`ConfigKey`]s, so `..`, empty segments and
//! leading `/` are refused before anything reaches the store.

use std::io::Write as _;

use anyhow::{bail, Result};
use clap::Subcommand;
use cntnr_model::{ConfigKey, ProjectName, StoreKey};
use serde_json::json;

use super::Ctx;

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set a value.
    Set {
        /// The project.
        project: String,
        /// The key (`a/b` allowed; no `..`).
        key: String,
        /// The value.
        value: String,
    },
    /// Print a value (as stored, without a trailing newline added).
    Get {
        /// The project.
        project: String,
        /// The key.
        key: String,
    },
    /// Remove a value.
    Rm {
        /// The project.
        project: String,
        /// The key.
        key: String,
    },
}

fn parse(project: &str, key: &str) -> Result<(ProjectName, ConfigKey)> {
    let project = super::project_name(project)?;
    let key = ConfigKey::new(key).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((project, key))
}

/// Runs a `config` subcommand.
pub async fn run(ctx: &Ctx, cmd: &ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Set {
            project,
            key,
            value,
        } => {
            let (p, k) = parse(project, key)?;
            let full = ctx.key(&StoreKey::Config(p, k));
            let version = ctx.store.put(&full, value.as_bytes()).await?;
            if ctx.json {
                ctx.print_json(&json!({ "key": full, "version": version }));
            }
        }
        ConfigCommand::Get { project, key } => {
            let (p, k) = parse(project, key)?;
            let full = ctx.key(&StoreKey::Config(p.clone(), k.clone()));
            let Some(entry) = ctx.store.get(&full).await? else {
                bail!("config key {k} of project {p} is not set");
            };
            if ctx.json {
                ctx.print_json(&json!({
                    "key": full,
                    "value": String::from_utf8_lossy(&entry.value),
                    "version": entry.version,
                }));
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&entry.value)?;
                out.flush()?;
            }
        }
        ConfigCommand::Rm { project, key } => {
            let (p, k) = parse(project, key)?;
            let full = ctx.key(&StoreKey::Config(p.clone(), k.clone()));
            if ctx.store.get(&full).await?.is_none() {
                bail!("config key {k} of project {p} is not set");
            }
            ctx.store.delete(&full).await?;
            if ctx.json {
                ctx.print_json(&json!({ "removed": full }));
            }
        }
    }
    Ok(())
}
