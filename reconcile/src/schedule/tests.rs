//! Placement tables: (compose, cluster, previous schedule) → schedule.

use super::*;
use cntnr_model::{load_stored, ProjectName};

struct Case {
    name: &'static str,
    /// The `services:` of a compose file (indented by 2).
    services: &'static str,
    /// Live nodes: `name` or `name:k=v,k=v`.
    live: &'static [&'static str],
    /// Gone nodes and since when; `now` is [`NOW`].
    gone: &'static [(&'static str, u64)],
    other_load: &'static [(&'static str, u32)],
    /// `service/replica=node`.
    previous: &'static [&'static str],
    want: &'static [&'static str],
    pending: &'static [&'static str],
}

const BASE: Case = Case {
    name: "",
    services: "",
    live: &[],
    gone: &[],
    other_load: &[],
    previous: &[],
    want: &[],
    pending: &[],
};

fn node(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn parse_placements(list: &[&str]) -> Placement {
    let mut out: Placement = BTreeMap::new();
    for p in list {
        let (sr, n) = p.split_once('=').unwrap();
        let (s, r) = sr.split_once('/').unwrap();
        out.entry(ServiceName::new(s).unwrap())
            .or_default()
            .insert(r.parse().unwrap(), node(n));
    }
    out
}

fn render(p: &Placement) -> Vec<String> {
    p.iter()
        .flat_map(|(s, reps)| reps.iter().map(move |(r, n)| format!("{s}/{r}={n}")))
        .collect()
}

fn project(services: &str) -> Project {
    let text = format!("services:\n{services}");
    load_stored(&ProjectName::new("shop").unwrap(), "projects/shop", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn cluster(c: &Case) -> Cluster {
    Cluster {
        live: c
            .live
            .iter()
            .map(|spec| {
                let (n, labels) = spec.split_once(':').unwrap_or((spec, ""));
                let labels = labels
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (node(n), labels)
            })
            .collect(),
        gone_since: c.gone.iter().map(|(n, t)| (node(n), *t)).collect(),
        now: NOW,
        other_load: c.other_load.iter().map(|(n, l)| (node(n), *l)).collect(),
    }
}

/// The clock of every case.
const NOW: u64 = 1_000;

fn record(services: Placement) -> ScheduleRecord {
    Schedule {
        services,
        ..Schedule::default()
    }
    .into_record(1, node("leader"), 1)
}

fn run(c: &Case) {
    let p = project(c.services);
    let cl = cluster(c);
    let prev = (!c.previous.is_empty()).then(|| record(parse_placements(c.previous)));
    let got = schedule(&p, &cl, prev.as_ref());
    assert_eq!(render(&got.services), c.want, "{}: placement", c.name);
    let pending: Vec<String> = got.pending.iter().map(ToString::to_string).collect();
    assert_eq!(pending, c.pending, "{}: pending", c.name);
    // Every service of the project is listed, even with nothing placed.
    assert_eq!(
        got.services.keys().collect::<Vec<_>>(),
        p.services.keys().collect::<Vec<_>>(),
        "{}",
        c.name
    );
    // A fixed point: scheduling again from the result moves nothing.
    let again = schedule(&p, &cl, Some(&record(got.services.clone())));
    assert_eq!(again, got, "{}: not a fixed point", c.name);
    let mut rec = record(got.services.clone());
    rec.gone_since = got.gone_since.clone();
    assert!(got.same_placement(Some(&rec)));
}

#[test]
fn replicated_spreads_over_nodes() {
    run(&Case {
        name: "fresh, 3 replicas over 2 nodes",
        services: "  web: {image: nginx, deploy: {replicas: 3}}\n",
        live: &["n1", "n2"],
        want: &["web/1=n1", "web/2=n2", "web/3=n1"],
        ..BASE
    });
}

#[test]
fn placement_tables() {
    let cases = [
        Case {
            name: "least loaded by other projects, after spreading the service",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2", "n3"],
            other_load: &[("n1", 5), ("n3", 2)],
            want: &["web/1=n2", "web/2=n3"],
            ..BASE
        },
        Case {
            name: "without other load, this project's replicas count",
            services: "  a: {image: nginx, deploy: {replicas: 2}}\n  b: {image: nginx}\n",
            live: &["n1", "n2"],
            previous: &["a/1=n1", "a/2=n1"],
            want: &["a/1=n1", "a/2=n1", "b/1=n2"],
            ..BASE
        },
        Case {
            name: "global: one replica per eligible node",
            services: "  agent: {image: x, deploy: {mode: global, placement: {constraints: [node.labels.role!=db]}}}\n",
            live: &["n1", "n2:role=db", "n3"],
            want: &["agent/1=n1", "agent/2=n3"],
            ..BASE
        },
        Case {
            name: "global: a joining node gets the lowest free replica, nothing moves",
            services: "  agent: {image: x, deploy: {mode: global}}\n",
            live: &["n1", "n2", "n3"],
            previous: &["agent/2=n2", "agent/3=n3"],
            want: &["agent/1=n1", "agent/2=n2", "agent/3=n3"],
            ..BASE
        },
        Case {
            name: "global: a lost node (past grace) loses its replica",
            services: "  agent: {image: x, deploy: {mode: global}}\n",
            live: &["n2"],
            previous: &["agent/1=n1", "agent/2=n2"],
            want: &["agent/2=n2"],
            ..BASE
        },
        Case {
            name: "global: a node within grace keeps its replica",
            services: "  agent: {image: x, deploy: {mode: global}}\n",
            live: &["n2"],
            gone: &[("n1", NOW - 10)],
            previous: &["agent/1=n1", "agent/2=n2"],
            want: &["agent/1=n1", "agent/2=n2"],
            pending: &["agent replica 1: node n1 is gone; kept there until its cntnr.reschedule-after (30s) ends, then moved"],
            ..BASE
        },
        Case {
            name: "global: no eligible node is reported once",
            services: "  agent: {image: x, deploy: {mode: global, placement: {constraints: [node.labels.gpu==yes]}}}\n",
            live: &["n1", "n2"],
            pending: &["agent: no eligible node: constraint node.labels.gpu==yes matches none of the 2 live nodes"],
            ..BASE
        },
        Case {
            name: "hostname constraint pins replicas",
            services: "  db: {image: pg, deploy: {replicas: 2, placement: {constraints: [node.hostname==n2]}}}\n",
            live: &["n1", "n2", "n3"],
            want: &["db/1=n2", "db/2=n2"],
            ..BASE
        },
        Case {
            name: "label constraint that matches no node",
            services: "  db: {image: pg, deploy: {replicas: 2, placement: {constraints: [node.labels.disk==ssd]}}}\n",
            live: &["n1:disk=hdd", "n2"],
            pending: &[
                "db replica 1: no eligible node: constraint node.labels.disk==ssd matches none of the 2 live nodes",
                "db replica 2: no eligible node: constraint node.labels.disk==ssd matches none of the 2 live nodes",
            ],
            ..BASE
        },
        Case {
            name: "constraints that fail only together",
            services: "  db: {image: pg, deploy: {placement: {constraints: [node.labels.zone==a, node.labels.disk==ssd]}}}\n",
            live: &["n1:zone=a", "n2:disk=ssd"],
            pending: &["db replica 1: no eligible node: constraints node.labels.zone==a, node.labels.disk==ssd together match none of the 2 live nodes"],
            ..BASE
        },
        Case {
            name: "label constraint picks the labelled node",
            services: "  db: {image: pg, deploy: {placement: {constraints: [node.labels.disk==ssd, node.hostname!=n1]}}}\n",
            live: &["n1:disk=ssd", "n2", "n3:disk=ssd"],
            want: &["db/1=n3"],
            ..BASE
        },
        Case {
            name: "max_replicas_per_node leaves the rest pending",
            services: "  web: {image: nginx, deploy: {replicas: 3, placement: {max_replicas_per_node: 1}}}\n",
            live: &["n1", "n2"],
            want: &["web/1=n1", "web/2=n2"],
            pending: &["web replica 3: max_replicas_per_node 1 reached on all 2 eligible nodes"],
            ..BASE
        },
        Case {
            name: "lowering max_replicas_per_node moves the highest replica of a full node",
            services: "  web: {image: nginx, deploy: {replicas: 2, placement: {max_replicas_per_node: 1}}}\n",
            live: &["n1", "n2"],
            previous: &["web/1=n1", "web/2=n1"],
            want: &["web/1=n1", "web/2=n2"],
            ..BASE
        },
        Case {
            name: "sticky: nothing moves to an empty node",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2", "n3"],
            previous: &["web/1=n2", "web/2=n2"],
            want: &["web/1=n2", "web/2=n2"],
            ..BASE
        },
        Case {
            name: "node lost past grace: only its replica moves, to a node without one",
            services: "  web: {image: nginx, deploy: {replicas: 3}}\n",
            live: &["n1", "n3", "n4"],
            other_load: &[("n4", 3)],
            previous: &["web/1=n1", "web/2=n2", "web/3=n3"],
            want: &["web/1=n1", "web/2=n4", "web/3=n3"],
            ..BASE
        },
        Case {
            name: "node lost within grace keeps its replicas",
            services: "  web: {image: nginx, deploy: {replicas: 3}}\n",
            live: &["n1", "n3"],
            gone: &[("n2", NOW - 10)],
            previous: &["web/1=n1", "web/2=n2", "web/3=n3"],
            want: &["web/1=n1", "web/2=n2", "web/3=n3"],
            pending: &["web replica 2: node n2 is gone; kept there until its cntnr.reschedule-after (30s) ends, then moved"],
            ..BASE
        },
        Case {
            name: "the grace ends at since + reschedule-after: the replica moves, nothing else",
            services: "  web: {image: nginx, deploy: {replicas: 3}}\n",
            live: &["n1", "n3", "n4"],
            gone: &[("n2", NOW - 30)],
            previous: &["web/1=n1", "web/2=n2", "web/3=n3"],
            want: &["web/1=n1", "web/2=n4", "web/3=n3"],
            ..BASE
        },
        Case {
            name: "cntnr.reschedule-after per service: one service moves, the other waits",
            services: "  a: {image: x, annotations: {cntnr.reschedule-after: 5s}}\n  b: {image: x, annotations: {cntnr.reschedule-after: 1m}}\n",
            live: &["n1"],
            gone: &[("n2", NOW - 10)],
            previous: &["a/1=n2", "b/1=n2"],
            want: &["a/1=n1", "b/1=n2"],
            pending: &["b replica 1: node n2 is gone; kept there until its cntnr.reschedule-after (60s) ends, then moved"],
            ..BASE
        },
        Case {
            name: "past grace with max_replicas_per_node and no eligible node left: pending, why",
            services: "  web: {image: x, deploy: {replicas: 3, placement: {max_replicas_per_node: 1}}}\n",
            live: &["n1", "n3"],
            gone: &[("n2", NOW - 31)],
            previous: &["web/1=n1", "web/2=n2", "web/3=n3"],
            want: &["web/1=n1", "web/3=n3"],
            pending: &["web replica 2: max_replicas_per_node 1 reached on all 2 eligible nodes"],
            ..BASE
        },
        Case {
            name: "a joining node takes no existing replica",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2", "n3"],
            previous: &["web/1=n1", "web/2=n1"],
            want: &["web/1=n1", "web/2=n1"],
            ..BASE
        },
        Case {
            name: "a joining node takes the new replica: the least loaded",
            services: "  web: {image: nginx, deploy: {replicas: 3}}\n",
            live: &["n1", "n2", "n3"],
            other_load: &[("n2", 4)],
            previous: &["web/1=n1", "web/2=n2"],
            want: &["web/1=n1", "web/2=n2", "web/3=n3"],
            ..BASE
        },
        Case {
            name: "rebalance (no previous schedule) spreads over the joined node",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2", "n3"],
            other_load: &[("n1", 1)],
            want: &["web/1=n2", "web/2=n3"],
            ..BASE
        },
        Case {
            name: "a node within grace gets no new replica",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1"],
            gone: &[("n2", NOW - 10)],
            previous: &["web/1=n1"],
            want: &["web/1=n1", "web/2=n1"],
            ..BASE
        },
        Case {
            name: "a node that returns within grace is live again: nothing pending",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2"],
            gone: &[("n2", NOW - 10)],
            previous: &["web/1=n1", "web/2=n2"],
            want: &["web/1=n1", "web/2=n2"],
            ..BASE
        },
        Case {
            name: "within grace, a hostname constraint that now excludes the node still moves it",
            services: "  web: {image: nginx, deploy: {placement: {constraints: [node.hostname!=n2]}}}\n",
            live: &["n1"],
            gone: &[("n2", NOW - 10)],
            previous: &["web/1=n2"],
            want: &["web/1=n1"],
            ..BASE
        },
        Case {
            name: "scale down drops the highest replicas",
            services: "  web: {image: nginx, deploy: {replicas: 2}}\n",
            live: &["n1", "n2"],
            previous: &["web/1=n2", "web/2=n1", "web/3=n2", "web/4=n1"],
            want: &["web/1=n2", "web/2=n1"],
            ..BASE
        },
        Case {
            name: "scale up adds replicas where the service has fewest",
            services: "  web: {image: nginx, deploy: {replicas: 4}}\n",
            live: &["n1", "n2", "n3"],
            previous: &["web/1=n1", "web/2=n1"],
            want: &["web/1=n1", "web/2=n1", "web/3=n2", "web/4=n3"],
            ..BASE
        },
        Case {
            name: "replicas: 0 places nothing and is not pending",
            services: "  web: {image: nginx, deploy: {replicas: 0}}\n",
            live: &["n1"],
            previous: &["web/1=n1"],
            ..BASE
        },
        Case {
            name: "a constraint change moves the replica",
            services: "  web: {image: nginx, deploy: {placement: {constraints: [node.hostname!=n1]}}}\n",
            live: &["n1", "n2"],
            previous: &["web/1=n1"],
            want: &["web/1=n2"],
            ..BASE
        },
        Case {
            name: "a service removed from the project is dropped",
            services: "  web: {image: nginx}\n",
            live: &["n1"],
            previous: &["web/1=n1", "old/1=n1"],
            want: &["web/1=n1"],
            ..BASE
        },
        Case {
            name: "no live node",
            services: "  web: {image: nginx}\n",
            previous: &["web/1=n1"],
            pending: &["web replica 1: no live node"],
            ..BASE
        },
        Case {
            name: "a fixed published port: one replica per node",
            services: "  web: {image: nginx, ports: ['8080:80'], deploy: {replicas: 3}}\n",
            live: &["n1", "n2"],
            want: &["web/1=n1", "web/2=n2"],
            pending: &["web replica 3: published port 8080/tcp already taken by a replica on all 2 eligible nodes"],
            ..BASE
        },
        Case {
            name: "a published range: one replica per port of it",
            services: "  web: {image: nginx, ports: ['8080-8081:80/udp'], deploy: {replicas: 3}}\n",
            live: &["n1"],
            want: &["web/1=n1", "web/2=n1"],
            pending: &["web replica 3: every port of published range 8080-8081/udp already taken by a replica on the 1 eligible node"],
            ..BASE
        },
        Case {
            name: "the tightest limit is named",
            services: "  web: {image: nginx, ports: ['8080-8082:80'], deploy: {replicas: 3, placement: {max_replicas_per_node: 2}}}\n",
            live: &["n1"],
            want: &["web/1=n1", "web/2=n1"],
            pending: &["web replica 3: max_replicas_per_node 2 reached on the 1 eligible node"],
            ..BASE
        },
        Case {
            name: "two services publishing one host port avoid each other",
            services: "  a: {image: x, ports: ['80:80']}\n  b: {image: y, ports: ['80:8080']}\n",
            live: &["n1", "n2"],
            want: &["a/1=n1", "b/1=n2"],
            ..BASE
        },
        Case {
            name: "a host port taken by another service, with nowhere else to go",
            services: "  a: {image: x, ports: ['80:80']}\n  b: {image: y, ports: ['79-81:8080']}\n",
            live: &["n1"],
            want: &["a/1=n1"],
            pending: &["b replica 1: published range 79-81/tcp is taken by service a on the 1 eligible node"],
            ..BASE
        },
        Case {
            name: "a port clash on some nodes, a full service on the others",
            services: "  api: {image: x, ports: ['8080:80']}\n  web: {image: y, ports: ['8080:80'], deploy: {replicas: 2}}\n",
            live: &["n1", "n2"],
            want: &["api/1=n1", "web/1=n2"],
            pending: &["web replica 2: published port 8080/tcp is taken by service api on 1 of the 2 eligible nodes, published port 8080/tcp already taken by a replica on the others"],
            ..BASE
        },
        Case {
            name: "a global service skips the node where its port is taken",
            services: "  edge: {image: x, ports: ['443:443'], deploy: {mode: global}}\n  web: {image: y, ports: ['443:8443'], deploy: {placement: {constraints: [node.hostname==n2]}}}\n",
            live: &["n1", "n2", "n3"],
            previous: &["web/1=n2"],
            want: &["edge/1=n1", "edge/2=n3", "web/1=n2"],
            pending: &["edge: published port 443/tcp is taken by service web on 1 of the 3 eligible nodes"],
            ..BASE
        },
        Case {
            name: "different protocols or host addresses do not clash",
            services: "  a: {image: x, ports: ['53:53/udp', '127.0.0.1:80:80']}\n  b: {image: y, ports: ['53:53/tcp', '127.0.0.2:80:80']}\n",
            live: &["n1"],
            want: &["a/1=n1", "b/1=n1"],
            ..BASE
        },
        Case {
            name: "an ephemeral host port does not limit placement",
            services: "  web: {image: nginx, ports: ['80'], deploy: {replicas: 2}}\n",
            live: &["n1"],
            want: &["web/1=n1", "web/2=n1"],
            ..BASE
        },
    ];
    for c in &cases {
        run(c);
    }
}

#[test]
fn records_and_load() {
    let rec = record(parse_placements(&["a/1=n1", "a/2=n2", "b/1=n1"]));
    let load = node_load([&rec]);
    assert_eq!(load, [(node("n1"), 2), (node("n2"), 1)].into());
    let nr = NodeRecord {
        labels: [("disk".to_string(), "ssd".to_string())].into(),
        address: "10.0.0.1".into(),
        version: "0".into(),
        rootless: false,
        started: 0,
    };
    let n1 = node("n1");
    let c = Cluster::from_records([(&n1, &nr)]);
    assert_eq!(c.live[&n1]["disk"], "ssd");
    let s = Schedule {
        services: rec.services.clone(),
        ..Schedule::default()
    };
    assert!(s.same_placement(Some(&rec)));
    assert!(!s.same_placement(None));
    let r = s.into_record(9, node("n1"), 4);
    assert_eq!((r.fencing_token, r.generation), (9, 4));
}

#[test]
fn gone_nodes_are_kept_in_the_record_and_the_recheck_is_the_earliest_grace_end() {
    let p = project(
        "  a: {image: x, annotations: {cntnr.reschedule-after: 20s}}\n  b: {image: x, deploy: {replicas: 2}}\n",
    );
    let cl = Cluster {
        live: [(node("n1"), Labels::new())].into(),
        gone_since: [
            (node("n2"), NOW - 5),
            (node("n3"), NOW - 1),
            (node("n9"), 1),
        ]
        .into(),
        now: NOW,
        ..Cluster::default()
    };
    let prev = record(parse_placements(&["a/1=n2", "b/1=n3", "b/2=n1"]));
    let got = schedule(&p, &cl, Some(&prev));
    assert_eq!(render(&got.services), ["a/1=n2", "b/1=n3", "b/2=n1"]);
    // n9 holds nothing: not carried into the record.
    assert_eq!(
        got.gone_since,
        [(node("n2"), NOW - 5), (node("n3"), NOW - 1)].into()
    );
    // a's grace ends at NOW - 5 + 20, b's at NOW - 1 + 30.
    assert_eq!(got.recheck_at, Some(NOW + 15));
    let rec = got.clone().into_record(3, node("n1"), 7);
    assert_eq!(rec.gone_since, got.gone_since);
    assert!(!got.same_placement(Some(&prev)), "gone_since changed");
    // At the recheck, a moves and b stays.
    let later = Cluster {
        now: NOW + 15,
        ..cl.clone()
    };
    let got = schedule(&p, &later, Some(&rec));
    assert_eq!(render(&got.services), ["a/1=n1", "b/1=n3", "b/2=n1"]);
    assert_eq!(got.recheck_at, Some(NOW + 29));
    assert_eq!(got.gone_since, [(node("n3"), NOW - 1)].into());
}

#[test]
fn extra_nodes_for_surge_replicas_follow_the_placement_rules() {
    // (name, services, live nodes, placement, count, want nodes or reason)
    type Row = (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        usize,
        Result<&'static [&'static str], &'static str>,
    );
    let cases: &[Row] = &[
        (
            "no limit: the least loaded node, several on one if needed",
            "  web: {image: nginx, deploy: {replicas: 2}}\n",
            &["n1", "n2"],
            &["web/1=n1", "web/2=n1"],
            3,
            Ok(&["n2", "n2", "n1"]),
        ),
        (
            "max_replicas_per_node 1 with a free node",
            "  web: {image: nginx, deploy: {replicas: 2, placement: {max_replicas_per_node: 1}}}\n",
            &["n1", "n2", "n3"],
            &["web/1=n1", "web/2=n2"],
            2,
            Ok(&["n3"]),
        ),
        (
            "max_replicas_per_node 1, every node full",
            "  web: {image: nginx, deploy: {replicas: 2, placement: {max_replicas_per_node: 1}}}\n",
            &["n1", "n2"],
            &["web/1=n1", "web/2=n2"],
            1,
            Err("max_replicas_per_node 1 reached on all 2 eligible nodes"),
        ),
        (
            "a fixed published port taken on the only node",
            "  web: {image: nginx, ports: ['8080:80'], deploy: {replicas: 1}}\n",
            &["n1"],
            &["web/1=n1"],
            1,
            Err("published port 8080/tcp already taken by a replica on the 1 eligible node"),
        ),
        (
            "a constraint that only the full node meets",
            "  web: {image: nginx, deploy: {replicas: 1, placement: {constraints: ['node.hostname == n1'], max_replicas_per_node: 1}}}\n",
            &["n1", "n2"],
            &["web/1=n1"],
            1,
            Err("max_replicas_per_node 1 reached on the 1 eligible node"),
        ),
    ];
    for (name, services, live, placed, count, want) in cases {
        let p = project(services);
        let cl = cluster(&Case { live, ..BASE });
        let got = extra_nodes(
            &p,
            &ServiceName::new("web").unwrap(),
            &cl,
            &parse_placements(placed),
            *count,
        );
        let got = got
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        let want = want
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(ToString::to_string);
        assert_eq!(got, want, "{name}");
    }
}
