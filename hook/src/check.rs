//! `cntnr-hook check`: CNI CHECK of a running container's networks.

use crate::cni::{self, Conflist, Invocation};
use crate::create::runtime_config;
use crate::request::{NetRequest, NetResult};
use crate::state::OciState;
use crate::{netns, HookError};
use serde_json::Map;
use std::time::Instant;

/// Runs CHECK on every network with the cached ADD result. Fails if the
/// container was never wired (no result file) or its netns is gone.
pub fn check(state: &OciState, req: &NetRequest, deadline: Instant) -> Result<(), HookError> {
    let pin = netns::pin_path(&req.run_dir, &state.id);
    if !netns::is_pinned(&pin) {
        return Err(HookError::Request(format!(
            "container {}: its network namespace is not pinned at {} (not created by cntnr-hook, or deleted)",
            state.id,
            pin.display()
        )));
    }
    let path = state.result_path(req);
    let cached = NetResult::read(&path)?.ok_or_else(|| {
        HookError::Request(format!(
            "container {}: no network result at {}",
            state.id,
            path.display()
        ))
    })?;
    let dirs = req.cni_dirs();
    let none = Map::new();
    let with_ports = runtime_config(&cached.ports);
    for (i, att) in req.networks.iter().enumerate() {
        let conf = Conflist::load(&att.conflist)?;
        let prev = cached
            .networks
            .iter()
            .find(|n| n.name == conf.name)
            .ok_or_else(|| {
                HookError::Request(format!("network {} has no cached result", conf.name))
            })?;
        let ifname = att.ifname(i);
        let inv = Invocation {
            dirs: &dirs,
            container_id: &state.id,
            netns: Some(&pin),
            ifname: &ifname,
            runtime_config: if i == 0 { &with_ports } else { &none },
            deadline,
            failpoint: None,
        };
        cni::check(&conf, &inv, &prev.cni_result)?;
    }
    Ok(())
}
