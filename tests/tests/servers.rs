//! The harness itself: real etcd and Consul start, answer, keep data over a
//! restart, and leave nothing behind when the test process ends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cntnr_e2e::{dep_bin, shared_consul, shared_etcd, workspace_root, Consul, Etcd, TlsFiles};

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with('Z'))
    })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dep_bin_finds_installed_servers() {
    for name in ["etcd", "etcdctl", "consul"] {
        let path = dep_bin(name);
        assert!(path.is_file(), "{name}: {}", path.display());
    }
    assert!(workspace_root().join("Cargo.lock").is_file());
}

#[test]
fn shared_etcd_writes_and_reads_a_key() {
    let etcd = shared_etcd();
    assert!(etcd.store_url().starts_with("etcd://127.0.0.1:"));
    stdout_of(&etcd.etcdctl(&["put", "harness/shared/greeting", "hello etcd"]));
    let got = stdout_of(&etcd.etcdctl(&["get", "--print-value-only", "harness/shared/greeting"]));
    assert_eq!(got.trim_end(), "hello etcd");
    // The same server for every caller in this binary.
    assert_eq!(shared_etcd().endpoint(), etcd.endpoint());
}

#[test]
fn shared_consul_writes_and_reads_a_key() {
    let consul = shared_consul();
    assert!(consul.store_url().starts_with("consul://127.0.0.1:"));
    assert!(consul.kv_put("harness/shared/greeting", "hello consul"));
    assert_eq!(
        consul.kv_get("harness/shared/greeting").as_deref(),
        Some("hello consul")
    );
    assert_eq!(consul.kv_get("harness/shared/absent"), None);
    // The CLI sees the same value.
    let got = stdout_of(&consul.consul(&["kv", "get", "harness/shared/greeting"]));
    assert_eq!(got.trim_end(), "hello consul");
    assert_eq!(shared_consul().http_addr(), consul.http_addr());
}

#[test]
fn shared_consul_answers_dns() {
    let consul = shared_consul();
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &consul.dns_port().to_string(),
            "+short",
            "+time=2",
            "+tries=3",
            "consul.service.consul",
        ])
        .output()
        .expect("dig (dnsutils) is installed by scripts/install-deps.sh");
    assert_eq!(stdout_of(&out).trim_end(), "127.0.0.1");
}

#[test]
fn etcd_restart_keeps_data_and_ports() {
    let mut etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let dir = etcd.data_dir().to_path_buf();
    stdout_of(&etcd.etcdctl(&["put", "harness/restart", "kept"]));
    let first = etcd.pid().expect("running");

    etcd.stop();
    assert_eq!(etcd.pid(), None);
    wait_until("etcd to exit", Duration::from_secs(5), || {
        !process_alive(first)
    });
    let failed = etcd.etcdctl(&["--dial-timeout=1s", "get", "harness/restart"]);
    assert!(!failed.status.success(), "a stopped etcd answered");

    etcd.restart();
    assert_eq!(etcd.endpoint(), endpoint);
    assert_ne!(etcd.pid(), Some(first));
    let got = stdout_of(&etcd.etcdctl(&["get", "--print-value-only", "harness/restart"]));
    assert_eq!(got.trim_end(), "kept");

    drop(etcd);
    assert!(!dir.exists(), "drop left {}", dir.display());
}

#[test]
fn etcd_pause_stops_answers_until_resume() {
    let etcd = Etcd::start();
    etcd.pause();
    let paused = etcd.etcdctl(&["--command-timeout=1s", "put", "harness/pause", "x"]);
    assert!(!paused.status.success(), "a paused etcd answered");
    etcd.resume();
    stdout_of(&etcd.etcdctl(&["put", "harness/pause", "y"]));
}

#[test]
fn consul_restart_keeps_kv() {
    let mut consul = Consul::start();
    let addr = consul.http_addr();
    let dir = consul.data_dir().to_path_buf();
    assert!(consul.kv_put("harness/restart", "kept"));

    consul.stop();
    assert!(!consul.kv_put("harness/restart", "while stopped"));

    consul.restart();
    assert_eq!(consul.http_addr(), addr);
    assert_eq!(consul.kv_get("harness/restart").as_deref(), Some("kept"));

    drop(consul);
    assert!(!dir.exists(), "drop left {}", dir.display());
}

#[test]
fn consul_dev_restart_loses_kv() {
    let mut consul = Consul::start_dev();
    assert!(consul.kv_put("harness/dev", "gone after restart"));
    consul.restart();
    assert_eq!(consul.kv_get("harness/dev"), None);
}

