//! `cntnr-hook delete` (poststop, and rollback of a failed create): CNI DEL.

use crate::cni::{self, Conflist, Invocation};
use crate::conflist::loopback_conf;
use crate::create::{firewall_lock, network_lock, runtime_config};
use crate::request::{NetRequest, NetResult};
use crate::state::OciState;
use crate::{firewall, netns, ports, HookError};
use serde_json::Map;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Undoes [`crate::create::create`]: DEL on every network in reverse (then
/// `lo`), with the cached ADD result as `prevResult` when there is one and
/// the claimed ports as `portMappings`; removes a network's bridge,
/// isolation rule and IPAM dir with its last container; unpins the netns,
/// drops port claims and the result file. Idempotent: with the pin, the
/// IPAM entry or the result already gone it still succeeds (DEL with an
/// empty `CNI_NETNS` when no namespace is left, as the spec allows). Every
/// step runs even if one fails; the first error is returned.
pub fn delete(state: &OciState, req: &NetRequest, deadline: Instant) -> Result<(), HookError> {
    let pin = netns::pin_path(&req.run_dir, &state.id);
    let live: Option<PathBuf> = if netns::is_pinned(&pin) {
        Some(pin.clone())
    } else {
        state
            .live_pid()
            .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
            .filter(|p| matches!(netns::is_own_netns(p), Ok(false)))
    };
    let result_path = state.result_path(req);
    let cached = NetResult::read(&result_path).ok().flatten();
    let prev_of = |name: &str| {
        cached
            .as_ref()
            .and_then(|c| c.networks.iter().find(|n| n.name == name))
            .map(|n| n.cni_result.clone())
    };
    let ports = ports::claimed_by(&req.state_dir, &state.id);
    let with_ports = runtime_config(&ports);
    let none = Map::new();
    let dirs = req.cni_dirs();
    let mut first: Option<HookError> = None;
    let mut note = |r: Result<(), HookError>| {
        if let Err(e) = r {
            eprintln!("cntnr-hook: delete {}: {e}", state.id);
            first.get_or_insert(e);
        }
    };
    for (i, att) in req.networks.iter().enumerate().rev() {
        // The config ADD used, if cached (CNI: DEL with the ADD's config).
        let used = cached
            .as_ref()
            .and_then(|c| c.networks.get(i))
            .filter(|n| !n.conflist.is_null())
            .and_then(|n| Conflist::from_value(n.conflist.clone()).ok());
        let conf = match used.map_or_else(|| Conflist::load(&att.conflist), Ok) {
            Ok(c) => c,
            // No config, no cached result, no namespace: nothing of this
            // container is known to exist any more (an already-completed
            // DEL after the agent released the network).
            Err(e) if live.is_none() && cached.is_none() => {
                eprintln!("cntnr-hook: delete {}: skipping network {i}: {e}", state.id);
                continue;
            }
            Err(e) => {
                note(Err(e));
                continue;
            }
        };
        let ifname = att.ifname(i);
        let inv = Invocation {
            dirs: &dirs,
            container_id: &state.id,
            netns: live.as_deref(),
            ifname: &ifname,
            runtime_config: if i == 0 { &with_ports } else { &none },
            deadline,
            failpoint: None,
        };
        let _lock = match network_lock(req, &conf.name) {
            Ok(l) => l,
            Err(e) => {
                note(Err(e));
                continue;
            }
        };
        note(cni::del(&conf, &inv, prev_of(&conf.name).as_ref()));
        if let Some(br) = conf.bridge() {
            note(firewall_lock(req).and_then(|_fw| {
                firewall::teardown_if_unused(&conf.name, &br, conf.masquerade).map(|_| ())
            }));
        }
    }
    if req.loopback {
        let inv = Invocation {
            dirs: &dirs,
            container_id: &state.id,
            netns: live.as_deref(),
            ifname: "lo",
            runtime_config: &none,
            deadline,
            failpoint: None,
        };
        note(Conflist::from_value(loopback_conf()).and_then(|c| cni::del(&c, &inv, None)));
    }
    note(netns::unpin(&pin));
    note(ports::release(&req.state_dir, &state.id));
    note(remove_if_exists(&result_path));
    first.map_or(Ok(()), Err)
}

fn remove_if_exists(p: &Path) -> Result<(), HookError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HookError::io("removing network result", p)(e)),
    }
}
