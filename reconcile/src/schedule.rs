//! Placement: which node runs which replica of a project.
//!
//! [`schedule`] is a pure function of (project, cluster, previous schedule)
//! that the leader runs for each project and writes, fenced, to
//! `schedule/<project>` ([`Schedule::into_record`]). No IO, no clock: the
//! caller passes in everything it knows, so placement is tested with tables.
//!
//! Rules, in the order they are applied:
//!
//! 1. **Sticky.** A replica of the previous schedule stays on its node while
//!    that node is live and still eligible (constraints, per-node limits), or
//!    while the node is gone but within the service's grace period
//!    (`cntnr.reschedule-after`, default 30 s, counted from
//!    [`Cluster::gone_since`] to [`Cluster::now`]); such a replica is also
//!    listed as pending ([`PendingReason::NodeGone`]) and
//!    [`Schedule::recheck_at`] says when the caller must run placement
//!    again. Nothing else ever moves a replica: a joining node takes only
//!    new replicas (`cntnr rebalance` is a schedule computed with no
//!    previous schedule).
//! 2. **Scale.** Replicated services run replicas `1..=deploy.replicas`;
//!    scaling down drops the highest numbers. Global services run one
//!    replica on every eligible live node; a new node gets the lowest free
//!    replica number, a node that leaves (past grace) or stops being eligible
//!    loses its replica.
//! 3. **Spread.** A replica to place goes to the eligible live node with the
//!    fewest replicas of the same service, then the least total load
//!    ([`Cluster::other_load`] plus this project's replicas), then the
//!    smallest name. Spreading a service first is swarm's rule: it keeps a
//!    service available when one node dies, which matters more than packing.
//! 4. **Limits per node.** `deploy.placement.max_replicas_per_node`, and
//!    published host ports: a fixed host port (`8080:80`) allows one replica
//!    of the service per node, a published range (`8080-8081:80`) one per
//!    port in it (each replica on a node binds its own port of the range;
//!    which one is the node's choice when it creates the container: the
//!    first free one, as compose does).
//!    Ephemeral host ports (`"80"`) do not limit placement. A node where
//!    another service of the same project already publishes an overlapping
//!    host port (same protocol and address) takes no new replica; ports of
//!    other projects are not known here, and replicas that stay put are not
//!    re-checked (a port edit that collides shows as a bind error).
//! 5. **Pending.** A replica that fits nowhere is reported in
//!    [`Schedule::pending`] with a [`PendingReason`] that says why, and is
//!    retried on the next run (a node joins, a constraint changes).

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use cntnr_model::records::{NodeRecord, ScheduleRecord};
use cntnr_model::{
    Constraint, ConstraintAttr, DeployMode, NodeName, PortRange, Project, Protocol, Replica,
    ServiceName, ServiceSpec,
};

/// Node labels (`--node-label k=v`), what `node.labels.<k>` constraints test.
pub type Labels = BTreeMap<String, String>;

/// Service → replica → node: the placement part of a [`ScheduleRecord`].
pub type Placement = BTreeMap<ServiceName, BTreeMap<Replica, NodeName>>;

/// The cluster as the leader sees it when it places one project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Live nodes (those with a `nodes/<node>` record) and their labels.
    pub live: BTreeMap<NodeName, Labels>,
    /// Nodes gone from `nodes/` and since when (Unix seconds; the leader
    /// tracks it and keeps it in [`ScheduleRecord::gone_since`]). A
    /// replica on such a node stays there while `now < since +
    /// cntnr.reschedule-after` of its service; no new replica goes to
    /// them. Their labels are no longer known, so only `node.hostname`
    /// constraints are re-checked for them; label constraints are assumed
    /// to hold as they did when the replica was placed. A node that is both
    /// live and listed here counts as live; a node that is neither is gone
    /// past any grace.
    pub gone_since: BTreeMap<NodeName, u64>,
    /// The time (Unix seconds) `gone_since` is compared with. The function
    /// reads no clock.
    pub now: u64,
    /// Replicas of *other* projects per node (see [`node_load`]), used to
    /// prefer the least-loaded node. Empty: only this project's replicas
    /// count.
    pub other_load: BTreeMap<NodeName, u32>,
}