/// Servers started by the shared statics of a child process and its
/// directories, read from the child's stdout.
fn spawn_child(args: &[&str]) -> (Child, Vec<(String, u32, PathBuf)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cntnr-e2e-harness-child"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the harness child");
    let mut servers = Vec::new();
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    for line in stdout.lines() {
        let line = line.expect("child stdout");
        if line == "ready" {
            break;
        }
        let mut parts = line.splitn(3, ' ');
        let (name, pid, dir) = (parts.next(), parts.next(), parts.next());
        servers.push((
            name.expect("name").to_owned(),
            pid.expect("pid").parse().expect("numeric pid"),
            PathBuf::from(dir.expect("dir")),
        ));
    }
    assert_eq!(servers.len(), 2, "the child printed {servers:?}");
    for (name, pid, dir) in &servers {
        assert!(process_alive(*pid), "{name} not running in the child");
        assert!(dir.is_dir(), "{name}: {} missing", dir.display());
    }
    (child, servers)
}

fn assert_cleaned_up(servers: &[(String, u32, PathBuf)]) {
    for (name, pid, dir) in servers {
        wait_until(
            &format!(
                "{name} (pid {pid}) to be stopped and {} removed",
                dir.display()
            ),
            Duration::from_secs(20),
            || !process_alive(*pid) && !dir.exists(),
        );
    }
}

#[test]
fn servers_stop_when_test_process_is_killed() {
    let (mut child, servers) = spawn_child(&["hang"]);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    assert_cleaned_up(&servers);
}

#[test]
fn servers_stop_when_test_process_exits() {
    let (mut child, servers) = spawn_child(&["exit"]);
    assert!(child.wait().expect("child exit").success());
    assert_cleaned_up(&servers);
}

/// The harness is blocking; it must still work from async tests, whose
/// runtime it neither needs nor disturbs.
#[tokio::test]
async fn harness_works_inside_a_tokio_test() {
    let etcd = shared_etcd();
    let consul = shared_consul();
    let own = tokio::task::spawn_blocking(Etcd::start)
        .await
        .expect("start etcd");
    stdout_of(&own.etcdctl(&["put", "harness/tokio", "async"]));
    assert!(consul.kv_put("harness/tokio", "async"));
    assert_ne!(own.endpoint(), etcd.endpoint());
    drop(own);
}

/// The secure modes use the same supervisor: a SIGKILLed test process
/// leaves no TLS etcd, no ACL Consul and no directory (with its keys and
/// certificates) behind.
#[test]
fn secure_servers_stop_when_test_process_is_killed() {
    let (mut child, servers) = spawn_child(&["hang", "secure"]);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    assert_cleaned_up(&servers);
}

/// Runs etcdctl against `url` with exactly the TLS flags given (none of the
/// harness's defaults).
fn etcdctl_raw(url: &str, tls: &[String], args: &[&str]) -> std::process::Output {
    Command::new(dep_bin("etcdctl"))
        .arg(format!("--endpoints={url}"))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s")
        .args(tls)
        .args(args)
        .env_remove("ETCDCTL_ENDPOINTS")
        .output()
        .expect("running etcdctl")
}

fn flag(name: &str, path: PathBuf) -> String {
    format!("--{name}={}", path.display())
}

#[test]
fn etcd_tls_answers_over_tls_with_its_ca_only() {
    let etcd = Etcd::start_tls();
    let url = etcd.url();
    assert_eq!(url, format!("https://{}", etcd.endpoint()));
    assert_eq!(
        etcd.store_url(),
        format!("etcd+https://{}", etcd.endpoint())
    );
    assert!(!etcd.requires_client_cert());
    let files = etcd.tls_files().expect("TLS files").clone();
    for f in [
        files.ca(),
        files.client_cert(),
        files.client_key(),
        files.untrusted_ca(),
    ] {
        assert!(f.starts_with(etcd.data_dir()), "{}", f.display());
        assert!(std::fs::read_to_string(&f).unwrap().contains("-----BEGIN"));
    }
    assert_eq!(etcd.ca_file(), Some(files.ca()));

    // The harness's etcdctl speaks TLS.
    stdout_of(&etcd.etcdctl(&["put", "harness/tls", "secret"]));
    // The CA alone is enough (no client certificate needed), over the
    // name and over the address.
    let ca_only = [flag("cacert", files.ca())];
    let got = etcdctl_raw(
        &url,
        &ca_only,
        &["get", "--print-value-only", "harness/tls"],
    );
    assert_eq!(stdout_of(&got).trim_end(), "secret");
    let by_name = url.replace("127.0.0.1", "localhost");
    stdout_of(&etcdctl_raw(&by_name, &ca_only, &["get", "harness/tls"]));

    // Refused: another CA, and plain HTTP.
    let wrong = etcdctl_raw(
        &url,
        &[flag("cacert", files.untrusted_ca())],
        &["get", "harness/tls"],
    );
    assert!(!wrong.status.success(), "trusted an unrelated CA");
    let plain = etcdctl_raw(
        &etcd.url().replace("https", "http"),
        &[],
        &["get", "harness/tls"],
    );
    assert!(!plain.status.success(), "answered plain HTTP");

    let dir = etcd.data_dir().to_path_buf();
    drop(etcd);
    assert!(!dir.exists(), "drop left {}", dir.display());
}

