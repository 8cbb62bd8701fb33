//! The leader's registry audit (issue 9): service entries that cntnr made
//! for a node that has been gone longer than the grace are removed, so
//! clients stop seeing instances nobody will ever refresh or deregister.
//!
//! An entry is cntnr's when [`owned_by`] says so: its id is
//! `<node>/<container id>` *and* its meta names the same node (the same
//! rule as [`crate::registration::owned_container`], for any node). Entries
//! of other tools, or whose id and meta disagree, are never touched. The
//! grace is the `cntnr.reschedule-after` of the entry's project/service
//! (meta `project`/`service`) when the project is known, else 30 s,
//! counted from when the leader knows the node gone (the same
//! `gone_since` the scheduler keeps; a node first seen in the registry
//! starts counting then).
//!
//! Which names are audited: the registered names of every service of every
//! valid project (`registration::service_name`), as the registry can only
//! be listed by name. The pure part ([`due`]) is table-tested; the IO part
//! runs once per placement pass and returns when it must run again.
//!
//! Consul: an entry of this host's Consul agent is deregistered through
//! the agent API; one held by another Consul node (a dead host's agent,
//! whose own `DeregisterCriticalServiceAfter` reaper died with it) through
//! `/v1/catalog/deregister` (`cntnr_kv` `ConsulStore::deregister_instance`).
//! If that other Consul agent is still alive, its anti-entropy sync puts
//! the (failing) entry back until its own reaper removes it.

use std::collections::BTreeMap;
use std::time::Duration;

use cntnr_kv::{DynStore, Leadership, ServiceInstance};
use cntnr_model::records::NodeRecord;
use cntnr_model::{InstanceId, NodeName, DEFAULT_RESCHEDULE_AFTER};

use super::Shared;
use crate::registration::meta;

/// The node an entry belongs to, if cntnr made it.
pub fn owned_by(id: &str, entry_meta: &BTreeMap<String, String>) -> Option<NodeName> {
    let parsed = InstanceId::parse(id).ok()?;
    (entry_meta.get(meta::NODE).map(String::as_str) == Some(parsed.node.as_str()))
        .then_some(parsed.node)
}

/// What to do with the entries of one registered name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Instance ids to deregister now.
    pub remove: Vec<String>,
    /// When (Unix seconds) the next entry becomes due.
    pub next_at: Option<u64>,
}

/// Pure: which of `entries` to remove at `now`. `gone` is completed with
/// nodes first seen here (since `now`); `grace` gives an entry's grace.
pub fn due(
    entries: &[ServiceInstance],
    live: &BTreeMap<NodeName, NodeRecord>,
    gone: &mut BTreeMap<NodeName, u64>,
    grace: impl Fn(&ServiceInstance) -> Duration,
    now: u64,
) -> Verdict {
    let mut v = Verdict::default();
    for e in entries {
        let Some(node) = owned_by(&e.id, &e.meta) else {
            continue;
        };
        if live.contains_key(&node) {
            continue;
        }
        let since = *gone.entry(node).or_insert(now);
        let end = since.saturating_add(grace(e).as_secs());
        if now >= end {
            v.remove.push(e.id.clone());
        } else {
            v.next_at = Some(v.next_at.map_or(end, |t| t.min(end)));
        }
    }
    v
}

