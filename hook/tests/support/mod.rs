//! Test support: a busybox rootfs, bundles wired to the real `cntnr-hook`,
//! real runc under a private `--root`, and host snapshots (links, iptables,
//! IPAM dirs) to prove nothing leaks. Everything a test creates is removed by
//! `Drop`, even when the test fails.
#![allow(dead_code)]

use cntnr_hook::alloc::SubnetPool;
use cntnr_hook::conflist::{bridge_name, ensure_network, network_name};
use cntnr_hook::{oci_hooks, HookOptions, NetRequest, NetworkAttachment, PortRequest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Host-wide state (iptables, links) is compared before/after: one test at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

pub const HOOK: &str = env!("CARGO_BIN_EXE_cntnr-hook");
pub const INDEX: &str = "hello from cntnr\n";

/// Builds a busybox rootfs at `root` (shared read-only by a test's containers).
pub fn build_rootfs(root: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc", "www", "run"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "httpd", "nc", "sleep", "ip", "cat", "printf"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), INDEX).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    // As the bundle builder must do: /etc/hosts points into the hosts dir.
    std::os::unix::fs::symlink("/run/cntnr/net/hosts", root.join("etc/hosts")).unwrap();
    std::fs::create_dir_all(root.join("run/cntnr/net")).unwrap();
}

/// One test's world: temp dirs, a test-only subnet pool, its runc root.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pool: SubnetPool,
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub tag: String,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
}