#[test]
fn etcd_mtls_requires_a_client_certificate() {
    let mut etcd = Etcd::start_mtls();
    assert!(etcd.requires_client_cert());
    let files = etcd.tls_files().expect("TLS files").clone();
    let url = etcd.url();
    let full = [
        flag("cacert", files.ca()),
        flag("cert", etcd.client_cert_file().unwrap()),
        flag("key", etcd.client_key_file().unwrap()),
    ];
    stdout_of(&etcdctl_raw(&url, &full, &["put", "harness/mtls", "v"]));
    let no_cert = etcdctl_raw(
        &url,
        &[flag("cacert", files.ca())],
        &["get", "harness/mtls"],
    );
    assert!(
        !no_cert.status.success(),
        "accepted a client without certificate"
    );

    // Readiness and TLS survive a restart (same certificates).
    etcd.restart();
    let got = etcdctl_raw(&url, &full, &["get", "--print-value-only", "harness/mtls"]);
    assert_eq!(stdout_of(&got).trim_end(), "v");
}

fn consul_cli(addr: &str, env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(dep_bin("consul"));
    cmd.args(args)
        .env("CONSUL_HTTP_ADDR", addr)
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_SSL")
        .env_remove("CONSUL_CACERT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running consul")
}

#[test]
fn consul_acl_answers_with_the_token_and_refuses_without() {
    let token = "e2e-management-token-0001";
    let consul = Consul::start_with_acl(token);
    assert_eq!(consul.acl_token(), Some(token));
    assert!(consul.store_url().starts_with("consul://127.0.0.1:"));
    // The harness's helpers send the token.
    assert!(consul.kv_put("harness/acl", "guarded"));
    assert_eq!(consul.kv_get("harness/acl").as_deref(), Some("guarded"));
    let got = stdout_of(&consul.consul(&["kv", "get", "harness/acl"]));
    assert_eq!(got.trim_end(), "guarded");

    // Without a token, or with a wrong one: refused.
    let addr = consul.http_addr();
    let none = consul_cli(&addr, &[], &["kv", "get", "harness/acl"]);
    assert!(!none.status.success(), "read without a token");
    let wrong = consul_cli(
        &addr,
        &[("CONSUL_HTTP_TOKEN", "not-the-token".into())],
        &["kv", "put", "harness/acl", "x"],
    );
    assert!(!wrong.status.success(), "wrote with a wrong token");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("ACL not found") || stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(consul.kv_get("harness/acl").as_deref(), Some("guarded"));
}

#[test]
fn consul_tls_answers_over_https_with_its_ca_only() {
    let consul = Consul::start_tls();
    let https = consul.https_addr().expect("HTTPS address");
    assert_eq!(consul.store_url(), format!("consul+https://{https}"));
    let files: TlsFiles = consul.tls_files().expect("TLS files").clone();
    assert_eq!(consul.ca_file(), Some(files.ca()));
    assert!(consul.kv_put("harness/tls", "over https"));

    let tls_env = |ca: PathBuf| {
        [
            ("CONSUL_HTTP_SSL", "true".to_owned()),
            ("CONSUL_CACERT", ca.display().to_string()),
        ]
    };
    let got = consul_cli(&https, &tls_env(files.ca()), &["kv", "get", "harness/tls"]);
    assert_eq!(stdout_of(&got).trim_end(), "over https");
    let by_name = https.replace("127.0.0.1", "localhost");
    stdout_of(&consul_cli(
        &by_name,
        &tls_env(files.ca()),
        &["kv", "get", "harness/tls"],
    ));

    // Refused: an unrelated CA, and plain HTTP on the HTTPS port.
    let wrong = consul_cli(
        &https,
        &tls_env(files.untrusted_ca()),
        &["kv", "get", "harness/tls"],
    );
    assert!(!wrong.status.success(), "trusted an unrelated CA");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    let plain = consul_cli(&https, &[], &["kv", "get", "harness/tls"]);
    assert!(
        !plain.status.success(),
        "plain HTTP answered on the HTTPS port"
    );
}