impl Cluster {
    /// A cluster of the given live node records (`nodes/<node>`), nothing in
    /// grace and no other load.
    pub fn from_records<'a>(
        nodes: impl IntoIterator<Item = (&'a NodeName, &'a NodeRecord)>,
    ) -> Self {
        Cluster {
            live: nodes
                .into_iter()
                .map(|(n, r)| (n.clone(), r.labels.clone()))
                .collect(),
            ..Cluster::default()
        }
    }
}

/// Replicas per node over the given schedules: pass the schedules of the
/// *other* projects to get [`Cluster::other_load`].
pub fn node_load<'a>(
    schedules: impl IntoIterator<Item = &'a ScheduleRecord>,
) -> BTreeMap<NodeName, u32> {
    let mut load = BTreeMap::new();
    for rec in schedules {
        for node in rec.services.values().flat_map(BTreeMap::values) {
            *load.entry(node.clone()).or_insert(0) += 1;
        }
    }
    load
}

/// What limits replicas of one service per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLimit {
    /// `deploy.placement.max_replicas_per_node`.
    MaxReplicasPerNode(u32),
    /// A published host port (or range): as many replicas per node as it has
    /// ports.
    PublishedPort {
        /// The published port or range.
        ports: PortRange,
        /// Its protocol.
        protocol: Protocol,
    },
}

impl NodeLimit {
    fn per_node(&self) -> u32 {
        match self {
            NodeLimit::MaxReplicasPerNode(n) => *n,
            NodeLimit::PublishedPort { ports, .. } => u32::from(ports.end - ports.start) + 1,
        }
    }
}

/// Why a replica could not be placed. `Display` gives the one line shown in
/// status and `cntnr ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    /// No node is live.
    NoLiveNode,
    /// No live node satisfies the constraints. `constraints` are the ones
    /// that match no live node on their own or, if each matches some node,
    /// all of them (they only fail together).
    NoEligibleNode {
        /// The constraints to blame.
        constraints: Vec<Constraint>,
        /// Whether they fail only in combination.
        together: bool,
        /// How many nodes are live.
        live: usize,
    },
    /// Another service of the project publishes an overlapping host port on
    /// `nodes` of the eligible nodes (and the rest are full).
    PortTaken {
        /// This service's published port or range.
        ports: PortRange,
        /// Its protocol.
        protocol: Protocol,
        /// The first service found holding it.
        by: ServiceName,
        /// On how many eligible nodes a port is taken.
        nodes: usize,
        /// How many nodes are eligible.
        eligible: usize,
        /// The limit the other eligible nodes reached, if any.
        rest: Option<NodeLimit>,
    },
    /// Every eligible node already runs as many replicas of the service as
    /// `limit` allows.
    NodesFull {
        /// The tightest per-node limit.
        limit: NodeLimit,
        /// How many nodes are eligible.
        eligible: usize,
    },
    /// The replica is placed on a node that is gone from `nodes/`; it stays
    /// there until the grace ends, then moves (if a node is eligible).
    NodeGone {
        /// The node.
        node: NodeName,
        /// Since when it is gone (Unix seconds).
        since: u64,
        /// The service's `cntnr.reschedule-after`, in seconds.
        grace: u64,
    },
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
        match self {
            PendingReason::NoLiveNode => f.write_str("no live node"),
            PendingReason::NoEligibleNode {
                constraints,
                together,
                live,
            } => {
                let list = constraints
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let (word, verb) = match (constraints.len(), together) {
                    (1, _) => ("constraint", "matches none"),
                    (_, true) => ("constraints", "together match none"),
                    (_, false) => ("constraints", "each match none"),
                };
                write!(
                    f,
                    "no eligible node: {word} {list} {verb} of the {live} live {}",
                    nodes(*live)
                )
            }
            PendingReason::PortTaken {
                ports,
                protocol,
                by,
                nodes: n,
                eligible,
                rest,
            } => {
                let what = if ports.start == ports.end {
                    "published port"
                } else {
                    "published range"
                };
                write!(f, "{what} {ports}/{protocol} is taken by service {by} on ")?;
                if n == eligible {
                    let all = if *eligible == 1 { "the" } else { "all" };
                    write!(f, "{all} {eligible} eligible {}", nodes(*eligible))
                } else {
                    write!(f, "{n} of the {eligible} eligible nodes")?;
                    match rest {
                        Some(l) => write!(f, ", {} on the others", LimitReached(l)),
                        None => Ok(()),
                    }
                }
            }
            // No "for how long": the line must not change while nothing
            // else does (status is rewritten on change only).
            PendingReason::NodeGone { node, grace, .. } => write!(
                f,
                "node {node} is gone; kept there until its cntnr.reschedule-after ({grace}s) ends, then moved"
            ),
            PendingReason::NodesFull { limit, eligible } => {
                let all = if *eligible == 1 { "the" } else { "all" };
                write!(
                    f,
                    "{} on {all} {eligible} eligible {}",
                    LimitReached(limit),
                    nodes(*eligible)
                )
            }
        }
    }
}

