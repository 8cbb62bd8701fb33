//! The agent's main path, timed beside its baselines in one run (issue 5):
//!
//! 1. one service: from the KV write of the rendered project (a raw store
//!    put, as `cntnr deploy` would write it) until `runc state` under the
//!    agent's runtime root reports the container running, p50/p99 over
//!    `CNTNR_BENCH_ITERS` (default 20) deploy / running / rm / gone cycles;
//!    beside raw `runc create`+`start` of a copy of the bundle the agent
//!    built. Dir store, and etcd as a second row when it can be started.
//! 2. fifty `sleep` services (`network_mode: none`): from `cntnr deploy`
//!    until `runc list` shows all fifty running, beside
//!    `podman-compose up -d` of the same file (`CNTNR_PODMAN_COMPOSE`, set by
//!    `scripts/bench.sh`, or `podman-compose` on PATH).
//! 3. the idle agent with those fifty running: RSS (VmRSS) and CPU
//!    (utime+stime) over `CNTNR_BENCH_IDLE_SECS` (default 60) seconds.
//!
//! `scripts/bench.sh -p cntnr-agent --bench agent`, as root. Cargo builds the
//! release `cntnr` and `cntnr-agent` binaries for the bench
//! (`CARGO_BIN_EXE_*`). Containers, mounts, podman containers and temp dirs
//! are removed by Drop guards, on failure too.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{runc_list, Agent, Kind, TestStore};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
/// Pause between a removal and the next timed write (see `one_service`).
const IDLE_BEFORE_WRITE: Duration = Duration::from_millis(500);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (p50, p99) in ms.
fn pct(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i])
    };
    (at(0.50), at(0.99))
}

fn quiet(cmd: &mut Command) -> (bool, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap_or_else(|e| (false, e.to_string()))
}

/// runc with stdio away from pipes: `runc create` hands its stdio to the
/// container, which would hold a pipe (and our read of it) open forever.
/// stderr goes to an anonymous file, read back for the error message.
fn runc(root: &Path, args: &[&str]) -> (bool, String) {
    use std::io::{Read, Seek};
    let mut err = tempfile::tempfile().expect("tempfile");
    let ok = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().expect("dup"))
        .status()
        .is_ok_and(|s| s.success());
    let mut msg = String::new();
    let _ = err.rewind().and_then(|()| err.read_to_string(&mut msg));
    (ok, msg)
}

/// The container is running, as `runc state` decides it, read from runc's
/// own files without spawning a process: `<root>/<id>/state.json` exists,
/// its `exec.fifo` is gone (`runc start` removes it; a `created` container
/// still has it) and the init pid is alive. The observer of both the agent
/// and the raw runc figures; it costs a few stats per poll, so polling it
/// every millisecond does not steal CPU from what is measured (a `runc
/// state` per poll did, and inflated whichever side it observed).
fn observed_running(root: &Path, id: &str) -> bool {
    let dir = root.join(id);
    if dir.join("exec.fifo").exists() {
        return false;
    }
    let Ok(state) = std::fs::read(dir.join("state.json")) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&state)
        .ok()
        .and_then(|v| v["init_process_pid"].as_u64())
        .is_some_and(|pid| pid > 0 && Path::new(&format!("/proc/{pid}")).exists())
}

/// `runc state` says running (checks the observer after each sample, and
/// the warm-up).
fn runc_running(root: &Path, id: &str) -> bool {
    if !root.join(id).join("state.json").exists() {
        return false;
    }
    Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .is_some_and(|v| v["status"] == "running")
}

fn poll(timeout: Duration, what: &str, step: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(step);
    }
}

fn service(name: &str, image: &str) -> String {
    format!(
        "  {name}:\n    image: {image}\n    network_mode: none\n    stop_signal: SIGKILL\n    stop_grace_period: 1s\n    command: [sleep, '3600']\n"
    )
}

