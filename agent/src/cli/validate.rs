//! `cntnr validate -f FILE… [-p NAME] [--json]`: no store needed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use cntnr_model::{load_files, render, LoadOptions};
use serde_json::{json, Value};

use super::Cli;

/// Arguments of `cntnr validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Compose file; repeat to merge several files in order.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Project name (default: top-level `name:`, else the first file's
    /// directory name).
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
}

/// Runs `validate`: prints the project on stdout and exits 0, or prints
/// every problem (one per line, on stderr; as JSON on stdout with `--json`)
/// and exits 1.
pub fn run(cli: &Cli, args: &ValidateArgs) -> ExitCode {
    let opts = LoadOptions {
        project_name: args.project_name.clone(),
        env: super::process_env(),
        ..LoadOptions::default()
    };
    match load_files(&args.files, &opts) {
        Ok(project) => {
            for w in &project.warnings {
                eprintln!("warning: {w}");
            }
            let text = if cli.json {
                Ok(render::to_json(&project))
            } else {
                render::to_yaml(&project)
            };
            match text {
                Ok(t) => {
                    println!("{}", t.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot print the project: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(err) => {
            if cli.json {
                let errors: Vec<Value> = err
                    .diagnostics
                    .iter()
                    .map(|d| {
                        json!({
                            "file": d.file,
                            "project": d.project,
                            "service": d.service,
                            "key": d.key,
                            "message": d.kind.to_string(),
                            "line": d.to_string(),
                        })
                    })
                    .collect();
                println!("{}", json!({ "errors": errors }));
            } else {
                for line in err.lines() {
                    eprintln!("error: {line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
