//! Rolling updates (issue 9, `deploy.update_config`): one real agent on
//! real etcd, and on real Consul, running three replicas of a service with a health check and
//! `parallelism: 1`.
//!
//! - an update: the status records, sampled throughout, never show more
//!   than one replica that is not running, healthy and on the old or new
//!   hash; every replica ends on the new hash;
//! - a bad update (its health check fails) with `failure_action: rollback`:
//!   the service returns to the last healthy hash, and the replicas that
//!   were never advanced keep their init pid (never killed);
//! - a bad update with `failure_action: pause`: it stops after the first
//!   replica; `cntnr rollback PROJECT` brings it back, others untouched;
//! - `order: start-first`: a surge replica (number 4) runs the new hash
//!   first; at every sample at least three replicas are running and
//!   healthy; the end state is replicas 1..3 on the new hash and no surge
//!   container left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{deploy, text, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// `version` sets an env var (so the hash); `healthy: false` makes the
/// check fail (the file it tests is never created).
fn web(version: u32, healthy: bool, action: &str) -> String {
    web_with(
        version,
        healthy,
        &format!("{{parallelism: 1, monitor: 2s, failure_action: {action}}}"),
    )
}

/// [`web`] with the given `update_config` (flow YAML). Named for the
/// registry (`cntnr.service.name`) but with `network_mode: none`, so it has
/// no entry a client could reach: its rollouts must not wait for one.
fn web_with(version: u32, healthy: bool, update_config: &str) -> String {
    let image = common::test_image_ref();
    let cmd = if healthy {
        "touch /tmp/ok; exec sleep 3600"
    } else {
        "exec sleep 3600"
    };
    format!(
        "services:\n  web:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, '{cmd}']\n    environment: {{V: '{version}'}}\n    annotations: {{cntnr.service.name: rollout-web}}\n    healthcheck: {{test: [CMD-SHELL, 'test -f /tmp/ok'], interval: 1s, timeout: 2s, retries: 1}}\n    deploy: {{replicas: 3, update_config: {update_config}}}\n"
    )
}

/// One replica as its status says: (hash, state, health).
type Rep = (String, String, String);

