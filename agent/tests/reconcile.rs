//! The main path against real runc: a project written to the store (etcd,
//! Consul or a dir) becomes running containers; edits recreate only what
//! changed; scaling, removal, adoption after an agent restart, crash loops,
//! broken projects, an agent killed between `runc create` and `start`, and
//! the store down for 30 s. Every scenario runs against real etcd, real
//! Consul and a dir store (one `#[test]` per store, so they run in
//! parallel); see `store_outage` for what "down" means for a dir.
//!
//! Every agent gets its own state dir and runc `--root` (see `common`);
//! its Drop guard deletes every container and unmounts every bundle, even
//! when an assertion fails.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{deploy, running, status_record, text, Agent, Kind, OwnedStore, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A two-service project: `web` (replicas `web_replicas`, command tagged
/// with `tag` so changing it changes web's config hash) and `worker`.
fn project(web_replicas: u32, tag: &str) -> String {
    let image = common::test_image_ref();
    format!(
        "services:\n  web:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo web {tag}; exec sleep 3600']\n    deploy: {{replicas: {web_replicas}}}\n  worker:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo worker; exec sleep 3600']\n    depends_on: [web]\n"
    )
}

/// `cntnr deploy` to another store URL than the test store's (same prefix).
fn deploy_to(s: &TestStore, url: &str, name: &str, yaml: &str) {
    let file = s.tmp.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
        .args(["deploy", "-f", file.to_str().unwrap(), "-p", name])
        .args(["--store", url, "--prefix", &s.prefix])
        .current_dir(s.tmp.path())
        .env_remove("CNTNR_STORE")
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn wait_running(a: &Agent, ids: &[&str]) -> BTreeMap<String, u64> {
    common::wait_for(WAIT, &format!("exactly {ids:?} running"), || {
        let r = running(a);
        let all = a.runc_list();
        (r.keys().map(String::as_str).eq(ids.iter().copied()) && all.len() == ids.len())
            .then_some(r)
    })
}

fn container<'a>(rec: &'a Value, id: &str) -> Option<&'a Value> {
    rec["containers"].as_array()?.iter().find(|c| c["id"] == id)
}

