//! Health checks and service registration with the real agent binary,
//! real runc and real Consul / etcd / dir stores (issue 6).
//!
//! Replicas are busybox httpd processes with `network_mode: host` on
//! distinct free loopback ports (bridge networking is not wired into the
//! agent yet); services share one registered name through
//! `cntnr.service.name`, so "3 replicas" are three one-replica services
//! that each know their port. Assertions read Consul's HTTP API and DNS,
//! etcd through etcdctl and the dir store's files, never through cntnr.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cntnr_e2e::{shared_consul, shared_etcd};
use common::{consul_get, deploy, free_port, text, wait_for, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A node name no other test uses (Consul service ids are per Consul
/// agent, and every test shares one).
fn node(s: &TestStore) -> String {
    format!("n{}", s.prefix.replace('-', ""))
        .chars()
        .take(40)
        .collect()
}

fn agent(s: &TestStore) -> Agent {
    s.agent_with(
        &node(s),
        &[
            "--allow-host-network",
            "--address",
            "127.0.0.1",
            "--session-ttl",
            "10s",
            "--resync",
            "5s",
        ],
        &[],
    )
}

/// One httpd service on `port` serving `/tmp/www` (with a `health` page),
/// registered as `name`; `check` is its extra YAML (a healthcheck…).
fn httpd_service(svc: &str, name: &str, port: u16, check: &str) -> String {
    let image = common::test_image_ref();
    format!(
        "  {svc}:\n    image: {image}\n    network_mode: host\n    stop_grace_period: 1s\n    expose: [\"{port}\"]\n    command: [sh, -c, 'mkdir -p /tmp/www && echo ok > /tmp/www/health && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www']\n    annotations:\n      cntnr.service.name: {name}\n      cntnr.service.tags: \"traefik.enable=true,urlprefix-/{name}\"\n{check}"
    )
}

/// The compose healthcheck every replica uses: fetch its health page.
fn wget_check(port: u16) -> String {
    format!(
        "    healthcheck:\n      test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:{port}/health']\n      interval: 1s\n      timeout: 2s\n      retries: 1\n"
    )
}

/// `runc exec` in a container of the agent.
fn exec(a: &Agent, id: &str, argv: &[&str]) {
    let out = Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["exec", id])
        .args(argv)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc exec {id} {argv:?}: {out:?}");
}

/// Every log the agent wrote (one per start), in order.
fn all_logs(a: &Agent) -> String {
    let mut files: Vec<_> = std::fs::read_dir(a.state_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            format!(
                "== {}\n{}",
                f.display(),
                std::fs::read_to_string(f).unwrap_or_default()
            )
        })
        .collect()
}

/// [`wait_for`], with the agent's log in the panic message.
fn wait_agent<T>(a: &Agent, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; agent log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- Consul

fn consul_put(path: &str, body: &str) {
    let mut s = TcpStream::connect(shared_consul().http_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200"),
        "PUT {path}: {buf}"
    );
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    id: String,
    address: String,
    port: u16,
    /// Worst check status.
    status: String,
}

fn entries(body: &str) -> Vec<Entry> {
    let v: Value = serde_json::from_str(body).expect("health JSON");
    let mut out: Vec<Entry> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let checks: Vec<&str> = e["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["ServiceID"] != "")
                .map(|c| c["Status"].as_str().unwrap())
                .collect();
            let status = ["critical", "warning", "passing"]
                .into_iter()
                .find(|s| checks.contains(s))
                .unwrap_or("passing");
            Entry {
                id: e["Service"]["ID"].as_str().unwrap().to_string(),
                address: e["Service"]["Address"].as_str().unwrap().to_string(),
                port: e["Service"]["Port"].as_u64().unwrap() as u16,
                status: status.to_string(),
            }
        })
        .collect();
    out.sort();
    out
}

fn consul_entries(name: &str, passing: bool) -> Vec<Entry> {
    let q = if passing { "?passing" } else { "" };
    consul_get(
        &format!("/v1/health/service/{name}{q}"),
        Duration::from_secs(10),
    )
    .map(|(_, b)| entries(&b))
    .unwrap_or_default()
}

fn ports(es: &[Entry]) -> BTreeSet<u16> {
    es.iter().map(|e| e.port).collect()
}

fn wait_passing_ports(name: &str, want: &BTreeSet<u16>, what: &str) {
    wait_for(WAIT, what, || {
        let es = consul_entries(name, true);
        (ports(&es) == *want && es.len() == want.len()).then_some(())
    });
}

