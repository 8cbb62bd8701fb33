//! The `cntnr` operator CLI: argument parsing and one module per
//! subcommand.
//!
//! Global flags (`--store`, `--prefix`, `--state-dir`, `--json`) are
//! accepted before or after the subcommand. Exit codes: 0 success, 1 a user
//! error (with a one-line cause per problem), 2 usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cntnr_kv::DynStore;

use crate::store::{ConnectArgs, StoreConfig};

pub mod config;
pub mod deploy;
pub mod image;
pub mod logs;
pub mod ls;
pub mod nodes;
pub mod plan;
pub mod ps;
pub mod rebalance;
pub mod rm;
pub mod rollback;
pub mod services;
pub mod validate;

/// `cntnr`: run Docker Compose projects on a fleet of hosts.
#[derive(Debug, Parser)]
#[command(
    name = "cntnr",
    version,
    about = "Run Docker Compose projects on a fleet of Linux hosts (the operator's CLI)",
    propagate_version = true
)]
pub struct Cli {
    /// Store URL: etcd://host:2379[,…], consul://host:8500 or dir:///path
    /// (default: dir:// under the state dir).
    #[arg(long, global = true, env = "CNTNR_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Key prefix in the store.
    #[arg(long, global = true, default_value = "cntnr", value_name = "PREFIX")]
    pub prefix: String,
    /// Agent state directory (default /var/lib/cntnr, rootless
    /// ~/.local/share/cntnr).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS files and credentials.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, interpolate, merge and validate compose files; print the
    /// normalized project, or every error, one a line.
    Validate(validate::ValidateArgs),
    /// Validate, interpolate, merge and write a project to the store; the
    /// agents do the rest.
    Deploy(deploy::DeployArgs),
    /// What deploying these files would change, per node and per
    /// container, and why; writes nothing.
    Plan(plan::PlanArgs),
    /// Remove a project from the store; the agents stop its containers.
    Rm(rm::RmArgs),
    /// Ask the leader to place a project from scratch (existing replicas
    /// otherwise never move to a node that joins).
    Rebalance(rebalance::RebalanceArgs),
    /// Roll a project's rolling updates back to its last fully healthy
    /// revision.
    Rollback(rollback::RollbackArgs),
    /// List deployed projects, with a status summary.
    Ls,
    /// Every container on every node, from the status the agents report.
    Ps(ps::PsArgs),
    /// Live nodes (agents) and the leader.
    Nodes,
    /// Registered service instances.
    Services(services::ServicesArgs),
    /// Values a project's containers read through `cntnr.env.*: kv:KEY`.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// A container's output on this node (from its log file).
    Logs(logs::LogsArgs),
    /// This node's image store: pull, import, ls, rm.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

/// How long the CLI waits for an unreachable store before giving up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Parses the process arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Local commands: no cluster store needed.
    let local = match &cli.command {
        Command::Validate(args) => return validate::run(&cli, args),
        Command::Logs(args) => Some(logs::run(&state_dir(&cli), args)),
        Command::Image(cmd) => Some(image::run(&state_dir(&cli), cli.json, cmd)),
        _ => None,
    };
    if let Some(r) = local {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("starting the async runtime: {e}")),
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `--state-dir`, else the agent's default.
fn state_dir(cli: &Cli) -> PathBuf {
    cli.state_dir
        .clone()
        .unwrap_or_else(crate::store::default_state_dir)
}

/// Prints a user error as one line and returns exit code 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", format!("{e:#}").replace(['\n', '\r'], " "));
    ExitCode::FAILURE
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let ctx = Ctx::open(cli).await?;
    match &cli.command {
        Command::Validate(_) | Command::Logs(_) | Command::Image(_) => {
            unreachable!("local commands need no store and returned above")
        }
        Command::Deploy(a) => deploy::run(&ctx, a).await,
        Command::Plan(a) => plan::run(&ctx, a).await,
        Command::Rm(a) => rm::run(&ctx, a).await,
        Command::Rebalance(a) => rebalance::run(&ctx, a).await,
        Command::Rollback(a) => rollback::run(&ctx, a).await,
        Command::Ls => ls::run(&ctx).await,
        Command::Ps(a) => ps::run(&ctx, a).await,
        Command::Nodes => nodes::run(&ctx).await,
        Command::Services(a) => services::run(&ctx, a).await,
        Command::Config(c) => config::run(&ctx, c).await,
    }
}

