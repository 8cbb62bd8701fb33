//! `cntnr plan` against real stores: a new project's creates, and after a
//! deploy run by a real agent (real runc), a changed service's recreates
//! and a scale-down's removes. Plan never writes: the store keys are
//! compared before and after. Also checks the agent's watch lag metric.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{text, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Every key under the test's prefix with its value, read raw.
fn keys(s: &TestStore, sub: &str) -> BTreeMap<String, String> {
    match s.kind {
        Kind::Etcd => {
            let out = cntnr_e2e::shared_etcd().etcdctl(&["get", "--prefix", &s.key(sub)]);
            assert!(out.status.success(), "etcdctl get: {out:?}");
            let t = text(&out.stdout);
            let lines: Vec<&str> = t.lines().collect();
            lines
                .chunks(2)
                .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
                .collect()
        }
        Kind::Dir => {
            let mut out = BTreeMap::new();
            walk(&s.tmp.path().join("store").join(s.key(sub)), &mut out);
            out
        }
        Kind::Consul => unreachable!("not used here"),
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            );
        }
    }
}

fn write(s: &TestStore, name: &str, yaml: &str) -> String {
    let file = s.tmp.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    file.to_str().unwrap().to_string()
}

/// `cntnr plan --json`: change per container id (and the pending list).
fn plan(s: &TestStore, file: &str) -> (BTreeMap<String, (String, String)>, Value) {
    let v = s.cntnr_json(&["plan", "-f", file, "-p", "shop"]);
    let changes = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["container"].as_str().unwrap().to_string(),
                (
                    c["node"].as_str().unwrap().to_string(),
                    c["change"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    (changes, v)
}

fn node_record() -> &'static str {
    r#"{"labels":{},"address":"127.0.0.1","version":"test","rootless":false,"started":1}"#
}

#[test]
fn a_new_project_is_planned_as_creates_and_nothing_is_written() {
    let s = TestStore::new(Kind::Etcd, "plan-new");
    s.raw_put(&s.key("nodes/n1"), node_record());
    s.raw_put(&s.key("nodes/n2"), node_record());
    let f = write(
        &s,
        "compose.yaml",
        "services:\n  web:\n    image: x\n    deploy: {replicas: 2}\n  db:\n    image: y\n    deploy: {placement: {constraints: [node.hostname == n2]}}\n  lost:\n    image: z\n    deploy: {placement: {constraints: [node.hostname == n9]}}\n",
    );
    let before = keys(&s, "");
    let (changes, v) = plan(&s, &f);
    assert_eq!(v["deployed"], false, "{v}");
    let mut nodes_of_web: Vec<&str> = ["shop-web-1", "shop-web-2"]
        .iter()
        .map(|id| {
            let (node, change) = &changes[*id];
            assert_eq!(change, "create", "{v}");
            node.as_str()
        })
        .collect();
    nodes_of_web.sort();
    assert_eq!(nodes_of_web, ["n1", "n2"], "spread over both nodes: {v}");
    assert_eq!(changes["shop-db-1"], ("n2".into(), "create".into()), "{v}");
    assert_eq!(changes.len(), 3, "{v}");
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{v}");
    assert_eq!(pending[0]["service"], "lost");
    assert!(
        pending[0]["reason"]
            .as_str()
            .unwrap()
            .contains("node.hostname"),
        "{v}"
    );

    // The table: aligned, one line per container, pending shown.
    let out = s.cntnr(s.tmp.path(), &["plan", "-f", &f, "-p", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let lines: Vec<&str> = t.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("NODE")).unwrap();
    let col = lines[header].find("CHANGE").unwrap();
    for l in &lines[header + 1..] {
        assert!(
            l[col..].starts_with("create") || l[col..].starts_with("pending"),
            "{t}"
        );
    }
    assert_eq!(lines.len() - header - 1, 4, "{t}");

    assert_eq!(keys(&s, ""), before, "plan wrote to the store");
}

#[test]
fn an_invalid_file_is_a_one_line_error_and_exit_1() {
    let s = TestStore::new(Kind::Etcd, "plan-bad");
    let f = write(
        &s,
        "bad.yaml",
        "services:\n  web:\n    image: x\n    deploy: {replicas: many}\n",
    );
    let before = keys(&s, "");
    let out = s.cntnr(s.tmp.path(), &["plan", "-f", &f, "-p", "shop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    assert!(
        lines.iter().all(|l| l.starts_with("error: ")),
        "one cause a line: {err}"
    );
    assert!(lines[0].contains("replicas"), "{err}");
    assert!(lines.last().unwrap().contains("nothing planned"), "{err}");
    assert_eq!(keys(&s, ""), before);
}

/// A two-service project: `web` (replicas, command tagged) and `worker`.
fn project(web_replicas: u32, tag: &str) -> String {
    let image = common::test_image_ref();
    format!(
        "services:\n  web:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo web {tag}; exec sleep 3600']\n    deploy: {{replicas: {web_replicas}}}\n  worker:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo worker; exec sleep 3600']\n    depends_on: [web]\n"
    )
}

#[test]
fn after_a_deploy_plan_shows_recreates_and_removes_only() {
    let s = TestStore::new(Kind::Dir, "plan-run");
    let a = s.agent("n1");
    let v1 = write(&s, "v1.yaml", &project(3, "v1"));
    let out = s.cntnr(s.tmp.path(), &["deploy", "-f", &v1, "-p", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "four running containers in status", || {
        let t = s.raw_get(&s.key("status/shop/n1"))?;
        let rec: Value = serde_json::from_str(&t).ok()?;
        let cs = rec["containers"].as_array()?;
        (cs.len() == 4 && cs.iter().all(|c| c["state"] == "running")).then_some(())
    });

    // The agent measured the lag of the events it applied.
    let metrics = a.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("# HELP cntnr_watch_lag_seconds "),
        "{metrics}"
    );
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("cntnr_watch_lag_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted > 0.0, "{metrics}");

    let desired = |s: &TestStore| {
        let mut k = keys(s, "projects");
        k.extend(keys(s, "schedule"));
        k
    };
    let before = desired(&s);

    // Unchanged files: everything unchanged.
    let (changes, v) = plan(&s, &v1);
    assert_eq!(v["deployed"], true);
    assert_eq!(changes.len(), 4, "{v}");
    assert!(
        changes.values().all(|(n, c)| n == "n1" && c == "unchanged"),
        "{v}"
    );

    // web's command changed: exactly web's containers are recreated.
    let v2 = write(&s, "v2.yaml", &project(3, "v2"));
    let (changes, v) = plan(&s, &v2);
    let want: BTreeMap<String, (String, String)> = [
        ("shop-web-1", "recreate"),
        ("shop-web-2", "recreate"),
        ("shop-web-3", "recreate"),
        ("shop-worker-1", "unchanged"),
    ]
    .into_iter()
    .map(|(id, c)| (id.to_string(), ("n1".to_string(), c.to_string())))
    .collect();
    assert_eq!(changes, want, "{v}");
    let rec = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container"] == "shop-web-1")
        .unwrap();
    assert_ne!(rec["old_hash"], rec["new_hash"], "{rec}");
    let out = s.cntnr(s.tmp.path(), &["plan", "-f", &v2, "-p", "shop"]);
    let t = text(&out.stdout);
    assert!(
        t.lines()
            .any(|l| l.contains("shop-web-1") && l.contains("recreate") && l.contains(" → ")),
        "{t}"
    );

    // Fewer replicas: the highest ones are removed.
    let v3 = write(&s, "v3.yaml", &project(1, "v1"));
    let (changes, v) = plan(&s, &v3);
    let want: BTreeMap<String, (String, String)> = [
        ("shop-web-1", "unchanged"),
        ("shop-web-2", "remove"),
        ("shop-web-3", "remove"),
        ("shop-worker-1", "unchanged"),
    ]
    .into_iter()
    .map(|(id, c)| (id.to_string(), ("n1".to_string(), c.to_string())))
    .collect();
    assert_eq!(changes, want, "{v}");

    // Nothing was written, and nothing changed on the node.
    assert_eq!(desired(&s), before, "plan wrote to the store");
    assert_eq!(a.runc_list().len(), 4);
}
