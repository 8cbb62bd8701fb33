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
        let mut args: Vec<std::ffi::OsString> = [
            "--store",
            &self.url,
            "--prefix",
            &self.prefix,
            "--node",
            node,
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.push("--state-dir".into());
        args.push(state.path().into());
        args.push("--runtime-root".into());
        args.push(state.path().join("runc").into());
        args.push("--listen".into());
        args.push(format!("127.0.0.1:{port}").into());
        args.extend(extra.iter().map(Into::into));
        let mut agent = Agent {
            child: None,
            node: node.to_string(),
            port,
            log: state.path().join("agent.log"),
            args,
            starts: 0,
            _state: state,
        };
        agent.spawn(env);
        agent
    }
}

/// A running `cntnr-agent`, killed on drop (and every container it left
/// deleted, every bundle unmounted).
pub struct Agent {
    child: Option<Child>,
    pub node: String,
    pub port: u16,
    pub log: PathBuf,
    args: Vec<std::ffi::OsString>,
    starts: u32,
    _state: tempfile::TempDir,
}

impl Agent {
    fn spawn(&mut self, env: &[(&str, &str)]) {
        self.starts += 1;
        if self.starts > 1 {
            self.log = self
                ._state
                .path()
                .join(format!("agent-{}.log", self.starts));
        }
        let child = Command::new(env!("CARGO_BIN_EXE_cntnr-agent"))
            .args(&self.args)
            .env_remove("CNTNR_STORE")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("spawn cntnr-agent");
        self.child = Some(child);
    }