impl World {
    /// `third_octet`: the test's pool is `10.250.<third_octet>.0/23` in /24s
    /// (two networks), unique per test.
    pub fn new(tag: &str, third_octet: u8) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cntnr-hook-test")
            .tempdir()
            .unwrap();
        for d in ["state", "run", "runc", "bundles"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        build_rootfs(&dir.path().join("rootfs"));
        Self {
            dir,
            pool: SubnetPool {
                base: format!("10.250.{third_octet}.0/23").parse().unwrap(),
                prefix: 24,
            },
            containers: Vec::new(),
            networks: Vec::new(),
            tag: format!("{tag}{}", std::process::id()),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// Project name unique to this test run.
    pub fn project(&self, p: &str) -> String {
        format!("t{}-{p}", self.tag)
    }

    /// The network (allocated, conflist written) of `project`.
    pub fn network(&mut self, project: &str, net: &str) -> NetworkAttachment {
        let (att, _) = ensure_network(&self.state_dir(), &self.pool, project, net).unwrap();
        let name = network_name(project, net).unwrap();
        if !self.networks.contains(&name) {
            self.networks.push(name);
        }
        att
    }

    pub fn request(&self, networks: Vec<NetworkAttachment>, ports: Vec<PortRequest>) -> NetRequest {
        let mut r = NetRequest::new(networks);
        r.ports = ports;
        r.state_dir = self.state_dir();
        r.run_dir = self.run_dir();
        r
    }

    /// Writes a bundle for `id` running `args`; `req: None` means the host network.
    pub fn bundle(
        &self,
        id: &str,
        args: &[&str],
        req: Option<&NetRequest>,
        hook_env: &[&str],
    ) -> Container {
        let bundle = self.dir.path().join("bundles").join(id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .arg("-b")
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = bundle.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["root"] = json!({"path": self.dir.path().join("rootfs"), "readonly": true});
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
        c["process"]["env"] = json!(["PATH=/bin"]);
        c["hostname"] = json!(id);
        let mut mounts = c["mounts"].as_array().unwrap().clone();
        mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}));
        let hosts_dir = bundle.join(cntnr_hook::hosts::HOSTS_DIR_IN_BUNDLE);
        std::fs::create_dir_all(&hosts_dir).unwrap();
        std::fs::write(hosts_dir.join("hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        mounts.push(
            json!({"destination": cntnr_hook::hosts::HOSTS_DIR_IN_CONTAINER, "type": "bind",
            "source": hosts_dir, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
        c["mounts"] = json!(mounts);
        match req {
            Some(req) => {
                let (k, v) = req.to_annotation();
                c["annotations"] = json!({ k: v });
                let hooks = oci_hooks(&HookOptions {
                    binary: HOOK.into(),
                    timeout_secs: 20,
                    env: hook_env.iter().map(|s| s.to_string()).collect(),
                })
                .unwrap();
                c["hooks"] = serde_json::to_value(hooks).unwrap();
            }
            None => {
                let ns: Vec<Value> = c["linux"]["namespaces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["type"] != "network")
                    .cloned()
                    .collect();
                c["linux"]["namespaces"] = json!(ns);
            }
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        Container {
            id: id.to_string(),
            bundle,
        }
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(self.runc_root());
        cmd
    }

    /// `runc run -d`: Ok, or runc's error output.
    pub fn run(&mut self, c: &Container) -> Result<(), String> {
        if !self.containers.contains(&c.id) {
            self.containers.push(c.id.clone());
        }
        let log = c.bundle.join("runc.out");
        let f = std::fs::File::create(&log).unwrap();
        let status = self
            .runc()
            .args(["run", "-d", "-b"])
            .arg(&c.bundle)
            .arg(&c.id)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap();
        if status.success() {
            Ok(())
        } else {
            Err(std::fs::read_to_string(&log).unwrap_or_default())
        }
    }

    /// `runc create` (the container waits in `created`, with its pid and netns).
    pub fn create(&mut self, c: &Container) -> Result<(), String> {
        if !self.containers.contains(&c.id) {
            self.containers.push(c.id.clone());
        }
        let log = c.bundle.join("runc.out");
        let f = std::fs::File::create(&log).unwrap();
        let status = self
            .runc()
            .args(["create", "-b"])
            .arg(&c.bundle)
            .arg(&c.id)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap();
        if status.success() {
            Ok(())
        } else {
            Err(std::fs::read_to_string(&log).unwrap_or_default())
        }
    }

    /// `runc exec` in a running container.
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        self.runc()
            .arg("exec")
            .arg(id)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `runc delete -f` (runs the poststop hook). Ok or runc's stderr.
    pub fn delete(&mut self, id: &str) -> Result<(), String> {
        let out = self.runc().args(["delete", "-f", id]).output().unwrap();
        self.containers.retain(|c| c != id);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Whether runc knows the container.
    pub fn exists(&self, id: &str) -> bool {
        self.runc()
            .args(["state", id])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// The runc state JSON (what hooks get on stdin).
    pub fn state(&self, id: &str) -> Value {
        let out = self.runc().args(["state", id]).output().unwrap();
        assert!(out.status.success(), "runc state {id}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs the hook binary by hand with `state` on stdin.
    pub fn hook(&self, verb: &str, state: &Value) -> Output {
        self.hook_env(verb, state, &[])
    }

    /// [`World::hook`] with extra env.
    pub fn hook_env(&self, verb: &str, state: &Value, env: &[(&str, &str)]) -> Output {
        use std::io::Write;
        let mut child = Command::new(HOOK)
            .arg(verb)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(state.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn bridges(&self) -> Vec<String> {
        self.networks.iter().map(|n| bridge_name(n)).collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for id in self.containers.clone() {
            let _ = self.delete(&id);
        }
        // Safety net for a failed test: whatever the hook would have removed.
        for n in self.networks.clone() {
            let br = bridge_name(&n);
            let conf = cntnr_hook::conflist::conflist_path(&self.state_dir(), &n);
            let masq = cntnr_hook::cni::Conflist::load(&cntnr_hook::ConflistSource::Path(conf))
                .ok()
                .and_then(|c| c.masquerade);
            let _ = Command::new("ip").args(["link", "del", &br]).output();
            let _ = cntnr_hook::firewall::remove_network_rules(&br, masq);
            let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&n));
        }
        if let Ok(d) = std::fs::read_dir(self.run_dir().join("netns")) {
            for e in d.flatten() {
                let _ = cntnr_hook::netns::unpin(&e.path());
            }
        }
        // Leave the host as it was: the shared chains go once unused.
        let _ = cntnr_hook::firewall::remove_shared_chains_if_unused();
    }
}

/// Removes the `hooks` from a bundle's config.json (the test drives the hook itself).
pub fn strip_hooks(c: &Container) {
    let path = c.bundle.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("hooks");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

pub use cntnr_e2e::host::{leaks, snapshot, Snapshot};

/// Asserts no leak, plus no pin, claim or result file left in the world.
pub fn assert_no_leaks(w: &World, before: &Snapshot) {
    let after = snapshot();
    let l = leaks(before, &after);
    assert!(l.is_empty(), "leaked: {l:#?}");
    let pins: Vec<_> = std::fs::read_dir(w.run_dir().join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "netns pins left: {pins:?}");
    let claims: Vec<_> = std::fs::read_dir(w.state_dir().join("net/ports"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(claims.is_empty(), "port claims left: {claims:?}");
}

/// The container's first IP, from the result file the hook wrote.
pub fn ip_of(c: &Container) -> String {
    let r = cntnr_hook::NetResult::read(&c.bundle.join(cntnr_hook::RESULT_FILE))
        .unwrap()
        .expect("result file written");
    r.primary_ip().expect("an IP").to_string()
}

/// HTTP GET `/` from inside container `from` to `ip:port`: the body, or
/// why not. busybox `nc` with a 2 s timeout (the static busybox's `wget`
/// crashes in glibc's static NSS).
pub fn http_get(w: &World, from: &str, ip: &str, port: u16) -> Result<String, String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}");
    let out = w.exec(from, &["sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if out.status.success() && head.starts_with("HTTP/1.") => {
            Ok(body.to_string())
        }
        _ => Err(format!("{}{}", text, String::from_utf8_lossy(&out.stderr))),
    }
}

/// [`http_get`], retried for 3 s while the server may still be starting.
pub fn http_get_ready(w: &World, from: &str, ip: &str, port: u16) -> Result<String, String> {
    let start = std::time::Instant::now();
    loop {
        match http_get(w, from, ip, port) {
            Err(e) if start.elapsed().as_secs() < 3 => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// A host port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];
