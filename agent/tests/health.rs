//! Health probes and the checker against a real runc container: busybox
//! httpd on the host network, on a free loopback port. Every container,
//! mount and directory is removed by `World`'s Drop.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cntnr_agent::health::probe::{exec_probe, http_probe, tcp_probe};
use cntnr_agent::health::{
    Checker, CheckerStart, ContainerProbes, HealthConfig, HealthEvent, HealthPolicy, HttpProbe,
    Probe,
};
use cntnr_model::records::Health;
use cntnr_reconcile::bundle::{self, BundleConfig, ContainerRequest, NetworkMode};
use cntnr_reconcile::images::{ImageRecord, ImageStore, StoreOptions};
use cntnr_reconcile::runc::{Runc, RuncConfig};
use cntnr_reconcile::runtime::{ContainerId, ExecRequest, Runtime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A private runc root, state dir and image store; Drop removes every
/// container under the root, unmounts and removes every bundle.
struct World {
    tmp: tempfile::TempDir,
    store: ImageStore,
    image: ImageRecord,
    bundles: BundleConfig,
    runc: Arc<Runc>,
    project: String,
}

impl World {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tmp = tempfile::Builder::new()
            .prefix("cntnr-health")
            .tempdir()
            .unwrap();
        let state = tmp.path().join("state");
        let store = ImageStore::open(&state, StoreOptions::default()).unwrap();
        let image = store.import(&common::test_image_ref()).unwrap();
        let mut bundles = BundleConfig::new(&state, "node-health");
        bundles.policy.allow_host_network = true;
        // The agent binary is the shim when called by that name.
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let shim = bin.join("cntnr-shim");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cntnr-agent"), &shim).unwrap();
        let mut rc = RuncConfig::new(tmp.path().join("runc-root"), &state);
        rc.shim = shim;
        rc.timeout = Duration::from_secs(30);
        let runc = Arc::new(Runc::new(rc).unwrap());
        let project = format!(
            "h{}x{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        World {
            tmp,
            store,
            image,
            bundles,
            runc,
            project,
        }
    }

    /// busybox httpd serving the image's /var/www on 127.0.0.1:`port`, in
    /// the host's network namespace; returns once it accepts connections.
    async fn httpd(&self, port: u16) -> ContainerId {
        let req = ContainerRequest {
            project: self.project.clone(),
            service: "web".into(),
            replica: 1,
            config_hash: "hash1".into(),
            command: Some(
                [
                    "httpd",
                    "-f",
                    "-p",
                    &format!("127.0.0.1:{port}"),
                    "-h",
                    "/var/www",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ),
            network: NetworkMode::Host,
            ..Default::default()
        };
        let b = bundle::build(&self.bundles, &self.store, &self.image, &req).unwrap();
        self.runc.run(&b.id, &b.path).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect((LOCALHOST, port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "httpd did not come up on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b.id
    }

    async fn sh(&self, id: &ContainerId, script: &str) -> i32 {
        let req = ExecRequest {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![],
            cwd: None,
            timeout: Duration::from_secs(10),
        };
        self.runc.exec(id, &req).await.unwrap().code
    }

    fn probes(&self, id: &ContainerId, config: HealthConfig) -> ContainerProbes<Runc> {
        ContainerProbes::new(self.runc.clone(), id.clone(), LOCALHOST, config)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let root = self.runc.config().root.clone();
        if let Ok(out) = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        let bundles = self.tmp.path().join("state/bundles");
        for e in std::fs::read_dir(&bundles).into_iter().flatten().flatten() {
            if let Ok(id) = ContainerId::new(e.file_name().to_string_lossy().to_string()) {
                let _ = bundle::remove(&self.bundles, &id);
            }
        }
    }
}

fn policy(interval_ms: u64, timeout_ms: u64, retries: u32) -> HealthPolicy {
    HealthPolicy {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        retries,
        start_period: Duration::ZERO,
        start_interval: Duration::from_millis(interval_ms),
    }
}

fn config(policy: HealthPolicy) -> HealthConfig {
    HealthConfig {
        policy,
        exec: None,
        http: None,
        tcp: None,
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// Host pids whose argv is exactly `words`.
fn processes_running(words: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = words.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// A sleep argument no other test (or process) uses, for leak checks.
fn unique_sleep(salt: u32) -> String {
    (200_000 + (std::process::id() % 10_000) * 10 + salt).to_string()
}

async fn next_event(rx: &mut mpsc::Receiver<HealthEvent>, within: Duration) -> HealthEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a health event in time")
        .expect("checker alive")
}

#[tokio::test]
async fn http_check_passes_then_goes_unhealthy_after_retries_once_the_page_is_gone() {
    let w = World::new();
    let port = common::free_port();
    let id = w.httpd(port).await;
    let addr = SocketAddr::new(LOCALHOST, port);

    let r = http_probe(addr, "/index.html", Duration::from_secs(2)).await;
    assert!(r.passed, "{r:?}");
    assert!(r.output.contains("200"), "{r:?}");
    let r = http_probe(addr, "/nope", Duration::from_secs(2)).await;
    assert!(!r.passed && r.output.contains("404"), "{r:?}");

    let mut cfg = config(policy(200, 1000, 3));
    cfg.http = Some(HttpProbe {
        port,
        path: "/index.html".into(),
    });
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let checker = Checker::spawn(
        id.clone(),
        cfg.policy,
        w.probes(&id, cfg.clone()),
        CheckerStart::FRESH,
        tx,
        &cancel,
    );
    let e = next_event(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(
        (e.container.clone(), e.report.status),
        (id.clone(), Health::Healthy)
    );

    // Break the endpoint: 404 from now on.
    assert_eq!(w.sh(&id, "rm /var/www/index.html").await, 0);
    let broke_at = Instant::now();
    let e = next_event(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(e.report.status, Health::Unhealthy, "{e:?}");
    assert_eq!(e.report.failing_streak, 3, "unhealthy exactly at `retries`");
    assert!(e.report.output.contains("404"), "{e:?}");
    assert!(
        broke_at.elapsed() >= Duration::from_millis(2 * 200),
        "three failing probes, 200 ms apart (the first may come at once)"
    );

    // Fix it: one pass brings it back.
    assert_eq!(w.sh(&id, "echo back > /var/www/index.html").await, 0);
    let e = next_event(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(e.report.status, Health::Healthy, "{e:?}");
    assert_eq!(checker.current().status, Health::Healthy);
    checker.stop().await;
}

#[tokio::test]
async fn tcp_check_passes_while_httpd_listens_and_fails_once_it_is_gone() {
    let w = World::new();
    let port = common::free_port();
    let id = w.httpd(port).await;
    let addr = SocketAddr::new(LOCALHOST, port);

    let r = tcp_probe(addr, Duration::from_secs(2)).await;
    assert!(r.passed, "{r:?}");

    // Through the container's probes too.
    let mut cfg = config(policy(200, 1000, 1));
    cfg.tcp = Some(port);
    let probes = w.probes(&id, cfg);
    assert!(probes.probe().await.passed);

    // httpd is the container's init: killing it closes the port.
    w.runc
        .stop(
            &id,
            cntnr_reconcile::runtime::Signal::KILL,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let r = tcp_probe(addr, Duration::from_secs(2)).await;
    assert!(!r.passed, "{r:?}");
    assert!(r.output.to_lowercase().contains("refused"), "{r:?}");
    let r = probes.probe().await;
    assert!(!r.passed, "{r:?}");
}

#[tokio::test]
async fn exec_check_cmd_and_cmd_shell_pass_and_fail_by_exit_code() {
    let w = World::new();
    let port = common::free_port();
    let id = w.httpd(port).await;
    let t = Duration::from_secs(10);

    let shell = |s: &str| argv(&["/bin/sh", "-c", s]);
    let r = exec_probe(
        &*w.runc,
        &id,
        &shell(&format!("wget -q -O - http://127.0.0.1:{port}/")),
        t,
    )
    .await;
    assert!(r.passed, "{r:?}");
    assert!(r.output.contains("hello from cntnr"), "output kept: {r:?}");

    let r = exec_probe(&*w.runc, &id, &shell("echo not ready >&2; exit 3"), t).await;
    assert!(!r.passed && r.output.contains("not ready"), "{r:?}");
    let r = exec_probe(&*w.runc, &id, &shell("exit 1"), t).await;
    assert_eq!((r.passed, r.output.as_str()), (false, "exit code 1"));

    let r = exec_probe(
        &*w.runc,
        &id,
        &argv(&["test", "-f", "/var/www/index.html"]),
        t,
    )
    .await;
    assert!(r.passed, "CMD form: {r:?}");
    let r = exec_probe(&*w.runc, &id, &argv(&["test", "-f", "/nope"]), t).await;
    assert!(!r.passed, "CMD form: {r:?}");
    let r = exec_probe(&*w.runc, &id, &argv(&["/no/such/binary"]), t).await;
    assert!(!r.passed, "a missing binary fails the check: {r:?}");

    // From a compose file, through HealthConfig, with both kinds of check:
    // both must pass.
    let name = cntnr_model::ProjectName::new("p").unwrap();
    let yaml = format!(
        "services:\n  web:\n    image: busybox\n    network_mode: host\n    healthcheck: {{test: [CMD-SHELL, 'test -f /var/www/index.html'], interval: 1s, timeout: 5s}}\n    annotations: {{cntnr.check.http: '{port}/health.html'}}\n"
    );
    let project = cntnr_model::load_stored(&name, "projects/p", &yaml).unwrap();
    let cfg = HealthConfig::from_spec(&project.services.into_values().next().unwrap()).unwrap();
    assert!(cfg.exec.is_some() && cfg.http.is_some());
    let probes = w.probes(&id, cfg);
    let r = probes.probe().await;
    assert!(!r.passed, "exec passes, http 404 → fails: {r:?}");
    assert!(r.output.contains("404"), "{r:?}");
    assert_eq!(w.sh(&id, "echo ok > /var/www/health.html").await, 0);
    let r = probes.probe().await;
    assert!(r.passed, "both pass: {r:?}");
    assert_eq!(w.sh(&id, "rm /var/www/index.html").await, 0);
    let r = probes.probe().await;
    assert!(!r.passed, "http passes, exec fails → fails: {r:?}");
}

#[tokio::test]
async fn hanging_exec_check_is_killed_at_its_timeout_with_no_process_left() {
    let w = World::new();
    let port = common::free_port();
    let id = w.httpd(port).await;

    // Directly: the probe fails at its timeout with docker's message.
    let secs = unique_sleep(1);
    let started = Instant::now();
    let r = exec_probe(
        &*w.runc,
        &id,
        &argv(&["/bin/sh", "-c", &format!("sleep {secs}")]),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (r.passed, r.output.as_str()),
        (false, "Health check exceeded timeout (1s)")
    );
    assert!(
        processes_running(&["sleep", &secs]).is_empty(),
        "leaked the check"
    );

    // Through a checker: every round hangs, each is killed; unhealthy after
    // `retries`; nothing accumulates in the container.
    let secs = unique_sleep(2);
    let mut cfg = config(policy(100, 500, 2));
    cfg.exec = Some(argv(&["sleep", &secs]));
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let checker = Checker::spawn(
        id.clone(),
        cfg.policy,
        w.probes(&id, cfg.clone()),
        CheckerStart::FRESH,
        tx,
        &cancel,
    );
    let e = next_event(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(e.report.status, Health::Unhealthy, "{e:?}");
    assert!(e.report.output.contains("exceeded timeout"), "{e:?}");
    let left = processes_running(&["sleep", &secs]);
    assert!(left.len() <= 1, "at most the round in flight: {left:?}");
    // Stopping the checker mid-probe kills that round's process too.
    checker.stop().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !processes_running(&["sleep", &secs]).is_empty() {
        assert!(Instant::now() < deadline, "leaked after stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The container itself is fine.
    assert_eq!(w.sh(&id, "true").await, 0);
    let path: PathBuf = w.tmp.path().join("state/run");
    let pid_files = std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("exec"))
        .count();
    assert_eq!(pid_files, 0, "exec pid files are removed");
}