/// Follows `/v1/health/service/<name>` with blocking queries on a thread,
/// recording every list Consul returns, until stopped.
struct Watcher {
    seen: Arc<Mutex<Vec<Vec<Entry>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(name: &str) -> Watcher {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2, name) = (seen.clone(), stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut index = 0;
            while !stop2.load(Ordering::SeqCst) {
                let path = format!("/v1/health/service/{name}?index={index}&wait=1s");
                if let Some((i, body)) = consul_get(&path, Duration::from_secs(10)) {
                    index = i;
                    seen2.lock().unwrap().push(entries(&body));
                }
            }
        });
        Watcher {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Vec<Entry>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Deregisters the foreign entries a test registered, even on failure.
struct Foreign(Vec<String>);

impl Drop for Foreign {
    fn drop(&mut self) {
        for id in &self.0 {
            let mut s = match TcpStream::connect(shared_consul().http_addr()) {
                Ok(s) => s,
                Err(_) => continue,
            };
            let _ = write!(
                s,
                "PUT /v1/agent/service/deregister/{} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
                id.replace('/', "%2F")
            );
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
        }
    }
}

fn dig_srv_ports(name: &str) -> BTreeSet<u16> {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &shared_consul().dns_port().to_string(),
            &format!("{name}.service.consul"),
            "SRV",
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("run dig");
    // `priority weight port target` per line.
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect()
}

#[test]
fn consul_replicas_pass_break_fix_survive_agent_restarts_and_go_with_the_project() {
    let s = TestStore::new(Kind::Consul, "reg");
    let name = format!("web{}", s.prefix.replace('-', ""));
    let p: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut yaml = "services:\n".to_string();
    for (i, port) in p.iter().enumerate() {
        yaml.push_str(&httpd_service(
            &format!("web{}", i + 1),
            &name,
            *port,
            &wget_check(*port),
        ));
    }
    let all: BTreeSet<u16> = p.iter().copied().collect();

    // Another tool's entries under the same name, one even shaped like
    // ours (an id with this node's name but no node meta): never touched.
    let node = node(&s);
    let foreign = Foreign(vec![
        format!("other-tool-{}", s.prefix),
        format!("{node}/shop-web9-1"),
    ]);
    for (i, id) in foreign.0.iter().enumerate() {
        let port = i + 1;
        consul_put(
            "/v1/agent/service/register",
            &format!(r#"{{"ID":"{id}","Name":"{name}","Address":"127.0.0.2","Port":{port}}}"#),
        );
    }

    let mut a = agent(&s);
    let startup = Watcher::start(&name);
    deploy(&s, "shop", &yaml);

    // 1. Three replicas passing, at the node's address and their ports.
    let mut want = all.clone();
    want.extend([1, 2]);
    wait_passing_ports(&name, &want, "3 replicas (and the foreign entries) passing");
    // Each was critical until its first check passed: never seen passing
    // before it had been seen critical.
    let seen = startup.finish();
    for port in &all {
        let first = seen
            .iter()
            .flatten()
            .find(|e| e.port == *port)
            .map(|e| e.status.clone());
        assert_eq!(first.as_deref(), Some("critical"), "port {port}: {seen:?}");
    }
    let ours: Vec<Entry> = consul_entries(&name, false)
        .into_iter()
        .filter(|e| e.port > 2)
        .collect();
    assert_eq!(ours.len(), 3, "{ours:?}");
    for e in &ours {
        assert_eq!(e.address, "127.0.0.1", "{e:?}");
        assert!(e.id.starts_with(&format!("{node}/shop-web")), "{e:?}");
    }
    let (_, body) = consul_get(&format!("/v1/health/service/{name}"), WAIT).unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let svc = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Service"]["ID"] == format!("{node}/shop-web1-1"))
        .expect("web1 registered")["Service"]
        .clone();
    assert_eq!(svc["Meta"]["project"], "shop", "{svc}");
    assert_eq!(svc["Meta"]["service"], "web1", "{svc}");
    assert_eq!(svc["Meta"]["node"], node.as_str(), "{svc}");
    assert_eq!(
        svc["Tags"],
        serde_json::json!(["traefik.enable=true", format!("urlprefix-/{name}")]),
        "{svc}"
    );

    // Health is in status, ps and metrics (status is written a moment
    // after the registry: rate-limited).
    wait_agent(&a, WAIT, "3 healthy in status", || {
        let v = s.cntnr_json(&["ps", "shop"]);
        let containers = v[0]["status"]["containers"].as_array()?.clone();
        (containers.len() == 3 && containers.iter().all(|c| c["health"] == "healthy")).then_some(())
    });
    let out = s.cntnr(s.tmp.path(), &["ps", "shop"]);
    let table = text(&out.stdout);
    assert!(table.lines().next().unwrap().contains("HEALTH"), "{table}");
    assert_eq!(table.matches(" healthy ").count(), 3, "{table}");
    let metrics = wait_for(WAIT, "health in /metrics", || {
        let (_, m) = a.get("/metrics")?;
        m.contains("cntnr_containers_health{health=\"healthy\"} 3")
            .then_some(m)
    });
    assert!(
        metrics.contains("cntnr_containers_health{health=\"unhealthy\"} 0"),
        "{metrics}"
    );

    // Consul DNS answers with the passing instances' ports (and the
    // foreign entry's).
    wait_for(WAIT, "SRV records of the passing instances", || {
        (dig_srv_ports(&name) == want).then_some(())
    });

    // `cntnr services` lists them with health, from the registry.
    let v = s.cntnr_json(&["services", &name]);
    let listed: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["meta"]["node"] == node.as_str())
        .map(|i| (i["id"].as_str().unwrap(), i["health"].as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 3, "{v}");
    assert!(listed.iter().all(|(_, h)| *h == "passing"), "{v}");

    // 2. Break web2's health page: it leaves the passing list (and DNS);
    //    fixing it brings it back.
    exec(&a, "shop-web2-1", &["rm", "/tmp/www/health"]);
    let mut broken = want.clone();
    broken.remove(&p[1]);
    wait_passing_ports(&name, &broken, "web2 dropped from passing");
    let e = consul_entries(&name, false);
    assert!(
        e.iter().any(|e| e.port == p[1] && e.status == "critical"),
        "{e:?}"
    );
    wait_for(WAIT, "web2 unhealthy in status", || {
        let v = s.cntnr_json(&["ps", "shop"]);
        let c = v[0]["status"]["containers"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == "shop-web2-1")?
            .clone();
        (c["health"] == "unhealthy" && c["failing_streak"].as_u64()? >= 1).then_some(())
    });
    wait_for(WAIT, "web2 gone from DNS", || {
        (dig_srv_ports(&name) == broken).then_some(())
    });
    exec(
        &a,
        "shop-web2-1",
        &["sh", "-c", "echo ok > /tmp/www/health"],
    );
    wait_passing_ports(&name, &want, "web2 back in passing");
    // Both changes were timed from the check to the registry.
    wait_agent(&a, WAIT, "health_to_registry observed", || {
        let (_, m) = a.get("/metrics")?;
        let count: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("cntnr_health_to_registry_seconds_count "))?
            .trim()
            .parse()
            .ok()?;
        (count >= 2).then_some(())
    });

    // 3. Agent restarts (SIGTERM, then SIGKILL): no duplicates, and no
    //    critical flap of the healthy replicas, watched with blocking
    //    queries throughout.
    let watcher = Watcher::start(&name);
    a.signal("TERM");
    assert!(a.wait_exit(WAIT).success(), "{}", a.log_text());
    a.restart(&[]);
    wait_for(WAIT, "the restarted agent ready", || {
        a.status().and_then(|v| (v["ready"] == true).then_some(()))
    });
    a.restart(&[]); // kills the running agent (SIGKILL) and starts it again
    wait_for(WAIT, "the re-restarted agent ready", || {
        a.status().and_then(|v| (v["ready"] == true).then_some(()))
    });
    // A few check rounds under the new agent (interval 1s).
    wait_for(WAIT, "checks running under the new agent", || {
        let v = s.cntnr_json(&["ps", "shop"]);
        let n = v[0]["status"]["containers"].as_array()?.len();
        (n == 3 && a.log_text().contains("adopted")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let seen = watcher.finish();
    assert!(!seen.is_empty());
    for list in &seen {
        let ours: Vec<&Entry> = list.iter().filter(|e| e.port > 2).collect();
        assert_eq!(ours.len(), 3, "duplicate or missing entries: {list:?}");
        assert!(
            ours.iter().all(|e| e.status == "passing"),
            "a healthy replica flapped: {list:?}; agent logs:\n{}",
            all_logs(&a)
        );
    }
    let ids: BTreeSet<String> = consul_entries(&name, false)
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");

    // 4. Remove the project: every entry of ours is gone, the foreign
    //    ones stay.
    let out = s.cntnr(s.tmp.path(), &["rm", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_for(WAIT, "our entries gone", || {
        let e = consul_entries(&name, false);
        (e.len() == 2 && e.iter().all(|e| e.port <= 2)).then_some(())
    });
    wait_for(WAIT, "containers gone", || {
        a.runc_list().is_empty().then_some(())
    });
    let left: BTreeSet<String> = consul_entries(&name, false)
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        left,
        foreign.0.iter().cloned().collect(),
        "foreign entries untouched"
    );
}

#[test]
fn consul_entries_of_a_killed_agent_go_critical_then_are_deregistered() {
    let s = TestStore::new(Kind::Consul, "kill");
    let name = format!("api{}", s.prefix.replace('-', ""));
    let port = free_port();
    // No check: passing as soon as the container runs.
    let yaml = format!("services:\n{}", httpd_service("api", &name, port, ""));
    let mut a = agent(&s);
    deploy(&s, "kp", &yaml);
    wait_passing_ports(&name, &BTreeSet::from([port]), "the instance passing");

    a.signal("KILL");
    let _ = a.wait_exit(WAIT);
    // The TTL (10 s here) lapses: critical, while the container still runs.
    wait_for(WAIT, "the entry critical after the TTL", || {
        let e = consul_entries(&name, false);
        (e.len() == 1 && e[0].status == "critical").then_some(())
    });
    assert!(consul_entries(&name, true).is_empty());
    // DeregisterCriticalServiceAfter (1 min, Consul's reaper runs every
    // 30 s): the entry goes away.
    wait_for(Duration::from_secs(180), "the entry deregistered", || {
        consul_get(
            &format!("/v1/health/service/{name}"),
            Duration::from_secs(10),
        )
        .filter(|(_, b)| entries(b).is_empty())
        .map(drop)
    });
    drop(a);
}

#[test]
fn a_hanging_check_is_killed_at_its_timeout_and_an_unhealthy_container_is_restarted() {
    let s = TestStore::new(Kind::Consul, "hang");
    let image = common::test_image_ref();
    let token = format!("{}", 100_000 + std::process::id() % 100_000);
    let flaky_name = format!("flaky{}", s.prefix.replace('-', ""));
    let flaky_port = free_port();
    // `hang`: its check sleeps far past the timeout. `flaky`: healthy
    // while /tmp/ok exists, restarted (restart: always) when unhealthy.
    // `reporter`: the same, but `cntnr.health.on-failure: none`. `late`
    // depends on flaky being healthy.
    let yaml = format!(
        "services:\n  hang:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sleep, '3600']\n    healthcheck:\n      test: [CMD, sleep, '{token}']\n      interval: 1s\n      timeout: 500ms\n      retries: 2\n  flaky:\n    image: {image}\n    network_mode: host\n    expose: ['{flaky_port}']\n    restart: always\n    stop_grace_period: 1s\n    command: [sh, -c, 'touch /tmp/ok; exec sleep 3600']\n    healthcheck:\n      test: [CMD, test, -f, /tmp/ok]\n      interval: 1s\n      retries: 1\n    annotations:\n      cntnr.service.name: {flaky_name}\n  reporter:\n    image: {image}\n    network_mode: none\n    restart: always\n    stop_grace_period: 1s\n    command: [sh, -c, 'touch /tmp/ok; exec sleep 3600']\n    healthcheck:\n      test: [CMD, test, -f, /tmp/ok]\n      interval: 1s\n      retries: 1\n    annotations:\n      cntnr.health.on-failure: none\n  late:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sleep, '3600']\n    depends_on:\n      flaky: {{condition: service_healthy}}\n"
    );
    let a = agent(&s);
    deploy(&s, "hp", &yaml);
    let flaky_passing = || {
        let e = consul_entries(&flaky_name, true);
        (e.len() == 1 && e[0].port == flaky_port).then_some(())
    };
    let container = |id: &str| -> Option<Value> {
        let v = s.cntnr_json(&["ps", "hp"]);
        v[0]["status"]["containers"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    };

    // The hanging check: unhealthy with the timeout as its output, and its
    // process killed every time (at most the one in flight remains).
    let c = wait_for(WAIT, "hang unhealthy", || {
        let c = container("hp-hang-1")?;
        (c["health"] == "unhealthy" && c["failing_streak"].as_u64()? >= 3).then_some(c)
    });
    assert!(
        c["health_output"]
            .as_str()
            .unwrap_or("")
            .contains("timeout")
            || c["health_output"]
                .as_str()
                .unwrap_or("")
                .contains("timed out"),
        "{c}"
    );
    let hanging = count_processes(&["sleep", &token]);
    assert!(hanging <= 1, "{hanging} check processes left running");
    assert_eq!(c["restarts"], 0, "restart: no leaves it running: {c}");
    assert_eq!(c["state"], "running", "{c}");

    // late waits for flaky's real health; both get there.
    wait_for(WAIT, "flaky healthy and late running", || {
        let f = container("hp-flaky-1")?;
        let l = container("hp-late-1")?;
        (f["health"] == "healthy" && l["state"] == "running").then_some(())
    });

    // Unhealthy flaky is restarted by its policy (and healthy again: the
    // restart re-creates /tmp/ok); reporter is only reported.
    wait_for(WAIT, "reporter healthy", || {
        (container("hp-reporter-1")?["health"] == "healthy").then_some(())
    });
    wait_agent(&a, WAIT, "flaky registered and passing", flaky_passing);
    exec(&a, "hp-flaky-1", &["rm", "/tmp/ok"]);
    exec(&a, "hp-reporter-1", &["rm", "/tmp/ok"]);
    wait_agent(&a, WAIT, "flaky restarted and healthy", || {
        let c = container("hp-flaky-1")?;
        (c["restarts"].as_u64()? >= 1 && c["health"] == "healthy").then_some(())
    });
    // Deregistered for the kill, registered again once healthy.
    wait_agent(
        &a,
        WAIT,
        "flaky passing again after its restart",
        flaky_passing,
    );
    let r = wait_for(WAIT, "reporter unhealthy", || {
        let c = container("hp-reporter-1")?;
        (c["health"] == "unhealthy").then_some(c)
    });
    std::thread::sleep(Duration::from_secs(3));
    let r2 = container("hp-reporter-1").unwrap();
    assert_eq!(r2["restarts"], 0, "{r} {r2}");
    assert_eq!(r2["state"], "running", "{r2}");
    assert_eq!(r2["health"], "unhealthy", "{r2}");
    drop(a);
}

/// Processes whose argv is exactly `words`.
fn count_processes(words: &[&str]) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let argv: Vec<String> = raw
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    argv == words
                })
                .unwrap_or(false)
        })
        .count()
}

// ------------------------------------------------------- etcd and dir

/// The `services/<name>/…` records: instance id → record.
fn records(s: &TestStore, name: &str) -> BTreeMap<String, Value> {
    let prefix = s.key(&format!("services/{name}/"));
    match s.kind {
        Kind::Etcd => {
            let out = shared_etcd().etcdctl(&["get", "--prefix", &prefix]);
            assert!(out.status.success(), "{out:?}");
            let t = text(&out.stdout);
            let lines: Vec<&str> = t.lines().collect();
            lines
                .chunks(2)
                .filter(|kv| kv.len() == 2)
                .map(|kv| {
                    (
                        kv[0].trim_start_matches(&prefix).to_string(),
                        serde_json::from_str(kv[1]).unwrap(),
                    )
                })
                .collect()
        }
        Kind::Dir => {
            let root = s.tmp.path().join("store").join(&prefix);
            let mut out = BTreeMap::new();
            walk(&root, &root, &mut out);
            out
        }
        Kind::Consul => unreachable!(),
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let file = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            walk(root, &p, out);
        } else if !file.starts_with('.') {
            if let Ok(Ok(v)) = std::fs::read(&p).map(|b| serde_json::from_slice::<Value>(&b)) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, v);
            }
        }
    }
}

