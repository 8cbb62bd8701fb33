//! Shared helpers for the agent's integration tests: a store (real etcd,
//! real Consul, or a dir) read and written *raw* (etcdctl, Consul's HTTP
//! API, plain files) so assertions do not go through the code under test;
//! the built `cntnr` and `cntnr-agent` binaries driven as an operator
//! would; processes killed by Drop guards.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cntnr_e2e::{shared_consul, shared_etcd};

/// Which real store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Consul,
    Dir,
}

/// A store plus a prefix unique to one test.
pub struct TestStore {
    pub kind: Kind,
    pub url: String,
    pub prefix: String,
    /// The dir store's root (and scratch space for every kind).
    pub tmp: tempfile::TempDir,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestStore {
    pub fn new(kind: Kind, name: &str) -> TestStore {
        let tmp = tempfile::tempdir().expect("tempdir");
        let url = match kind {
            Kind::Etcd => shared_etcd().store_url(),
            Kind::Consul => shared_consul().store_url(),
            Kind::Dir => format!("dir://{}", tmp.path().join("store").display()),
        };
        let prefix = format!(
            "t{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        TestStore {
            kind,
            url,
            prefix,
            tmp,
        }
    }

    /// `<prefix>/<rel>`.
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    fn dir_file(&self, key: &str) -> PathBuf {
        self.tmp.path().join("store").join(key)
    }

    /// Reads a key without going through cntnr.
    pub fn raw_get(&self, key: &str) -> Option<String> {
        match self.kind {
            Kind::Etcd => {
                let out = shared_etcd().etcdctl(&["get", key, "--print-value-only"]);
                assert!(out.status.success(), "etcdctl get: {out:?}");
                let s = String::from_utf8_lossy(&out.stdout).into_owned();
                // etcdctl adds one newline after the value; absent prints nothing.
                s.strip_suffix('\n').map(str::to_string)
            }
            Kind::Consul => shared_consul().kv_get(key),
            Kind::Dir => std::fs::read_to_string(self.dir_file(key)).ok(),
        }
    }

    /// Writes a key without going through cntnr (as `etcdctl put`,
    /// `consul kv put` or an editor would).
    pub fn raw_put(&self, key: &str, value: &str) {
        match self.kind {
            Kind::Etcd => {
                let out = shared_etcd().etcdctl(&["put", key, value]);
                assert!(out.status.success(), "etcdctl put: {out:?}");
            }
            Kind::Consul => assert!(shared_consul().kv_put(key, value), "consul kv put {key}"),
            Kind::Dir => {
                let f = self.dir_file(key);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                // A hidden temp name: the dir store ignores it until the
                // rename makes the key appear whole.
                let tmp =
                    f.with_file_name(format!(".{}.tmp", f.file_name().unwrap().to_string_lossy()));
                std::fs::write(&tmp, value).unwrap();
                std::fs::rename(&tmp, &f).unwrap();
            }
        }
    }

    /// Runs `cntnr ARGS… --store URL --prefix P` in `dir`.
    pub fn cntnr(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cntnr"))
            .args(args)
            .args(["--store", &self.url, "--prefix", &self.prefix])
            .current_dir(dir)
            .env_remove("CNTNR_STORE")
            .env_remove("CONSUL_HTTP_TOKEN")
            .output()
            .expect("run cntnr")
    }

    /// `cntnr ARGS… --json`, which must succeed, parsed.
    pub fn cntnr_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cntnr(self.tmp.path(), &a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "cntnr {args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cntnr --json prints JSON")
    }

    /// Starts an agent on this store.
    pub fn agent(&self, node: &str) -> Agent {
        self.agent_with(node, &[], &[])
    }

    /// Starts an agent on this store with extra flags and environment.
    pub fn agent_with(&self, node: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let state = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = state.path().join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cntnr-agent"))
            .args([
                "--store",
                &self.url,
                "--prefix",
                &self.prefix,
                "--node",
                node,
            ])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--runtime-root")
            .arg(state.path().join("runc"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("CNTNR_STORE")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn cntnr-agent");
        Agent {
            child,
            node: node.to_string(),
            port,
            log,
            _state: state,
        }
    }
}

/// A running `cntnr-agent`, killed on drop.
pub struct Agent {
    pub child: Child,
    pub node: String,
    pub port: u16,
    pub log: PathBuf,
    _state: tempfile::TempDir,
}

impl Agent {
    /// GET `path` on the agent's HTTP endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// `/status` as JSON, once the agent answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).expect("/status is JSON"))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not exit; log:\n{}",
                self.node,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET against 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
