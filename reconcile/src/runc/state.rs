//! `runc state` and `runc list`.

use super::{is_not_exist, Runc};
use crate::runtime::{ContainerId, ContainerState, Result, RuntimeError, Status};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;

#[derive(Deserialize)]
struct RuncState {
    id: String,
    #[serde(default)]
    pid: i32,
    status: String,
    #[serde(default)]
    bundle: PathBuf,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn convert(verb: &'static str, s: RuncState) -> Result<ContainerState> {
    let status = Status::parse(&s.status).ok_or_else(|| RuntimeError::Parse {
        verb,
        id: s.id.clone(),
        detail: format!("status {:?}", s.status),
    })?;
    let id = ContainerId::new(s.id.clone()).map_err(|e| RuntimeError::Parse {
        verb,
        id: s.id.clone(),
        detail: e.to_string(),
    })?;
    Ok(ContainerState {
        id,
        pid: s.pid,
        status,
        bundle: s.bundle,
        annotations: s.annotations.unwrap_or_default(),
    })
}

impl Runc {
    pub(super) async fn state_impl(&self, id: &ContainerId) -> Result<Option<ContainerState>> {
        match self
            .invoke(
                "state",
                id.as_str(),
                &[OsStr::new("state"), OsStr::new(id.as_str())],
            )
            .await
        {
            Ok(out) => {
                let s: RuncState =
                    serde_json::from_slice(&out.stdout).map_err(|e| RuntimeError::Parse {
                        verb: "state",
                        id: id.to_string(),
                        detail: e.to_string(),
                    })?;
                convert("state", s).map(|st| Some(self.shim_check(st)))
            }
            Err(e) if is_not_exist(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A `created` container whose shim is gone (killed, while the agent
    /// that created it was down) can never run properly: its stdio went
    /// with the shim, and nobody reaps it. Reported as
    /// [`Status::Creating`] (half-created), which the plan recreates.
    /// Without a shim pid file (not created through this driver) the state
    /// is left as runc says.
    fn shim_check(&self, mut st: ContainerState) -> ContainerState {
        if st.status != Status::Created {
            return st;
        }
        let Ok(pid) = std::fs::read_to_string(self.run_file(&st.id, "shim")) else {
            return st;
        };
        // The pid may have been reused: the shim's argv names the container.
        let alive = pid.trim().parse::<u32>().ok().is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == st.id.as_str().as_bytes()))
        });
        if !alive {
            st.status = Status::Creating;
        }
        st
    }

    pub(super) async fn list_impl(&self) -> Result<Vec<ContainerState>> {
        let out = self
            .invoke(
                "list",
                "*",
                &[
                    OsStr::new("list"),
                    OsStr::new("--format"),
                    OsStr::new("json"),
                ],
            )
            .await?;
        let all: Option<Vec<RuncState>> =
            serde_json::from_slice(&out.stdout).map_err(|e| RuntimeError::Parse {
                verb: "list",
                id: "*".into(),
                detail: e.to_string(),
            })?;
        let mut ours = Vec::new();
        for s in all.unwrap_or_default() {
            let st = convert("list", s)?;
            if st.is_ours() {
                ours.push(self.shim_check(st));
            }
        }
        Ok(ours)
    }
}
