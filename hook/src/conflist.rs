//! Per-project network configs: one CNI config list per compose network.
//!
//! `bridge` (its own Linux bridge, gateway on the host side, hairpin for a
//! container reaching its own published port; outbound masquerade is one
//! rule per network installed by the hook, see `cntnrMasquerade`) with
//! `host-local` IPAM on the allocated subnet, then `portmap`
//! (published ports, from the `portMappings` capability). `lo` is brought up
//! by a separate `loopback` invocation (see [`loopback_conf`]).

use crate::alloc::{self, SubnetPool};
use crate::ipnet::Ipv4Net;
use crate::request::{ConflistSource, NetworkAttachment};
use crate::HookError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// CNI spec version of the generated configs.
pub const CNI_VERSION: &str = "1.0.0";
/// Prefix of every bridge cntnr creates (`cn-` + 12 hex digits: 15 chars,
/// the most `IFNAMSIZ` allows). The isolation rules match `cn-+`.
pub const BRIDGE_PREFIX: &str = "cn-";

/// The CNI network name of `network` in `project`: `cntnr.<project>.<network>`.
/// Unambiguous (project names have no `.`); it names the host-local dir
/// `/var/lib/cni/networks/<name>` too.
pub fn network_name(project: &str, network: &str) -> Result<String, HookError> {
    let ok_project = !project.is_empty()
        && project.len() <= 63
        && project
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && project.as_bytes()[0].is_ascii_alphanumeric();
    let ok_network = !network.is_empty()
        && network.len() <= 64
        && network
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok_project || !ok_network {
        return Err(HookError::Request(format!(
            "network {network:?} of project {project:?}: names must be [a-z0-9_-] (project) and [A-Za-z0-9_.-] (network)"
        )));
    }
    Ok(format!("cntnr.{project}.{network}"))
}

/// The Linux bridge of a CNI network name: `cn-` + the first 12 hex digits
/// of its SHA-256 (stable, short enough for IFNAMSIZ, no collision in
/// practice at 48 bits).
pub fn bridge_name(network_name: &str) -> String {
    let h = Sha256::digest(network_name.as_bytes());
    let hex: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{BRIDGE_PREFIX}{hex}")
}

/// The config list of a bridge network on `subnet` (gateway `.1`).
pub fn bridge_conflist(name: &str, subnet: Ipv4Net) -> Value {
    let gateway = subnet.nth(1).expect("subnet has a first host");
    json!({
        "cniVersion": CNI_VERSION,
        "name": name,
        crate::cni::MASQUERADE_KEY: subnet.to_string(),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge_name(name),
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// The single-plugin config that brings `lo` up.
pub fn loopback_conf() -> Value {
    json!({"cniVersion": CNI_VERSION, "name": "cntnr-loopback", "type": "loopback"})
}

/// Where the config list of CNI network `name` is written.
pub fn conflist_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir
        .join("net")
        .join("conf")
        .join(format!("{name}.conflist"))
}

/// Allocates (or finds) the subnet of `network` in `project`, writes its
/// config list and returns the attachment to put in a [`crate::NetRequest`].
/// Idempotent; called by the agent for every network of a project before
/// creating its containers.
pub fn ensure_network(
    state_dir: &Path,
    pool: &SubnetPool,
    project: &str,
    network: &str,
) -> Result<(NetworkAttachment, Ipv4Net), HookError> {
    let name = network_name(project, network)?;
    let subnet = alloc::allocate(state_dir, pool, &name, alloc::host_routes)?;
    let path = conflist_path(state_dir, &name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(HookError::io("creating conf dir", dir))?;
    }
    let data = serde_json::to_vec_pretty(&bridge_conflist(&name, subnet)).expect("serializes");
    crate::hosts::write_atomic(&path, &data).map_err(HookError::io("writing conflist", &path))?;
    Ok((
        NetworkAttachment {
            conflist: ConflistSource::Path(path),
            ifname: None,
        },
        subnet,
    ))
}

/// Forgets `network` of `project`: its config list and its subnet. Called by
/// the agent when the project is removed (after its containers: the hook
/// already removed the bridge with the last one).
pub fn release_network(state_dir: &Path, project: &str, network: &str) -> Result<(), HookError> {
    let name = network_name(project, network)?;
    let path = conflist_path(state_dir, &name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HookError::io("removing conflist", &path)(e)),
    }
    alloc::release(state_dir, &name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unambiguous_and_bridges_fit_ifnamsiz() {
        assert_eq!(
            network_name("shop", "default").unwrap(),
            "cntnr.shop.default"
        );
        assert_ne!(
            bridge_name(&network_name("a-b", "c").unwrap()),
            bridge_name(&network_name("a", "b-c").unwrap())
        );
        let b = bridge_name("cntnr.a-very-long-project-name-that-goes-on.and-a-long-network");
        assert_eq!(b.len(), 15);
        assert!(b.starts_with("cn-"));
        assert!(network_name("Shop", "x").is_err());
        assert!(network_name("shop", "a/b").is_err());
    }

    #[test]
    fn bridge_conflist_has_bridge_host_local_and_portmap() {
        let c = bridge_conflist("cntnr.shop.default", "10.90.7.0/24".parse().unwrap());
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.90.7.1"
        );
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(c["cniVersion"], CNI_VERSION);
        let parsed = crate::cni::Conflist::from_value(c).unwrap();
        assert_eq!(parsed.masquerade, Some("10.90.7.0/24".parse().unwrap()));
        assert_eq!(
            parsed.bridge().as_deref(),
            Some(bridge_name("cntnr.shop.default").as_str())
        );
    }

    #[test]
    fn ensure_then_release() {
        let d = tempfile::tempdir().unwrap();
        let pool = SubnetPool {
            base: "10.250.252.0/22".parse().unwrap(),
            prefix: 24,
        };
        let (att, subnet) = ensure_network(d.path(), &pool, "p", "default").unwrap();
        let (att2, subnet2) = ensure_network(d.path(), &pool, "p", "default").unwrap();
        assert_eq!((att.clone(), subnet), (att2, subnet2));
        let ConflistSource::Path(p) = att.conflist else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["name"], "cntnr.p.default");
        release_network(d.path(), "p", "default").unwrap();
        assert!(!p.exists());
        release_network(d.path(), "p", "default").unwrap();
    }
}
