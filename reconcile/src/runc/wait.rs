//! Exit detection, event-driven: a pidfd on the container's init (readable
//! when it exits) — no polling of runc. Works for containers created before
//! an agent restart, since it needs only the pid from `runc state`. The exit
//! code comes from the shim, the init's subreaper, which records it in
//! `run/<id>.exit`; without that record the code is unknown (`None`).

use super::Runc;
use crate::runtime::{ContainerId, ExitStatus, Result, RuntimeError, Status};
use crate::shim::ExitRecord;
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Opens a pidfd; `None` if the process is already gone.
pub(super) fn pidfd(pid: i32) -> std::io::Result<Option<OwnedFd>> {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Ok(None);
    };
    match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::SRCH) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Registers a pidfd with tokio's reactor. tokio deprecated the safe
/// constructor because an arbitrary `AsRawFd` may change its fd; an `OwnedFd`
/// cannot, so the contract of the (now `unsafe`) replacement holds here and we
/// keep the workspace's `forbid(unsafe_code)`.
#[allow(deprecated)]
pub(super) fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Resolves when the process behind `fd` has exited.
pub(super) async fn exited(fd: OwnedFd) -> std::io::Result<()> {
    let afd = register(fd)?;
    let _ready = afd.readable().await?;
    Ok(())
}

impl Runc {
    pub(super) async fn wait_impl(&self, id: &ContainerId) -> Result<ExitStatus> {
        let io = |what| {
            move |source| RuntimeError::Io {
                what,
                id: id.to_string(),
                source,
            }
        };
        let st = self
            .ours(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if st.status != Status::Stopped {
            if let Some(fd) = pidfd(st.pid).map_err(io("opening pidfd"))? {
                exited(fd).await.map_err(io("waiting on pidfd"))?;
            }
        }
        Ok(ExitStatus {
            code: self.recorded_exit(id).await,
        })
    }

    /// Waits (bounded) for the shim to finish, then reads the exit record.
    pub(super) async fn recorded_exit(&self, id: &ContainerId) -> Option<i32> {
        let shim_pid: Option<i32> = std::fs::read_to_string(self.run_file(id, "shim"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(p) = shim_pid {
            // Only wait if that pid still is our shim (pids get reused).
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let is_shim = String::from_utf8_lossy(&cmdline).contains(id.as_str());
            if is_shim {
                if let Ok(Some(fd)) = pidfd(p) {
                    let _ = tokio::time::timeout(Duration::from_secs(10), exited(fd)).await;
                }
            }
        }
        let data = std::fs::read(self.run_file(id, "exit")).ok()?;
        serde_json::from_slice::<ExitRecord>(&data)
            .ok()
            .map(|r| r.code)
    }
}
