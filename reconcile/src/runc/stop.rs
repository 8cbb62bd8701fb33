//! Stop: the stop signal, up to the grace period, SIGKILL, then delete.

use super::wait::{exited, pidfd, register};
use super::Runc;
use crate::runtime::{ContainerId, ExitStatus, Result, RuntimeError, Signal, Status};
use std::time::Duration;

impl Runc {
    pub(super) async fn stop_impl(
        &self,
        id: &ContainerId,
        signal: Signal,
        grace: Duration,
    ) -> Result<Option<ExitStatus>> {
        let io = |what| {
            move |source| RuntimeError::Io {
                what,
                id: id.to_string(),
                source,
            }
        };
        let Some(st) = self.ours(id).await? else {
            return Ok(None);
        };
        let mut status = None;
        if matches!(st.status, Status::Running | Status::Paused) {
            // Open the pidfd before signalling, so the exit cannot be missed.
            let fd = pidfd(st.pid).map_err(io("opening pidfd"))?;
            if let Some(fd) = fd {
                let _ = self.kill_impl(id, signal).await; // it may have exited already
                let afd = register(fd).map_err(io("polling pidfd"))?;
                let graceful = tokio::time::timeout(grace, afd.readable()).await.is_ok();
                if !graceful {
                    let _ = self.kill_impl(id, Signal::KILL).await;
                    let fd = afd.into_inner();
                    tokio::time::timeout(self.cfg.timeout, exited(fd))
                        .await
                        .map_err(|_| RuntimeError::Timeout {
                            verb: "kill",
                            id: id.to_string(),
                            after: self.cfg.timeout,
                        })?
                        .map_err(io("waiting on pidfd"))?;
                }
            }
            status = Some(ExitStatus {
                code: self.recorded_exit(id).await,
            });
        }
        self.delete_impl(id, true).await?;
        Ok(status)
    }
}
