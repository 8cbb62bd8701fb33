//! Env sync and replica elections through the real agent (issue 7):
//! busybox containers that print what they see, real runc, real etcd.
//!
//! - `cntnr config set` in restart mode recreates the replicas with the new
//!   environment; in signal mode the process reads the new
//!   `/run/cntnr/env` after the signal and is not recreated; `none` leaves
//!   the container alone; a burst of 20 writes within the quiet period
//!   recreates each replica once.
//! - A missing key in wait mode: status names it; setting it starts the
//!   container.
//! - A compose file reading `../other/secret` is rejected at deploy.
//! - A synced value appears nowhere in the agent's log, `/status`,
//!   `/metrics`, the status record or `cntnr ps --json`.
//! - Election with 3 replicas on 2 agents: exactly one `true`; the leader's
//!   container killed: a new leader with a greater token; the leader's
//!   agent SIGSTOPped: its file's `valid-until` passes before another
//!   replica's file says `true`, with a greater token.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use cntnr_agent::election_replica::{parse_leader_file, LeaderState};
use common::{deploy_output as deploy, running, text, wait_for, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn config_set(s: &TestStore, key: &str, value: &str) {
    let out = s.cntnr(s.tmp.path(), &["config", "set", "shop", key, value]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn logs(a: &Agent, service: &str, replica: u32) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cntnr"))
        .arg("--state-dir")
        .arg(a.state_dir())
        .args(["logs", "shop", service, "--replica", &replica.to_string()])
        .output()
        .unwrap();
    text(&out.stdout)
}

fn status_record(s: &TestStore, node: &str) -> Option<Value> {
    common::status_record(s, "shop", node)
}

fn recreates(a: &Agent, id: &str) -> usize {
    a.log_text()
        .lines()
        .filter(|l| l.contains("env sync: values changed; recreating") && l.contains(id))
        .count()
}

fn config_changes_per_mode_burst_and_secrets(kind: Kind) {
    let s = TestStore::new(kind, "envmodes");
    let a = s.agent_with("n1", &["--env-debounce", "1s"], &[]);
    let img = common::test_image_ref();
    config_set(&s, "greeting", "s3cret-one");
    let svc = |name: &str, script: &str, extra: &str| {
        format!(
            "  {name}:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, '{script}']\n    annotations:\n      cntnr.env.GREETING: kv:greeting\n{extra}"
        )
    };
    let yaml = format!(
        "services:\n{}{}{}",
        svc(
            "web",
            "echo web:$$GREETING; exec sleep 3600",
            "    deploy: {replicas: 2}\n"
        ),
        svc(
            "sig",
            "echo sig:$$GREETING; trap \"echo hup:\\$$(cat /run/cntnr/env)\" HUP; while true; do sleep 0.1; done",
            "      cntnr.env-on-change: signal:SIGHUP\n"
        ),
        svc(
            "quiet",
            "echo quiet:$$GREETING; exec sleep 3600",
            "      cntnr.env-on-change: none\n"
        ),
    );
    let out = deploy(&s, "shop", &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ids = ["shop-quiet-1", "shop-sig-1", "shop-web-1", "shop-web-2"];
    let first = wait_for(WAIT, "4 containers running", || {
        let r = running(&a);
        r.keys().map(String::as_str).eq(ids).then_some(r)
    });
    for (svc, r) in [("web", 1), ("web", 2), ("sig", 1), ("quiet", 1)] {
        wait_for(WAIT, &format!("{svc}-{r} started with the value"), || {
            logs(&a, svc, r)
                .contains(&format!("{svc}:s3cret-one"))
                .then_some(())
        });
    }

    // One change.
    config_set(&s, "greeting", "s3cret-two");
    wait_for(WAIT, "web recreated with the new value", || {
        let r = running(&a);
        (r.get("shop-web-1") != first.get("shop-web-1")
            && r.get("shop-web-2") != first.get("shop-web-2")
            && r.len() == 4
            && logs(&a, "web", 1).contains("web:s3cret-two")
            && logs(&a, "web", 2).contains("web:s3cret-two"))
        .then_some(())
    });
    wait_for(WAIT, "sig re-read the file after SIGHUP", || {
        logs(&a, "sig", 1)
            .contains("hup:GREETING=s3cret-two")
            .then_some(())
    });
    let now = running(&a);
    assert_eq!(
        now.get("shop-sig-1"),
        first.get("shop-sig-1"),
        "sig not recreated"
    );
    assert_eq!(
        now.get("shop-quiet-1"),
        first.get("shop-quiet-1"),
        "none: untouched"
    );
    assert!(!logs(&a, "quiet", 1).contains("s3cret-two"));
    assert_eq!(recreates(&a, "shop-web-1"), 1);
    assert_eq!(recreates(&a, "shop-web-2"), 1);
    // One at a time: replica 2 went only after replica 1 was running again.
    let log = a.log_text();
    let lines: Vec<&str> = log.lines().collect();
    let at = |f: &dyn Fn(&str) -> bool| lines.iter().position(|l| f(l)).unwrap();
    let r1 = at(&|l| l.contains("values changed; recreating") && l.contains("shop-web-1"));
    let r2 = at(&|l| l.contains("values changed; recreating") && l.contains("shop-web-2"));
    let started = lines
        .iter()
        .enumerate()
        .position(|(i, l)| i > r1 && l.contains("applying") && l.contains("start shop-web-1"))
        .expect("web-1 started again");
    assert!(r1 < started && started < r2, "{log}");

    // 20 writes within the quiet period: each replica recreated once more.
    for i in 0..20 {
        config_set(&s, "greeting", &format!("burst-{i}"));
    }
    wait_for(WAIT, "web on the burst's last value", || {
        (logs(&a, "web", 1).contains("web:burst-19") && logs(&a, "web", 2).contains("web:burst-19"))
            .then_some(())
    });
    // Anything still pending would act within the quiet period.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(recreates(&a, "shop-web-1"), 2, "one recreate per burst");
    assert_eq!(recreates(&a, "shop-web-2"), 2, "one recreate per burst");

    // The values are nowhere but in the containers.
    let (_, status) = a.get("/status").unwrap();
    let (_, metrics) = a.get("/metrics").unwrap();
    let record = s.raw_get(&s.key("status/shop/n1")).unwrap_or_default();
    let ps = text(&s.cntnr(s.tmp.path(), &["ps", "shop", "--json"]).stdout);
    for (what, body) in [
        ("agent log", a.log_text()),
        ("/status", status),
        ("/metrics", metrics),
        ("status record", record),
        ("cntnr ps", ps),
    ] {
        for secret in ["s3cret-one", "s3cret-two", "burst-"] {
            assert!(!body.contains(secret), "{secret} in the {what}:\n{body}");
        }
    }
}

fn missing_key_waits_and_setting_it_starts_the_container(kind: Kind) {
    let s = TestStore::new(kind, "envwait");
    let a = s.agent("n1");
    let img = common::test_image_ref();
    let yaml = format!(
        "services:\n  app:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo token:$$TOKEN; exec sleep 3600']\n    annotations:\n      cntnr.env.TOKEN: kv:api/token\n  loose:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo loose:[$$TOKEN]; exec sleep 3600']\n    annotations:\n      cntnr.env.TOKEN: kv:api/token\n      cntnr.env-missing: empty\n"
    );
    let out = deploy(&s, "shop", &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rec = wait_for(WAIT, "status naming the missing key", || {
        status_record(&s, "n1").filter(|r| {
            r["containers"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["id"] == "shop-app-1"
                        && c["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("TOKEN (kv:api/token)"))
                })
            })
        })
    });
    assert!(!running(&a).contains_key("shop-app-1"), "{rec}");
    // empty mode started at once, with an empty value.
    wait_for(WAIT, "loose started empty", || {
        logs(&a, "loose", 1).contains("loose:[]").then_some(())
    });
    config_set(&s, "api/token", "tok-123");
    wait_for(WAIT, "app started with the value", || {
        logs(&a, "app", 1).contains("token:tok-123").then_some(())
    });
}

#[test]
fn reading_another_projects_keys_is_rejected_at_deploy() {
    let s = TestStore::new(Kind::Etcd, "envesc");
    let img = common::test_image_ref();
    for key in ["../other/secret", "a/../../other/secret", "x..y"] {
        let yaml = format!(
            "services:\n  web:\n    image: {img}\n    annotations:\n      cntnr.env.SECRET: kv:{key}\n"
        );
        let out = deploy(&s, "shop", &yaml);
        assert_eq!(out.status.code(), Some(1), "{key}");
        let err = text(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(
                "project \"shop\", service \"web\", key \"annotations.cntnr.env.SECRET\""
            ) && first.contains(&format!("invalid config key {key:?}")),
            "{err}"
        );
        assert!(s.raw_get(&s.key("projects/shop")).is_none(), "not deployed");
    }
}

fn leader_files(agents: &[&Agent]) -> Vec<(PathBuf, LeaderState)> {
    let mut out = Vec::new();
    for a in agents {
        for r in 1..=3 {
            let p = a
                .state_dir()
                .join(format!("bundles/shop-db-{r}/run/leader"));
            if let Some(st) = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| parse_leader_file(&t))
            {
                out.push((p, st));
            }
        }
    }
    out
}

fn mtime_ms(p: &std::path::Path) -> u64 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn election_across_two_agents(kind: Kind) {
    let s = TestStore::new(kind, "elect");
    // Consul's minimum session TTL is 10s.
    let ttl = if kind == Kind::Consul { "10s" } else { "3s" };
    let a1 = s.agent_with("n1", &["--session-ttl", ttl], &[]);
    let a2 = s.agent_with("n2", &["--session-ttl", ttl], &[]);
    let img = common::test_image_ref();
    let yaml = format!(
        "services:\n  db:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    restart: always\n    command: [sh, -c, 'trap \"echo flip\" HUP; while true; do sleep 0.2; done']\n    deploy: {{replicas: 3, placement: {{max_replicas_per_node: 2}}}}\n    annotations:\n      cntnr.election: \"true\"\n"
    );
    let out = deploy(&s, "shop", &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let agents = [&a1, &a2];
    let files = wait_for(WAIT, "3 leader files, one true", || {
        let f = leader_files(&agents);
        (f.len() == 3 && f.iter().filter(|(_, s)| s.leader).count() == 1).then_some(f)
    });
    let (old_path, old) = files.iter().find(|(_, s)| s.leader).cloned().unwrap();
    let rec: Value =
        serde_json::from_str(&s.raw_get(&s.key("elections/shop/db")).unwrap()).unwrap();
    let leader_id = old_path
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        rec["instance"].as_str().unwrap().ends_with(&leader_id),
        "{rec}"
    );

    // Kill the leader's container: another replica leads, greater token.
    let owner = agents
        .iter()
        .find(|a| old_path.starts_with(a.state_dir()))
        .unwrap();
    let killed = std::process::Command::new("runc")
        .arg("--root")
        .arg(owner.runtime_root())
        .args(["kill", &leader_id, "KILL"])
        .status()
        .unwrap();
    assert!(killed.success());
    let (new_path, _) = wait_for(WAIT, "a new leader", || {
        leader_files(&agents)
            .into_iter()
            .find(|(_, s)| s.leader && s.token > old.token)
    });
    let leaders = leader_files(&agents)
        .into_iter()
        .filter(|(_, s)| s.leader)
        .count();
    assert_eq!(leaders, 1);

    // Freeze the new leader's agent: its file's deadline passes before
    // any other replica's file says true.
    let owner = agents
        .iter()
        .find(|a| new_path.starts_with(a.state_dir()))
        .unwrap();
    owner.signal("STOP");
    struct Cont<'a>(&'a Agent);
    impl Drop for Cont<'_> {
        fn drop(&mut self) {
            self.0.signal("CONT");
        }
    }
    let _cont = Cont(owner);
    std::thread::sleep(Duration::from_millis(200));
    let frozen = parse_leader_file(&std::fs::read_to_string(&new_path).unwrap()).unwrap();
    assert!(frozen.leader);
    let (next_path, next) = wait_for(WAIT, "a leader after the freeze", || {
        leader_files(&agents)
            .into_iter()
            .find(|(p, s)| s.leader && *p != new_path && s.token > frozen.token)
    });
    assert!(
        frozen.valid_until_ms < mtime_ms(&next_path),
        "{frozen:?} still valid when {next_path:?} said true"
    );
    assert!(next.token > frozen.token, "{frozen:?} → {next:?}");
    let _ = next;
}

