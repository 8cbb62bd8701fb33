//! JSON values stored under the keys of [`crate::keys`].
//!
//! Every record deserializes through the validating newtypes, so a record
//! that parses carries only valid names. Unknown fields are ignored on
//! read, so an older agent can read a newer agent's record; times are Unix
//! seconds (UTC).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::hash::ConfigHash;
use crate::names::{ContainerId, InstanceId, NodeName, Replica, ServiceName};

/// `nodes/<node>`: written by each agent, bound to its session/lease, so it
/// disappears when the agent does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `--node-label` values (used by placement constraints).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The address other hosts reach this node at.
    pub address: String,
    /// The agent's version.
    pub version: String,
    /// Whether the agent runs rootless.
    #[serde(default)]
    pub rootless: bool,
    /// When the agent started (Unix seconds).
    pub started: u64,
}

/// `schedule/<project>`: written only by the leader, fenced by its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The leader's fencing token when it wrote this record; agents ignore a
    /// schedule whose token is older than one they have already seen.
    pub fencing_token: u64,
    /// The node that wrote it.
    pub leader: NodeName,
    /// The project revision (store index of `projects/<project>`) this
    /// schedule was computed from.
    #[serde(default)]
    pub generation: u64,
    /// Service → replica number → node.
    pub services: BTreeMap<ServiceName, BTreeMap<Replica, NodeName>>,
    /// Nodes of `services` that are gone from `nodes/` (their replicas are
    /// kept there during the grace of `cntnr.reschedule-after`) and since
    /// when (Unix seconds), so a new leader keeps counting from the same
    /// moment instead of rescheduling at once or starting the grace anew.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gone_since: BTreeMap<NodeName, u64>,
    /// Rolling updates (`deploy.update_config`) in progress or finished,
    /// by service: each replica runs the hash its rollout names
    /// (`cntnr_reconcile::rollout::Rollout::wanted`), not necessarily the
    /// project's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<ServiceName, crate::rollout::ServiceRollout>,
    /// The last fully healthy revision of the project (the compose text
    /// `deploy` wrote, as [`crate::render::to_yaml`] renders it): replicas a
    /// rollout holds at an older hash are built from it, and a rollback
    /// returns to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_spec: Option<String>,
}

impl ScheduleRecord {
    /// The replicas of every service assigned to `node`, with the surge
    /// replicas of `start-first` rollouts placed there (but not those that
    /// failed: their container goes).
    pub fn replicas_on(&self, node: &NodeName) -> Vec<(ServiceName, Replica)> {
        let mut v: Vec<(ServiceName, Replica)> = self
            .services
            .iter()
            .flat_map(|(s, reps)| {
                reps.iter()
                    .filter(|(_, n)| *n == node)
                    .map(move |(r, _)| (s.clone(), *r))
            })
            .collect();
        for (s, ro) in &self.rollouts {
            let placed = self.services.get(s);
            for (r, surge) in &ro.surge {
                let failed = matches!(surge.step, crate::rollout::Step::Failed { .. });
                if surge.node == *node && !failed && placed.is_none_or(|p| !p.contains_key(r)) {
                    v.push((s.clone(), *r));
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// The runtime state of a container, as the agent last observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Scheduled here but not created yet (pulling, waiting for
    /// dependencies or env values).
    Pending,
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Exited or stopped.
    Stopped,
    /// Failed to be created or started (see `last_error`).
    Failed,
}

/// Health of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No health check configured.
    #[default]
    None,
    /// Within the start period, or no result yet.
    Starting,
    /// The check passes.
    Healthy,
    /// The check failed `retries` times in a row.
    Unhealthy,
}

/// A registered container's check status in the registry, as the agent
/// last wrote it (Consul's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Listed as passing: load balancers send it traffic.
    Passing,
    /// Serving, degraded.
    Warning,
    /// Not serving.
    Critical,
    /// To be registered, but not written to the registry (yet).
    Pending,
}

/// The longest health check output a [`ContainerStatus`] carries.
pub const HEALTH_OUTPUT_MAX: usize = 512;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One container in a [`StatusRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// The runc container id.
    pub id: ContainerId,
    /// Its service.
    pub service: ServiceName,
    /// Its replica number.
    pub replica: Replica,
    /// Runtime state.
    pub state: ContainerState,
    /// Health.
    #[serde(default)]
    pub health: Health,
    /// Consecutive failed health checks (0 while passing or unchecked).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failing_streak: u32,
    /// The last health check's output (trimmed, at most
    /// [`HEALTH_OUTPUT_MAX`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_output: Option<String>,
    /// Its registry entry's check status as last written, for a registered
    /// container (`pending` until written; `None`: it has no entry). A rolling
    /// update waits for `passing` here, not only for `health`, so a
    /// replica counts as up only once load balancers can see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<CheckStatus>,
    /// Restarts since creation.
    #[serde(default)]
    pub restarts: u32,
    /// Exit code of the last exit, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last error, one line (e.g. `pulling docker.io/library/x: manifest unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The config hash the container was created from.
    pub config_hash: ConfigHash,
    /// When it last started (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// The project revision it was created from.
    #[serde(default)]
    pub generation: u64,
    /// Its addresses on its project networks (bridge networking, as the
    /// network hook reported them), the one on its first network first;
    /// empty with `host`/`none` networking or when it is not running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The host ports published for it (bridge networking).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
}

/// A published port of a running container, as set up on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The host address it is bound to; `None`: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl std::fmt::Display for PortBinding {
    /// `127.0.0.1:8080->80/tcp`, or `8080->80/tcp` on every address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// `status/<project>/<node>`: each agent's view of its containers of a
/// project, bound to its session/lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The node reporting.
    pub node: NodeName,
    /// The latest project revision the agent has processed.
    #[serde(default)]
    pub generation: u64,
    /// When this record was written (Unix seconds).
    pub updated: u64,
    /// Every container of the project on this node.
    #[serde(default)]
    pub containers: Vec<ContainerStatus>,
    /// Project-level problems (the project YAML does not parse, an image
    /// cannot be pulled, a bind path is refused by policy, …), one line
    /// each.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Harmless problems, one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `elections/<project>/<service>`: the replica that won.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRecord {
    /// The winning instance (`<node>/<container id>`).
    pub instance: InstanceId,
    /// The address (`ip:port` or `ip`) of the winner.
    pub address: String,
    /// The fencing token of the win (strictly increasing per election).
    #[serde(default)]
    pub token: u64,
}

/// `services/<name>/<instance>` (etcd and dir stores; Consul uses its
/// catalog): one registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The address to reach the instance at.
    pub address: String,
    /// The port.
    pub port: u16,
    /// `cntnr.service.tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// project, service, replica, node, config hash.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Whether the instance's checks pass.
    pub health: ServiceHealth,
}