fn replicas(s: &TestStore, project: &str) -> BTreeMap<u64, Rep> {
    let Some(t) = s.raw_get(&s.key(&format!("status/{project}/n1"))) else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_str(&t).expect("status record is JSON");
    v["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["replica"].as_u64().unwrap(),
                (
                    c["config_hash"].as_str().unwrap_or("").to_string(),
                    c["state"].as_str().unwrap_or("").to_string(),
                    c["health"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

fn schedule(s: &TestStore, project: &str) -> Value {
    s.raw_get(&s.key(&format!("schedule/{project}")))
        .map(|t| serde_json::from_str(&t).expect("schedule record is JSON"))
        .unwrap_or(Value::Null)
}

/// All three replicas running, healthy, on one hash; that hash.
fn all_healthy(s: &TestStore, project: &str) -> Option<String> {
    let r = replicas(s, project);
    let hashes: BTreeSet<&String> = r.values().map(|(h, _, _)| h).collect();
    (r.len() == 3
        && hashes.len() == 1
        && r.values()
            .all(|(_, st, he)| st == "running" && he == "healthy"))
    .then(|| hashes.into_iter().next().unwrap().clone())
}

/// Waits until the leader recorded the project as fully healthy at `hash`
/// (the schedule's `healthy_spec` is set and no rollout is left).
fn settled(s: &TestStore, project: &str) -> String {
    common::wait_for(WAIT, "all replicas healthy and recorded", || {
        let h = all_healthy(s, project)?;
        let sched = schedule(s, project);
        (sched["healthy_spec"].is_string() && sched.get("rollouts").is_none()).then_some(h)
    })
}

/// Running containers under the agent's runc root: id → init pid.
fn pids(a: &Agent) -> BTreeMap<String, u64> {
    common::wait_for(WAIT, "three containers listed", || {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(a.runtime_root())
            .args(["list", "--format", "json"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let m: BTreeMap<String, u64> = v
            .as_array()?
            .iter()
            .filter(|c| c["status"] == "running")
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        (m.len() == 3).then_some(m)
    })
}

fn rolling_update_rollback_and_manual_rollback(kind: Kind) {
    let s = TestStore::new(kind, "rollout");
    let ttl = if kind == Kind::Consul { "10s" } else { "3s" };
    let agent = s.agent_with("n1", &["--session-ttl", ttl], &[]);
    let p = "roll";
    deploy(&s, p, &web(1, true, "rollback"));
    let h1 = settled(&s, p);

    // 1. A good update, one replica at a time.
    deploy(&s, p, &web(2, true, "rollback"));
    let mut worst = 0;
    let mut seen_rollout = false;
    let h2 = common::wait_for(WAIT, "every replica on the new hash", || {
        let r = replicas(&s, p);
        // Down or updating: not running and healthy.
        let busy = (1..=3u64)
            .filter(|n| {
                r.get(n)
                    .is_none_or(|(_, st, he)| st != "running" || he != "healthy")
            })
            .count();
        worst = worst.max(busy);
        let sched = schedule(&s, p);
        seen_rollout |= sched["rollouts"]["web"].is_object();
        let h = all_healthy(&s, p)?;
        (h != h1).then_some(h)
    });
    assert!(
        worst <= 1,
        "at most one replica down or updating at once, saw {worst}"
    );
    assert!(seen_rollout, "the schedule carried the rollout");
    assert_eq!(settled(&s, p), h2);

    // 2. A bad update with failure_action rollback: back to h2; replicas 2
    //    and 3 were never advanced, so never killed.
    let before = pids(&agent);
    deploy(&s, p, &web(3, false, "rollback"));
    let mut worst = 0;
    common::wait_for(WAIT, "the rollout rolled back", || {
        let r = replicas(&s, p);
        let busy = (1..=3u64)
            .filter(|n| {
                r.get(n)
                    .is_none_or(|(_, st, he)| st != "running" || he != "healthy")
            })
            .count();
        worst = worst.max(busy);
        let sched = schedule(&s, p);
        (sched["rollouts"]["web"]["phase"] == "rolled-back"
            && all_healthy(&s, p).as_ref() == Some(&h2))
        .then_some(())
    });
    assert!(worst <= 1, "at most one replica down at once, saw {worst}");
    let after = pids(&agent);
    for id in [format!("{p}-web-2"), format!("{p}-web-3")] {
        assert_eq!(before.get(&id), after.get(&id), "{id} was never restarted");
    }
    assert_ne!(
        before.get(&format!("{p}-web-1")),
        after.get(&format!("{p}-web-1"))
    );
    let ps = s.cntnr(s.tmp.path(), &["ps", p]);
    assert!(
        text(&ps.stdout).contains("rolling update of web: rolled back"),
        "{}",
        text(&ps.stdout)
    );

    // 3. A bad update with pause, rolled back by hand.
    deploy(&s, p, &web(4, false, "pause"));
    common::wait_for(WAIT, "the rollout paused", || {
        (schedule(&s, p)["rollouts"]["web"]["phase"] == "paused").then_some(())
    });
    let before = pids(&agent);
    let out = s.cntnr(s.tmp.path(), &["rollback", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "the manual rollback finished", || {
        let sched = schedule(&s, p);
        (sched["rollouts"]["web"]["phase"] == "rolled-back"
            && all_healthy(&s, p).as_ref() == Some(&h2))
        .then_some(())
    });
    let after = pids(&agent);
    for id in [format!("{p}-web-2"), format!("{p}-web-3")] {
        assert_eq!(before.get(&id), after.get(&id), "{id} was never restarted");
    }
    // Nothing left to roll back.
    let out = s.cntnr(s.tmp.path(), &["rollback", p]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let out = s.cntnr(s.tmp.path(), &["rm", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "containers removed", || {
        agent.runc_list().is_empty().then_some(())
    });
}

#[test]
fn rolling_update_rollback_and_manual_rollback_etcd() {
    rolling_update_rollback_and_manual_rollback(Kind::Etcd);
}

#[test]
fn rolling_update_rollback_and_manual_rollback_consul() {
    rolling_update_rollback_and_manual_rollback(Kind::Consul);
}

fn start_first_keeps_capacity_with_a_surge_replica(kind: Kind) {
    let s = TestStore::new(kind, "rollout-surge");
    let ttl = if kind == Kind::Consul { "10s" } else { "3s" };
    let agent = s.agent_with("n1", &["--session-ttl", ttl], &[]);
    let p = "surge";
    let cfg = "{parallelism: 1, monitor: 2s, order: start-first}";
    deploy(&s, p, &web_with(1, true, cfg));
    let h1 = settled(&s, p);

    deploy(&s, p, &web_with(2, true, cfg));
    let mut fewest = usize::MAX;
    let mut surge_seen = false;
    let h2 = common::wait_for(WAIT, "every replica on the new hash, no surge left", || {
        let r = replicas(&s, p);
        // Running and healthy, whatever the hash or replica number.
        let ready = r
            .values()
            .filter(|(_, st, he)| st == "running" && he == "healthy")
            .count();
        fewest = fewest.min(ready);
        surge_seen |= r.contains_key(&4);
        let sched = schedule(&s, p);
        surge_seen |= sched["rollouts"]["web"]["surge"]["4"].is_object();
        let h = all_healthy(&s, p)?;
        let ids: BTreeSet<String> = agent.runc_list().into_iter().map(|(id, _)| id).collect();
        let want: BTreeSet<String> = (1..=3).map(|n| format!("{p}-web-{n}")).collect();
        (h != h1 && ids == want).then_some(h)
    });
    assert!(surge_seen, "a surge replica ran during the update");
    assert!(
        fewest >= 3,
        "at least 3 replicas running and healthy at every sample, saw {fewest}"
    );
    assert_eq!(settled(&s, p), h2);
    let r = replicas(&s, p);
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(r.values().all(|(h, _, _)| *h == h2));
    let ids: BTreeSet<String> = agent.runc_list().into_iter().map(|(id, _)| id).collect();
    assert!(!ids.contains(&format!("{p}-web-4")), "{ids:?}");

    // A bad start-first update: only its surge replica ever runs the new
    // hash; it fails, the rollback has nothing to move, and the old
    // replicas were never touched.
    let before = pids(&agent);
    let bad = "{parallelism: 1, monitor: 2s, order: start-first, failure_action: rollback}";
    deploy(&s, p, &web_with(3, false, bad));
    let mut fewest = usize::MAX;
    common::wait_for(WAIT, "the bad update rolled back, its surge gone", || {
        let r = replicas(&s, p);
        let ready = r
            .values()
            .filter(|(_, st, he)| st == "running" && he == "healthy")
            .count();
        fewest = fewest.min(ready);
        let sched = schedule(&s, p);
        let ids: BTreeSet<String> = agent.runc_list().into_iter().map(|(id, _)| id).collect();
        let want: BTreeSet<String> = (1..=3).map(|n| format!("{p}-web-{n}")).collect();
        (sched["rollouts"]["web"]["phase"] == "rolled-back"
            && all_healthy(&s, p).as_ref() == Some(&h2)
            && ids == want)
            .then_some(())
    });
    assert!(fewest >= 3, "at least 3 ready throughout, saw {fewest}");
    assert_eq!(pids(&agent), before, "no old replica was restarted");
    let ps = s.cntnr(s.tmp.path(), &["ps", p]);
    assert!(
        text(&ps.stdout).contains("rolling update of web: rolled back"),
        "{}",
        text(&ps.stdout)
    );

    let out = s.cntnr(s.tmp.path(), &["rm", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::wait_for(WAIT, "containers removed", || {
        agent.runc_list().is_empty().then_some(())
    });
}

#[test]
fn start_first_keeps_capacity_with_a_surge_replica_etcd() {
    start_first_keeps_capacity_with_a_surge_replica(Kind::Etcd);
}

#[test]
fn start_first_keeps_capacity_with_a_surge_replica_consul() {
    start_first_keeps_capacity_with_a_surge_replica(Kind::Consul);
}
