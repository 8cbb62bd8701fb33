//! `runc exec` with captured output and a timeout.

use super::{output_with_timeout, Runc};
use crate::runtime::{ContainerId, ExecOutput, ExecRequest, Result, RuntimeError};
use std::os::unix::process::ExitStatusExt;

impl Runc {
    pub(super) async fn exec_impl(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
    ) -> Result<ExecOutput> {
        let Some(state) = self.ours(id).await? else {
            return Err(RuntimeError::NotFound(id.to_string()));
        };
        let mut c = self.command_in(Some(&state));
        c.arg("exec");
        for e in &req.env {
            c.arg("--env").arg(e);
        }
        if let Some(cwd) = &req.cwd {
            c.arg("--cwd").arg(cwd);
        }
        c.arg(id.as_str()).args(&req.args);
        // On timeout runc exec is killed; the process it started in the
        // container may linger until the container stops.
        let out = output_with_timeout(c, "exec", id.as_str(), req.timeout).await?;
        let code = out
            .status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s))
            .unwrap_or(255);
        Ok(ExecOutput {
            code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}