/// "max_replicas_per_node 1 reached", "published port 80/tcp already taken
/// by a replica", …
struct LimitReached<'a>(&'a NodeLimit);

impl fmt::Display for LimitReached<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            NodeLimit::MaxReplicasPerNode(n) => write!(f, "max_replicas_per_node {n} reached"),
            NodeLimit::PublishedPort { ports, protocol } if ports.start == ports.end => {
                write!(
                    f,
                    "published port {ports}/{protocol} already taken by a replica"
                )
            }
            NodeLimit::PublishedPort { ports, protocol } => write!(
                f,
                "every port of published range {ports}/{protocol} already taken by a replica"
            ),
        }
    }
}

/// A replica (or, for a global service with no eligible node, the whole
/// service) that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The service.
    pub service: ServiceName,
    /// The replica; `None` for a global service that runs nowhere.
    pub replica: Option<Replica>,
    /// Why.
    pub reason: PendingReason,
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.replica {
            Some(r) => write!(f, "{} replica {r}: {}", self.service, self.reason),
            None => write!(f, "{}: {}", self.service, self.reason),
        }
    }
}

/// The result of [`schedule`]: the placement, plus what could not be placed.
///
/// [`ScheduleRecord`] has no field for pending replicas, so this type wraps
/// its placement; the leader writes [`Schedule::into_record`] and reports
/// [`Schedule::pending`] in status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Service → replica → node, for every service of the project (a service
    /// with no placed replica has an empty map).
    pub services: Placement,
    /// Replicas that fit nowhere, or wait on a gone node
    /// ([`PendingReason::NodeGone`]), in service then replica order.
    pub pending: Vec<Pending>,
    /// The gone nodes that still hold replicas of `services`, and since
    /// when (copied from [`Cluster::gone_since`]).
    pub gone_since: BTreeMap<NodeName, u64>,
    /// When (Unix seconds) the earliest grace of a replica kept on a gone
    /// node ends: placement must run again then.
    pub recheck_at: Option<u64>,
}

impl Schedule {
    /// The record the leader writes to `schedule/<project>`.
    pub fn into_record(
        self,
        fencing_token: u64,
        leader: NodeName,
        generation: u64,
    ) -> ScheduleRecord {
        ScheduleRecord {
            fencing_token,
            leader,
            generation,
            services: self.services,
            gone_since: self.gone_since,
            rollouts: BTreeMap::new(),
            healthy_spec: None,
        }
    }

    /// Whether `previous` already places every replica exactly as this
    /// schedule does, with the same gone nodes (the leader then need not
    /// write).
    pub fn same_placement(&self, previous: Option<&ScheduleRecord>) -> bool {
        previous.is_some_and(|p| p.services == self.services && p.gone_since == self.gone_since)
    }
}

