//! The `cntnr` operator CLI: argument parsing and one module per
//! subcommand.
//!
//! Global flags (`--store`, `--prefix`, `--state-dir`, `--json`) are
//! accepted before or after the subcommand. Exit codes: 0 success, 1 a user
//! error (with a one-line cause per problem), 2 usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod validate;

/// `cntnr`: run Docker Compose projects on a fleet of hosts.
#[derive(Debug, Parser)]
#[command(name = "cntnr", version, about, propagate_version = true)]
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
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Validate(args) => validate::run(&cli, args),
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
            let Command::Validate(v) = cli.command;
            assert_eq!(v.files, vec![PathBuf::from("a.yaml")]);
        }
    }

    #[test]
    fn several_files_and_a_project_name() {
        let cli = Cli::try_parse_from([
            "cntnr", "validate", "-f", "a.yaml", "-f", "b.yaml", "-p", "shop",
        ])
        .unwrap();
        let Command::Validate(v) = cli.command;
        assert_eq!(v.files.len(), 2);
        assert_eq!(v.project_name.as_deref(), Some("shop"));
        assert!(
            Cli::try_parse_from(["cntnr", "validate"]).is_err(),
            "-f is required"
        );
    }
}
