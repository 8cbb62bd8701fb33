//! An in-memory [`Runtime`] for benchmarks (cargo feature `fake-runtime`):
//! containers are entries in a map, nothing is executed. It lets one machine
//! run a hundred real agents (store, placement, reconcile, status) without
//! a hundred times the containers (issue 9's fleet bench,
//! `agent/benches/fleet.rs`).
//!
//! Same surface as [`crate::runc::Runc`] (`new(RuncConfig)`, `config()`,
//! `log_path()`), so the agent swaps it in with one `use` line. What it
//! keeps of runc's behaviour:
//! - `create` reads the bundle's `config.json` for its annotations, so
//!   `list` shows cntnr's containers and hides foreign ones, and mutating
//!   verbs refuse foreign containers;
//! - lifecycle: created → running → stopped; `kill` stops a running
//!   container (exit code 128 + signal), `wait_exit` resolves then;
//! - errors as runc's: a missing container is `NotFound` (`state` gives
//!   `None`, `delete` succeeds), a wrong state is a `Runc` error.
//!
//! State lives in this process only: a restarted agent sees no containers
//! and creates them again. Every exec succeeds with empty output, so
//! health checks pass.

use crate::runc::RuncConfig;
use crate::runtime::{
    ContainerId, ContainerState, ExecOutput, ExecRequest, ExitStatus, Result, Runtime,
    RuntimeError, Signal, Status,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One container.
#[derive(Debug, Clone)]
struct Entry {
    state: ContainerState,
    exit: Option<ExitStatus>,
}

/// The fake runtime; clones share their containers.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    cfg: RuncConfig,
    containers: Arc<Mutex<BTreeMap<ContainerId, Entry>>>,
    /// Bumped on every change; `wait_exit` follows it.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FakeRuntime {
    /// A runtime; creates the runtime root and the state dirs as
    /// [`crate::runc::Runc::new`] does (the agent reads files below them).
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
            containers: Default::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RuncConfig {
        &self.cfg
    }

    /// Where the container's log would be (never written).
    pub fn log_path(&self, id: &ContainerId) -> PathBuf {
        self.cfg.state_dir.join("logs").join(format!("{id}.log"))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ContainerId, Entry>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The entry of `id`, which must exist and be ours.
    fn ours<'a>(
        map: &'a mut BTreeMap<ContainerId, Entry>,
        id: &ContainerId,
    ) -> Result<&'a mut Entry> {
        match map.get_mut(id) {
            None => Err(RuntimeError::NotFound(id.to_string())),
            Some(e) if !e.state.is_ours() => Err(RuntimeError::Foreign(id.to_string())),
            Some(e) => Ok(e),
        }
    }

    fn wrong_state(verb: &'static str, id: &ContainerId, status: Status) -> RuntimeError {
        RuntimeError::Runc {
            verb,
            id: id.to_string(),
            code: Some(1),
            stderr: format!("container {id} is {status:?}"),
        }
    }

    /// Marks a running (or created, or paused) container stopped by `signal`.
    fn exit_by(e: &mut Entry, signal: Signal) {
        if matches!(
            e.state.status,
            Status::Running | Status::Created | Status::Paused
        ) {
            e.state.status = Status::Stopped;
            e.state.pid = 0;
            e.exit = Some(ExitStatus {
                code: Some(128 + signal.number()),
            });
        }
    }
}

/// The annotations of `<bundle>/config.json`.
fn bundle_annotations(id: &ContainerId, bundle: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: Option<BTreeMap<String, String>>,
    }
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|source| RuntimeError::Io {
        what: "reading the bundle's config.json",
        id: id.to_string(),
        source,
    })?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| RuntimeError::Parse {
        verb: "create",
        id: id.to_string(),
        detail: format!("{}: {e}", path.display()),
    })?;
    Ok(spec.annotations.unwrap_or_default())
}

impl Runtime for FakeRuntime {
    async fn create(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        let annotations = bundle_annotations(id, bundle)?;
        let mut map = self.lock();
        if map.contains_key(id) {
            return Err(RuntimeError::Runc {
                verb: "create",
                id: id.to_string(),
                code: Some(1),
                stderr: format!("container with id exists: {id}"),
            });
        }
        map.insert(
            id.clone(),
            Entry {
                state: ContainerState {
                    id: id.clone(),
                    pid: std::process::id() as i32,
                    status: Status::Created,
                    bundle: bundle.to_path_buf(),
                    annotations,
                },
                exit: None,
            },
        );
        drop(map);
        self.changed();
        Ok(())
    }

    async fn start(&self, id: &ContainerId) -> Result<()> {
        let mut map = self.lock();
        let e = Self::ours(&mut map, id)?;
        if e.state.status != Status::Created {
            return Err(Self::wrong_state("start", id, e.state.status));
        }
        e.state.status = Status::Running;
        drop(map);
        self.changed();
        Ok(())
    }

