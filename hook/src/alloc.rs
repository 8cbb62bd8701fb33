//! Subnet allocation for project networks.
//!
//! Allocations live in `<state-dir>/net/subnets.json` (network name →
//! subnet), read and written under the flock `<state-dir>/net/subnets.lock`,
//! so concurrent agents/hooks on one host never hand out the same subnet.
//! A new subnet is the first one of the pool that overlaps neither another
//! allocation nor any route of the host (every routing table, `ip -j route
//! show table all`), so a LAN, a VPN, docker's or podman's bridges are
//! skipped while they exist.

use crate::ipnet::Ipv4Net;
use crate::lock::FileLock;
use crate::HookError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where subnets come from: `base` cut into subnets of length `prefix`.
///
/// Default `10.90.0.0/16` in /24s (256 networks of 253 containers each).
/// Chosen to stay clear of the usual defaults: docker's 172.17–31.0.0/16 and
/// 192.168.0.0/16 pools, podman's 10.88.0.0/16 and 10.89.0.0/16 (netavark's
/// pool for extra networks), Kubernetes' 10.96.0.0/12 services, flannel's
/// 10.244.0.0/16 and calico's 192.168.0.0/16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetPool {
    /// The range to allocate from.
    pub base: Ipv4Net,
    /// Length of each allocated subnet (at most 30).
    pub prefix: u8,
}

impl Default for SubnetPool {
    fn default() -> Self {
        Self {
            base: "10.90.0.0/16".parse().expect("valid"),
            prefix: 24,
        }
    }
}

impl SubnetPool {
    /// A pool of `/prefix` subnets cut from `base` (the agent's
    /// `--subnet-pool` and `--subnet-size`), or why it cannot be one.
    pub fn new(base: Ipv4Net, prefix: u8) -> Result<SubnetPool, String> {
        if prefix > 30 || prefix < base.prefix() {
            return Err(format!(
                "cannot cut /{prefix} subnets from {base}: the size must be between /{} and /30",
                base.prefix()
            ));
        }
        Ok(SubnetPool { base, prefix })
    }
}

fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let net = state_dir.join("net");
    (net.join("subnets.json"), net.join("subnets.lock"))
}

fn load(file: &Path) -> Result<BTreeMap<String, Ipv4Net>, HookError> {
    match std::fs::read(file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            HookError::Request(format!("{}: corrupt allocation file: {e}", file.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(HookError::io("reading allocations", file)(e)),
    }
}

fn store(file: &Path, all: &BTreeMap<String, Ipv4Net>) -> Result<(), HookError> {
    let data = serde_json::to_vec_pretty(all).expect("serializes");
    crate::hosts::write_atomic(file, &data).map_err(HookError::io("writing allocations", file))
}

/// The subnet of network `key`: the one already allocated, else a new one
/// from `pool`. Idempotent. `routes` are the host's routes (see
/// [`host_routes`]); they are only read when a new subnet is needed.
pub fn allocate(
    state_dir: &Path,
    pool: &SubnetPool,
    key: &str,
    routes: impl FnOnce() -> Result<Vec<Ipv4Net>, HookError>,
) -> Result<Ipv4Net, HookError> {
    if pool.prefix > 30 || pool.prefix < pool.base.prefix() {
        return Err(HookError::Request(format!(
            "subnet pool {}: cannot cut /{} subnets from it",
            pool.base, pool.prefix
        )));
    }
    let (file, lock) = paths(state_dir);
    let _l = FileLock::acquire(&lock)?;
    let mut all = load(&file)?;
    if let Some(s) = all.get(key) {
        return Ok(*s);
    }
    let routes = routes()?;
    let chosen = pool
        .base
        .subnets(pool.prefix)
        .find(|s| !all.values().any(|a| a.overlaps(s)) && !routes.iter().any(|r| r.overlaps(s)))
        .ok_or_else(|| {
            HookError::Request(format!(
                "subnet pool {} has no free /{} left ({} allocated; host routes overlap the rest)",
                pool.base,
                pool.prefix,
                all.len()
            ))
        })?;
    all.insert(key.to_string(), chosen);
    store(&file, &all)?;
    Ok(chosen)
}

/// Forgets the allocation of `key` (the project's network was removed).
/// Returns whether there was one.
pub fn release(state_dir: &Path, key: &str) -> Result<bool, HookError> {
    let (file, lock) = paths(state_dir);
    let _l = FileLock::acquire(&lock)?;
    let mut all = load(&file)?;
    let had = all.remove(key).is_some();
    if had {
        store(&file, &all)?;
    }
    Ok(had)
}

/// The host's IPv4 routes in every table, default routes excluded (they
/// overlap everything and say nothing about which subnets are in use).
pub fn host_routes() -> Result<Vec<Ipv4Net>, HookError> {
    let out = Command::new("ip")
        .args(["-j", "-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| HookError::Command(format!("running ip route: {e}")))?;
    if !out.status.success() {
        return Err(HookError::Command(format!(
            "ip -j route show table all: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_routes(&out.stdout)
}

fn parse_routes(json: &[u8]) -> Result<Vec<Ipv4Net>, HookError> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| HookError::Command(format!("parsing ip -j route: {e}")))?;
    Ok(v.iter()
        .filter_map(|r| r.get("dst")?.as_str())
        .filter(|d| *d != "default")
        .filter_map(|d| d.parse::<Ipv4Net>().ok())
        .filter(|n| n.prefix() > 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> SubnetPool {
        SubnetPool {
            base: s.parse().unwrap(),
            prefix: 24,
        }
    }

    #[test]
    fn allocation_skips_routes_and_other_allocations_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = pool("10.90.0.0/22");
        let routes = || {
            Ok(vec![
                "10.90.0.0/24".parse().unwrap(),
                "10.90.1.7/32".parse().unwrap(),
            ])
        };
        let a = allocate(d.path(), &p, "a", routes).unwrap();
        assert_eq!(a.to_string(), "10.90.2.0/24");
        let b = allocate(d.path(), &p, "b", routes).unwrap();
        assert_eq!(b.to_string(), "10.90.3.0/24");
        // Existing allocations never re-read routes.
        assert_eq!(
            allocate(d.path(), &p, "a", || panic!("routes read")).unwrap(),
            a
        );
        let e = allocate(d.path(), &p, "c", routes).unwrap_err().to_string();
        assert!(e.contains("no free /24"), "{e}");
        assert!(release(d.path(), "a").unwrap());
        assert!(!release(d.path(), "a").unwrap());
        assert_eq!(allocate(d.path(), &p, "c", routes).unwrap(), a);
    }

    #[test]
    fn routes_parse_from_ip_json() {
        let json = br#"[{"type":"unicast","dst":"default","gateway":"192.0.2.1","dev":"eth0"},
            {"dst":"192.0.2.0/24","dev":"eth0"},{"type":"local","dst":"192.0.2.2","table":"local"},
            {"type":"broadcast","dst":"127.255.255.255","table":"local"}]"#;
        let r: Vec<String> = parse_routes(json)
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(r, ["192.0.2.0/24", "192.0.2.2/32", "127.255.255.255/32"]);
    }

    #[test]
    fn host_routes_reads_this_host() {
        // Every Linux host has at least its loopback routes in table local.
        let r = host_routes().unwrap();
        assert!(
            r.iter().any(|n| n.contains(std::net::Ipv4Addr::LOCALHOST)),
            "{r:?}"
        );
    }
}
