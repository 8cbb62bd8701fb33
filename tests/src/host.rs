//! The host state a networking test must leave as it found: network links,
//! iptables rules (filter and nat) and CNI IPAM directories. Take a
//! [`snapshot`] before, another after, and [`leaks`] lists what is new
//! beyond the shared chains the hook keeps between networks.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

/// Host state relevant to leaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub links: BTreeSet<String>,
    pub iptables: BTreeSet<String>,
    pub ipam: BTreeSet<String>,
}

/// `ip -j link`, `iptables-save` (filter, nat) and `/var/lib/cni/networks`.
pub fn snapshot() -> Snapshot {
    let out = Command::new("ip").args(["-j", "link"]).output().unwrap();
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let links = links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(String::from))
        .collect();
    let mut iptables = BTreeSet::new();
    for table in ["filter", "nat"] {
        let out = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.starts_with('#') {
                continue;
            }
            // Chain declarations carry counters: `:CHAIN POLICY [p:b]`.
            let l = match l.rfind(" [") {
                Some(i) if l.starts_with(':') => &l[..i],
                _ => l,
            };
            iptables.insert(format!("{table} {l}"));
        }
    }
    let ipam = std::fs::read_dir("/var/lib/cni/networks")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        links,
        iptables,
        ipam,
    }
}

/// Shared chains created once and kept, like docker's: portmap's
/// `CNI-HOSTPORT-*` and cntnr's isolation chains with their jumps. Nothing
/// per container or per network.
fn shared_infra(line: &str) -> bool {
    let rule = line.split_once(' ').map(|x| x.1).unwrap_or(line);
    rule.starts_with('*')
        || rule == "COMMIT"
        || rule.starts_with(":CNI-HOSTPORT-")
        || rule.starts_with(":CNTNR-ISOLATION")
        || rule.starts_with(":CNTNR-FORWARD")
        || rule == "-A FORWARD -j CNTNR-FORWARD"
        || rule.starts_with(":PREROUTING ")
        || rule.starts_with(":INPUT ")
        || rule.starts_with(":OUTPUT ")
        || rule.starts_with(":POSTROUTING ")
        || rule.starts_with(":FORWARD ")
        || (rule.contains("-j CNI-HOSTPORT-") && !rule.contains("id: \\\""))
        || rule.starts_with("-A CNI-HOSTPORT-MASQ ")
        || rule.starts_with("-A CNI-HOSTPORT-SETMARK ")
        || rule == "-A FORWARD -j CNTNR-ISOLATION"
        || rule == "-A CNTNR-ISOLATION-2 -o cn-+ -j DROP"
}

/// Everything in `after` that was not in `before` and is not shared
/// infrastructure: must be empty after a test deleted its containers.
pub fn leaks(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = after
        .links
        .difference(&before.links)
        .map(|l| format!("link {l}"))
        .collect();
    out.extend(
        after
            .iptables
            .difference(&before.iptables)
            .filter(|l| !shared_infra(l))
            .map(|l| format!("iptables {l}")),
    );
    out.extend(
        after
            .ipam
            .difference(&before.ipam)
            .map(|l| format!("ipam /var/lib/cni/networks/{l}")),
    );
    out
}
