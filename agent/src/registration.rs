//! Service registration records (issue 6, SPEC "Naming and identity"), pure:
//! what one replica is registered as, and when its TTL check must be written.
//!
//! A replica is registered iff its service has `ports`, `expose` or
//! `cntnr.service.name`, under
//! - name: `cntnr.service.name`, else `<project>-<service>`;
//! - id: `<node>/<container id>`;
//! - tags: `cntnr.service.tags`, verbatim (`traefik.*`, `urlprefix-*` …);
//! - meta: [`meta::PROJECT`], [`meta::SERVICE`], [`meta::REPLICA`],
//!   [`meta::NODE`], [`meta::CONFIG_HASH`];
//! - the address and port a client on another host can reach
//!   ([`endpoint`]).
//!
//! Health goes to the registry as a TTL check the agent keeps writing
//! ([`CheckWrites`] decides when): a dead agent's instances go critical when
//! the TTL lapses, and Consul removes them `deregister_after` later (etcd and
//! dir records go with the agent's session).

use std::net::IpAddr;
use std::time::Duration;

use cntnr_kv::{Health, Registration};
use cntnr_model::names::{
    ContainerId, InstanceId, NodeName, ProjectName, RegisteredName, Replica, ServiceName,
};
use cntnr_model::{NetworkMode, Protocol, ServiceSpec};
use tokio::time::Instant;

/// The meta keys of every registration.
pub mod meta {
    /// The project name.
    pub const PROJECT: &str = "project";
    /// The service name in the project.
    pub const SERVICE: &str = "service";
    /// The replica number.
    pub const REPLICA: &str = "replica";
    /// The node running it.
    pub const NODE: &str = "node";
    /// The config hash the container was created from.
    pub const CONFIG_HASH: &str = "config_hash";
}

/// The TTL check's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrationTimings {
    /// The check goes critical if not written for this long. Default 15 s,
    /// the session TTL's default, so an agent's death shows the same way on
    /// every backend (Consul TTL lapse, etcd lease, dir session).
    pub check_ttl: Duration,
    /// Consul removes an instance critical for this long. Default 1 min:
    /// Consul's minimum (its reaper runs every 30 s, so entries of a dead
    /// host are gone 1–1.5 min after their TTL lapsed). A critical entry
    /// receives no traffic meanwhile; this only keeps the catalog clean.
    pub deregister_after: Duration,
}

impl Default for RegistrationTimings {
    fn default() -> Self {
        RegistrationTimings {
            check_ttl: Duration::from_secs(15),
            deregister_after: Duration::from_secs(60),
        }
    }
}

impl RegistrationTimings {
    /// How often an unchanged status is re-written: a third of the TTL, so
    /// two writes in a row can be lost or late before the check lapses.
    pub fn refresh_every(&self) -> Duration {
        self.check_ttl / 3
    }
}

/// A host port the runtime actually published for a container port (the
/// hook's result for bridge containers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    /// The port inside the container.
    pub container_port: u16,
    /// The host port it is reachable at.
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
}

/// One running replica, as registration needs it.
#[derive(Clone, Copy, Debug)]
pub struct RunningReplica<'a> {
    /// The project.
    pub project: &'a ProjectName,
    /// The service's name in the project.
    pub service: &'a ServiceName,
    /// The service.
    pub spec: &'a ServiceSpec,
    /// The replica number.
    pub replica: Replica,
    /// The config hash of its container (its `cntnr.config-hash` annotation).
    pub config_hash: &'a str,
    /// This node.
    pub node: &'a NodeName,
    /// The node's `--address`: where other hosts reach it.
    pub node_address: IpAddr,
    /// The container's IP on its project network (bridge mode), if it has one.
    pub container_ip: Option<IpAddr>,
    /// The host ports published for it (bridge mode).
    pub published: &'a [PublishedPort],
}

/// Whether a service's replicas are registered at all: it has `ports` or
/// `expose`, or a `cntnr.service.name`.
pub fn is_registered(spec: &ServiceSpec) -> bool {
    !spec.ports.is_empty() || !spec.expose.is_empty() || spec.agent.service_name.is_some()
}

/// The name a service registers under.
pub fn service_name(
    project: &ProjectName,
    service: &ServiceName,
    spec: &ServiceSpec,
) -> RegisteredName {
    spec.agent
        .service_name
        .clone()
        .unwrap_or_else(|| RegisteredName::default_for(project, service))
}

/// The instance id: `<node>/<container id>`.
pub fn instance_id(r: &RunningReplica<'_>) -> InstanceId {
    InstanceId {
        node: r.node.clone(),
        container: ContainerId::new(r.project, r.service, r.replica),
    }
}