fn compose(n: usize, image: &str) -> String {
    let mut s = String::from("services:\n");
    for i in 0..n {
        s += &service(&format!("s{i:02}"), image);
    }
    s
}

fn deploy(s: &TestStore, file: &Path, project: &str) {
    let out = s.cntnr(
        s.tmp.path(),
        &["deploy", "-f", file.to_str().unwrap(), "-p", project],
    );
    assert!(
        out.status.success(),
        "cntnr deploy: {}",
        common::text(&out.stderr)
    );
}

fn rm(s: &TestStore, project: &str) {
    let out = s.cntnr(s.tmp.path(), &["rm", project]);
    assert!(
        out.status.success(),
        "cntnr rm: {}",
        common::text(&out.stderr)
    );
}

fn wait_gone(a: &Agent) {
    let root = a.runtime_root();
    poll(WAIT, "containers gone", Duration::from_millis(20), || {
        runc_list(&root).is_empty()
    });
}

/// Raw runc containers under a runc root of our own, deleted on drop.
struct RawRunc {
    root: PathBuf,
}

impl Drop for RawRunc {
    fn drop(&mut self) {
        for (id, _) in runc_list(&self.root) {
            runc(&self.root, &["delete", "--force", &id]);
        }
    }
}

/// A copy of the agent's bundle `<state>/bundles/<id>` (config.json with
/// its paths pointed at the copy, and the mounted rootfs copied into a plain
/// dir) while the agent's container runs.
fn copy_bundle(a: &Agent, id: &str, dest: &Path) -> PathBuf {
    let src = a.state_dir().join("bundles").join(id);
    let bundle = dest.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.file_name() == "rootfs" {
            continue;
        }
        let (ok, err) = quiet(Command::new("cp").arg("-a").arg(e.path()).arg(&bundle));
        assert!(ok, "cp {:?}: {err}", e.path());
    }
    let (ok, err) = quiet(
        Command::new("cp")
            .arg("-a")
            .arg(src.join("rootfs"))
            .arg(bundle.join("rootfs")),
    );
    assert!(ok, "cp rootfs: {err}");
    let config = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    let config = config.replace(src.to_str().unwrap(), bundle.to_str().unwrap());
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["root"]["path"] = bundle.join("rootfs").to_str().unwrap().into();
    std::fs::write(bundle.join("config.json"), v.to_string()).unwrap();
    bundle
}

/// KV write → `runc state` running, per iteration. Returns the samples and,
/// for the first store, a copy of the agent's bundle for the raw baseline.
fn one_service(kind: Kind, iters: usize, scratch: &Path) -> (Vec<Duration>, Option<PathBuf>) {
    let s = TestStore::new(kind, "bench1");
    let file = s.tmp.path().join("one.yaml");
    let image = common::test_image_ref();
    std::fs::write(&file, format!("services:\n{}", service("web", &image))).unwrap();
    let agent = s.agent("n1");
    let root = agent.runtime_root();
    let id = "one-web-1";
    // Warm-up through the CLI (image import, first bundle), then keep what
    // it wrote: the rendered project, put raw in every iteration.
    deploy(&s, &file, "one");
    poll(WAIT, "warm-up container", Duration::from_millis(20), || {
        runc_running(&root, id)
    });
    let rendered = s.raw_get(&s.key("projects/one")).expect("projects/one");
    let bundle = (kind == Kind::Dir).then(|| copy_bundle(&agent, id, scratch));
    rm(&s, "one");
    wait_gone(&agent);
    let mut v = Vec::new();
    for _ in 0..iters {
        // From an idle agent: the previous removal's tail (bundle unmount,
        // status write, the leader deleting the schedule) is over, as it
        // is when an operator deploys.
        std::thread::sleep(IDLE_BEFORE_WRITE);
        let t = Instant::now();
        s.raw_put(&s.key("projects/one"), &rendered);
        poll(WAIT, "container running", Duration::from_millis(1), || {
            observed_running(&root, id)
        });
        v.push(t.elapsed());
        assert!(
            runc_running(&root, id),
            "runc state disagrees with the observer"
        );
        rm(&s, "one");
        wait_gone(&agent);
    }
    (v, bundle)
}

