//! `cntnr deploy -f FILE… [-p NAME]`: the model's pipeline (parse,
//! interpolate, inline `env_file`, merge, validate), then the rendered
//! project is written to `<prefix>/projects/<name>`.
//!
//! Relative bind sources are refused: the model would resolve them against
//! this machine's directory, which means nothing on the hosts that run the
//! containers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use cntnr_model::interpolate::Interpolator;
use cntnr_model::{load_files, render, LoadOptions, Project, StoreKey};
use serde_json::{json, Value};

use super::Ctx;

/// Arguments of `cntnr deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Compose file; repeat to merge several files in order.
    #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Project name (default: top-level `name:`, else the first file's
    /// directory name).
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
}

/// Loads `files` exactly as `deploy` does (the model's pipeline, then the
/// refusal of relative bind sources) and prints the warnings. On a problem,
/// prints every one as `error: …` on stderr and fails with a one-line
/// summary starting with `what` (e.g. "project not deployed").
pub fn load_checked(files: &[PathBuf], project_name: Option<&str>, what: &str) -> Result<Project> {
    let env = super::process_env();
    let opts = LoadOptions {
        project_name: project_name.map(str::to_string),
        env: env.clone(),
        ..LoadOptions::default()
    };
    let project = match load_files(files, &opts) {
        Ok(p) => p,
        Err(err) => {
            // Every problem, one a line; the last line is the summary.
            for line in err.lines() {
                eprintln!("error: {line}");
            }
            bail!(
                "{what}: {} problem(s) in the compose files",
                err.diagnostics.len()
            );
        }
    };
    let relative = relative_bind_sources(files, &env);
    if !relative.is_empty() {
        for line in &relative {
            eprintln!("error: {line}");
        }
        bail!("{what}: relative bind paths are resolved on the deploying machine, not on the nodes; use absolute paths");
    }
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
    Ok(project)
}

/// Runs `deploy`.
pub async fn run(ctx: &Ctx, args: &DeployArgs) -> Result<()> {
    let project = load_checked(
        &args.files,
        args.project_name.as_deref(),
        "project not deployed",
    )?;
    let text = render::to_yaml(&project)
        .map_err(|e| anyhow::anyhow!("rendering project {}: {e}", project.name))?;
    let key = ctx.key(&StoreKey::Project(project.name.clone()));
    let version = ctx.store.put(&key, text.as_bytes()).await?;
    if ctx.json {
        ctx.print_json(&json!({
            "project": project.name.as_str(),
            "key": key,
            "version": version,
            "services": project.services.keys().map(|s| s.as_str()).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "deployed project {} ({} service(s)) to {key}",
            project.name,
            project.services.len()
        );
    }
    Ok(())
}

/// One line per bind mount whose source is a relative path, in any of the
/// files (`FILE: service "S", key "volumes[i]": …`). The files have already
/// loaded cleanly, so anything unreadable here is simply skipped.
fn relative_bind_sources(files: &[PathBuf], process_env: &BTreeMap<String, String>) -> Vec<String> {
    let mut env = BTreeMap::new();
    if let Some(dir) = files.first().map(|f| f.parent().unwrap_or(Path::new(""))) {
        if let Ok(text) = std::fs::read_to_string(dir.join(".env")) {
            env = cntnr_model::envfile::parse_dotenv(&text, process_env).unwrap_or_default();
        }
    }
    env.extend(process_env.clone());
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let Ok(tree) = cntnr_model::parse::parse_yaml(&text) else {
            continue;
        };
        let services = tree.get("services").and_then(Value::as_object);
        for (name, svc) in services.into_iter().flatten() {
            let volumes = svc.get("volumes").and_then(Value::as_array);
            for (i, v) in volumes.into_iter().flatten().enumerate() {
                let Some(source) = bind_source(v) else {
                    continue;
                };
                let source = Interpolator::new(&env)
                    .expand(source)
                    .unwrap_or_else(|_| source.to_string());
                if is_relative_bind(&source, v.is_string()) {
                    out.push(format!(
                        "{}: service {name:?}, key \"volumes[{i}]\": relative bind source {source:?} is refused: use an absolute path",
                        file.display()
                    ));
                }
            }
        }
    }
    out
}

/// The source of a volume entry that could be a bind mount.
fn bind_source(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => {
            let (src, _) = s.split_once(':')?;
            Some(src)
        }
        Value::Object(m) => {
            let ty = m.get("type").and_then(Value::as_str);
            if ty.is_some_and(|t| t != "bind") {
                return None;
            }
            m.get("source").and_then(Value::as_str)
        }
        _ => None,
    }
}

/// Short syntax: a source starting with `.` is a relative path (anything
/// else without `/` or `~` is a named volume). Long syntax with a bind
/// type or no type: anything not absolute or `~`-based.
fn is_relative_bind(source: &str, short: bool) -> bool {
    if source.starts_with('.') {
        return true;
    }
    !short && !source.starts_with('/') && !source.starts_with('~') && source.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_binds_are_found_in_short_and_long_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("compose.yaml");
        std::fs::write(
            &f,
            "services:\n  web:\n    image: x\n    volumes:\n      - ./data:/data\n      - named:/n\n      - /abs:/abs\n      - ${D}:/d\n      - {type: bind, source: conf/app, target: /c}\n      - {type: volume, source: v, target: /v}\n",
        )
        .unwrap();
        let env = BTreeMap::from([("D".to_string(), "./d".to_string())]);
        let lines = relative_bind_sources(&[f], &env);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains(r#"service "web", key "volumes[0]": relative bind source "./data""#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#""volumes[3]": relative bind source "./d""#),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains(r#""volumes[4]": relative bind source "conf/app""#),
            "{}",
            lines[2]
        );
    }
}