/// Health of a registered instance, in Consul's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceHealth {
    /// All checks pass.
    Passing,
    /// A check warns.
    Warning,
    /// A check fails.
    Critical,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ProjectName;
    use serde_json::json;

    fn hash() -> ConfigHash {
        ConfigHash::parse(&format!("v1-{}", "ab".repeat(32))).unwrap()
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
        v: &T,
    ) -> serde_json::Value {
        let text = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, v);
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn node_record_round_trips() {
        let n = NodeRecord {
            labels: [("zone".to_string(), "a".to_string())].into(),
            address: "10.0.0.5".into(),
            version: "0.1.0".into(),
            rootless: true,
            started: 1_700_000_000,
        };
        let j = round_trip(&n);
        assert_eq!(j["labels"]["zone"], "a");
        assert_eq!(j["rootless"], true);
    }

    #[test]
    fn schedule_record_round_trips_with_numeric_replica_keys() {
        let n1 = NodeName::new("n1").unwrap();
        let n2 = NodeName::new("n2").unwrap();
        let s = ScheduleRecord {
            fencing_token: 7,
            leader: n1.clone(),
            generation: 42,
            services: [(
                ServiceName::new("web").unwrap(),
                [(1, n1.clone()), (2, n2.clone())].into(),
            )]
            .into(),
            gone_since: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            healthy_spec: None,
        };
        let j = round_trip(&s);
        assert_eq!(j["services"]["web"]["2"], "n2");
        assert_eq!(
            s.replicas_on(&n2),
            vec![(ServiceName::new("web").unwrap(), 2)]
        );
    }

    #[test]
    fn surge_replicas_of_a_rollout_run_on_their_node() {
        use crate::rollout::{Phase, ServiceRollout, Step, Surge};
        let n1 = NodeName::new("n1").unwrap();
        let n2 = NodeName::new("n2").unwrap();
        let web = ServiceName::new("web").unwrap();
        let h = crate::ConfigHash::parse(&format!("v1-{}", "a".repeat(64))).unwrap();
        let surge = |node: &NodeName| Surge {
            node: node.clone(),
            hash: h.clone(),
            step: Step::Updating { since: 1 },
            missing_since: None,
        };
        let s = ScheduleRecord {
            fencing_token: 7,
            leader: n1.clone(),
            generation: 42,
            services: [(web.clone(), [(1, n1.clone()), (2, n2.clone())].into())].into(),
            gone_since: BTreeMap::new(),
            rollouts: [(
                web.clone(),
                ServiceRollout {
                    from: h.clone(),
                    to: h.clone(),
                    phase: Phase::Updating,
                    replicas: BTreeMap::new(),
                    reason: None,
                    surge: [
                        (3, surge(&n2)),
                        (4, surge(&n1)),
                        (
                            5,
                            Surge {
                                step: Step::Failed {
                                    at: 2,
                                    reason: "unhealthy".into(),
                                },
                                ..surge(&n1)
                            },
                        ),
                    ]
                    .into(),
                    fallback: None,
                },
            )]
            .into(),
            healthy_spec: None,
        };
        assert_eq!(s.replicas_on(&n1), vec![(web.clone(), 1), (web.clone(), 4)]);
        assert_eq!(s.replicas_on(&n2), vec![(web.clone(), 2), (web.clone(), 3)]);
        let j = round_trip(&s);
        assert_eq!(j["rollouts"]["web"]["surge"]["3"]["node"], "n2");
    }

    #[test]
    fn status_record_round_trips() {
        let p = ProjectName::new("shop").unwrap();
        let s = ServiceName::new("web").unwrap();
        let st = StatusRecord {
            node: NodeName::new("n1").unwrap(),
            generation: 3,
            updated: 1_700_000_100,
            containers: vec![ContainerStatus {
                id: ContainerId::new(&p, &s, 1),
                service: s.clone(),
                replica: 1,
                state: ContainerState::Running,
                health: Health::Healthy,
                failing_streak: 1,
                health_output: Some("HTTP 200".into()),
                registry: Some(CheckStatus::Passing),
                restarts: 2,
                exit_code: Some(137),
                last_error: Some("oom".into()),
                config_hash: hash(),
                started_at: Some(1_700_000_050),
                generation: 3,
                ips: vec!["10.90.0.2".parse().unwrap()],
                ports: vec![PortBinding {
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                }],
            }],
            errors: vec!["image pull failed".into()],
            warnings: vec![],
        };
        let j = round_trip(&st);
        assert_eq!(j["containers"][0]["id"], "shop-web-1");
        assert_eq!(j["containers"][0]["state"], "running");
        assert_eq!(j["containers"][0]["health"], "healthy");
        assert_eq!(j["containers"][0]["failing_streak"], 1);
        assert_eq!(j["containers"][0]["health_output"], "HTTP 200");
        assert_eq!(j["containers"][0]["registry"], "passing");
    }

    #[test]
    fn election_and_service_records_round_trip() {
        let e = ElectionRecord {
            instance: InstanceId::parse("n1/shop-db-1").unwrap(),
            address: "10.88.0.4:5432".into(),
            token: 9,
        };
        assert_eq!(round_trip(&e)["instance"], "n1/shop-db-1");
        let r = ServiceRecord {
            address: "10.88.0.5".into(),
            port: 8080,
            tags: vec!["web".into()],
            meta: [("project".to_string(), "shop".to_string())].into(),
            health: ServiceHealth::Passing,
        };
        assert_eq!(round_trip(&r)["health"], "passing");
    }

    #[test]
    fn invalid_records_are_rejected() {
        let bad_node = json!({"node": "bad/node", "updated": 1});
        assert!(serde_json::from_value::<StatusRecord>(bad_node).is_err());
        let bad_id = json!({"node": "n1", "updated": 1, "containers": [{
            "id": "nope", "service": "web", "replica": 1, "state": "running", "config_hash": format!("v1-{}", "0".repeat(64))
        }]});
        assert!(serde_json::from_value::<StatusRecord>(bad_id).is_err());
        let bad_state = json!({"node": "n1", "updated": 1, "containers": [{
            "id": "p-web-1", "service": "web", "replica": 1, "state": "exploded", "config_hash": "x"
        }]});
        assert!(serde_json::from_value::<StatusRecord>(bad_state).is_err());
        // unknown fields are tolerated (forward compatibility)
        let extra = json!({"node": "n1", "updated": 1, "future": true});
        assert!(serde_json::from_value::<StatusRecord>(extra).is_ok());
    }

    #[test]
    fn container_ips_and_ports_are_optional_fields() {
        let rec = |extra: &str| {
            format!(
                r#"{{"node":"n1","updated":1,"containers":[{{"id":"shop-web-1","service":"web","replica":1,"state":"running","config_hash":"{}"{extra}}}]}}"#,
                hash()
            )
        };
        let with: StatusRecord = serde_json::from_str(&rec(
            r#","ips":["10.90.0.2"],"ports":[{"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"protocol":"tcp"},{"host_port":5353,"container_port":53,"protocol":"udp"}]"#,
        ))
        .unwrap();
        let c = &with.containers[0];
        assert_eq!(c.ips, ["10.90.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.ports[0].to_string(), "127.0.0.1:8080->80/tcp");
        assert_eq!(c.ports[1].to_string(), "5353->53/udp");
        let j = round_trip(&with);
        assert_eq!(j["containers"][0]["ips"][0], "10.90.0.2");
        assert!(j["containers"][0]["ports"][1].get("host_ip").is_none());
        // A record without them (an older agent, host networking) parses,
        // and they are not written when empty.
        let without: StatusRecord = serde_json::from_str(&rec("")).unwrap();
        assert!(without.containers[0].ips.is_empty() && without.containers[0].ports.is_empty());
        let j = round_trip(&without);
        assert!(j["containers"][0].get("ips").is_none());
        assert!(j["containers"][0].get("ports").is_none());
    }
}