fn raw_runc(bundle: &Path, iters: usize, scratch: &Path) -> Vec<Duration> {
    let raw = RawRunc {
        root: scratch.join("raw-runc"),
    };
    let mut v = Vec::new();
    for i in 0..iters {
        let id = format!("raw-{i}");
        // Timed by the same observer as the agent, polling while runc
        // works in another thread.
        let t = Instant::now();
        let worker = {
            let (root, bundle, id) = (raw.root.clone(), bundle.to_path_buf(), id.clone());
            std::thread::spawn(move || {
                let (ok, err) = runc(
                    &root,
                    &["create", "--bundle", bundle.to_str().unwrap(), &id],
                );
                assert!(ok, "runc create: {err}");
                let (ok, err) = runc(&root, &["start", &id]);
                assert!(ok, "runc start: {err}");
            })
        };
        poll(
            WAIT,
            "raw container running",
            Duration::from_millis(1),
            || observed_running(&raw.root, &id) || worker.is_finished(),
        );
        let took = t.elapsed();
        worker.join().expect("runc create+start");
        assert!(runc_running(&raw.root, &id), "raw container not running");
        v.push(took);
        runc(&raw.root, &["delete", "--force", &id]);
    }
    v
}

fn count_running(root: &Path) -> usize {
    runc_list(root)
        .iter()
        .filter(|(_, st)| st == "running")
        .count()
}

/// utime+stime of `pid` in clock ticks, and VmRSS in kB.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised comm: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The podman side: the busybox image in podman's storage and a compose
/// project, all removed on drop.
struct Podman {
    image: String,
    project: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("podman")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.podman.compose.project={}", self.project))
            .output()
        {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                quiet(Command::new("podman").args(["rm", "-f", "-t", "0", id]));
            }
        }
        quiet(Command::new("podman").args(["pod", "rm", "-f", &format!("pod_{}", self.project)]));
        quiet(Command::new("podman").args(["rmi", "-f", &self.image]));
    }
}

fn podman_compose_bin() -> Option<String> {
    let bin = std::env::var("CNTNR_PODMAN_COMPOSE").unwrap_or_else(|_| "podman-compose".into());
    quiet(Command::new(&bin).arg("--version")).0.then_some(bin)
}

/// `podman-compose up -d` of `n` services, timed; None (with the reason
/// printed) when it cannot run here.
fn podman_compose(n: usize, scratch: &Path) -> Option<Duration> {
    let Some(bin) = podman_compose_bin() else {
        println!("podman-compose not installed (scripts/bench.sh installs it under .deps/)");
        return None;
    };
    let pid = std::process::id();
    let guard = Podman {
        image: format!("localhost/cntnr-bench-busybox-{pid}:latest"),
        project: format!("cntnrbench{pid}"),
    };
    let (ok, err) = quiet(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:latest", common::test_image().display()),
        &format!("containers-storage:{}", guard.image),
    ]));
    if !ok {
        println!("podman-compose: skopeo copy failed: {}", err.trim());
        return None;
    }
    let file = scratch.join("podman-compose.yaml");
    std::fs::write(&file, compose(n, &guard.image)).unwrap();
    let t = Instant::now();
    let (ok, err) = quiet(
        Command::new(&bin)
            .args(["--in-pod", "false", "-p", &guard.project, "-f"])
            .arg(&file)
            .args(["up", "-d"]),
    );
    let took = t.elapsed();
    if !ok {
        println!("podman-compose up -d failed: {}", err.trim());
        return None;
    }
    let running = Command::new("podman")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=io.podman.compose.project={}", guard.project))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .count()
        })
        .unwrap_or(0);
    if running != n {
        println!("podman-compose: {running} of {n} containers running after up -d");
    }
    Some(took)
}