    /// The agent process.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("agent started")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent started").id()
    }

    /// Starts the agent again (same flags, state dir and runc root; a new
    /// log file), killing the old process if it still runs.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn(env);
    }
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
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    pub fn running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child().try_wait().expect("try_wait") {
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

impl Agent {
    /// The agent's state dir.
    pub fn state_dir(&self) -> &Path {
        self._state.path()
    }

    /// Its runc `--root`.
    pub fn runtime_root(&self) -> PathBuf {
        self._state.path().join("runc")
    }

    /// `runc list` under its root: (id, status).
    pub fn runc_list(&self) -> Vec<(String, String)> {
        runc_list(&self.runtime_root())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        cleanup_runtime(&self.runtime_root(), self._state.path());
    }
}

/// `runc --root ROOT list --format json`: one JSON object per container.
/// Retried briefly: runc list can fail while a container is being deleted
/// under it (its state dir vanishes mid-listing).
pub fn runc_list_json(root: &Path) -> Vec<serde_json::Value> {
    if !root.exists() {
        return Vec::new();
    }
    let mut tries = 0;
    let out = loop {
        let out = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "--format", "json"])
            .output()
            .expect("run runc list");
        tries += 1;
        if out.status.success() || tries == 10 {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.status.success(), "runc list: {out:?}");
    match serde_json::from_slice(&out.stdout) {
        Ok(serde_json::Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// `runc --root ROOT list`: (id, status) of every container.
pub fn runc_list(root: &Path) -> Vec<(String, String)> {
    runc_list_json(root)
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Running containers under the agent's runc root: id → init pid.
pub fn running(a: &Agent) -> std::collections::BTreeMap<String, u64> {
    runc_list_json(&a.runtime_root())
        .iter()
        .filter(|c| c["status"] == "running")
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `cntnr deploy -f <tmp>/NAME.yaml -p NAME` of `yaml`: its output.
pub fn deploy_output(s: &TestStore, name: &str, yaml: &str) -> Output {
    let file = s.tmp.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    s.cntnr(
        s.tmp.path(),
        &["deploy", "-f", file.to_str().unwrap(), "-p", name],
    )
}

/// [`deploy_output`], asserting it succeeded.
pub fn deploy(s: &TestStore, name: &str, yaml: &str) {
    let out = deploy_output(s, name, yaml);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// The status record `status/PROJECT/NODE`, parsed.
pub fn status_record(s: &TestStore, project: &str, node: &str) -> Option<serde_json::Value> {
    s.raw_get(&s.key(&format!("status/{project}/{node}")))
        .map(|t| serde_json::from_str(&t).expect("status record is JSON"))
}

/// Removes every container under `root` and unmounts every bundle rootfs
/// under `state` (what an agent killed by a test leaves behind).
pub fn cleanup_runtime(root: &Path, state: &Path) {
    // A `runc create` the killed agent started (under its shim, in its own
    // session) may still be running: let it finish, or the container it
    // registers after our listing is orphaned in `runc init` forever.
    let in_flight = || {
        procs_mentioning(state)
            .into_iter()
            .filter(|(_, cmd)| cmd.iter().any(|a| a == "create") && cmd.iter().any(|a| a == "runc"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (id, _) in runc_list(root) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", &id])
            .output();
    }
    // Shims of deleted containers exit on their own; any left (their
    // container never started) go now.
    for (pid, _) in procs_mentioning(state) {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
    }
    if let Ok(rd) = std::fs::read_dir(state.join("bundles")) {
        for e in rd.flatten() {
            let rootfs = e.path().join("rootfs");
            let _ = Command::new("umount").arg(&rootfs).output();
        }
    }
}

/// Processes (pid, argv) with an argument under `dir`.
fn procs_mentioning(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            argv.iter()
                .any(|a| Path::new(a).starts_with(dir))
                .then_some((pid, argv))
        })
        .collect()
}

/// An OCI layout of the example busybox image (tag `latest`), built once
/// per workspace with `examples/hello/build-image.sh` into
/// `target/test-image` (a build artefact like the binaries, reused across
/// runs; reproducible, so concurrent builders agree).
pub fn test_image() -> PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root = cntnr_e2e::workspace_root();
            let dest = root.join("target/test-image");
            if dest.join("index.json").exists() {
                return dest;
            }
            let tmp = root.join(format!("target/.test-image-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let out = Command::new(root.join("examples/hello/build-image.sh"))
                .arg(&tmp)
                .output()
                .expect("run build-image.sh");
            assert!(out.status.success(), "build-image.sh: {out:?}");
            if std::fs::rename(&tmp, &dest).is_err() {
                // Another test binary won the race; same content.
                let _ = std::fs::remove_dir_all(&tmp);
            }
            dest
        })
        .clone()
}

/// `image: oci:<test image>:latest`, ready to paste into a service.
pub fn test_image_ref() -> String {
    format!("oci:{}:latest", test_image().display())
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

/// A store a test owns and can take down: its own etcd or Consul server
/// (persistent, so [`OwnedStore::up`] brings the data back), or a dir store
/// whose directory is moved away.
pub enum OwnedStore {
    Etcd(cntnr_e2e::Etcd),
    Consul(cntnr_e2e::Consul),
    /// The dir store's root.
    Dir(PathBuf),
}

impl TestStore {
    /// A test store on a store of its own (see [`OwnedStore`]). Its raw
    /// helpers know only the shared servers: read through the returned
    /// [`OwnedStore`] instead.
    pub fn owned(kind: Kind, name: &str) -> (TestStore, OwnedStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let owned = match kind {
            Kind::Etcd => OwnedStore::Etcd(cntnr_e2e::Etcd::start()),
            Kind::Consul => OwnedStore::Consul(cntnr_e2e::Consul::start()),
            Kind::Dir => OwnedStore::Dir(tmp.path().join("store")),
        };
        let url = match &owned {
            OwnedStore::Etcd(e) => e.store_url(),
            OwnedStore::Consul(c) => c.store_url(),
            OwnedStore::Dir(root) => format!("dir://{}", root.display()),
        };
        let prefix = format!(
            "t{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let s = TestStore {
            kind,
            url,
            prefix,
            tmp,
        };
        (s, owned)
    }
}

impl OwnedStore {
    /// Where the dir store's directory is while it is down.
    pub fn dir_away(root: &Path) -> PathBuf {
        root.with_extension("down")
    }

    /// Takes the store down. A server is stopped (SIGTERM, waited for). A
    /// dir store's directory is moved to [`OwnedStore::dir_away`]: every
    /// store operation of the agent then fails (the writer lock file is
    /// gone with it), as against a stopped server, while a client pointed
    /// at the new path can still write "meanwhile".
    pub fn down(&mut self) {
        match self {
            OwnedStore::Etcd(e) => e.stop(),
            OwnedStore::Consul(c) => c.stop(),
            OwnedStore::Dir(root) => {
                std::fs::rename(&*root, Self::dir_away(root)).expect("moving the store away")
            }
        }
    }

    /// Brings the store back with its data.
    pub fn up(&mut self) {
        match self {
            OwnedStore::Etcd(e) => e.restart(),
            OwnedStore::Consul(c) => c.restart(),
            OwnedStore::Dir(root) => {
                std::fs::rename(Self::dir_away(root), &*root).expect("moving the store back")
            }
        }
    }

    /// Reads a key without going through cntnr (the store must be up).
    pub fn get(&self, key: &str) -> Option<String> {
        match self {
            OwnedStore::Etcd(e) => {
                let out = e.etcdctl(&["get", key, "--print-value-only"]);
                assert!(out.status.success(), "etcdctl get: {out:?}");
                let s = String::from_utf8_lossy(&out.stdout).into_owned();
                s.strip_suffix('\n').map(str::to_string)
            }
            OwnedStore::Consul(c) => c.kv_get(key),
            OwnedStore::Dir(root) => std::fs::read_to_string(root.join(key)).ok(),
        }
    }
}

/// SIGKILLs every `cntnr-shim` with an argument under `state` (an agent's
/// state dir) and waits until they are gone; returns how many there were.
pub fn kill_shims(state: &Path) -> usize {
    let shims: Vec<u32> = procs_mentioning(state)
        .into_iter()
        .filter(|(_, argv)| argv.first().is_some_and(|a| a.ends_with("cntnr-shim")))
        .map(|(pid, _)| pid)
        .collect();
    for pid in &shims {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
    }
    wait_for(Duration::from_secs(10), "killed shims gone", || {
        shims
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .then_some(())
    });
    shims.len()
}

/// GET on Consul's HTTP API: (X-Consul-Index, body), `None` on any error
/// (a plain HTTP/1.0 request to the harness's shared Consul).
pub fn consul_get(path: &str, timeout: Duration) -> Option<(u64, String)> {
    let mut s = TcpStream::connect(shared_consul().http_addr()).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1)? != "200" {
        return None;
    }
    let index = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-consul-index")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((index, body.to_string()))
}