#[test]
fn config_changes_per_mode_burst_and_secrets_etcd() {
    config_changes_per_mode_burst_and_secrets(Kind::Etcd);
}

#[test]
fn config_changes_per_mode_burst_and_secrets_consul() {
    config_changes_per_mode_burst_and_secrets(Kind::Consul);
}

/// The dir store (one node): restart mode still rolls, through the dir
/// store's lock.
#[test]
fn config_changes_per_mode_burst_and_secrets_dir() {
    config_changes_per_mode_burst_and_secrets(Kind::Dir);
}

#[test]
fn missing_key_waits_and_setting_it_starts_the_container_etcd() {
    missing_key_waits_and_setting_it_starts_the_container(Kind::Etcd);
}

#[test]
fn missing_key_waits_and_setting_it_starts_the_container_consul() {
    missing_key_waits_and_setting_it_starts_the_container(Kind::Consul);
}

#[test]
fn election_across_two_agents_etcd() {
    election_across_two_agents(Kind::Etcd);
}

#[test]
fn election_across_two_agents_consul() {
    election_across_two_agents(Kind::Consul);
}

fn service_sync_follows_scaling(kind: Kind) {
    let s = TestStore::new(kind, "envsvc");
    let a1 = s.agent_with(
        "n1",
        &["--address", "127.0.0.1", "--allow-host-network"],
        &[],
    );
    let a2 = s.agent_with(
        "n2",
        &["--address", "127.0.0.2", "--allow-host-network"],
        &[],
    );
    let img = common::test_image_ref();
    let yaml = |replicas: u32| {
        format!(
            "services:\n  api:\n    image: {img}\n    network_mode: host\n    stop_grace_period: 1s\n    expose: [\"8080\"]\n    command: [sh, -c, 'exec sleep 3600']\n    deploy: {{replicas: {replicas}, placement: {{max_replicas_per_node: 1}}}}\n  web:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'echo up:$$UP; trap \"echo hup:\\$$(cat /run/cntnr/env)\" HUP; while true; do sleep 0.1; done']\n    annotations:\n      cntnr.env.UP: service:shop-api\n      cntnr.env-on-change: signal:SIGHUP\n"
        )
    };
    let out = deploy(&s, "shop", &yaml(1));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let web_log = |want: &str| {
        [&a1, &a2]
            .iter()
            .any(|a| logs(a, "web", 1).contains(want))
            .then_some(())
    };
    wait_for(WAIT, "web started with one api instance", || {
        web_log("up:127.0.0.1:8080").or_else(|| web_log("up:127.0.0.2:8080"))
    });
    let out = deploy(&s, "shop", &yaml(2));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_for(WAIT, "web told about both api instances", || {
        web_log("hup:UP=127.0.0.1:8080,127.0.0.2:8080")
    });
}