/// Where each replica of `project` runs, given the cluster and the previous
/// schedule (`None` for a new project, or to rebalance from scratch).
///
/// Pure and deterministic: the same inputs give the same schedule, and
/// feeding a schedule back as `previous` with an unchanged cluster returns
/// the same placement (placement is a fixed point). See the module docs for
/// the rules.
pub fn schedule(
    project: &Project,
    cluster: &Cluster,
    previous: Option<&ScheduleRecord>,
) -> Schedule {
    let empty = BTreeMap::new();
    let prev_of = |svc: &ServiceName| previous.and_then(|p| p.services.get(svc)).unwrap_or(&empty);

    // Total load per node: other projects' replicas, plus this project's as
    // they are placed below.
    let mut load: BTreeMap<NodeName, u32> = cluster.other_load.clone();
    let mut placed: Placement = BTreeMap::new();
    let all_rules: BTreeMap<&ServiceName, Rules> = project
        .services
        .iter()
        .map(|(s, spec)| (s, Rules::of(spec)))
        .collect();

    let mut pending = Vec::new();
    let mut gone_since = BTreeMap::new();
    let mut recheck_at: Option<u64> = None;
    // Pass 1: keep every replica that may stay where it is, across all
    // services, so that pass 2 sees this project's whole sticky load.
    for (svc, spec) in &project.services {
        let rules = &all_rules[svc];
        let mut kept: BTreeMap<Replica, NodeName> = BTreeMap::new();
        let mut per_node: BTreeMap<&NodeName, u32> = BTreeMap::new();
        for (&r, node) in prev_of(svc) {
            let wanted = match spec.deploy.mode {
                DeployMode::Replicated => (1..=spec.deploy.replicas).contains(&r),
                DeployMode::Global => r >= 1,
            };
            let count = per_node.entry(node).or_insert(0);
            if wanted && *count < rules.cap && rules.may_stay(node, cluster) {
                *count += 1;
                kept.insert(r, node.clone());
                if !cluster.live.contains_key(node) {
                    let since = cluster.gone_since[node];
                    gone_since.insert(node.clone(), since);
                    let end = since.saturating_add(rules.grace);
                    recheck_at = Some(recheck_at.map_or(end, |t| t.min(end)));
                    pending.push(Pending {
                        service: svc.clone(),
                        replica: Some(r),
                        reason: PendingReason::NodeGone {
                            node: node.clone(),
                            since,
                            grace: rules.grace,
                        },
                    });
                }
            }
        }
        for node in kept.values() {
            *load.entry(node.clone()).or_insert(0) += 1;
        }
        placed.insert(svc.clone(), kept);
    }

    // Pass 2: place what is missing, service by service. A node where
    // another service of the project already publishes an overlapping host
    // port takes no replica of this one.
    for (svc, spec) in &project.services {
        let rules = &all_rules[svc];
        let blocked = port_clashes(svc, &all_rules, &placed);
        let eligible: Vec<&NodeName> = cluster
            .live
            .iter()
            .filter(|(n, labels)| rules.eligible(n, labels))
            .map(|(n, _)| n)
            .collect();
        let open: Vec<&NodeName> = eligible
            .iter()
            .copied()
            .filter(|n| !blocked.contains_key(*n))
            .collect();
        let assigned = placed.entry(svc.clone()).or_default();
        match spec.deploy.mode {
            DeployMode::Global => {
                let has: BTreeSet<NodeName> = assigned.values().cloned().collect();
                let mut next: Replica = 1;
                for node in open.iter().filter(|n| !has.contains(**n)) {
                    while assigned.contains_key(&next) {
                        next += 1;
                    }
                    assigned.insert(next, (*node).clone());
                    *load.entry((*node).clone()).or_insert(0) += 1;
                }
                let has: BTreeSet<&NodeName> = assigned.values().collect();
                if assigned.is_empty() || eligible.iter().any(|n| !has.contains(n)) {
                    pending.push(Pending {
                        service: svc.clone(),
                        replica: None,
                        reason: rules.why_nowhere(cluster, &eligible, &blocked),
                    });
                }
            }
            DeployMode::Replicated => {
                for r in 1..=spec.deploy.replicas {
                    if assigned.contains_key(&r) {
                        continue;
                    }
                    let mut per_node: BTreeMap<&NodeName, u32> = BTreeMap::new();
                    for n in assigned.values() {
                        *per_node.entry(n).or_insert(0) += 1;
                    }
                    let best = open
                        .iter()
                        .map(|n| (per_node.get(n).copied().unwrap_or(0), *n))
                        .filter(|(count, _)| *count < rules.cap)
                        .min_by_key(|(count, n)| (*count, load.get(*n).copied().unwrap_or(0), *n))
                        .map(|(_, n)| n.clone());
                    match best {
                        Some(node) => {
                            *load.entry(node.clone()).or_insert(0) += 1;
                            assigned.insert(r, node);
                        }
                        None => pending.push(Pending {
                            service: svc.clone(),
                            replica: Some(r),
                            reason: rules.why_nowhere(cluster, &eligible, &blocked),
                        }),
                    }
                }
            }
        }
    }

    // Stable: pass 2 lists replicas in order within a service.
    pending.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    Schedule {
        services: placed,
        pending,
        gone_since,
        recheck_at,
    }
}

