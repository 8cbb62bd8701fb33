//! Multi-file merges through the loader, two and three files at a time.

mod common;

use cntnr_model::*;
use common::{map, svc};

fn load(texts: &[&str]) -> Project {
    let sources: Vec<Source> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Source {
            name: format!("file{i}.yaml"),
            text: t.to_string(),
        })
        .collect();
    let opts = LoadOptions {
        project_name: Some("m".into()),
        project_dir: Some("/srv/m".into()),
        ..Default::default()
    };
    load_sources(&sources, &opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn environment_and_labels_merge_across_list_and_map_forms() {
    let p = load(&[
        "services: {s: {image: a, environment: [A=1, B=2], labels: {x: '1'}, annotations: [k=v]}}",
        "services: {s: {environment: {B: '3', C: '4'}, labels: [y=2], annotations: {k: w}}}",
    ]);
    let s = svc(&p, "s");
    assert_eq!(s.environment, map(&[("A", "1"), ("B", "3"), ("C", "4")]));
    assert_eq!(s.labels, map(&[("x", "1"), ("y", "2")]));
    assert_eq!(s.annotations, map(&[("k", "w")]));
}

#[test]
fn ports_are_unique_by_mapping_across_short_and_long_forms() {
    let p = load(&[
        "services: {s: {image: a, ports: ['8080:80', '53:53/udp']}}",
        "services: {s: {ports: [{target: 80, published: 8080}, '53:53/tcp', '9090:90']}}",
    ]);
    let got: Vec<String> = svc(&p, "s")
        .ports
        .iter()
        .map(|m| format!("{}:{}/{}", m.published.unwrap(), m.target, m.protocol))
        .collect();
    assert_eq!(
        got,
        ["8080:80/tcp", "53:53/udp", "53:53/tcp", "9090:90/tcp"]
    );
}

#[test]
fn volumes_merge_by_target_and_keep_order() {
    let p = load(&[
        "services: {s: {image: a, volumes: ['./a:/a', 'data:/data', '/anon']}}\nvolumes: {data: {}, other: {}}",
        "services: {s: {volumes: [{type: volume, source: other, target: /data, read_only: true}, '/b:/b']}}",
    ]);
    let targets: Vec<&str> = svc(&p, "s").volumes.iter().map(Mount::target).collect();
    assert_eq!(targets, ["/a", "/data", "/anon", "/b"]);
    assert_eq!(
        svc(&p, "s").volumes[1],
        Mount::Volume {
            source: Some("other".into()),
            target: "/data".into(),
            read_only: true,
            volume: VolumeOptions::default()
        }
    );
    assert_eq!(
        svc(&p, "s").volumes[0],
        Mount::Bind {
            source: "/srv/m/a".into(),
            target: "/a".into(),
            read_only: false,
            bind: BindOptions {
                propagation: None,
                create_host_path: true
            }
        },
        "relative binds resolve against the project directory"
    );
}

#[test]
fn command_and_entrypoint_replace_and_lists_append() {
    let p = load(&[
        "services: {s: {image: a, command: [a, b], entrypoint: x, dns: [1.1.1.1], cap_drop: [ALL], expose: [80]}}",
        "services: {s: {command: c, dns: 8.8.8.8, cap_drop: [all, NET_RAW], expose: ['80', 81]}}",
    ]);
    let s = svc(&p, "s");
    assert_eq!(s.command.as_deref().unwrap(), ["c"]);
    assert_eq!(s.entrypoint.as_deref().unwrap(), ["x"]);
    assert_eq!(s.dns.len(), 2);
    assert_eq!(s.cap_drop, ["ALL", "CAP_NET_RAW"]);
    assert_eq!(
        s.expose.iter().map(|e| e.port).collect::<Vec<_>>(),
        [80, 81]
    );
}

#[test]
fn three_files_later_wins_and_services_add_up() {
    let p = load(&[
        "services: {a: {image: 'a:1', deploy: {replicas: 2, resources: {limits: {memory: 64m}}}}}",
        "services: {a: {image: 'a:2', deploy: {resources: {limits: {cpus: 1}}}}, b: {image: b}}",
        "services: {a: {deploy: {replicas: 5}}, b: {depends_on: [a]}}",
    ]);
    let a = svc(&p, "a");
    assert_eq!(a.image, ImageRef::Registry("a:2".into()));
    assert_eq!(a.deploy.replicas, 5);
    assert_eq!(
        a.deploy.resources.limits,
        Limits {
            cpus: Some(1.0),
            memory: Some(64 << 20),
            pids: None
        }
    );
    assert!(svc(&p, "b")
        .depends_on
        .contains_key(&ServiceName::new("a").unwrap()));
}

#[test]
fn networks_keep_aliases_when_a_later_file_lists_the_name() {
    let p = load(&[
        "services: {s: {image: a, networks: {front: {aliases: [w]}}}}\nnetworks: {front: {}, back: {}}",
        "services: {s: {networks: [front, back]}}",
    ]);
    let s = svc(&p, "s");
    assert_eq!(s.networks["front"].aliases, ["w"]);
    assert!(s.networks.contains_key("back"));
}

#[test]
fn top_level_name_from_a_later_file_wins() {
    let sources = vec![
        Source {
            name: "a.yaml".into(),
            text: "name: first\nservices: {s: {image: a}}".into(),
        },
        Source {
            name: "b.yaml".into(),
            text: "name: second".into(),
        },
    ];
    let p = load_sources(&sources, &LoadOptions::default()).unwrap();
    assert_eq!(p.name.as_str(), "second");
}
