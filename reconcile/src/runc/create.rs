//! `runc create` under the shim (see [`crate::shim`]).

use super::Runc;
use crate::runtime::{ContainerId, Result, RuntimeError};
use std::path::Path;
use tokio::io::AsyncBufReadExt;

impl Runc {
    pub(super) async fn create_impl(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        // runc keeps `<root>/<id>/` for every container it knows: without
        // it there is nothing to inspect (saves a runc process).
        if self.cfg.root.join(id.as_str()).exists() {
            if let Some(s) = self.state_impl(id).await? {
                if !s.is_ours() {
                    return Err(RuntimeError::Foreign(id.to_string()));
                }
            }
        }
        self.create_unchecked(id, bundle).await
    }

    /// `runc create` under the shim, for an id known not to be foreign.
    pub(super) async fn create_unchecked(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        let io = |what| {
            move |source| RuntimeError::Io {
                what,
                id: id.to_string(),
                source,
            }
        };
        let (exit, pid, runc_log, shim_pid) = (
            self.run_file(id, "exit"),
            self.run_file(id, "pid"),
            self.run_file(id, "runc.log"),
            self.run_file(id, "shim"),
        );
        for f in [&exit, &pid, &runc_log, &shim_pid] {
            let _ = std::fs::remove_file(f);
        }
        let mut c = tokio::process::Command::new(&self.cfg.shim);
        c.arg(self.log_path(id))
            .arg(self.cfg.log_max_bytes.to_string())
            .arg(&exit)
            .arg(&pid)
            .arg("--");
        if let Some(userns) = &self.cfg.userns {
            // runc as root of a new user namespace (see `bundle::idmap`).
            c.arg("unshare").args(userns.unshare_args()).arg("--");
        }
        c.arg(&self.cfg.binary)
            .arg("--root")
            .arg(&self.cfg.root)
            .arg("--log")
            .arg(&runc_log)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid)
            .arg(id.as_str())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().map_err(io("spawning cntnr-shim"))?;
        if let Some(p) = child.id() {
            std::fs::write(&shim_pid, p.to_string()).map_err(io("writing shim pid"))?;
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let read = tokio::time::timeout(self.cfg.timeout, reader.read_line(&mut line)).await;
        match read {
            Err(_) => {
                let _ = child.start_kill();
                return Err(RuntimeError::Timeout {
                    verb: "create",
                    id: id.to_string(),
                    after: self.cfg.timeout,
                });
            }
            Ok(Err(e)) => return Err(io("reading cntnr-shim")(e)),
            Ok(Ok(_)) => {}
        }
        // The shim lives on (it holds the container's stdio); tokio reaps it
        // if it exits while we run, init adopts it otherwise.
        drop(child);
        if line.trim() == "ok" {
            if bundle_is_ours(bundle) {
                self.created_ours().insert(id.clone());
            }
            return Ok(());
        }
        let log = std::fs::read_to_string(&runc_log).unwrap_or_default();
        Err(RuntimeError::Runc {
            verb: "create",
            id: id.to_string(),
            code: line
                .trim()
                .strip_prefix("failed ")
                .and_then(|c| c.parse().ok()),
            stderr: runc_errors(&log).unwrap_or_else(|| line.trim().to_string()),
        })
    }
}

/// The bundle's `config.json` carries our annotations (what `runc state`
/// of the container will report, and `is_ours` checks).
fn bundle_is_ours(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| {
            v["annotations"]
                .get(crate::runtime::annotations::PROJECT)
                .is_some()
        })
}

/// The `msg` of error/fatal lines of runc's JSON log.
fn runc_errors(log: &str) -> Option<String> {
    let msgs: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    (!msgs.is_empty()).then(|| msgs.join("; "))
}
