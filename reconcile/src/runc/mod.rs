//! The runc driver: [`Runtime`] implemented by running
//! the `runc` binary, one file per verb. Every call has a timeout; every
//! failure carries runc's stderr and the container id. Mutating verbs first
//! check the container's annotations and refuse foreign containers.
//!
//! Files under `<state-dir>`:
//! - `logs/<id>.log` (+ `.log.1`): the container's stdout+stderr, via the shim;
//! - `run/<id>.exit`: `{"code":N}` written by the shim when init exits;
//! - `run/<id>.shim`: the shim's pid; `run/<id>.pid`: runc's pid file;
//! - `run/<id>.runc.log`: runc's own JSON log for create (its error text).

mod create;
mod delete;
mod exec;
mod kill;
mod start;
mod state;
mod stop;
mod wait;

use crate::bundle::idmap::RootlessIds;
use crate::runtime::{
    ContainerId, ContainerState, ExecOutput, ExecRequest, ExitStatus, Result, Runtime,
    RuntimeError, Signal, Status,
};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// Configuration of the runc driver.
#[derive(Clone, Debug)]
pub struct RuncConfig {
    /// The runc binary (`runc`, looked up in PATH).
    pub binary: PathBuf,
    /// runc `--root`: only containers under it are ever seen.
    pub root: PathBuf,
    /// `<state-dir>`: logs and exit records go below it.
    pub state_dir: PathBuf,
    /// The `cntnr-shim` binary.
    pub shim: PathBuf,
    /// Limit for every runc call.
    pub timeout: Duration,
    /// Log size cap per file (one rotated file is kept).
    pub log_max_bytes: u64,
    /// Rootless with subordinate ranges: run runc as root of a user namespace
    /// with these maps (`unshare` for create, `nsenter` into a container's
    /// namespace for kill, exec and delete); see [`crate::bundle::idmap`].
    /// Must agree with the bundles' `BundleConfig::rootless_ids`.
    pub userns: Option<RootlessIds>,
}

impl RuncConfig {
    /// Defaults: `runc` from PATH, `cntnr-shim` next to the running executable,
    /// 30 s per call, 10 MiB logs; rootless, the user namespace
    /// [`RootlessIds::detect`] finds if it has subordinate ranges.
    pub fn new(root: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let shim = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("cntnr-shim")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("cntnr-shim"));
        Self {
            binary: PathBuf::from("runc"),
            root: root.into(),
            state_dir: state_dir.into(),
            shim,
            timeout: Duration::from_secs(30),
            log_max_bytes: 10 << 20,
            userns: (!rustix::process::geteuid().is_root())
                .then(RootlessIds::detect)
                .filter(RootlessIds::runc_in_userns),
        }
    }
}

/// The runc driver.
#[derive(Clone, Debug)]
pub struct Runc {
    cfg: RuncConfig,
    /// Containers this driver created from a bundle carrying our
    /// annotations and has not started or deleted since: their `start`
    /// skips the `runc state` that proves them ours (one runc process less
    /// on the create → running path).
    created_ours: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<ContainerId>>>,
}