fn statuses(recs: &BTreeMap<String, Value>) -> BTreeMap<u64, String> {
    recs.values()
        .map(|r| {
            (
                r["port"].as_u64().unwrap(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn records_carry_health(kind: Kind) {
    let s = TestStore::new(kind, "rec");
    let name = format!("web{}", s.prefix.replace('-', ""));
    let (p1, p2) = (free_port(), free_port());
    let yaml = format!(
        "services:\n{}{}",
        httpd_service("web1", &name, p1, &wget_check(p1)),
        httpd_service("web2", &name, p2, &wget_check(p2))
    );
    let mut a = agent(&s);
    deploy(&s, "rp", &yaml);
    let passing = |st: &BTreeMap<u64, String>| st.len() == 2 && st.values().all(|h| h == "passing");
    wait_for(WAIT, "two records passing", || {
        passing(&statuses(&records(&s, &name))).then_some(())
    });
    let recs = records(&s, &name);
    let node = node(&s);
    for (id, r) in &recs {
        assert!(id.starts_with(&format!("{node}/rp-web")), "{id}");
        assert_eq!(r["address"], "127.0.0.1", "{r}");
        assert_eq!(r["meta"]["node"], node.as_str(), "{r}");
    }

    // Broken: critical in its record; fixed: passing.
    exec(&a, "rp-web2-1", &["rm", "/tmp/www/health"]);
    wait_for(WAIT, "web2 critical", || {
        (statuses(&records(&s, &name))
            .get(&u64::from(p2))
            .map(String::as_str)
            == Some("critical"))
        .then_some(())
    });
    exec(&a, "rp-web2-1", &["sh", "-c", "echo ok > /tmp/www/health"]);
    wait_for(WAIT, "web2 passing again", || {
        passing(&statuses(&records(&s, &name))).then_some(())
    });

    // A restarted agent registers them again under its new session, once.
    a.signal("TERM");
    assert!(a.wait_exit(WAIT).success(), "{}", a.log_text());
    a.restart(&[]);
    wait_for(WAIT, "records back after the restart", || {
        passing(&statuses(&records(&s, &name))).then_some(())
    });
    assert_eq!(records(&s, &name).len(), 2);

    if kind == Kind::Etcd {
        // SIGKILL: the records go with the lease (TTL 10 s).
        a.signal("KILL");
        let _ = a.wait_exit(WAIT);
        wait_for(WAIT, "records gone with the lease", || {
            records(&s, &name).is_empty().then_some(())
        });
        a.restart(&[]);
        wait_for(WAIT, "records back", || {
            passing(&statuses(&records(&s, &name))).then_some(())
        });
    }

    // Project removed: every record gone.
    let out = s.cntnr(s.tmp.path(), &["rm", "rp"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_for(WAIT, "records gone with the project", || {
        records(&s, &name).is_empty().then_some(())
    });
    wait_for(WAIT, "containers gone", || {
        a.runc_list().is_empty().then_some(())
    });
}

#[test]
fn etcd_records_carry_health_and_vanish_with_the_lease() {
    records_carry_health(Kind::Etcd);
}

#[test]
fn dir_records_carry_health() {
    records_carry_health(Kind::Dir);
}

#[test]
fn consul_orphans_of_this_node_go_a_dead_container_is_critical_and_drain_precedes_the_stop() {
    let s = TestStore::new(Kind::Consul, "orph");
    let name = format!("svc{}", s.prefix.replace('-', ""));
    let node = node(&s);
    let (p1, p2) = (free_port(), free_port());
    // `once` has no check and no restart: killed, it stays dead. `slow`
    // drains for 5 s before its stop signal.
    let mut yaml = "services:\n".to_string();
    yaml.push_str(&httpd_service("once", &name, p1, ""));
    yaml.push_str(&httpd_service("slow", &name, p2, "      cntnr.drain: 5s\n"));
    // An entry this node made for a container that no longer exists (as a
    // crashed agent would leave it), and one of another node.
    let foreign = Foreign(vec![
        format!("{node}/op-gone-1"),
        format!("{node}x/op-other-1"),
    ]);
    for (id, owner) in [
        (&foreign.0[0], node.clone()),
        (&foreign.0[1], format!("{node}x")),
    ] {
        consul_put(
            "/v1/agent/service/register",
            &format!(
                r#"{{"ID":"{id}","Name":"{name}","Address":"127.0.0.2","Port":3,"Meta":{{"node":"{owner}","project":"op"}}}}"#
            ),
        );
    }
    let a = agent(&s);
    deploy(&s, "op", &yaml);
    wait_agent(
        &a,
        WAIT,
        "both passing, the orphan gone, the other node's kept",
        || {
            let e = consul_entries(&name, false);
            let ids: BTreeSet<&str> = e.iter().map(|e| e.id.as_str()).collect();
            let want: BTreeSet<String> = [
                format!("{node}/op-once-1"),
                format!("{node}/op-slow-1"),
                format!("{node}x/op-other-1"),
            ]
            .into();
            (ids == want.iter().map(String::as_str).collect()
                && e.iter().all(|e| e.status == "passing"))
            .then_some(())
        },
    );

    // The container dies: critical at once (no TTL wait), with why.
    let out = Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["kill", "op-once-1", "KILL"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_agent(&a, WAIT, "the dead instance critical", || {
        let e = consul_entries(&name, false);
        e.iter()
            .any(|e| e.port == p1 && e.status == "critical")
            .then_some(())
    });
    let (_, body) = consul_get(&format!("/v1/health/service/{name}"), WAIT).unwrap();
    assert!(body.contains("container exited"), "{body}");

    // Removing the project: `slow` is deregistered first and keeps running
    // through its drain.
    let out = s.cntnr(s.tmp.path(), &["rm", "op"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_agent(&a, WAIT, "slow deregistered", || {
        (!consul_entries(&name, false).iter().any(|e| e.port == p2)).then_some(())
    });
    assert!(
        a.runc_list()
            .iter()
            .any(|(id, st)| id == "op-slow-1" && st == "running"),
        "slow stopped before its drain: {:?}",
        a.runc_list()
    );
    wait_for(WAIT, "containers gone", || {
        a.runc_list().is_empty().then_some(())
    });
    let left: Vec<String> = consul_entries(&name, false)
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, [format!("{node}x/op-other-1")]);
}

#[test]
fn a_changed_healthcheck_applies_to_the_running_container_without_a_recreate() {
    let s = TestStore::new(Kind::Dir, "edit");
    let name = format!("ed{}", s.prefix.replace('-', ""));
    let port = free_port();
    let image = common::test_image_ref();
    let yaml = |path: &str| {
        format!(
            "services:\n  app:\n    image: {image}\n    network_mode: host\n    expose: ['{port}']\n    stop_grace_period: 1s\n    command: [sleep, '3600']\n    healthcheck:\n      test: [CMD, test, -f, {path}]\n      interval: 1s\n      retries: 1\n    annotations:\n      cntnr.service.name: {name}\n"
        )
    };
    let a = agent(&s);
    deploy(&s, "ed", &yaml("/nonexistent"));
    wait_agent(&a, WAIT, "the record critical", || {
        let st = statuses(&records(&s, &name));
        (st.get(&u64::from(port)).map(String::as_str) == Some("critical")).then_some(())
    });
    let pid = |a: &Agent| -> Option<u64> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(a.runtime_root())
            .args(["state", "ed-app-1"])
            .output()
            .ok()?;
        serde_json::from_slice::<Value>(&out.stdout).ok()?["pid"].as_u64()
    };
    let before = pid(&a).expect("running");
    deploy(&s, "ed", &yaml("/bin/sh"));
    wait_agent(&a, WAIT, "the record passing under the new check", || {
        let st = statuses(&records(&s, &name));
        (st.get(&u64::from(port)).map(String::as_str) == Some("passing")).then_some(())
    });
    assert_eq!(pid(&a), Some(before), "the container was not recreated");
}

// ------------------------------------- orphans left while the agent was down

/// Instance ids registered under `name` (Consul's health listing, or the
/// etcd/dir records).
fn ids_under(s: &TestStore, name: &str) -> BTreeSet<String> {
    match s.kind {
        Kind::Consul => consul_entries(name, false)
            .into_iter()
            .map(|e| e.id)
            .collect(),
        _ => records(s, name).into_keys().collect(),
    }
}

/// Deletes every etcd key under a prefix, even on failure.
struct EtcdPrefix(Option<String>);

impl Drop for EtcdPrefix {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = shared_etcd().etcdctl(&["del", "--prefix", p]);
        }
    }
}

/// A project removed from the store while the agent was down, its
/// container gone too: nothing the restarted agent runs or is asked to run
/// uses that service name any more, yet the entry it left is removed on
/// start — promptly, not by Consul's `DeregisterCriticalServiceAfter`
/// (1 min) or the etcd lease (60 s here). Entries of another tool, of
/// another node, and ones only half shaped like ours (this node in the id
/// but no node meta, or the node meta but another node's id) stay.
///
/// Consul: a graceful stop (SIGTERM) leaves the entries registered, as it
/// leaves the containers running. etcd: a graceful stop revokes the lease
/// and its records with it, so only a crash (SIGKILL) leaves any. (The dir
/// store reaps a dead process's session as soon as it is opened again, so
/// it has no such orphans.)
fn orphans_of_a_project_removed_while_the_agent_was_down_go_on_its_start(kind: Kind) {
    let s = TestStore::new(kind, "down");
    let node = node(&s);
    let tag = s.prefix.replace('-', "");
    let (keep, gone, tool) = (format!("kp{tag}"), format!("gn{tag}"), format!("tl{tag}"));
    let (pk, pg) = (free_port(), free_port());
    let ours_kept = format!("{node}/keep-web-1");
    let orphan = format!("{node}/gone-web-1");

    // (name, id, node meta) of entries that are not ours to remove.
    let foreign: Vec<(String, String, Option<String>)> = vec![
        (tool.clone(), format!("tool-{tag}"), None),
        (
            gone.clone(),
            format!("{node}x/gone-web-1"),
            Some(format!("{node}x")),
        ),
        (gone.clone(), format!("{node}/gone-web-2"), None),
        (
            gone.clone(),
            format!("{node}x/gone-web-3"),
            Some(node.clone()),
        ),
    ];
    let _consul_foreign = Foreign(if kind == Kind::Consul {
        foreign.iter().map(|(_, id, _)| id.clone()).collect()
    } else {
        Vec::new()
    });
    let _etcd_keys = EtcdPrefix((kind == Kind::Etcd).then(|| format!("{}/", s.prefix)));
    for (i, (name, id, owner)) in foreign.iter().enumerate() {
        let port = i + 1;
        let meta = match owner {
            Some(o) => format!(r#"{{"node":"{o}","project":"gone"}}"#),
            None => "{}".to_string(),
        };
        match kind {
            Kind::Consul => consul_put(
                "/v1/agent/service/register",
                &format!(
                    r#"{{"ID":"{id}","Name":"{name}","Address":"127.0.0.2","Port":{port},"Meta":{meta}}}"#
                ),
            ),
            _ => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                s.raw_put(
                    &s.key(&format!("services/{name}/{id}")),
                    &format!(
                        r#"{{"name":"{name}","id":"{id}","address":"127.0.0.2","port":{port},"tags":[],"meta":{meta},"status":"passing","output":"","check_ttl_ms":3600000,"updated_ms":{now}}}"#
                    ),
                );
            }
        }
    }
    let foreign_present = |s: &TestStore| -> Vec<String> {
        foreign
            .iter()
            .filter(|(name, id, _)| !ids_under(s, name).contains(id))
            .map(|(_, id, _)| id.clone())
            .collect()
    };
    assert!(foreign_present(&s).is_empty(), "foreign entries registered");

    let ttl = if kind == Kind::Consul { "10s" } else { "60s" };
    let mut a = s.agent_with(
        &node,
        &[
            "--allow-host-network",
            "--address",
            "127.0.0.1",
            "--session-ttl",
            ttl,
            "--resync",
            "5s",
        ],
        &[],
    );
    deploy(
        &s,
        "keep",
        &format!("services:\n{}", httpd_service("web", &keep, pk, "")),
    );
    deploy(
        &s,
        "gone",
        &format!("services:\n{}", httpd_service("web", &gone, pg, "")),
    );
    wait_agent(&a, WAIT, "both projects registered", || {
        (ids_under(&s, &keep).contains(&ours_kept) && ids_under(&s, &gone).contains(&orphan))
            .then_some(())
    });

    // The agent stops without cleaning up.
    if kind == Kind::Consul {
        a.signal("TERM");
        assert!(a.wait_exit(WAIT).success(), "{}", a.log_text());
    } else {
        a.signal("KILL");
        let _ = a.wait_exit(WAIT);
    }
    // While it is down: the project is removed and its container is gone.
    let out = s.cntnr(s.tmp.path(), &["rm", "gone"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["delete", "--force", "gone-web-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let left = a.runc_list();
    assert_eq!(
        left,
        [("keep-web-1".to_string(), "running".to_string())],
        "{left:?}"
    );
    // Its entry is still there, right before the agent comes back.
    assert!(
        ids_under(&s, &gone).contains(&orphan),
        "the orphan is there while the agent is down: {:?}",
        ids_under(&s, &gone)
    );
    assert!(foreign_present(&s).is_empty());

    a.restart(&[]);
    // Well before Consul's reaper (1 min critical) or the lease (60 s).
    wait_agent(
        &a,
        Duration::from_secs(20),
        "the orphan removed by the restarted agent",
        || (!ids_under(&s, &gone).contains(&orphan)).then_some(()),
    );
    let log = wait_agent(&a, WAIT, "the clean-up done", || {
        let log = a.log_text();
        log.contains("registry clean-up done").then_some(log)
    });
    assert!(
        log.contains("removed the entry of a container that no longer exists")
            && log.contains(&orphan)
            && log.contains("removed=1"),
        "the agent removed exactly the orphan:\n{log}"
    );
    // Nothing else was touched: the running replica's entry stays, and so
    // does every foreign one.
    assert!(ids_under(&s, &keep).contains(&ours_kept));
    assert!(
        foreign_present(&s).is_empty(),
        "foreign entries removed: {:?}",
        foreign_present(&s)
    );
    let gone_ids = ids_under(&s, &gone);
    assert_eq!(
        gone_ids,
        foreign
            .iter()
            .filter(|(name, _, _)| *name == gone)
            .map(|(_, id, _)| id.clone())
            .collect(),
    );

    // Clean up: the kept project goes with its entry.
    let out = s.cntnr(s.tmp.path(), &["rm", "keep"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_agent(&a, WAIT, "the kept project's entry gone", || {
        (!ids_under(&s, &keep).contains(&ours_kept)).then_some(())
    });
    wait_for(WAIT, "containers gone", || {
        a.runc_list().is_empty().then_some(())
    });
}

#[test]
fn consul_orphans_of_a_project_removed_while_the_agent_was_down_go_on_its_start() {
    orphans_of_a_project_removed_while_the_agent_was_down_go_on_its_start(Kind::Consul);
}

#[test]
fn etcd_orphans_of_a_project_removed_while_the_agent_was_down_go_on_its_start() {
    orphans_of_a_project_removed_while_the_agent_was_down_go_on_its_start(Kind::Etcd);
}
