//! Per-network host state beyond what CNI plugins own: isolation between
//! networks, and removing a network's bridge with its last container.
//!
//! Isolation (docker's two-stage scheme): the bridge plugin routes between
//! bridges once forwarding is on, so without it every project could reach
//! every other. Chain `CNTNR-ISOLATION` (jumped to first from `FORWARD`)
//! holds one rule per network, `-i <br> ! -o <br> -j CNTNR-ISOLATION-2`, and
//! `CNTNR-ISOLATION-2` holds `-o cn-+ -j DROP`: traffic entering on one cntnr
//! bridge and leaving on another is dropped; traffic to the outside world or
//! within a bridge is not.
//!
//! Acceptance, for hosts whose `FORWARD` policy is DROP (any host with
//! docker): chain `CNTNR-FORWARD` (appended to `FORWARD`) holds per network
//! `-i <br> -o <br>`, `-i <br> ! -o cn-+` (within the network, and out to
//! the world) and `-o <br>` for `RELATED,ESTABLISHED,DNAT` connections
//! (replies, published ports) → ACCEPT. None of them accepts traffic from
//! one cntnr bridge to another, so the order of the two chains in `FORWARD`
//! does not matter for isolation.
//!
//! The chains and jumps are shared by all networks and stay (like portmap's
//! `CNI-HOSTPORT-*` chains); the per-network rules (isolation, acceptance,
//! masquerade) go with the bridge. [`remove_shared_chains_if_unused`] takes
//! the shared ones away once nothing uses them (tests, uninstall).

use crate::ipnet::Ipv4Net;
use crate::HookError;
use std::path::Path;
use std::process::Command;

/// The chain holding the per-network rules.
pub const ISOLATION_CHAIN: &str = "CNTNR-ISOLATION";
/// The chain dropping traffic towards another cntnr bridge.
pub const ISOLATION_CHAIN_2: &str = "CNTNR-ISOLATION-2";
/// The chain accepting a network's own traffic.
pub const FORWARD_CHAIN: &str = "CNTNR-FORWARD";

