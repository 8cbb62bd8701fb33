//! `cntnr-hook create` (createRuntime): CNI ADD into the container's netns.

use crate::cni::{self, Conflist, Invocation};
use crate::conflist::loopback_conf;
use crate::lock::FileLock;
use crate::request::{NetRequest, NetResult, NetworkResult};
use crate::state::OciState;
use crate::{delete, firewall, netns, ports, HookError};
use serde_json::{Map, Value};
use std::path::Path;
use std::time::Instant;

/// The lock serializing ADD and teardown of one CNI network on this host.
pub(crate) fn network_lock(req: &NetRequest, name: &str) -> Result<FileLock, HookError> {
    FileLock::acquire(
        &req.state_dir
            .join("net")
            .join("locks")
            .join(format!("{name}.lock")),
    )
}

/// The lock serializing changes to cntnr's shared iptables chains.
pub(crate) fn firewall_lock(req: &NetRequest) -> Result<FileLock, HookError> {
    FileLock::acquire(&req.run_dir.join("locks").join("iptables.lock"))
}

pub(crate) fn runtime_config(ports: &[crate::request::PortMapping4Cni]) -> Map<String, Value> {
    let mut rc = Map::new();
    if !ports.is_empty() {
        rc.insert(
            "portMappings".into(),
            serde_json::to_value(ports).expect("serializes"),
        );
    }
    rc
}

/// Wires the container: pins its netns, claims its published ports, runs
/// ADD for `lo` and every requested network (the first gets the ports),
/// writes the result file. On any failure everything done so far is undone
/// (a full DEL, bounded by `rollback_deadline`) and the first error is
/// returned. Leftovers of an earlier, killed attempt for the same id are
/// removed first, so a retry comes up once.
pub fn create(
    state: &OciState,
    req: &NetRequest,
    deadline: Instant,
    rollback_deadline: Instant,
    failpoint: Option<&str>,
) -> Result<NetResult, HookError> {
    let pid = state.live_pid().ok_or_else(|| {
        HookError::Request(format!(
            "container {}: no live pid in the OCI state",
            state.id
        ))
    })?;
    let ns = format!("/proc/{pid}/ns/net");
    if netns::is_own_netns(Path::new(&ns))? {
        return Err(HookError::Request(format!(
            "container {} shares the host's network namespace: cntnr-hook only wires a private one \
             (give the container a new network namespace, or drop the hook for network_mode: host)",
            state.id
        )));
    }
    // Every config is read before anything is touched: a bad one fails cleanly.
    let confs = req
        .networks
        .iter()
        .map(|n| Conflist::load(&n.conflist))
        .collect::<Result<Vec<_>, _>>()?;
    let pin = netns::pin_path(&req.run_dir, &state.id);
    let result_path = state.result_path(req);
    let leftover = pin.exists()
        || result_path.exists()
        || confs
            .iter()
            .any(|c| firewall::ipam_holds(&c.name, &state.id));
    if leftover {
        delete::delete(state, req, rollback_deadline)?;
    }
    let attempt = (|| {
        let pin = netns::pin(&req.run_dir, &state.id, pid)?;
        let run_dir = req.run_dir.clone();
        let ports = ports::claim(&req.state_dir, &state.id, &req.ports, |owner| {
            netns::is_pinned(&netns::pin_path(&run_dir, owner))
        })?;
        let dirs = req.cni_dirs();
        let none = Map::new();
        let with_ports = runtime_config(&ports);
        let inv = |ifname: &'static str, rc| Invocation {
            dirs: &dirs,
            container_id: &state.id,
            netns: Some(&pin),
            ifname,
            runtime_config: rc,
            deadline,
            failpoint,
        };
        if req.loopback {
            cni::add(&Conflist::from_value(loopback_conf())?, &inv("lo", &none))?;
        }
        let mut networks = Vec::new();
        for (i, (att, conf)) in req.networks.iter().zip(&confs).enumerate() {
            let ifname = att.ifname(i);
            let _lock = network_lock(req, &conf.name)?;
            if let Some(br) = conf.bridge() {
                if !firewall::link_exists(&br) {
                    // Shared chains and jumps: one writer at a time on this host.
                    let _fw = firewall_lock(req)?;
                    firewall::ensure_network_rules(&br, conf.masquerade)?;
                }
            }
            let inv = Invocation {
                ifname: &ifname,
                ..inv("", if i == 0 { &with_ports } else { &none })
            };
            let result = cni::add(conf, &inv)?;
            let ips = cni::CniResult::parse(&result)?.container_ips();
            networks.push(NetworkResult {
                name: conf.name.clone(),
                ifname,
                ips,
                cni_result: result,
                conflist: conf.raw.clone(),
            });
        }
        let out = NetResult {
            container_id: state.id.clone(),
            networks,
            ports,
        };
        let data = serde_json::to_vec_pretty(&out).expect("serializes");
        crate::hosts::replace(&result_path, &data, false)
            .map_err(HookError::io("writing network result", &result_path))?;
        Ok(out)
    })();
    if let Err(e) = &attempt {
        if let Err(cleanup) = delete::delete(state, req, rollback_deadline) {
            eprintln!("cntnr-hook: rolling back after a failed ADD ({e}) also failed: {cleanup}");
        }
    }
    attempt
}
