//! Health check cost at fleet size, beside `runc exec` itself (issue 6).
//!
//! `CNTNR_BENCH_CONTAINERS` (default 100) containers, each checked every
//! 2 s by a real agent (release build, dir store), in two rounds:
//!
//! 1. exec checks: `sleep` containers (`network_mode: none`) with a compose
//!    `healthcheck: [CMD, true]`. The agent's CPU includes the `runc exec`
//!    children it reaps (utime+stime+cutime+cstime of the agent), so the
//!    figure per check is the whole exec path. Baseline, in the same run:
//!    the CPU of a bare `runc exec <id> true` on one of those containers,
//!    run by the bench itself (its children's CPU), `CNTNR_BENCH_ITERS`
//!    (default 50) times.
//! 2. direct HTTP checks: busybox httpd containers on free loopback ports
//!    (`network_mode: host`) with `cntnr.check.http: :PORT/` and nothing
//!    to register (no `expose`), so the agent's own CPU per check is the
//!    probe's (no process runs in the container).
//!
//! 3. health change to Consul: `CNTNR_BENCH_LAG_CONTAINERS` (default 10)
//!    httpd containers registered in a real Consul, direct checks every
//!    1 s, their health page removed and restored `CNTNR_BENCH_LAG_ROUNDS`
//!    (default 5) times; the agent's `cntnr_health_to_registry_seconds`
//!    histogram (checker reports a change → Consul accepted the check
//!    update) gives the mean and the bucket holding the 99th percentile.
//!
//! Each of rounds 1 and 2 waits until every container is healthy, then measures the
//! agent's CPU over `CNTNR_BENCH_SECS` (default 30) seconds. Checks per
//! are counted by the agent (`cntnr_health_probes`, read before and after
//! the window).
//!
//! `scripts/bench.sh -p cntnr-agent --bench health`, as root. Containers,
//! mounts and temp dirs are removed by Drop guards, on failure too.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, runc_list, test_image_ref, text, Agent, Kind, TestStore};

const INTERVAL_SECS: u64 = 2;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (own utime+stime, reaped children's cutime+cstime) of `pid`, in ticks.
fn cpu_ticks(pid: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0] + f[1], f[2] + f[3])
}