    async fn run(&self, id: &ContainerId, bundle: &Path) -> Result<()> {
        let status = {
            let mut map = self.lock();
            match Self::ours(&mut map, id) {
                Ok(e) => Some(e.state.status),
                Err(RuntimeError::NotFound(_)) => None,
                Err(e) => return Err(e),
            }
        };
        match status {
            Some(Status::Running | Status::Paused) => return Ok(()),
            Some(Status::Created) => return self.start(id).await,
            Some(Status::Stopped | Status::Creating) => self.delete(id, true).await?,
            None => {}
        }
        self.create(id, bundle).await?;
        self.start(id).await
    }

    async fn state(&self, id: &ContainerId) -> Result<Option<ContainerState>> {
        Ok(self.lock().get(id).map(|e| e.state.clone()))
    }

    async fn list(&self) -> Result<Vec<ContainerState>> {
        Ok(self
            .lock()
            .values()
            .filter(|e| e.state.is_ours())
            .map(|e| e.state.clone())
            .collect())
    }

    async fn kill(&self, id: &ContainerId, signal: Signal) -> Result<()> {
        let mut map = self.lock();
        let e = Self::ours(&mut map, id)?;
        if !matches!(
            e.state.status,
            Status::Running | Status::Created | Status::Paused
        ) {
            return Err(Self::wrong_state("kill", id, e.state.status));
        }
        Self::exit_by(e, signal);
        drop(map);
        self.changed();
        Ok(())
    }

    async fn delete(&self, id: &ContainerId, force: bool) -> Result<()> {
        let mut map = self.lock();
        let e = match Self::ours(&mut map, id) {
            Ok(e) => e,
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !force && e.state.status == Status::Running {
            return Err(Self::wrong_state("delete", id, e.state.status));
        }
        map.remove(id);
        drop(map);
        self.changed();
        Ok(())
    }

    async fn exec(&self, id: &ContainerId, _req: &ExecRequest) -> Result<ExecOutput> {
        let mut map = self.lock();
        let e = Self::ours(&mut map, id)?;
        if e.state.status != Status::Running {
            return Err(Self::wrong_state("exec", id, e.state.status));
        }
        Ok(ExecOutput {
            code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    async fn wait_exit(&self, id: &ContainerId) -> Result<ExitStatus> {
        let mut changes = self.changes.subscribe();
        loop {
            {
                let map = self.lock();
                let e = map
                    .get(id)
                    .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
                if e.state.status == Status::Stopped {
                    return Ok(e.exit.unwrap_or(ExitStatus { code: None }));
                }
            }
            // The sender lives as long as `self`.
            let _ = changes.changed().await;
        }
    }

    async fn stop(
        &self,
        id: &ContainerId,
        signal: Signal,
        _grace: Duration,
    ) -> Result<Option<ExitStatus>> {
        let mut map = self.lock();
        let e = match Self::ours(&mut map, id) {
            Ok(e) => e,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Self::exit_by(e, signal);
        let exit = e.exit;
        map.remove(id);
        drop(map);
        self.changed();
        Ok(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, project: Option<&str>) -> PathBuf {
        let ann = match project {
            Some(p) => serde_json::json!({ "cntnr.project": p, "cntnr.service": "web" }),
            None => serde_json::json!({}),
        };
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&serde_json::json!({ "annotations": ann })).unwrap(),
        )
        .unwrap();
        dir.to_path_buf()
    }

    #[tokio::test]
    async fn lifecycle_as_runc_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::new(RuncConfig::new(tmp.path().join("root"), tmp.path())).unwrap();
        let id = ContainerId::new("shop-web-1").unwrap();
        let b = bundle(tmp.path(), Some("shop"));
        assert!(rt.state(&id).await.unwrap().is_none());
        rt.run(&id, &b).await.unwrap();
        let s = rt.state(&id).await.unwrap().unwrap();
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.annotations["cntnr.project"], "shop");
        assert_eq!(rt.list().await.unwrap().len(), 1);
        assert!(rt.create(&id, &b).await.is_err(), "a second create fails");

        let waiter = tokio::spawn({
            let (rt, id) = (rt.clone(), id.clone());
            async move { rt.wait_exit(&id).await }
        });
        rt.kill(&id, Signal::TERM).await.unwrap();
        let exit = waiter.await.unwrap().unwrap();
        assert_eq!(exit.code, Some(143));
        assert_eq!(
            rt.state(&id).await.unwrap().unwrap().status,
            Status::Stopped
        );
        // run recreates a stopped container.
        rt.run(&id, &b).await.unwrap();
        assert_eq!(
            rt.state(&id).await.unwrap().unwrap().status,
            Status::Running
        );
        assert_eq!(
            rt.stop(&id, Signal::TERM, Duration::from_secs(1))
                .await
                .unwrap(),
            Some(ExitStatus { code: Some(143) })
        );
        assert!(rt.state(&id).await.unwrap().is_none());
        rt.delete(&id, true).await.unwrap();
        assert!(matches!(
            rt.start(&id).await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn foreign_containers_are_hidden_and_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::new(RuncConfig::new(tmp.path().join("root"), tmp.path())).unwrap();
        let id = ContainerId::new("other").unwrap();
        rt.create(&id, &bundle(tmp.path(), None)).await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
        assert!(matches!(
            rt.delete(&id, true).await,
            Err(RuntimeError::Foreign(_))
        ));
    }
}