/// Where a client on another host reaches the replica, or `None` if nothing
/// outside its node can (no network, or a bridge container without an IP
/// and without a published port): a wrong address in the registry would
/// send real traffic nowhere, so such a replica is not registered.
///
/// - `network_mode: host`: the node's address and the container port (the
///   first TCP one of `ports`, else of `expose`, else the first of any
///   protocol; 0 when there is none).
/// - bridge with a published port: the node's address and the host port
///   published for the first port of `ports` that has one (TCP ports before
///   UDP ones).
/// - bridge without one: the container's IP and the first container port
///   (0 when there is none) — reachable where the project network is routed.
/// - `network_mode: none`: `None`.
pub fn endpoint(r: &RunningReplica<'_>) -> Option<(IpAddr, u16)> {
    let spec = r.spec;
    let first_port = || {
        let ports = spec.ports.iter().map(|p| (p.target, p.protocol));
        let exposed = spec.expose.iter().map(|p| (p.port, p.protocol));
        let all: Vec<(u16, Protocol)> = ports.chain(exposed).collect();
        all.iter()
            .find(|(_, proto)| *proto == Protocol::Tcp)
            .or(all.first())
            .map_or(0, |(port, _)| *port)
    };
    match spec.network_mode {
        NetworkMode::None => None,
        NetworkMode::Host => Some((r.node_address, first_port())),
        NetworkMode::Bridge => {
            let published = [Protocol::Tcp, Protocol::Udp].iter().find_map(|proto| {
                spec.ports
                    .iter()
                    .filter(|p| p.protocol == *proto)
                    .find_map(|p| {
                        r.published
                            .iter()
                            .find(|pp| pp.container_port == p.target && pp.protocol == p.protocol)
                    })
            });
            match published {
                Some(pp) => Some((r.node_address, pp.host_port)),
                None => r.container_ip.map(|ip| (ip, first_port())),
            }
        }
    }
}