fn main() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the agent bench runs as root (runc, overlayfs)"
    );
    let iters = env_num("CNTNR_BENCH_ITERS", 20) as usize;
    let idle_secs = env_num("CNTNR_BENCH_IDLE_SECS", 60);
    let n = 50;
    let scratch = tempfile::tempdir().unwrap();
    println!("agent bench: {iters} iterations, {n} services, idle {idle_secs} s");
    println!("(release binaries: {})", env!("CARGO_BIN_EXE_cntnr-agent"));

    // 1. One service.
    let (mut dir1, bundle) = one_service(Kind::Dir, iters, scratch.path());
    let mut raw = raw_runc(&bundle.expect("bundle copy"), iters, scratch.path());
    let etcd1 = std::panic::catch_unwind(|| one_service(Kind::Etcd, iters, scratch.path()).0);

    // 2. Fifty services, dir store, through `cntnr deploy`.
    let s = TestStore::new(Kind::Dir, "bench50");
    let file = s.tmp.path().join("fifty.yaml");
    std::fs::write(&file, compose(n, &common::test_image_ref())).unwrap();
    let agent = s.agent("n1");
    let root = agent.runtime_root();
    poll(WAIT, "agent /healthz", Duration::from_millis(20), || {
        agent.get("/healthz").is_some()
    });
    let t = Instant::now();
    deploy(&s, &file, "fifty");
    poll(WAIT, "fifty running", Duration::from_millis(10), || {
        count_running(&root) == n
    });
    let ours50 = t.elapsed();

    // 3. Idle, with the fifty running.
    std::thread::sleep(Duration::from_secs(2)); // let the status writes settle
    let (t0, _) = proc_usage(agent.pid());
    let w = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let (t1, rss_kb) = proc_usage(agent.pid());
    let cpu = (t1 - t0) as f64 / clock_ticks() / w.elapsed().as_secs_f64() * 100.0;
    assert_eq!(
        count_running(&root),
        n,
        "containers still running when idle"
    );
    rm(&s, "fifty");
    wait_gone(&agent);
    drop(agent);

    let podman50 = podman_compose(n, scratch.path());

    println!("{:-<100}", "");
    let (p50, p99) = pct(&mut dir1);
    let (r50, r99) = pct(&mut raw);
    println!(
        "1 service, KV write -> running (runc's state files, polled every 1 ms; both rows alike)"
    );
    println!(
        "  {:<52} p50 {p50:>8.1} ms   p99 {p99:>8.1} ms",
        "cntnr-agent, dir store (file write)"
    );
    match etcd1 {
        Ok(mut e) => {
            let (e50, e99) = pct(&mut e);
            println!(
                "  {:<52} p50 {e50:>8.1} ms   p99 {e99:>8.1} ms",
                "cntnr-agent, etcd (etcdctl put, incl. its spawn)"
            );
        }
        Err(_) => println!("  cntnr-agent, etcd: skipped (etcd could not be started)"),
    }
    println!(
        "  {:<52} p50 {r50:>8.1} ms   p99 {r99:>8.1} ms",
        "raw runc create+start (agent's bundle)"
    );
    println!("  dir p50 - raw p50: {:+.1} ms (goal <= +25 ms)", p50 - r50);
    println!("{n} services, deploy -> all running");
    println!(
        "  {:<52} {:>8.1} ms",
        "cntnr deploy + agent (dir store)",
        ms(ours50)
    );
    if let Some(p) = podman50 {
        println!("  {:<52} {:>8.1} ms", "podman-compose up -d", ms(p));
        println!(
            "  podman-compose / cntnr: {:.2}x (goal >= 4x)",
            p.as_secs_f64() / ours50.as_secs_f64()
        );
    } else {
        println!("  podman-compose up -d: skipped");
    }
    println!("idle agent, {n} containers running, {idle_secs} s");
    println!(
        "  CPU {cpu:.2}% (goal < 1%)   RSS {:.1} MB (goal < 30 MB)",
        rss_kb as f64 / 1024.0
    );
}