fn bundles(a: &Agent) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(a.state_dir().join("bundles"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mounts_under(dir: &Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .count()
}

fn lifecycle(kind: Kind) {
    let s = TestStore::new(kind, "life");
    let mut a = s.agent("n1");

    // Deploy: every replica runs, and status says so.
    deploy(&s, "shop", &project(2, "v1"));
    let first = wait_running(&a, &["shop-web-1", "shop-web-2", "shop-worker-1"]);
    let rec = common::wait_for(WAIT, "status with three running containers", || {
        status_record(&s, "shop", "n1").filter(|r| {
            r["containers"]
                .as_array()
                .map(|c| c.len() == 3 && c.iter().all(|c| c["state"] == "running"))
                == Some(true)
        })
    });
    assert_eq!(rec["errors"], serde_json::json!([]), "{rec}");
    // The stop grace rides on the container, for a removal after the
    // project is gone from the store.
    let state = std::process::Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["state", "shop-web-1"])
        .output()
        .unwrap();
    let state: Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["annotations"]["cntnr.stop-grace"], "1000", "{state}");
    let web1 = container(&rec, "shop-web-1").unwrap();
    assert!(web1["config_hash"].as_str().unwrap().starts_with("v1-"));
    assert!(web1["started_at"].as_u64().unwrap() > 0, "{web1}");
    assert!(web1["generation"].as_u64().unwrap() > 0, "{web1}");
    let ps = text(&s.cntnr(s.tmp.path(), &["ps", "shop"]).stdout);
    assert_eq!(
        ps.lines().filter(|l| l.contains(" running ")).count(),
        3,
        "{ps}"
    );
    // The container's output is in its log.
    let logs = common::wait_for(WAIT, "web's log", || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
            .arg("--state-dir")
            .arg(a.state_dir())
            .args(["logs", "shop", "web", "--replica", "2"])
            .output()
            .unwrap();
        let t = text(&out.stdout);
        t.contains("web v1").then_some(t)
    });
    assert_eq!(logs, "web v1\n");

    // Edit web only: web's containers are recreated, worker's is not.
    deploy(&s, "shop", &project(2, "v2"));
    let second = common::wait_for(WAIT, "web recreated", || {
        let r = running(&a);
        (r.len() == 3
            && r.get("shop-web-1") != first.get("shop-web-1")
            && r.get("shop-web-2") != first.get("shop-web-2"))
        .then_some(r)
    });
    assert_eq!(
        second.get("shop-worker-1"),
        first.get("shop-worker-1"),
        "worker must not be touched"
    );

    // Scale up, then down: the highest replica goes.
    deploy(&s, "shop", &project(3, "v2"));
    let third = wait_running(
        &a,
        &["shop-web-1", "shop-web-2", "shop-web-3", "shop-worker-1"],
    );
    assert_eq!(third.get("shop-web-1"), second.get("shop-web-1"));
    deploy(&s, "shop", &project(1, "v2"));
    let fourth = wait_running(&a, &["shop-web-1", "shop-worker-1"]);
    assert_eq!(fourth.get("shop-web-1"), second.get("shop-web-1"));
    assert_eq!(fourth.get("shop-worker-1"), first.get("shop-worker-1"));
    common::wait_for(WAIT, "scaled-down bundles removed", || {
        (bundles(&a) == ["shop-web-1", "shop-worker-1"]).then_some(())
    });

    // Agent restarted (SIGTERM leaves containers running): nothing is
    // restarted or recreated.
    a.signal("TERM");
    assert!(a.wait_exit(WAIT).success(), "{}", a.log_text());
    assert_eq!(running(&a), fourth, "SIGTERM leaves containers running");
    a.restart(&[]);
    let a2 = &a;
    common::wait_for(WAIT, "the restarted agent to report", || {
        a2.status().filter(|st| st["ready"] == true)
    });
    common::wait_for(WAIT, "status again", || {
        status_record(&s, "shop", "n1")
            .filter(|r| r["containers"].as_array().is_some_and(|c| c.len() == 2))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running(a2), fourth, "adopted, not restarted");
    assert!(
        !a2.log_text().contains("applying"),
        "no action after a restart with unchanged specs:\n{}",
        a2.log_text()
    );

    // Remove the project: containers, bundles, mounts and status go.
    let out = s.cntnr(s.tmp.path(), &["rm", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_running(a2, &[]);
    common::wait_for(WAIT, "bundles removed", || {
        bundles(a2).is_empty().then_some(())
    });
    assert_eq!(mounts_under(a2.state_dir()), 0);
    common::wait_for(WAIT, "status removed", || {
        status_record(&s, "shop", "n1").is_none().then_some(())
    });
    let metrics = a2.get("/metrics").unwrap().1;
    assert!(
        metrics.contains("cntnr_actions_total{kind=\"remove\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cntnr_reconcile_duration_seconds"),
        "{metrics}"
    );
}

#[test]
fn deploy_edit_scale_restart_remove_dir() {
    lifecycle(Kind::Dir);
}

#[test]
fn deploy_edit_scale_restart_remove_etcd() {
    lifecycle(Kind::Etcd);
}

#[test]
fn deploy_edit_scale_restart_remove_consul() {
    lifecycle(Kind::Consul);
}

fn crash_loop(kind: Kind) {
    let s = TestStore::new(kind, "crash");
    let a = s.agent("n1");
    let image = common::test_image_ref();
    deploy(
        &s,
        "loop",
        &format!(
            "services:\n  bad:\n    image: {image}\n    network_mode: none\n    restart: always\n    command: [sh, -c, 'exit 3']\n"
        ),
    );
    let rec = common::wait_for(WAIT, "a few restarts", || {
        status_record(&s, "loop", "n1").filter(|r| {
            container(r, "loop-bad-1").is_some_and(|c| c["restarts"].as_u64() >= Some(3))
        })
    });
    let c = container(&rec, "loop-bad-1").unwrap();
    assert_eq!(c["exit_code"], 3, "{c}");
    // Backoff: 1s, 2s, 4s (minus up to 20% jitter), so 3 restarts take
    // seconds and the count grows slowly; measure agent CPU meanwhile.
    let cpu0 = cpu_ticks(a.pid());
    let restarts0 = c["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let cpu = cpu_ticks(a.pid()) - cpu0;
    let rec = status_record(&s, "loop", "n1").unwrap();
    let restarts = container(&rec, "loop-bad-1").unwrap()["restarts"]
        .as_u64()
        .unwrap();
    assert!(
        restarts - restarts0 <= 2,
        "backoff must slow restarts down: {restarts0} -> {restarts} in 5s"
    );
    // 100 ticks per second: under 10% of one core over 5 s.
    assert!(cpu < 50, "agent used {cpu} ticks in 5s");
}

#[test]
fn crash_loop_backs_off_and_the_agent_stays_idle_dir() {
    crash_loop(Kind::Dir);
}

#[test]
fn crash_loop_backs_off_and_the_agent_stays_idle_etcd() {
    crash_loop(Kind::Etcd);
}

#[test]
fn crash_loop_backs_off_and_the_agent_stays_idle_consul() {
    crash_loop(Kind::Consul);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn broken_projects(kind: Kind) {
    let s = TestStore::new(kind, "broken");
    let a = s.agent("n1");
    s.raw_put(&s.key("projects/a"), "services:\n  web:\n    imgae: x\n");
    let image = common::test_image_ref();
    deploy(
        &s,
        "b",
        &format!("services:\n  api:\n    image: {image}\n    network_mode: none\n    command: [sleep, '3600']\n"),
    );
    deploy(
        &s,
        "c",
        "services:\n  gone:\n    image: oci:/nonexistent/layout:latest\n    network_mode: none\n",
    );
    deploy(
        &s,
        "d",
        &format!("services:\n  api:\n    image: {image}\n    network_mode: none\n    deploy: {{placement: {{constraints: ['node.labels.zone == nowhere']}}}}\n"),
    );
    wait_running(&a, &["b-api-1"]);
    let rd = common::wait_for(WAIT, "D's placement error", || {
        status_record(&s, "d", "n1").filter(|r| !r["errors"].as_array().unwrap().is_empty())
    });
    let err = rd["errors"][0].as_str().unwrap();
    assert!(
        err.starts_with("not placed: api") && err.contains("node.labels.zone"),
        "{rd}"
    );
    let ra = common::wait_for(WAIT, "A's status", || status_record(&s, "a", "n1"));
    assert!(ra["errors"][0].as_str().unwrap().contains("imgae"), "{ra}");
    let rc = common::wait_for(WAIT, "C's image error", || {
        status_record(&s, "c", "n1").filter(|r| !r["errors"].as_array().unwrap().is_empty())
    });
    let err = rc["errors"][0].as_str().unwrap();
    assert!(
        err.contains("c-gone-1") && err.contains("/nonexistent/layout"),
        "{rc}"
    );
    assert_eq!(container(&rc, "c-gone-1").unwrap()["state"], "failed");
    // The failing create is retried with backoff, not in a loop.
    let failures = |a: &Agent| -> u64 {
        let m = a.get("/metrics").unwrap().1;
        m.lines()
            .find(|l| l.starts_with("cntnr_action_failures_total{kind=\"create\"}"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let f0 = failures(&a);
    std::thread::sleep(Duration::from_secs(4));
    let f1 = failures(&a);
    assert!(f1 - f0 <= 3, "create retried {} times in 4s", f1 - f0);

    // Breaking B keeps its last good container running.
    let pid = running(&a)["b-api-1"];
    s.raw_put(&s.key("projects/b"), "services:\n  api:\n    imgae: x\n");
    common::wait_for(WAIT, "B's error", || {
        status_record(&s, "b", "n1")
            .filter(|r| r["errors"][0].as_str().is_some_and(|e| e.contains("imgae")))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(running(&a).get("b-api-1"), Some(&pid));
}

#[test]
fn invalid_project_and_missing_image_leave_others_running_dir() {
    broken_projects(Kind::Dir);
}

#[test]
fn invalid_project_and_missing_image_leave_others_running_etcd() {
    broken_projects(Kind::Etcd);
}

#[test]
fn invalid_project_and_missing_image_leave_others_running_consul() {
    broken_projects(Kind::Consul);
}

/// On etcd and Consul the killed agent's session outlives it (until its
/// TTL): the restarted agent works beside it, without the leadership.
fn killed_at(kind: Kind, failpoint: &str) {
    let s = TestStore::new(kind, failpoint);
    let mut a = s.agent_with("n1", &[], &[("CNTNR_FAILPOINT", failpoint)]);
    deploy(&s, "fp", &project(2, "v1"));
    let st = a.wait_exit(WAIT);
    assert_eq!(
        st.code(),
        None,
        "killed by SIGKILL: {st:?}\n{}",
        a.log_text()
    );
    assert!(a.log_text().contains(&format!("failpoint {failpoint}")));
    a.restart(&[]);
    let ids = ["fp-web-1", "fp-web-2", "fp-worker-1"];
    wait_running(&a, &ids);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a.runc_list().len(), 3, "no orphans: {:?}", a.runc_list());
    assert_eq!(bundles(&a), ids);
}

#[test]
fn no_duplicate_after_kill_between_create_and_start_dir() {
    killed_at(Kind::Dir, "after-create");
}

#[test]
fn no_duplicate_after_kill_between_create_and_start_etcd() {
    killed_at(Kind::Etcd, "after-create");
}

#[test]
fn no_duplicate_after_kill_between_create_and_start_consul() {
    killed_at(Kind::Consul, "after-create");
}

#[test]
fn no_duplicate_after_kill_right_after_start_dir() {
    killed_at(Kind::Dir, "after-start");
}

#[test]
fn no_duplicate_after_kill_right_after_start_etcd() {
    killed_at(Kind::Etcd, "after-start");
}

#[test]
fn no_duplicate_after_kill_right_after_start_consul() {
    killed_at(Kind::Consul, "after-start");
}

/// An agent killed right after `runc create`, and the container's shim
/// killed too before the agent comes back: the container is `created`, but
/// its stdio and its reaper are gone, so the restarted agent recreates it
/// instead of starting it (the runc driver reports it half-created).
#[test]
fn created_container_whose_shim_died_is_recreated() {
    let s = TestStore::new(Kind::Dir, "shimgone");
    let mut a = s.agent_with("n1", &[], &[("CNTNR_FAILPOINT", "after-create")]);
    deploy(&s, "fp", &project(1, "v1"));
    let st = a.wait_exit(WAIT);
    assert_eq!(st.code(), None, "killed by SIGKILL: {st:?}");
    assert_eq!(
        a.runc_list(),
        [("fp-web-1".to_string(), "created".to_string())]
    );
    assert_eq!(common::kill_shims(a.state_dir()), 1);
    a.restart(&[]);
    wait_running(&a, &["fp-web-1", "fp-worker-1"]);
    let log = a.log_text();
    assert!(log.contains("action=recreate fp-web-1"), "{log}");
    // The recreated container's output reaches its log again.
    common::wait_for(WAIT, "web's log", || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
            .arg("--state-dir")
            .arg(a.state_dir())
            .args(["logs", "fp", "web"])
            .output()
            .unwrap();
        text(&out.stdout).contains("web v1").then_some(())
    });
}

fn two_agents_spread_replicas(kind: Kind) {
    let s = TestStore::new(kind, "spread");
    let a = s.agent("n1");
    let b = s.agent("n2");
    common::wait_for(WAIT, "both nodes registered", || {
        let v = s.cntnr_json(&["nodes"]);
        (v["nodes"].as_array().map(Vec::len) == Some(2) && v["leader"].is_string()).then_some(())
    });
    deploy(&s, "shop", &project(2, "v1"));
    let (ra, rb) = common::wait_for(WAIT, "three containers over two nodes", || {
        let (ra, rb) = (running(&a), running(&b));
        (ra.len() + rb.len() == 3 && a.runc_list().len() + b.runc_list().len() == 3)
            .then_some((ra, rb))
    });
    // Spread: one web replica per node; the worker on either.
    let webs = |r: &BTreeMap<String, u64>| r.keys().filter(|k| k.contains("-web-")).count();
    assert_eq!((webs(&ra), webs(&rb)), (1, 1), "{ra:?} {rb:?}");
    let sched: Value = serde_json::from_str(&s.raw_get(&s.key("schedule/shop")).unwrap()).unwrap();
    let leaders: Vec<bool> = [&a, &b]
        .iter()
        .map(|x| x.status().unwrap()["is_leader"] == true)
        .collect();
    assert_eq!(
        leaders.iter().filter(|l| **l).count(),
        1,
        "exactly one leader"
    );
    let leader = if leaders[0] { "n1" } else { "n2" };
    assert_eq!(sched["leader"], leader, "{sched}");
    for (node, r) in [("n1", &ra), ("n2", &rb)] {
        let rec = common::wait_for(WAIT, "each node's status", || {
            status_record(&s, "shop", node)
                .filter(|rec| rec["containers"].as_array().map(Vec::len) == Some(r.len()))
        });
        assert_eq!(rec["node"], node);
    }
}

#[test]
fn two_agents_spread_replicas_dir() {
    two_agents_spread_replicas(Kind::Dir);
}

#[test]
fn two_agents_spread_replicas_etcd() {
    two_agents_spread_replicas(Kind::Etcd);
}

#[test]
fn two_agents_spread_replicas_consul() {
    two_agents_spread_replicas(Kind::Consul);
}

#[test]
fn image_import_ls_rm() {
    let state = tempfile::tempdir().unwrap();
    let cntnr = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .output()
            .unwrap()
    };
    let image = common::test_image_ref();
    let out = cntnr(&["image", "import", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&image),
        "{}",
        text(&out.stdout)
    );
    let ls = cntnr(&["image", "ls", "--json"]);
    let v: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["reference"], image.as_str());
    assert_eq!(v[0]["layers"], 1);
    let table = text(&cntnr(&["image", "ls"]).stdout);
    assert!(table.starts_with("REFERENCE"), "{table}");
    let out = cntnr(&["image", "rm", &image]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = cntnr(&["image", "rm", &image]);
    assert_eq!(out.status.code(), Some(1), "removing twice is a user error");
    let v: Value = serde_json::from_slice(&cntnr(&["image", "ls", "--json"]).stdout).unwrap();
    assert_eq!(v, serde_json::json!([]));
    // Logs of a container that never ran here: a one-line user error.
    let out = cntnr(&["logs", "shop", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no logs for shop-web-1"));
}

/// The store down for 30 s (longer than the session TTL, 15 s, so the
/// session is lost): containers keep running, and a change made while the
/// agent could not see the store is applied exactly once after recovery.
///
/// etcd and Consul: a server of the test's own (persistent, so the data
/// survives), stopped and restarted; a stopped server takes no writes, so
/// the change is deployed the moment it is back, before the agent has
/// reconnected (its watch and session retries back off up to 10 s).
/// Dir: the store cannot go down, but its directory can go away: it is
/// moved aside (every store call of the agent fails, the writer lock file
/// being gone with it) and the change is deployed *into the moved
/// directory* during the outage, then it is moved back.
fn store_outage(kind: Kind) {
    let (s, mut store) = TestStore::owned(kind, "outage");
    let a = s.agent("n1");
    deploy(&s, "shop", &project(2, "v1"));
    let ids = ["shop-web-1", "shop-web-2", "shop-worker-1"];
    let before = wait_running(&a, &ids);
    let key = s.key("status/shop/n1");
    let status_with = |store: &OwnedStore, n: usize| {
        common::wait_for(WAIT, &format!("status with {n} containers"), || {
            let v: Value = serde_json::from_str(&store.get(&key)?).ok()?;
            (v["containers"].as_array()?.len() == n).then_some(())
        })
    };
    status_with(&store, 3);

    store.down();
    if let OwnedStore::Dir(root) = &store {
        let away = format!("dir://{}", OwnedStore::dir_away(root).display());
        deploy_to(&s, &away, "shop", &project(3, "v1"));
    }
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(
        running(&a),
        before,
        "containers keep running without the store (and nothing new starts):\n{}",
        a.log_text()
    );
    store.up();
    if !matches!(store, OwnedStore::Dir(_)) {
        deploy(&s, "shop", &project(3, "v1"));
    }

    let after = wait_running(
        &a,
        &["shop-web-1", "shop-web-2", "shop-web-3", "shop-worker-1"],
    );
    for id in ids {
        assert_eq!(after.get(id), before.get(id), "{id} untouched");
    }
    // The status key went with the lost session; the new session writes it
    // again.
    status_with(&store, 4);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running(&a), after, "nothing restarted after recovery");
    let log = a.log_text();
    assert_eq!(
        log.matches("action=create shop-web-3").count(),
        1,
        "created exactly once:\n{log}"
    );
}

#[test]
fn store_outage_leaves_containers_running_and_a_later_change_applies_once_etcd() {
    store_outage(Kind::Etcd);
}

#[test]
fn store_outage_leaves_containers_running_and_a_later_change_applies_once_consul() {
    store_outage(Kind::Consul);
}

#[test]
fn store_outage_leaves_containers_running_and_a_later_change_applies_once_dir() {
    store_outage(Kind::Dir);
}

/// Image gc: once a project no longer names an image, the agent drops it
/// (at its resync period), while the image in use stays.
#[test]
fn image_no_project_uses_is_collected() {
    let s = TestStore::new(Kind::Dir, "gc");
    let mut a = s.agent_with("n1", &["--resync", "1s"], &[]);
    // A second reference to the same layout: another image name.
    let copy = s.tmp.path().join("image-copy");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::test_image())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let first = common::test_image_ref();
    let second = format!("oci:{}:latest", copy.display());
    let yaml = |image: &str| {
        format!("services:\n  app:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sleep, '3600']\n")
    };
    let images = |a: &Agent| -> Vec<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
            .arg("--state-dir")
            .arg(a.state_dir())
            .args(["image", "ls", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|i| i["reference"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    deploy(&s, "gc", &yaml(&first));
    wait_running(&a, &["gc-app-1"]);
    assert_eq!(images(&a), vec![first.clone()]);
    deploy(&s, "gc", &yaml(&second));
    common::wait_for(WAIT, "the first image collected", || {
        (images(&a) == vec![second.clone()]).then_some(())
    });
    // The container runs from the image that stayed.
    let running = wait_running(&a, &["gc-app-1"]);
    assert_eq!(running.len(), 1);
    assert!(a.running(), "{}", a.log_text());
}