/// What every store-backed subcommand gets: the open store, its config and
/// the output mode.
pub struct Ctx {
    /// The open store.
    pub store: DynStore,
    /// URL, prefix and options it was opened with.
    pub config: StoreConfig,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    async fn open(cli: &Cli) -> anyhow::Result<Ctx> {
        let config = StoreConfig::resolve(
            cli.store.as_deref(),
            &cli.prefix,
            cli.state_dir.as_deref(),
            &cli.connect,
        )?;
        let store = config.connect(Some(CONNECT_TIMEOUT)).await?;
        Ok(Ctx {
            store,
            config,
            json: cli.json,
        })
    }

    /// The full key of `key` under the prefix.
    pub fn key(&self, key: &cntnr_model::StoreKey) -> String {
        key.render(&self.config.prefix)
    }

    /// Prints `value` as pretty JSON.
    pub fn print_json(&self, value: &serde_json::Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }
}

/// Parses a project name given on the command line.
pub fn project_name(s: &str) -> anyhow::Result<cntnr_model::ProjectName> {
    cntnr_model::ProjectName::new(s).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The project named `name`, which must be deployed (a user error otherwise).
pub async fn deployed_project(ctx: &Ctx, name: &str) -> anyhow::Result<cntnr_model::ProjectName> {
    let project = project_name(name)?;
    let pkey = ctx.key(&cntnr_model::StoreKey::Project(project.clone()));
    if ctx.store.get(&pkey).await?.is_none() {
        anyhow::bail!("project {project} is not deployed (no key {pkey})");
    }
    Ok(project)
}

/// Writes a request the leader consumes, `<dir><project>` with the request
/// time as its value, and reports it ("asked the leader to `what`").
pub async fn request_leader(
    ctx: &Ctx,
    dir: String,
    project: &cntnr_model::ProjectName,
    what: &str,
) -> anyhow::Result<()> {
    let key = format!("{dir}{project}");
    let value = serde_json::json!({ "requested": now_secs() }).to_string();
    ctx.store.put(&key, value.as_bytes()).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "project": project.as_str(), "requested": key }));
    } else {
        println!("asked the leader to {what}");
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `5s`, `3m`, `2h`, `4d`: how long ago `then` (Unix seconds) was.
pub fn age(then: u64) -> String {
    let s = now_secs().saturating_sub(then);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The process environment as a map (variables that are not UTF-8 are
/// skipped: they cannot be referenced from YAML anyway).
pub fn process_env() -> std::collections::BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let before = Cli::try_parse_from([
            "cntnr", "--json", "--prefix", "x", "validate", "-f", "a.yaml",
        ])
        .unwrap();
        let after = Cli::try_parse_from([
            "cntnr", "validate", "-f", "a.yaml", "--json", "--prefix", "x",
        ])
        .unwrap();
        for cli in [before, after] {
            assert!(cli.json);
            assert_eq!(cli.prefix, "x");
            let Command::Validate(v) = cli.command else {
                panic!("not validate")
            };
            assert_eq!(v.files, vec![PathBuf::from("a.yaml")]);
        }
    }

    #[test]
    fn tls_key_flag_does_not_clash_with_the_config_key_argument() {
        let cli = Cli::try_parse_from([
            "cntnr",
            "config",
            "get",
            "shop",
            "db/url",
            "--key",
            "/tls/key.pem",
        ])
        .unwrap();
        assert_eq!(cli.connect.key, Some(PathBuf::from("/tls/key.pem")));
        let Command::Config(config::ConfigCommand::Get { key, .. }) = cli.command else {
            panic!("not config get")
        };
        assert_eq!(key, "db/url");
    }

    #[test]
    fn several_files_and_a_project_name() {
        let cli = Cli::try_parse_from([
            "cntnr", "validate", "-f", "a.yaml", "-f", "b.yaml", "-p", "shop",
        ])
        .unwrap();
        let Command::Validate(v) = cli.command else {
            panic!("not validate")
        };
        assert_eq!(v.files.len(), 2);
        assert_eq!(v.project_name.as_deref(), Some("shop"));
        assert!(
            Cli::try_parse_from(["cntnr", "validate"]).is_err(),
            "-f is required"
        );
    }
}