/// Nodes that can take `count` more replicas of `service` (the surge
/// replicas of a `start-first` rolling update), given `placement`: this
/// project's replicas with the surge replicas already running. The rules
/// are those of placing a new replica (constraints, per-node limits,
/// published host ports, spread), one node per extra replica, possibly
/// fewer than `count`; `Err` says why no node can take one.
pub fn extra_nodes(
    project: &Project,
    service: &ServiceName,
    cluster: &Cluster,
    placement: &Placement,
    count: usize,
) -> Result<Vec<NodeName>, PendingReason> {
    let Some(_) = project.services.get(service) else {
        return Ok(Vec::new());
    };
    let all_rules: BTreeMap<&ServiceName, Rules> = project
        .services
        .iter()
        .map(|(s, spec)| (s, Rules::of(spec)))
        .collect();
    let rules = &all_rules[service];
    let blocked = port_clashes(service, &all_rules, placement);
    let eligible: Vec<&NodeName> = cluster
        .live
        .iter()
        .filter(|(n, labels)| rules.eligible(n, labels))
        .map(|(n, _)| n)
        .collect();
    let mut load: BTreeMap<NodeName, u32> = cluster.other_load.clone();
    for n in placement.values().flat_map(BTreeMap::values) {
        *load.entry(n.clone()).or_insert(0) += 1;
    }
    let mut per_node: BTreeMap<&NodeName, u32> = BTreeMap::new();
    for n in placement
        .get(service)
        .into_iter()
        .flat_map(BTreeMap::values)
    {
        *per_node.entry(n).or_insert(0) += 1;
    }
    let mut out = Vec::new();
    for _ in 0..count {
        let best = eligible
            .iter()
            .filter(|n| !blocked.contains_key(**n))
            .map(|n| (per_node.get(*n).copied().unwrap_or(0), *n))
            .filter(|(c, _)| *c < rules.cap)
            .min_by_key(|(c, n)| (*c, load.get(*n).copied().unwrap_or(0), *n))
            .map(|(_, n)| n);
        let Some(node) = best else { break };
        *per_node.entry(node).or_insert(0) += 1;
        *load.entry(node.clone()).or_insert(0) += 1;
        out.push(node.clone());
    }
    if out.is_empty() && count > 0 {
        return Err(rules.why_nowhere(cluster, &eligible, &blocked));
    }
    Ok(out)
}

/// A host port published by another service on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortClash {
    /// The other service.
    service: ServiceName,
    /// This service's published port (or range) that overlaps.
    ports: PortRange,
    protocol: Protocol,
}

/// Nodes where another service of the project, as placed so far, publishes
/// a host port that overlaps one of `svc`'s.
fn port_clashes(
    svc: &ServiceName,
    all_rules: &BTreeMap<&ServiceName, Rules>,
    placed: &Placement,
) -> BTreeMap<NodeName, PortClash> {
    let mut blocked = BTreeMap::new();
    let mine = &all_rules[svc].published;
    for (other, rules) in all_rules.iter().filter(|(o, _)| **o != svc) {
        let Some(clash) = mine
            .iter()
            .find(|a| rules.published.iter().any(|b| a.overlaps(b)))
        else {
            continue;
        };
        for node in placed.get(*other).into_iter().flat_map(BTreeMap::values) {
            blocked.entry(node.clone()).or_insert_with(|| PortClash {
                service: (*other).clone(),
                ports: clash.ports,
                protocol: clash.protocol,
            });
        }
    }
    blocked
}

/// A published host port or range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Published {
    ip: Option<IpAddr>,
    protocol: Protocol,
    ports: PortRange,
}

impl Published {
    /// Whether both cannot be bound on one node at once.
    fn overlaps(&self, other: &Published) -> bool {
        self.protocol == other.protocol
            && (self.ip.is_none() || other.ip.is_none() || self.ip == other.ip)
            && self.ports.start <= other.ports.end
            && other.ports.start <= self.ports.end
    }
}

