//! The config hash covers what shapes a container and nothing else; the
//! rendered project loads back to the same project.

mod common;

use cntnr_model::*;
use common::{env, fixture, svc};

fn load(text: &str) -> Project {
    let src = Source {
        name: "compose.yaml".into(),
        text: text.into(),
    };
    let opts = LoadOptions {
        project_name: Some("h".into()),
        project_dir: Some("/srv/h".into()),
        ..Default::default()
    };
    load_sources(&[src], &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn hash(text: &str) -> ConfigHash {
    svc(&load(text), "web").config_hash()
}

const BASE: &str = r#"
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    environment:
      A: "1"
      B: "2"
    ports: ["8080:80"]
    labels: {team: web}
    restart: always
    healthcheck:
      test: ["CMD", "true"]
    deploy:
      replicas: 2
      resources:
        limits: {memory: 64m}
"#;

#[test]
fn hash_is_versioned_and_pinned() {
    let h = hash(BASE);
    assert!(h.as_str().starts_with("v1-"));
    assert_eq!(h.as_str().len(), 3 + 64);
    assert_eq!(ConfigHash::parse(h.as_str()), Some(h.clone()));
    // Pinned: if this changes, the canonical encoding changed, and
    // HASH_VERSION must be bumped (every running container would be
    // recreated otherwise without anyone noticing why).
    assert_eq!(h.as_str(), PINNED);
}

const PINNED: &str = "v1-0fc538b6ca63c023baff241c1452e0deb32065f6d644a8c322a326c94bc6c0eb";

#[test]
fn key_order_comments_and_anchors_do_not_change_the_hash() {
    let reordered = r#"
# a comment
x-env: &env
  B: "2"   # inline comment
  A: "1"
services:
  web:
    deploy:
      resources:
        limits: {memory: 67108864}
      replicas: 2
    healthcheck: {test: ["CMD", "true"]}
    restart: always
    labels: {team: web}
    ports:
      - target: 80
        published: "8080"
        protocol: tcp
    environment:
      <<: *env
    command: ["nginx", "-g", "daemon off;"]
    image: nginx:1.25
"#;
    assert_eq!(hash(BASE), hash(reordered));
    let list_env = BASE.replace("A: \"1\"\n      B: \"2\"", "- A=1\n      - B=2");
    assert_ne!(list_env, BASE);
    assert_eq!(hash(BASE), hash(&list_env));
}

#[test]
fn cosmetic_and_scheduling_edits_do_not_change_the_hash() {
    let edits = [
        ("replicas: 2", "replicas: 7"),
        ("team: web", "team: other"),
        ("restart: always", "restart: \"no\""),
        ("test: [\"CMD\", \"true\"]", "test: [\"CMD\", \"false\"]"),
    ];
    for (from, to) in edits {
        let edited = BASE.replace(from, to);
        assert_ne!(edited, BASE, "{from}");
        assert_eq!(hash(BASE), hash(&edited), "{from} -> {to}");
    }
    let with_drain = BASE.replace(
        "labels: {team: web}",
        "labels: {team: web}\n    annotations: {cntnr.drain: 5s, cntnr.service.tags: a}",
    );
    assert_eq!(hash(BASE), hash(&with_drain));
}

#[test]
fn update_and_rollback_config_do_not_change_the_hash() {
    let with = |block: &str| {
        BASE.replace(
            "      replicas: 2\n",
            &format!("      replicas: 2\n{block}"),
        )
    };
    let variants = [
        "      update_config: {parallelism: 1}\n",
        "      update_config: {parallelism: 3, delay: 2s, order: start-first, monitor: 9s}\n",
        "      update_config:\n",
        "      rollback_config: {parallelism: 2, failure_action: continue}\n",
        "      update_config: {failure_action: rollback}\n      rollback_config: {order: start-first}\n",
    ];
    for v in variants {
        let edited = with(v);
        assert_ne!(edited, BASE, "{v}");
        assert_eq!(hash(BASE), hash(&edited), "{v}");
    }
    // The hash is still the pinned one: HASH_VERSION need not change.
    assert_eq!(hash(&with(variants[1])).as_str(), PINNED);
}

#[test]
fn update_config_presence_is_kept_through_render_and_load() {
    let p = load(BASE);
    assert_eq!(svc(&p, "web").deploy.update_config, None);
    assert_eq!(svc(&p, "web").deploy.rollback_config, None);
    let text = render::to_yaml(&p).unwrap();
    assert!(!text.contains("update_config"), "{text}");
    assert!(!text.contains("rollback_config"), "{text}");
    // A block equal to swarm's defaults is still present.
    let defaults = BASE.replace(
        "      replicas: 2\n",
        "      replicas: 2\n      update_config: {parallelism: 1}\n      rollback_config: {}\n",
    );
    let p = load(&defaults);
    let d = &svc(&p, "web").deploy;
    assert_eq!(d.update_config, Some(UpdateConfig::default()));
    assert_eq!(d.rollback_config, Some(UpdateConfig::default()));
    let back = load_stored(&p.name, "projects/h", &render::to_yaml(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn container_shaping_edits_change_the_hash() {
    let edits = [
        ("nginx:1.25", "nginx:1.26"),
        ("B: \"2\"", "B: \"3\""),
        ("\"daemon off;\"]", "\"daemon on;\"]"),
        ("8080:80", "8081:80"),
        ("memory: 64m", "memory: 128m"),
        (
            "labels: {team: web}",
            "labels: {team: web}\n    user: nobody",
        ),
        (
            "labels: {team: web}",
            "labels: {team: web}\n    domainname: corp.example",
        ),
        (
            "labels: {team: web}",
            "labels: {team: web}\n    volumes: ['/a:/b']",
        ),
        (
            "labels: {team: web}",
            "labels: {team: web}\n    annotations: {cntnr.env.X: 'kv:x'}",
        ),
    ];
    for (from, to) in edits {
        let edited = BASE.replace(from, to);
        assert_ne!(edited, BASE, "{from}");
        assert_ne!(hash(BASE), hash(&edited), "{from} -> {to}");
    }
}

fn fixture_files(dir: &str) -> Vec<String> {
    match dir {
        "override-two" => vec!["compose.yaml".into(), "compose.prod.yaml".into()],
        "override-three" => vec![
            "compose.yaml".into(),
            "compose.staging.yaml".into(),
            "compose.local.yaml".into(),
        ],
        _ => vec!["compose.yaml".into()],
    }
}

#[test]
fn rendered_projects_load_back_unchanged() {
    let fixture_env = env(&[("TAG", "1.0"), ("PLAIN", "p$x"), ("FROM_SHELL", "s")]);
    for entry in std::fs::read_dir(fixture("good")).unwrap() {
        let dir = entry.unwrap().file_name().to_string_lossy().to_string();
        let files: Vec<String> = fixture_files(&dir)
            .into_iter()
            .map(|f| format!("good/{dir}/{f}"))
            .collect();
        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
        let p = common::load(&refs, fixture_env.clone());
        for (format, text) in [
            ("yaml", render::to_yaml(&p).unwrap()),
            ("json", render::to_json(&p)),
        ] {
            let src = Source {
                name: format!("{dir}.{format}"),
                text,
            };
            let opts = LoadOptions {
                skip_interpolation: true,
                ..Default::default()
            };
            let back =
                load_sources(&[src], &opts).unwrap_or_else(|e| panic!("{dir} ({format}): {e}"));
            let mut want = p.clone();
            want.warnings.clear();
            assert_eq!(back, want, "{dir} ({format})");
            for (name, s) in &back.services {
                assert_eq!(
                    s.config_hash(),
                    p.services[name].config_hash(),
                    "{dir}/{name}"
                );
            }
        }
    }
}

#[test]
fn rendered_text_carries_the_hash() {
    let p = load(BASE);
    let tree = render::to_tree(&p);
    assert_eq!(
        tree["services"]["web"][render::CONFIG_HASH_KEY],
        svc(&p, "web").config_hash().as_str()
    );
    assert_eq!(
        tree["services"]["web"]["deploy"]["resources"]["limits"]["memory"],
        64 << 20
    );
    assert_eq!(tree["services"]["web"]["ports"][0]["published"], "8080");
}

#[test]
fn stored_text_loads_back_without_interpolation() {
    let p = load("services:\n  web:\n    image: nginx\n    command: ['sh', '-c', 'echo $$HOME']\n    annotations: {cntnr.service.name: front}\n  db:\n    image: postgres\n");
    assert_eq!(
        svc(&p, "web").command.as_deref().unwrap(),
        ["sh", "-c", "echo $HOME"]
    );
    let text = render::to_yaml(&p).unwrap();
    let back = load_stored(&p.name, "cntnr/projects/h", &text).unwrap();
    assert_eq!(back, p, "a literal $ stays literal");
    let web = ServiceName::new("web").unwrap();
    let db = ServiceName::new("db").unwrap();
    assert_eq!(back.registered_name(&web).unwrap().as_str(), "front");
    assert_eq!(back.registered_name(&db).unwrap().as_str(), "h-db");
    assert!(back.service("db").is_some());
}