#[test]
fn service_sync_follows_scaling_etcd() {
    service_sync_follows_scaling(Kind::Etcd);
}

/// What one replica of `web` shows on an agent: running in runc, and the
/// value its process wrote to `/ready` once "ready" (the health check
/// tests that file), read from the bundle's overlay upper dir (or the
/// rootless rootfs).
fn ready_value(a: &Agent, running: &BTreeMap<String, u64>, id: &str) -> Option<String> {
    if !running.contains_key(id) {
        return None;
    }
    let bundle = a.state_dir().join("bundles").join(id);
    ["upper/ready", "rootfs/ready"]
        .iter()
        .find_map(|p| std::fs::read_to_string(bundle.join(p)).ok())
        .map(|t| t.trim().to_string())
}

/// Every `web` replica on both agents: container id → value it is ready
/// with (absent: down, being recreated, or not ready yet).
fn ready_replicas(agents: &[&Agent]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in agents {
        let r = running(a);
        for id in ["shop-web-1", "shop-web-2"] {
            if let Some(v) = ready_value(a, &r, id) {
                out.insert(id.to_string(), v);
            }
        }
    }
    out
}

/// Restart mode across nodes: two replicas of a service with a health
/// check, one per agent. A changed value recreates them one at a time
/// across the cluster (the roll lock `envroll/shop/web`): sampled every
/// 50 ms, at least one replica is always running and ready; both end
/// with the new value, and the lock is released.
fn restart_roll_is_one_at_a_time_across_agents(kind: Kind) {
    let s = TestStore::new(kind, "envroll");
    let a1 = s.agent_with("n1", &["--env-debounce", "1s"], &[]);
    let a2 = s.agent_with("n2", &["--env-debounce", "1s"], &[]);
    let img = common::test_image_ref();
    config_set(&s, "greeting", "roll-one");
    // Ready 2 s after start: long enough for any overlap to be seen.
    let yaml = format!(
        "services:\n  web:\n    image: {img}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sh, -c, 'sleep 2; echo $$GREETING > /ready; exec sleep 3600']\n    healthcheck: {{test: [CMD-SHELL, 'test -f /ready'], interval: 1s, timeout: 5s}}\n    deploy: {{replicas: 2, placement: {{max_replicas_per_node: 1}}}}\n    annotations:\n      cntnr.env.GREETING: kv:greeting\n"
    );
    let out = deploy(&s, "shop", &yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let agents = [&a1, &a2];
    wait_for(WAIT, "both replicas ready with the first value", || {
        let r = ready_replicas(&agents);
        (r.len() == 2 && r.values().all(|v| v == "roll-one")).then_some(())
    });
    for a in agents {
        assert_eq!(
            running(a)
                .keys()
                .filter(|k| k.starts_with("shop-web-"))
                .count(),
            1,
            "one replica per agent"
        );
    }

    config_set(&s, "greeting", "roll-two");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut samples = Vec::new();
    loop {
        let r = ready_replicas(&agents);
        let done = r.len() == 2 && r.values().all(|v| v == "roll-two");
        samples.push(r);
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the roll did not finish: {:?}",
            samples.last()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let down_at_once = samples.iter().filter(|r| r.is_empty()).count();
    assert_eq!(
        down_at_once,
        0,
        "both replicas down at once in {down_at_once} of {} samples",
        samples.len()
    );
    // Each replica went through a down phase (it was recreated).
    for id in ["shop-web-1", "shop-web-2"] {
        assert!(
            samples.iter().any(|r| !r.contains_key(id)),
            "{id} never recreated"
        );
    }
    let total: usize = agents
        .iter()
        .flat_map(|a| ["shop-web-1", "shop-web-2"].map(|id| recreates(a, id)))
        .sum();
    assert_eq!(total, 2, "one recreate each");
    wait_for(WAIT, "the roll lock released", || {
        s.raw_get(&s.key("envroll/shop/web"))
            .is_none()
            .then_some(())
    });
    for a in agents {
        let log = a.log_text();
        assert!(
            !log.contains("roll-two") && !log.contains("roll-one"),
            "{log}"
        );
    }
}

#[test]
fn restart_roll_is_one_at_a_time_across_agents_etcd() {
    restart_roll_is_one_at_a_time_across_agents(Kind::Etcd);
}

#[test]
fn restart_roll_is_one_at_a_time_across_agents_consul() {
    restart_roll_is_one_at_a_time_across_agents(Kind::Consul);
}
