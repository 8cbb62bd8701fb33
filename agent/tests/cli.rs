//! `cntnr` against real stores (etcd, Consul, dir), driven as an operator
//! would: deploy, ls, config set/get/rm, rm, and the errors in between.
//! Keys are checked raw (etcdctl, Consul's HTTP API, files), not through
//! cntnr.

mod common;

use std::path::Path;

use common::{text, Kind, TestStore};

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn deploy_config_rm(kind: Kind) {
    let s = TestStore::new(kind, "cli");
    let dir = s.tmp.path();
    write(dir, "web.env", "MODE=from-env-file\n");
    write(
        dir,
        "compose.yaml",
        "name: shop\nservices:\n  web:\n    image: nginx:${TAG:-1.25}\n    env_file: web.env\n    deploy: {replicas: 2}\n  db:\n    image: postgres:16\n",
    );
    write(
        dir,
        "override.yaml",
        "services:\n  db:\n    environment: [POSTGRES_DB=shop]\n",
    );

    // deploy writes exactly what validate renders (interpolated, env_file
    // inlined, files merged).
    let out = s.cntnr(
        dir,
        &["deploy", "-f", "compose.yaml", "-f", "override.yaml"],
    );
    assert_eq!(out.status.code(), Some(0), "deploy: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deployed project shop"),
        "{}",
        text(&out.stdout)
    );
    let rendered = s.cntnr(
        dir,
        &["validate", "-f", "compose.yaml", "-f", "override.yaml"],
    );
    assert_eq!(rendered.status.code(), Some(0));
    let stored = s
        .raw_get(&s.key("projects/shop"))
        .expect("projects/shop written");
    assert_eq!(stored.trim_end(), text(&rendered.stdout).trim_end());
    assert!(stored.contains("MODE: from-env-file"), "{stored}");
    assert!(stored.contains("POSTGRES_DB: shop"), "{stored}");
    assert!(stored.contains("nginx:1.25"), "{stored}");

    // -p wins; ls lists both, in a table and as JSON.
    let out = s.cntnr(dir, &["deploy", "-f", "compose.yaml", "-p", "shop2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ls = s.cntnr(dir, &["ls"]);
    assert_eq!(ls.status.code(), Some(0), "{}", text(&ls.stderr));
    let table = text(&ls.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("PROJECT   SERVICES"), "{table}");
    assert!(
        lines[1].starts_with("shop ") && lines[2].starts_with("shop2 "),
        "{table}"
    );
    let v = s.cntnr_json(&["ls"]);
    assert_eq!(v[0]["project"], "shop");
    assert_eq!(v[0]["services"], 2);
    assert_eq!(v[0]["valid"], true);

    // A relative bind path is refused, with the file, service and key named.
    write(
        dir,
        "bind.yaml",
        "services:\n  app:\n    image: busybox\n    volumes: ['./data:/data']\n",
    );
    let out = s.cntnr(dir, &["deploy", "-f", "bind.yaml", "-p", "binds"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            r#"service "app", key "volumes[0]": relative bind source "./data" is refused"#
        ),
        "{err}"
    );
    assert!(s.raw_get(&s.key("projects/binds")).is_none());

    // An invalid file: every problem, exit 1, nothing written.
    write(dir, "bad.yaml", "services:\n  app:\n    imgae: busybox\n");
    let out = s.cntnr(dir, &["deploy", "-f", "bad.yaml", "-p", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown key `imgae`"),
        "{}",
        text(&out.stderr)
    );
    assert!(s.raw_get(&s.key("projects/bad")).is_none());

    // config set/get/rm.
    let out = s.cntnr(
        dir,
        &["config", "set", "shop", "db/url", "postgres://db/shop"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        s.raw_get(&s.key("config/shop/db/url")).as_deref(),
        Some("postgres://db/shop")
    );
    let out = s.cntnr(dir, &["config", "get", "shop", "db/url"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "postgres://db/shop");
    let v = s.cntnr_json(&["config", "get", "shop", "db/url"]);
    assert_eq!(v["value"], "postgres://db/shop");
    for bad in ["../escape", "a/../b", "/abs", "a//b"] {
        let out = s.cntnr(dir, &["config", "set", "shop", bad, "x"]);
        assert_eq!(out.status.code(), Some(1), "config set {bad}");
        assert_eq!(
            text(&out.stderr).lines().count(),
            1,
            "{}",
            text(&out.stderr)
        );
    }
    let out = s.cntnr(dir, &["config", "rm", "shop", "db/url"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(s.raw_get(&s.key("config/shop/db/url")).is_none());
    let out = s.cntnr(dir, &["config", "get", "shop", "db/url"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "error: config key db/url of project shop is not set"
    );

    // rm deletes the key; removing it again is a one-line user error.
    let out = s.cntnr(dir, &["rm", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(s.raw_get(&s.key("projects/shop")).is_none());
    assert!(s.raw_get(&s.key("projects/shop2")).is_some());
    let out = s.cntnr(dir, &["rm", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).lines().count(), 1);
    assert!(text(&out.stderr).contains("not deployed"));

    // No agent yet: no nodes, no containers, no services.
    assert_eq!(s.cntnr_json(&["nodes"])["nodes"], serde_json::json!([]));
    assert_eq!(s.cntnr_json(&["ps"]), serde_json::json!([]));
    assert_eq!(s.cntnr_json(&["services"]), serde_json::json!([]));

    // Usage errors exit 2.
    assert_eq!(
        s.cntnr(dir, &["config", "set", "shop"]).status.code(),
        Some(2)
    );
    assert_eq!(s.cntnr(dir, &["deploy"]).status.code(), Some(2));
}

#[test]
fn deploy_config_rm_etcd() {
    deploy_config_rm(Kind::Etcd);
}

#[test]
fn deploy_config_rm_consul() {
    deploy_config_rm(Kind::Consul);
}

#[test]
fn deploy_config_rm_dir() {
    deploy_config_rm(Kind::Dir);
}

#[test]
fn unreachable_store_is_a_one_line_error() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
        .args(["ls", "--store", &format!("etcd://127.0.0.1:{port}")])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
        .args(["ls", "--store", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown scheme"),
        "{}",
        text(&out.stderr)
    );
}
