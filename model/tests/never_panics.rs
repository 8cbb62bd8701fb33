//! The loader returns errors, never panics, whatever it is fed: random
//! bytes, random YAML-ish trees made of compose keys, and random
//! interpolation expressions. Case counts are bounded to keep CI fast.

use std::collections::BTreeMap;

use cntnr_model::{interpolate::interpolate, load_sources, LoadOptions, Source};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn load(text: String) {
    let opts = LoadOptions {
        env: [
            ("A".to_string(), "1".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]
        .into(),
        project_dir: Some("/srv/p".into()),
        ..Default::default()
    };
    let _ = load_sources(
        &[Source {
            name: "fuzz.yaml".into(),
            text,
        }],
        &opts,
    );
}

const KEYS: &[&str] = &[
    "services",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "healthcheck",
    "test",
    "interval",
    "deploy",
    "replicas",
    "mode",
    "resources",
    "limits",
    "cpus",
    "memory",
    "pids",
    "placement",
    "constraints",
    "depends_on",
    "condition",
    "networks",
    "aliases",
    "labels",
    "annotations",
    "cntnr.env.X",
    "cntnr.election",
    "ulimits",
    "soft",
    "hard",
    "target",
    "published",
    "source",
    "type",
    "bind",
    "restart",
    "update_config",
    "rollback_config",
    "order",
    "x-frag",
    "<<",
    "name",
    "web",
    "db",
    "network_mode",
    "extra_hosts",
];

const WORDS: &[&str] = &[
    "",
    "80",
    "8080:80",
    "1-65536",
    "80/udp",
    "[::1]:53:53",
    "./data:/data",
    "../x:/y",
    "/a:/b:ro",
    "512m",
    "1GiB",
    "-1",
    "0.5",
    "30s",
    "1m30s",
    "10",
    "host",
    "global",
    "CMD",
    "CMD-SHELL",
    "NONE",
    "kv:a/b",
    "kv:../x",
    "leader:web",
    "node.hostname==a",
    "node.labels.x!=y",
    "on-failure:3",
    "${A}",
    "${B:-d}",
    "${C:?boom}",
    "$$",
    "${",
    "oci:./img:latest",
    "nginx:1.25",
    "true",
    "web",
    "db",
];

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        proptest::sample::select(WORDS).prop_map(|s| Value::String(s.to_string())),
        "[ -~]{0,12}".prop_map(Value::String),
    ]
}

fn arb_tree() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(|kvs| {
                Value::Object(
                    kvs.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn yamlish_text_never_panics(parts in prop::collection::vec(
        prop_oneof![
            proptest::sample::select(KEYS).prop_map(str::to_string),
            proptest::sample::select(WORDS).prop_map(str::to_string),
            proptest::sample::select(&[":", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "'", "\"", "#", "!reset ", "---\n", "? "][..]).prop_map(str::to_string),
        ], 0..80)) {
        load(parts.concat());
    }

    #[test]
    fn random_compose_trees_never_panic(services in prop::collection::btree_map(
        proptest::sample::select(&["web", "db", "Bad Name", "x-ext", "cache"][..]), arb_tree(), 0..4),
        top in arb_tree())
    {
        let mut root = Map::new();
        root.insert("services".into(), Value::Object(services.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
        if let Value::Object(extra) = top {
            for (k, v) in extra {
                if k != "services" {
                    root.insert(k, v);
                }
            }
        }
        let text = serde_json::to_string(&Value::Object(root)).unwrap();
        load(text);
    }

    #[test]
    fn interpolation_never_panics(s in "[$a-zA-Z0-9_{}:?+\\-. ]{0,40}") {
        let env: BTreeMap<String, String> = [("a".to_string(), "x".to_string())].into();
        let _ = interpolate(&s, &env);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("services: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    load(deep);
    let deep_map = format!(
        "services:\n{}",
        (0..2000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect::<String>()
    );
    load(deep_map);
}

#[test]
fn alias_bombs_are_bounded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("services: {web: {image: nginx, command: *a11}}\n");
    let opts = LoadOptions {
        project_name: Some("p".into()),
        ..Default::default()
    };
    let res = load_sources(
        &[Source {
            name: "bomb.yaml".into(),
            text,
        }],
        &opts,
    );
    assert!(res.is_err(), "an alias bomb must be refused");
}