/// The placement rules of one service.
struct Rules<'a> {
    constraints: &'a [Constraint],
    /// Replicas of the service one node may run.
    cap: u32,
    /// The limit behind `cap`, if any.
    limit: Option<NodeLimit>,
    /// Published host ports.
    published: Vec<Published>,
    /// `cntnr.reschedule-after`, in seconds.
    grace: u64,
}

impl<'a> Rules<'a> {
    fn of(spec: &'a ServiceSpec) -> Self {
        let mut limits: Vec<NodeLimit> = Vec::new();
        match spec.deploy.mode {
            // One per node by definition; no other limit can be tighter.
            DeployMode::Global => {}
            DeployMode::Replicated => {
                if let Some(n) = spec.deploy.placement.max_replicas_per_node {
                    limits.push(NodeLimit::MaxReplicasPerNode(n));
                }
                limits.extend(spec.ports.iter().filter_map(|p| {
                    p.published.map(|ports| NodeLimit::PublishedPort {
                        ports,
                        protocol: p.protocol,
                    })
                }));
            }
        }
        // The tightest limit; on a tie the first (max_replicas_per_node,
        // then ports in order) names it.
        let limit = limits
            .into_iter()
            .reduce(|a, b| if b.per_node() < a.per_node() { b } else { a });
        let cap = match (spec.deploy.mode, &limit) {
            (DeployMode::Global, _) => 1,
            (_, Some(l)) => l.per_node(),
            (_, None) => u32::MAX,
        };
        Rules {
            grace: spec.agent.reschedule_after().as_secs(),
            constraints: &spec.deploy.placement.constraints,
            cap,
            limit,
            published: spec
                .ports
                .iter()
                .filter_map(|p| {
                    p.published.map(|ports| Published {
                        ip: p.host_ip,
                        protocol: p.protocol,
                        ports,
                    })
                })
                .collect(),
        }
    }

    fn eligible(&self, node: &NodeName, labels: &Labels) -> bool {
        self.constraints
            .iter()
            .all(|c| c.matches(node.as_str(), labels))
    }

    /// Whether a replica already on `node` may stay there.
    fn may_stay(&self, node: &NodeName, cluster: &Cluster) -> bool {
        if let Some(labels) = cluster.live.get(node) {
            return self.eligible(node, labels);
        }
        cluster
            .gone_since
            .get(node)
            .is_some_and(|since| cluster.now < since.saturating_add(self.grace))
            && self
                .constraints
                .iter()
                .filter(|c| c.attr == ConstraintAttr::Hostname)
                .all(|c| c.matches(node.as_str(), &Labels::new()))
    }

    /// Why no eligible live node can take another replica.
    fn why_nowhere(
        &self,
        cluster: &Cluster,
        eligible: &[&NodeName],
        blocked: &BTreeMap<NodeName, PortClash>,
    ) -> PendingReason {
        let live = cluster.live.len();
        if live == 0 {
            return PendingReason::NoLiveNode;
        }
        if eligible.is_empty() {
            let alone: Vec<Constraint> = self
                .constraints
                .iter()
                .filter(|c| !cluster.live.iter().any(|(n, l)| c.matches(n.as_str(), l)))
                .cloned()
                .collect();
            let together = alone.is_empty();
            return PendingReason::NoEligibleNode {
                constraints: if together {
                    self.constraints.to_vec()
                } else {
                    alone
                },
                together,
                live,
            };
        }
        let clashes: Vec<&PortClash> = eligible.iter().filter_map(|n| blocked.get(*n)).collect();
        if let Some(first) = clashes.first() {
            return PendingReason::PortTaken {
                ports: first.ports,
                protocol: first.protocol,
                by: first.service.clone(),
                nodes: clashes.len(),
                eligible: eligible.len(),
                rest: self
                    .limit
                    .clone()
                    .filter(|_| clashes.len() < eligible.len()),
            };
        }
        PendingReason::NodesFull {
            limit: self
                .limit
                .clone()
                .unwrap_or(NodeLimit::MaxReplicasPerNode(self.cap)),
            eligible: eligible.len(),
        }
    }
}

#[cfg(test)]
mod tests;