/// The registration of a replica, or `None` when it is not registered (see
/// [`is_registered`] and [`endpoint`]).
pub fn registration(r: &RunningReplica<'_>, timings: RegistrationTimings) -> Option<Registration> {
    if !is_registered(r.spec) {
        return None;
    }
    let (address, port) = endpoint(r)?;
    let meta = [
        (meta::PROJECT, r.project.to_string()),
        (meta::SERVICE, r.service.to_string()),
        (meta::REPLICA, r.replica.to_string()),
        (meta::NODE, r.node.to_string()),
        (meta::CONFIG_HASH, r.config_hash.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Some(Registration {
        name: service_name(r.project, r.service, r.spec).to_string(),
        id: instance_id(r).to_string(),
        address: address.to_string(),
        port,
        tags: r.spec.agent.service_tags.clone(),
        meta,
        check_ttl: timings.check_ttl,
        deregister_after: timings.deregister_after,
    })
}

/// The container behind a registry entry if, and only if, this node made
/// it: its id is `<node>/<container id>` with this node, and its meta says
/// the same node. Anything else (another node's entries, another tool's)
/// must never be touched — the agent's clean-up at start deregisters only
/// entries this returns `Some` for whose container no longer exists.
pub fn owned_container(
    id: &str,
    entry_meta: &std::collections::BTreeMap<String, String>,
    node: &NodeName,
) -> Option<ContainerId> {
    let parsed = InstanceId::parse(id).ok()?;
    (parsed.node == *node && entry_meta.get(meta::NODE).map(String::as_str) == Some(node.as_str()))
        .then_some(parsed.container)
}

/// When to write an instance's TTL check (`Store::set_check`): at once on
/// every health change, and otherwise every [`RegistrationTimings::refresh_every`]
/// so the TTL never lapses while the agent runs. Nothing else is written, so
/// a steady fleet costs one cheap local call per instance per refresh.
#[derive(Clone, Debug)]
pub struct CheckWrites {
    refresh_every: Duration,
    last: Option<(Health, Instant)>,
}

impl CheckWrites {
    /// Nothing written yet.
    pub fn new(timings: RegistrationTimings) -> Self {
        CheckWrites {
            refresh_every: timings.refresh_every(),
            last: None,
        }
    }

    /// Whether `health` must be written at `now`.
    pub fn due(&self, now: Instant, health: Health) -> bool {
        match self.last {
            None => true,
            Some((h, at)) => h != health || now.saturating_duration_since(at) >= self.refresh_every,
        }
    }

    /// When the next write is due if health does not change.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.last.map(|(_, at)| at + self.refresh_every)
    }

    /// Records a successful write of `health` at `now`.
    pub fn written(&mut self, now: Instant, health: Health) {
        self.last = Some((health, now));
    }

    /// Forgets the last write (after a re-registration, or a failed write
    /// whose effect is unknown), so the next check is written at once.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(yaml: &str) -> ServiceSpec {
        let text = format!("services:\n  web:\n    image: busybox\n{yaml}");
        let name = ProjectName::new("shop").unwrap();
        let project = cntnr_model::load_stored(&name, "projects/shop", &text).expect("valid");
        project.services.into_values().next().unwrap()
    }

    struct Case {
        name: &'static str,
        yaml: &'static str,
        container_ip: Option<&'static str>,
        published: &'static [(u16, u16, Protocol)],
        /// (name, address, port) or None.
        want: Option<(&'static str, &'static str, u16)>,
    }

    const NODE_ADDR: &str = "192.0.2.10";
    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;

    #[test]
    fn registration_table() {
        let cases = [
            Case {
                name: "nothing to register",
                yaml: "",
                container_ip: Some("10.90.0.2"),
                published: &[],
                want: None,
            },
            Case {
                name: "published port: node address + host port",
                yaml: "    ports: ['8080:80']\n",
                container_ip: Some("10.90.0.2"),
                published: &[(80, 8080, TCP)],
                want: Some(("shop-web", NODE_ADDR, 8080)),
            },
            Case {
                name: "ephemeral host port: the one actually published",
                yaml: "    ports: ['80']\n",
                container_ip: Some("10.90.0.2"),
                published: &[(80, 32768, TCP)],
                want: Some(("shop-web", NODE_ADDR, 32768)),
            },
            Case {
                name: "first TCP port with a published host port wins over UDP and order",
                yaml: "    ports: ['53:53/udp', '9000:90', '8080:80']\n",
                container_ip: Some("10.90.0.2"),
                published: &[(53, 53, UDP), (80, 8080, TCP), (90, 9000, TCP)],
                want: Some(("shop-web", NODE_ADDR, 9000)),
            },
            Case {
                name: "UDP-only service: its published UDP port",
                yaml: "    ports: ['5353:53/udp']\n",
                container_ip: Some("10.90.0.2"),
                published: &[(53, 5353, UDP)],
                want: Some(("shop-web", NODE_ADDR, 5353)),
            },
            Case {
                name: "bridge, only expose: container IP + exposed port",
                yaml: "    expose: ['9100/udp', '9000']\n",
                container_ip: Some("10.90.0.7"),
                published: &[],
                want: Some(("shop-web", "10.90.0.7", 9000)),
            },
            Case {
                name: "bridge, ports not (yet) published: container IP + target port",
                yaml: "    ports: ['8080:80']\n",
                container_ip: Some("10.90.0.7"),
                published: &[],
                want: Some(("shop-web", "10.90.0.7", 80)),
            },
            Case {
                name: "bridge without IP and without published port: unreachable, not registered",
                yaml: "    expose: ['9000']\n",
                container_ip: None,
                published: &[],
                want: None,
            },
            Case {
                name: "host network: node address + container port",
                yaml: "    network_mode: host\n    expose: ['9000']\n",
                container_ip: None,
                published: &[],
                want: Some(("shop-web", NODE_ADDR, 9000)),
            },
            Case {
                name: "host network with ports: the container port, not a mapping",
                yaml: "    network_mode: host\n    ports: ['8080:80']\n",
                container_ip: None,
                published: &[],
                want: Some(("shop-web", NODE_ADDR, 80)),
            },
            Case {
                name: "only cntnr.service.name: registered under it, port 0",
                yaml: "    network_mode: host\n    annotations: {cntnr.service.name: api}\n",
                container_ip: None,
                published: &[],
                want: Some(("api", NODE_ADDR, 0)),
            },
            Case {
                name: "network_mode none: nothing can reach it",
                yaml: "    network_mode: none\n    annotations: {cntnr.service.name: api}\n",
                container_ip: None,
                published: &[],
                want: None,
            },
        ];
        let project = ProjectName::new("shop").unwrap();
        let service = ServiceName::new("web").unwrap();
        let node = NodeName::new("node-1").unwrap();
        for c in cases {
            let spec = spec(c.yaml);
            let published: Vec<PublishedPort> = c
                .published
                .iter()
                .map(|&(container_port, host_port, protocol)| PublishedPort {
                    container_port,
                    host_port,
                    protocol,
                })
                .collect();
            let r = RunningReplica {
                project: &project,
                service: &service,
                spec: &spec,
                replica: 2,
                config_hash: "v1-abc",
                node: &node,
                node_address: NODE_ADDR.parse().unwrap(),
                container_ip: c.container_ip.map(|s| s.parse().unwrap()),
                published: &published,
            };
            let got = registration(&r, RegistrationTimings::default());
            let got_short = got
                .as_ref()
                .map(|g| (g.name.as_str(), g.address.as_str(), g.port));
            assert_eq!(got_short, c.want, "{}", c.name);
            if let Some(g) = got {
                assert_eq!(g.id, "node-1/shop-web-2", "{}", c.name);
            }
        }
    }

    #[test]
    fn tags_meta_and_timings() {
        let spec = spec(
            "    ports: ['8080:80']\n    annotations:\n      cntnr.service.name: shop-public\n      cntnr.service.tags: 'traefik.enable=true,traefik.http.routers.shop.rule=Host(`shop.example`),urlprefix-/shop'\n",
        );
        let project = ProjectName::new("shop").unwrap();
        let service = ServiceName::new("web").unwrap();
        let node = NodeName::new("n1").unwrap();
        let published = [PublishedPort {
            container_port: 80,
            host_port: 8080,
            protocol: TCP,
        }];
        let r = RunningReplica {
            project: &project,
            service: &service,
            spec: &spec,
            replica: 3,
            config_hash: "v1-0123",
            node: &node,
            node_address: "2001:db8::1".parse().unwrap(),
            container_ip: None,
            published: &published,
        };
        let timings = RegistrationTimings {
            check_ttl: Duration::from_secs(30),
            deregister_after: Duration::from_secs(120),
        };
        let g = registration(&r, timings).unwrap();
        assert_eq!(
            g,
            Registration {
                name: "shop-public".into(),
                id: "n1/shop-web-3".into(),
                address: "2001:db8::1".into(),
                port: 8080,
                tags: vec![
                    "traefik.enable=true".into(),
                    "traefik.http.routers.shop.rule=Host(`shop.example`)".into(),
                    "urlprefix-/shop".into(),
                ],
                meta: BTreeMap::from([
                    ("config_hash".into(), "v1-0123".into()),
                    ("node".into(), "n1".into()),
                    ("project".into(), "shop".into()),
                    ("replica".into(), "3".into()),
                    ("service".into(), "web".into()),
                ]),
                check_ttl: Duration::from_secs(30),
                deregister_after: Duration::from_secs(120),
            }
        );
        // The id parses back as an instance id.
        assert_eq!(InstanceId::parse(&g.id).unwrap(), instance_id(&r));
    }

    #[test]
    fn only_this_nodes_own_entries_are_claimed() {
        let node = NodeName::new("n1").unwrap();
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ours = m(&[("node", "n1"), ("project", "shop")]);
        let cases: [(&str, BTreeMap<String, String>, Option<&str>); 7] = [
            ("n1/shop-web-1", ours.clone(), Some("shop-web-1")),
            ("n2/shop-web-1", m(&[("node", "n2")]), None), // another node
            ("n2/shop-web-1", ours.clone(), None),         // id and meta disagree
            ("n1/shop-web-1", m(&[("node", "n2")]), None),
            ("n1/shop-web-1", m(&[]), None),  // no meta: another tool
            ("web-1", ours.clone(), None),    // not an instance id
            ("n1/redis", ours.clone(), None), // not a container id
        ];
        for (id, meta, want) in cases {
            assert_eq!(
                owned_container(id, &meta, &node)
                    .as_ref()
                    .map(ContainerId::as_str),
                want,
                "{id} {meta:?}"
            );
        }
    }

    #[test]
    fn default_timings_refresh_well_before_expiry() {
        let t = RegistrationTimings::default();
        assert_eq!(t.refresh_every(), Duration::from_secs(5));
        assert!(t.refresh_every() * 3 <= t.check_ttl);
        assert!(
            t.deregister_after >= Duration::from_secs(60),
            "Consul's minimum"
        );
    }

    #[test]
    fn check_writes_only_on_change_or_when_the_ttl_needs_it() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = CheckWrites::new(RegistrationTimings::default()); // refresh 5 s
                                                                      // (time, health, due?) — each due write is then recorded.
        let steps = [
            (0, Health::Critical, true), // first write
            (1, Health::Critical, false),
            (2, Health::Passing, true), // change
            (3, Health::Passing, false),
            (6, Health::Passing, false),
            (7, Health::Passing, true), // 5 s since the last write
            (8, Health::Critical, true),
            (9, Health::Passing, true),
            (13, Health::Passing, false),
        ];
        for (s, h, want) in steps {
            assert_eq!(w.due(at(s), h), want, "t={s}s {h:?}");
            if want {
                w.written(at(s), h);
            }
        }
        assert_eq!(w.next_refresh(), Some(at(14)));
        w.reset();
        assert!(w.due(at(10), Health::Passing));
    }
}
