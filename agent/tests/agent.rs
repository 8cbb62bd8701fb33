//! `cntnr-agent` against real stores (etcd, Consul, dir), driven as an
//! operator would: node registration, one leader among two agents,
//! failover on SIGTERM (the session is revoked), and a broken project that
//! neither stops the agent nor hides the others.

mod common;

use std::time::Duration;

use common::{status_record, text, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn nodes(s: &TestStore) -> (Vec<String>, Option<String>) {
    let v = s.cntnr_json(&["nodes"]);
    let names = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect();
    (names, v["leader"].as_str().map(str::to_string))
}

fn is_leader(a: &Agent) -> Option<bool> {
    a.status().map(|s| s["is_leader"] == Value::Bool(true))
}

fn two_agents_elect_one_leader_and_fail_over(kind: Kind) {
    let s = TestStore::new(kind, "elect");
    let mut a = s.agent("node-a");
    let mut b = s.agent("node-b");

    // Both register; exactly one leads, and both agree on who.
    let leader = common::wait_for(WAIT, "two nodes and a leader", || {
        let (names, leader) = nodes(&s);
        (names == ["node-a", "node-b"]).then_some(leader).flatten()
    });
    let (la, lb) = common::wait_for(WAIT, "both agents to know the leader", || {
        let (sa, sb) = (a.status()?, b.status()?);
        (sa["leader"] == leader.as_str() && sb["leader"] == leader.as_str())
            .then(|| (is_leader(&a).unwrap(), is_leader(&b).unwrap()))
    });
    assert!(la ^ lb, "exactly one leader: a={la} b={lb}");
    assert_eq!(
        s.raw_get(&s.key("leader")).as_deref(),
        Some(leader.as_str())
    );
    let node_a: Value = serde_json::from_str(&s.raw_get(&s.key("nodes/node-a")).unwrap()).unwrap();
    assert_eq!(node_a["version"], env!("CARGO_PKG_VERSION"));
    assert!(node_a["started"].as_u64().unwrap() > 0);
    let table = s.cntnr(s.tmp.path(), &["nodes"]);
    let table = text(&table.stdout);
    assert!(table.starts_with("NODE     LEADER"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // SIGTERM the leader: it drains, exits 0, its node key vanishes at once
    // (the session is revoked, not left to expire) and the other leads.
    let (gone, stays) = if la {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    gone.signal("TERM");
    let st = gone.wait_exit(WAIT);
    assert!(
        st.success(),
        "leader exit: {st:?}; log:\n{}",
        gone.log_text()
    );
    assert!(
        gone.log_text().contains("session revoked"),
        "{}",
        gone.log_text()
    );
    let gone_key = s.key(&format!("nodes/{}", gone.node));
    assert!(
        s.raw_get(&gone_key).is_none(),
        "{gone_key} still present after exit"
    );
    common::wait_for(WAIT, "the other agent to take over", || {
        let (names, leader) = nodes(&s);
        (names == [stays.node.clone()]
            && leader.as_deref() == Some(stays.node.as_str())
            && is_leader(stays) == Some(true))
        .then_some(())
    });
    assert!(stays.running());
    let metrics = stays.get("/metrics").unwrap().1;
    assert!(metrics.contains("cntnr_leader 1"), "{metrics}");
}

#[test]
fn two_agents_elect_one_leader_and_fail_over_etcd() {
    two_agents_elect_one_leader_and_fail_over(Kind::Etcd);
}

#[test]
fn two_agents_elect_one_leader_and_fail_over_consul() {
    two_agents_elect_one_leader_and_fail_over(Kind::Consul);
}

#[test]
fn two_agents_elect_one_leader_and_fail_over_dir() {
    two_agents_elect_one_leader_and_fail_over(Kind::Dir);
}

fn invalid_project_does_not_stop_the_agent(kind: Kind) {
    let s = TestStore::new(kind, "broken");
    let dir = s.tmp.path();
    // A: hand-written into the store, invalid. B: deployed, valid.
    s.raw_put(
        &s.key("projects/a"),
        "services:\n  web:\n    imgae: nginx\n",
    );
    std::fs::write(
        dir.join("b.yaml"),
        format!(
            "services:\n  api:\n    image: {}\n    network_mode: none\n    command: [sleep, '3600']\n",
            common::test_image_ref()
        ),
    )
    .unwrap();
    let out = s.cntnr(dir, &["deploy", "-f", "b.yaml", "-p", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let mut agent = s.agent("n1");
    let status = common::wait_for(WAIT, "/status with both projects", || {
        let st = agent.status()?;
        (st["ready"] == true && st["projects"]["a"].is_object() && st["projects"]["b"].is_object())
            .then_some(st)
    });
    assert_eq!(status["projects"]["a"]["state"], "invalid");
    let a_errors = status["projects"]["a"]["errors"].as_array().unwrap();
    assert!(
        a_errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("imgae")),
        "{a_errors:?}"
    );
    assert_eq!(status["projects"]["b"]["state"], "valid");
    assert_eq!(
        status["projects"]["b"]["services"],
        serde_json::json!(["api"])
    );

    // A's status key names the error; B's has none.
    let a = common::wait_for(WAIT, "status/a/n1", || status_record(&s, "a", "n1"));
    let errors = a["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("unknown key `imgae`")),
        "{a}"
    );
    let b = common::wait_for(WAIT, "status/b/n1", || status_record(&s, "b", "n1"));
    assert_eq!(b["errors"], serde_json::json!([]));
    assert!(agent.running(), "agent died: {}", agent.log_text());
    let ls = common::wait_for(WAIT, "ls to show the status summary", || {
        let v = s.cntnr_json(&["ls"]);
        (v[0]["nodes"] == 1 && v[1]["nodes"] == 1).then_some(v)
    });
    assert_eq!(ls[0]["project"], "a");
    assert_eq!(ls[0]["valid"], false);
    assert!(
        ls[0]["errors"][0].as_str().unwrap().starts_with("n1: "),
        "{ls}"
    );
    assert_eq!(ls[1]["valid"], true);
    assert_eq!(ls[1]["errors"], serde_json::json!([]));
    let table = text(&s.cntnr(dir, &["ls"]).stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("invalid: ")),
        "{table}"
    );
    let ps = s.cntnr(dir, &["ps", "a"]);
    assert!(
        text(&ps.stdout).contains("unknown key `imgae`"),
        "{}",
        text(&ps.stdout)
    );

    // Fixing A over the watch clears its error; removing B removes its
    // status; the metrics count the projects.
    std::fs::write(
        dir.join("a.yaml"),
        format!(
            "services:\n  web:\n    image: {}\n    network_mode: none\n    command: [sleep, '3600']\n",
            common::test_image_ref()
        ),
    )
    .unwrap();
    let out = s.cntnr(dir, &["deploy", "-f", "a.yaml", "-p", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "A's error to clear", || {
        status_record(&s, "a", "n1").filter(|r| r["errors"] == serde_json::json!([]))
    });
    let out = s.cntnr(dir, &["rm", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "B's status to go", || {
        status_record(&s, "b", "n1").is_none().then_some(())
    });
    let metrics = agent.get("/metrics").unwrap().1;
    assert!(
        metrics.contains(r#"cntnr_projects{state="valid"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"cntnr_projects{state="invalid"} 0"#),
        "{metrics}"
    );
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));

    // SIGTERM: the session's keys go with it.
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.log_text());
    assert!(status_record(&s, "a", "n1").is_none());
    assert!(s.raw_get(&s.key("nodes/n1")).is_none());
}

#[test]
fn invalid_project_does_not_stop_the_agent_etcd() {
    invalid_project_does_not_stop_the_agent(Kind::Etcd);
}

#[test]
fn invalid_project_does_not_stop_the_agent_consul() {
    invalid_project_does_not_stop_the_agent(Kind::Consul);
}

#[test]
fn invalid_project_does_not_stop_the_agent_dir() {
    invalid_project_does_not_stop_the_agent(Kind::Dir);
}