fn accept_rules(bridge: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["-i", bridge, "-o", bridge, "-j", "ACCEPT"]),
        s(&["-i", bridge, "!", "-o", "cn-+", "-j", "ACCEPT"]),
        s(&[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "ACCEPT",
        ]),
    ]
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("running iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn isolation_rule(bridge: &str) -> Vec<String> {
    ["-i", bridge, "!", "-o", bridge, "-j", ISOLATION_CHAIN_2]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn masquerade_rule(bridge: &str, subnet: Ipv4Net) -> Vec<String> {
    let comment = format!("cntnr masquerade {bridge}");
    [
        "-s",
        &subnet.to_string(),
        "!",
        "-o",
        bridge,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "MASQUERADE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether the Linux interface `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Appends `rule` to `chain` of `table` unless `-C` finds it.
fn ensure_rule(table: &str, chain: &str, rule: &[String], insert: bool) -> Result<(), String> {
    let mut check = vec!["-t", table, "-C", chain];
    check.extend(rule.iter().map(String::as_str));
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let mut add = vec!["-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend(rule.iter().map(String::as_str));
    iptables(&add)
}

fn delete_rule(table: &str, chain: &str, rule: &[String]) -> Result<(), String> {
    let mut del = vec!["-t", table, "-D", chain];
    del.extend(rule.iter().map(String::as_str));
    // Loop: a rule added twice by a race is removed twice.
    for _ in 0..8 {
        if let Err(e) = iptables(&del) {
            if e.contains("does a matching rule exist")
                || e.contains("does not exist")
                || e.contains("No chain")
                || e.contains("Bad rule")
            {
                return Ok(());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Installs the host rules of a network on `bridge`: its isolation rule
/// (and the shared chains if missing) and, for cntnr's own configs
/// (`masquerade`: the subnet), one masquerade rule for traffic leaving the
/// host — per network, like docker, rather than the bridge plugin's
/// per-container chain (`ipMasq`), which costs several iptables runs on
/// every ADD and DEL. Idempotent; run before the bridge plugin creates the
/// bridge, so an existing bridge implies its rules.
pub fn ensure_network_rules(bridge: &str, masquerade: Option<Ipv4Net>) -> Result<(), HookError> {
    let fail =
        |e: String| HookError::Command(format!("host rules of network bridge {bridge}: {e}"));
    for chain in [ISOLATION_CHAIN, ISOLATION_CHAIN_2, FORWARD_CHAIN] {
        if let Err(e) = iptables(&["-N", chain]) {
            if !e.contains("exists") {
                return Err(fail(e));
            }
        }
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    ensure_rule(
        "filter",
        ISOLATION_CHAIN_2,
        &s(&["-o", "cn-+", "-j", "DROP"]),
        false,
    )
    .map_err(fail)?;
    ensure_rule("filter", "FORWARD", &s(&["-j", ISOLATION_CHAIN]), true).map_err(fail)?;
    ensure_rule("filter", ISOLATION_CHAIN, &isolation_rule(bridge), false).map_err(fail)?;
    ensure_rule("filter", "FORWARD", &s(&["-j", FORWARD_CHAIN]), false).map_err(fail)?;
    for r in accept_rules(bridge) {
        ensure_rule("filter", FORWARD_CHAIN, &r, false).map_err(fail)?;
    }
    if let Some(subnet) = masquerade {
        ensure_rule(
            "nat",
            "POSTROUTING",
            &masquerade_rule(bridge, subnet),
            false,
        )
        .map_err(fail)?;
    }
    Ok(())
}

/// Removes what [`ensure_network_rules`] installed for `bridge`. Idempotent.
pub fn remove_network_rules(bridge: &str, masquerade: Option<Ipv4Net>) -> Result<(), HookError> {
    let fail = |e: String| {
        HookError::Command(format!(
            "removing host rules of network bridge {bridge}: {e}"
        ))
    };
    for r in accept_rules(bridge) {
        delete_rule("filter", FORWARD_CHAIN, &r).map_err(fail)?;
    }
    delete_rule("filter", ISOLATION_CHAIN, &isolation_rule(bridge)).map_err(fail)?;
    if let Some(subnet) = masquerade {
        delete_rule("nat", "POSTROUTING", &masquerade_rule(bridge, subnet)).map_err(fail)?;
    }
    Ok(())
}

/// Rules of `chain` in `table` (`iptables -S` lines other than the chain's
/// own `-N`), or `None` when the chain does not exist.
fn chain_rules(table: &str, chain: &str) -> Option<Vec<String>> {
    let out = Command::new("iptables")
        .args(["-w", "-t", table, "-S", chain])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("-N "))
            .map(str::to_string)
            .collect()
    })
}

/// portmap's shared nat chains and the jumps to them (its own names).
const HOSTPORT_JUMPS: &[(&str, &[&str])] = &[
    (
        "PREROUTING",
        &[
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "CNI-HOSTPORT-DNAT",
        ],
    ),
    (
        "OUTPUT",
        &[
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "CNI-HOSTPORT-DNAT",
        ],
    ),
    (
        "POSTROUTING",
        &[
            "-m",
            "comment",
            "--comment",
            "CNI portfwd requiring masquerade",
            "-j",
            "CNI-HOSTPORT-MASQ",
        ],
    ),
];

/// Removes the shared chains (ours, and portmap's `CNI-HOSTPORT-*`) and the
/// jumps to them when no network uses them any more: no per-network rule in
/// `CNTNR-ISOLATION`/`CNTNR-FORWARD`, no port mapping in
/// `CNI-HOSTPORT-DNAT`. For leaving a host as it was (tests, uninstall);
/// the hook itself keeps them between networks, like docker. Idempotent.
/// Returns whether anything was removed.
pub fn remove_shared_chains_if_unused() -> Result<bool, HookError> {
    let fail = |e: String| HookError::Command(format!("removing shared chains: {e}"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut removed = false;
    let ours =
        [ISOLATION_CHAIN, ISOLATION_CHAIN_2, FORWARD_CHAIN].map(|c| chain_rules("filter", c));
    let ours_unused = ours[0].as_ref().is_none_or(|r| r.is_empty())
        && ours[2].as_ref().is_none_or(|r| r.is_empty());
    if ours_unused && ours.iter().any(Option::is_some) {
        for chain in [ISOLATION_CHAIN, FORWARD_CHAIN] {
            delete_rule("filter", "FORWARD", &s(&["-j", chain])).map_err(fail)?;
        }
        for chain in [ISOLATION_CHAIN, ISOLATION_CHAIN_2, FORWARD_CHAIN] {
            if chain_rules("filter", chain).is_some() {
                iptables(&["-F", chain]).map_err(fail)?;
                iptables(&["-X", chain]).map_err(fail)?;
                removed = true;
            }
        }
    }
    if chain_rules("nat", "CNI-HOSTPORT-DNAT").is_some_and(|r| r.is_empty()) {
        for (chain, rule) in HOSTPORT_JUMPS {
            delete_rule("nat", chain, &s(rule)).map_err(fail)?;
        }
        for chain in [
            "CNI-HOSTPORT-MASQ",
            "CNI-HOSTPORT-SETMARK",
            "CNI-HOSTPORT-DNAT",
        ] {
            if chain_rules("nat", chain).is_some() {
                iptables(&["-t", "nat", "-F", chain]).map_err(fail)?;
                iptables(&["-t", "nat", "-X", chain]).map_err(fail)?;
                removed = true;
            }
        }
    }
    Ok(removed)
}

/// Whether a bridge still has ports (veths of containers) attached.
pub fn bridge_has_ports(bridge: &str) -> bool {
    std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// `/var/lib/cni/networks/<name>`: host-local's reservations of a network.
pub fn ipam_dir(network: &str) -> std::path::PathBuf {
    Path::new("/var/lib/cni/networks").join(network)
}

/// Whether host-local holds an address of `network` for `container_id`
/// (a leftover: a reboot keeps `/var/lib/cni` but not the containers, and
/// host-local refuses a second allocation for the same id).
pub fn ipam_holds(network: &str, container_id: &str) -> bool {
    let Ok(d) = std::fs::read_dir(ipam_dir(network)) else {
        return false;
    };
    d.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n != "lock"
            && !n.starts_with("last_reserved_ip")
            && std::fs::read_to_string(e.path())
                .is_ok_and(|c| c.lines().next().map(str::trim) == Some(container_id))
    })
}

/// Whether host-local still holds an address of `network` for anyone.
pub fn ipam_in_use(network: &str) -> bool {
    let Ok(d) = std::fs::read_dir(ipam_dir(network)) else {
        return false;
    };
    d.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n != "lock" && !n.starts_with("last_reserved_ip")
    })
}

/// Removes the network's host state when no container uses it any more:
/// the bridge, its isolation rule and host-local's dir. Call with the
/// network's lock held. Returns whether it was removed.
pub fn teardown_if_unused(
    network: &str,
    bridge: &str,
    masquerade: Option<Ipv4Net>,
) -> Result<bool, HookError> {
    if bridge_has_ports(bridge) || ipam_in_use(network) {
        return Ok(false);
    }
    if link_exists(bridge) {
        let out = Command::new("ip")
            .args(["link", "del", bridge])
            .output()
            .map_err(|e| HookError::Command(format!("running ip link del: {e}")))?;
        if !out.status.success() && link_exists(bridge) {
            return Err(HookError::Command(format!(
                "deleting bridge {bridge}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    remove_network_rules(bridge, masquerade)?;
    let dir = ipam_dir(network);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HookError::io("removing IPAM dir", &dir)(e)),
    }
    Ok(true)
}