/// One audit over every registered name of the known projects; returns
/// when it must run again. Store errors are logged and retried with the
/// next pass.
pub async fn run_once(
    store: &DynStore,
    shared: &Shared,
    leadership: &Leadership,
    live: &BTreeMap<NodeName, NodeRecord>,
    gone: &mut BTreeMap<NodeName, u64>,
    now: u64,
) -> Option<u64> {
    // Registered name → (project, service) → grace.
    let mut names: BTreeMap<String, BTreeMap<(String, String), Duration>> = BTreeMap::new();
    {
        let d = shared.desired.lock().unwrap_or_else(|e| e.into_inner());
        for (p, dp) in &d.projects {
            let Ok(spec) = &dp.spec else { continue };
            for (s, svc) in &spec.services {
                if !crate::registration::is_registered(svc) {
                    continue;
                }
                let name = crate::registration::service_name(p, s, svc).to_string();
                names
                    .entry(name)
                    .or_default()
                    .insert((p.to_string(), s.to_string()), svc.agent.reschedule_after());
            }
        }
    }
    let mut next_at: Option<u64> = None;
    for (name, graces) in &names {
        let entries = match store.instances(name, false).await {
            Ok(e) => e,
            Err(e) => {
                shared.metrics.store_error("audit");
                tracing::warn!(service = %name, error = %e, "auditing the registry failed");
                continue;
            }
        };
        let grace = |e: &ServiceInstance| {
            let key = (
                e.meta.get(meta::PROJECT).cloned().unwrap_or_default(),
                e.meta.get(meta::SERVICE).cloned().unwrap_or_default(),
            );
            graces
                .get(&key)
                .copied()
                .unwrap_or(DEFAULT_RESCHEDULE_AFTER)
        };
        let v = due(&entries, live, gone, grace, now);
        if let Some(at) = v.next_at {
            next_at = Some(next_at.map_or(at, |t| t.min(at)));
        }
        for id in v.remove {
            if !leadership.is_held() {
                return next_at;
            }
            match store.deregister(name, &id).await {
                Ok(()) => tracing::info!(service = %name, instance = %id,
                    "registry entry of a node gone past its grace removed"),
                Err(e) => {
                    shared.metrics.store_error("audit");
                    tracing::warn!(service = %name, instance = %id, error = %e,
                        "removing a registry entry of a gone node failed");
                }
            }
        }
    }
    next_at
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntnr_kv::Health;

    fn entry(id: &str, node_meta: Option<&str>, service: &str) -> ServiceInstance {
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        if let Some(n) = node_meta {
            meta.insert("node".into(), n.into());
        }
        meta.insert("project".into(), "shop".into());
        meta.insert("service".into(), service.into());
        ServiceInstance {
            name: "shop-web".into(),
            id: id.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta,
            health: Health::Critical,
        }
    }

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn only_owned_entries_of_nodes_gone_past_grace_are_removed() {
        let live: BTreeMap<NodeName, NodeRecord> = [(
            n("alive"),
            NodeRecord {
                labels: BTreeMap::new(),
                address: "a".into(),
                version: "0".into(),
                rootless: false,
                started: 0,
            },
        )]
        .into();
        let entries = [
            entry("alive/shop-web-1", Some("alive"), "web"),
            entry("dead/shop-web-2", Some("dead"), "web"),
            entry("dead/shop-api-1", Some("dead"), "api"),
            entry("fresh/shop-web-3", Some("fresh"), "web"),
            entry("new/shop-web-4", Some("new"), "web"),
            // Not ours: id and meta disagree, no meta, not an instance id.
            entry("dead/shop-web-5", Some("other"), "web"),
            entry("dead/shop-web-6", None, "web"),
            entry("web-7", Some("dead"), "web"),
        ];
        let mut gone: BTreeMap<NodeName, u64> = [(n("dead"), 900), (n("fresh"), 990)].into();
        let grace = |e: &ServiceInstance| {
            if e.meta["service"] == "api" {
                Duration::from_secs(200)
            } else {
                Duration::from_secs(30)
            }
        };
        let v = due(&entries, &live, &mut gone, grace, 1000);
        assert_eq!(v.remove, ["dead/shop-web-2"]);
        // api's grace ends at 1100, fresh's at 1020, new's (first seen
        // now) at 1030.
        assert_eq!(v.next_at, Some(1020));
        assert_eq!(gone[&n("new")], 1000);
        assert!(!gone.contains_key(&n("alive")));
        assert_eq!(owned_by("a/b-c-1", &BTreeMap::new()), None);
    }
}