fn deploy(s: &TestStore, yaml: &str, project: &str) {
    let file = s.tmp.path().join(format!("{project}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = s.cntnr(
        s.tmp.path(),
        &["deploy", "-f", file.to_str().unwrap(), "-p", project],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Healthy containers of `project` per the agent's status record.
fn healthy(s: &TestStore, project: &str) -> usize {
    let out = s.cntnr(s.tmp.path(), &["ps", project, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| {
            n["status"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["health"] == "healthy")
        .count()
}

fn wait_healthy(s: &TestStore, a: &Agent, project: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let h = healthy(s, project);
        if h == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {h} of {n} healthy; agent log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn probes(a: &Agent) -> f64 {
    let (_, m) = a.get("/metrics").expect("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("cntnr_health_probes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("cntnr_health_probes")
}

/// Agent CPU seconds per second over `secs`: (own, own + reaped children,
/// probe rounds per second).
fn measure(a: &Agent, secs: u64) -> (f64, f64, f64) {
    let pid = a.pid().to_string();
    let hz = clock_ticks();
    let p0 = probes(a);
    let (own0, kids0) = cpu_ticks(&pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (own1, kids1) = cpu_ticks(&pid);
    let el = t0.elapsed().as_secs_f64();
    let p1 = probes(a);
    let own = (own1 - own0) as f64 / hz / el;
    let all = ((own1 + kids1) - (own0 + kids0)) as f64 / hz / el;
    (own, all, (p1 - p0) / el)
}

/// CPU seconds of one bare `runc exec <id> true` (the bench's own reaped
/// children), averaged over `iters`.
fn runc_exec_cost(a: &Agent, id: &str, iters: u64) -> f64 {
    let me = std::process::id().to_string();
    let hz = clock_ticks();
    let (_, k0) = cpu_ticks(&me);
    for _ in 0..iters {
        let out = Command::new("runc")
            .arg("--root")
            .arg(a.runtime_root())
            .args(["exec", id, "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "runc exec: {out:?}");
    }
    let (_, k1) = cpu_ticks(&me);
    (k1 - k0) as f64 / hz / iters as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_num("CNTNR_BENCH_CONTAINERS", 100) as usize;
    let secs = env_num("CNTNR_BENCH_SECS", 30);
    let iters = env_num("CNTNR_BENCH_ITERS", 50);
    let image = test_image_ref();
    let checks_per_sec = n as f64 / INTERVAL_SECS as f64;
    println!("health checks: {n} containers, every {INTERVAL_SECS}s, agent CPU over {secs}s");

    // 1. exec checks.
    let s = TestStore::new(Kind::Dir, "hexec");
    let a = s.agent_with("bench", &["--parallel", "16"], &[]);
    let mut yaml = String::from("services:\n");
    yaml.push_str(&format!(
        "  s:\n    image: {image}\n    network_mode: none\n    stop_grace_period: 1s\n    command: [sleep, '36000']\n    deploy: {{replicas: {n}}}\n    healthcheck:\n      test: [CMD, 'true']\n      interval: {INTERVAL_SECS}s\n      timeout: 5s\n      retries: 3\n"
    ));
    deploy(&s, &yaml, "hexec");
    wait_healthy(&s, &a, "hexec", n);
    let (own, all, rate) = measure(&a, secs);
    let per_exec_check = all / rate;
    let one = runc_list(&a.runtime_root())
        .into_iter()
        .find(|(_, st)| st == "running")
        .map(|(id, _)| id)
        .expect("a running container");
    let bare = runc_exec_cost(&a, &one, iters);
    println!(
        "exec checks:   {rate:.1} checks/s (nominal {checks_per_sec:.0}); agent {:.3} CPU-s/s (own {:.3}, runc exec children {:.3}); {:.2} ms CPU per check",
        all,
        own,
        all - own,
        per_exec_check * 1e3
    );
    println!(
        "  baseline:    bare `runc exec <id> true` {:.2} ms CPU (mean of {iters}); exec path overhead {:+.0}%",
        bare * 1e3,
        (per_exec_check / bare - 1.0) * 100.0
    );
    let out = s.cntnr(s.tmp.path(), &["rm", "hexec"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(a);

    // 2. direct HTTP checks.
    let s = TestStore::new(Kind::Dir, "hhttp");
    let a = s.agent_with("bench", &["--parallel", "16", "--allow-host-network"], &[]);
    let mut yaml = String::from("services:\n");
    for i in 0..n {
        let port = free_port();
        yaml.push_str(&format!(
            "  h{i}:\n    image: {image}\n    network_mode: host\n    stop_grace_period: 1s\n    command: [httpd, -f, -p, '127.0.0.1:{port}', -h, /var/www]\n    healthcheck:\n      interval: {INTERVAL_SECS}s\n      timeout: 5s\n      retries: 3\n    annotations:\n      cntnr.check.http: ':{port}/'\n"
        ));
    }
    deploy(&s, &yaml, "hhttp");
    wait_healthy(&s, &a, "hhttp", n);
    let (own, all, rate) = measure(&a, secs);
    println!(
        "direct HTTP:   {rate:.1} checks/s; agent {:.3} CPU-s/s (children {:.3}); {:.3} ms CPU per check (goal < 1 ms)",
        own,
        all - own,
        own / rate * 1e3
    );
    let out = s.cntnr(s.tmp.path(), &["rm", "hhttp"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(a);

    // 3. health change → Consul.
    let k = env_num("CNTNR_BENCH_LAG_CONTAINERS", 10) as usize;
    let rounds = env_num("CNTNR_BENCH_LAG_ROUNDS", 5);
    let s = TestStore::new(Kind::Consul, "hlag");
    let a = s.agent_with(
        &format!("benchlag{}", std::process::id()),
        &["--allow-host-network", "--address", "127.0.0.1"],
        &[],
    );
    let mut yaml = String::from("services:\n");
    for i in 0..k {
        let port = free_port();
        yaml.push_str(&format!(
            "  l{i}:\n    image: {image}\n    network_mode: host\n    stop_grace_period: 1s\n    expose: [\"{port}\"]\n    command: [sh, -c, 'mkdir -p /tmp/www && echo ok > /tmp/www/health && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www']\n    healthcheck:\n      interval: 1s\n      timeout: 2s\n      retries: 1\n    annotations:\n      cntnr.check.http: /health\n"
        ));
    }
    deploy(&s, &yaml, "hlag");
    wait_healthy(&s, &a, "hlag", k);
    let exec_all = |argv: &[&str]| {
        for i in 0..k {
            let out = Command::new("runc")
                .arg("--root")
                .arg(a.runtime_root())
                .args(["exec", &format!("hlag-l{i}-1")])
                .args(argv)
                .output()
                .unwrap();
            assert!(out.status.success(), "runc exec: {out:?}");
        }
    };
    for _ in 0..rounds {
        exec_all(&["rm", "/tmp/www/health"]);
        wait_healthy(&s, &a, "hlag", 0);
        exec_all(&["sh", "-c", "echo ok > /tmp/www/health"]);
        wait_healthy(&s, &a, "hlag", k);
    }
    let (_, metrics) = a.get("/metrics").expect("metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let count = value("cntnr_health_to_registry_seconds_count ");
    let sum = value("cntnr_health_to_registry_seconds_sum ");
    let p99 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("cntnr_health_to_registry_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"}")?;
            Some((le.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= 0.99 * count)
        .map_or(f64::NAN, |(le, _)| le);
    println!(
        "health change -> Consul: {count} changes, mean {:.2} ms, p99 <= {:.2} ms (goal < 100 ms)",
        sum / count.max(1.0) * 1e3,
        p99 * 1e3
    );
    let out = s.cntnr(s.tmp.path(), &["rm", "hlag"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    drop(a);
}