impl Runc {
    /// A driver; creates the runc root and the state dirs.
    pub fn new(cfg: RuncConfig) -> std::io::Result<Self> {
        for d in [
            cfg.root.clone(),
            cfg.state_dir.join("logs"),
            cfg.state_dir.join("run"),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        Ok(Self {
            cfg,
            created_ours: Default::default(),
        })
    }

    fn created_ours(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<ContainerId>> {
        self.created_ours.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &RuncConfig {
        &self.cfg
    }

    /// The container's current log file.
    pub fn log_path(&self, id: &ContainerId) -> PathBuf {
        self.cfg.state_dir.join("logs").join(format!("{id}.log"))
    }

    pub(crate) fn run_file(&self, id: &ContainerId, ext: &str) -> PathBuf {
        self.cfg.state_dir.join("run").join(format!("{id}.{ext}"))
    }

    /// `runc --root R`, run inside the user namespace of the container whose
    /// init is `state` when runc runs in user namespaces ([`RuncConfig::userns`])
    /// and that init is alive.
    fn command_in(&self, state: Option<&ContainerState>) -> tokio::process::Command {
        let join = self.cfg.userns.as_ref().and(state).and_then(|s| {
            let alive = matches!(s.status, Status::Created | Status::Running | Status::Paused);
            (alive && s.pid > 0).then_some(s.pid)
        });
        let mut c = match join {
            Some(pid) => {
                // nsenter becomes uid/gid 0 of the namespace.
                let mut c = tokio::process::Command::new("nsenter");
                c.arg("--user")
                    .arg(format!("--target={pid}"))
                    .arg("--")
                    .arg(&self.cfg.binary);
                c
            }
            None => tokio::process::Command::new(&self.cfg.binary),
        };
        c.arg("--root").arg(&self.cfg.root);
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        c
    }

    /// Runs `runc [--root R] <args>` with the timeout; non-zero exit is an error with stderr.
    async fn invoke(
        &self,
        verb: &'static str,
        id: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Output> {
        self.invoke_in(None, verb, id, args).await
    }

    /// [`Runc::invoke`] in the user namespace of `state`'s container (see
    /// [`Runc::command_in`]).
    async fn invoke_in(
        &self,
        state: Option<&ContainerState>,
        verb: &'static str,
        id: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Output> {
        let mut c = self.command_in(state);
        c.args(args);
        let out = output_with_timeout(c, verb, id, self.cfg.timeout).await?;
        if !out.status.success() {
            return Err(RuntimeError::Runc {
                verb,
                id: id.to_string(),
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// Fails with [`RuntimeError::Foreign`] unless `id` carries our annotations;
    /// `Ok(None)` if it does not exist.
    async fn ours(&self, id: &ContainerId) -> Result<Option<ContainerState>> {
        match self.state_impl(id).await? {
            Some(s) if !s.is_ours() => Err(RuntimeError::Foreign(id.to_string())),
            other => Ok(other),
        }
    }
}

pub(crate) async fn output_with_timeout(
    mut c: tokio::process::Command,
    verb: &'static str,
    id: &str,
    timeout: Duration,
) -> Result<Output> {
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().map_err(|source| RuntimeError::Io {
        what: "spawning runc",
        id: id.to_string(),
        source,
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| RuntimeError::Io {
            what: "waiting for runc",
            id: id.to_string(),
            source,
        }),
        // Dropping the future drops the child: kill_on_drop kills it.
        Err(_) => Err(RuntimeError::Timeout {
            verb,
            id: id.to_string(),
            after: timeout,
        }),
    }
}

fn is_not_exist(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Runc { stderr, .. } if stderr.contains("does not exist") || stderr.contains("not found"))
}

impl Runtime for Runc {
    async fn create(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        self.create_impl(id, bundle).await
    }

    async fn start(&self, id: &ContainerId) -> Result<()> {
        self.start_impl(id).await
    }

    async fn run(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        // Fast path: runc keeps `<root>/<id>/` for every container it knows;
        // without it there is nothing to inspect (saves a runc call).
        let existing = if self.cfg.root.join(id.as_str()).exists() {
            self.ours(id).await?
        } else {
            None
        };
        match existing {
            None => {}
            Some(s) => match s.status {
                Status::Running | Status::Paused => return Ok(()),
                // The previous agent died between create and start: finish the job.
                Status::Created => return self.start_unchecked(id).await,
                Status::Stopped | Status::Creating => self.delete_impl(id, true).await?,
            },
        }
        self.create_unchecked(id, bundle).await?;
        self.start_unchecked(id).await
    }

    async fn state(&self, id: &ContainerId) -> Result<Option<ContainerState>> {
        self.state_impl(id).await
    }

    async fn list(&self) -> Result<Vec<ContainerState>> {
        self.list_impl().await
    }

    async fn kill(&self, id: &ContainerId, signal: Signal) -> Result<()> {
        self.kill_impl(id, signal).await
    }

    async fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        self.delete_impl(id, force).await
    }

    async fn exec(&self, id: &ContainerId, req: &ExecRequest) -> Result<ExecOutput> {
        self.exec_impl(id, req).await
    }

    async fn exec_in(&self, state: &ContainerState, req: &ExecRequest) -> Result<ExecOutput> {
        if !state.is_ours() {
            return Err(RuntimeError::Foreign(state.id.to_string()));
        }
        self.exec_with_state(state, req).await
    }

    async fn wait_exit(&self, id: &ContainerId) -> Result<ExitStatus> {
        self.wait_impl(id).await
    }

    async fn stop(
        &self,
        id: &ContainerId,
        signal: Signal,
        grace: Duration,
    ) -> Result<Option<ExitStatus>> {
        self.stop_impl(id, signal, grace).await
    }
}
