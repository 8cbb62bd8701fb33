//! Many nodes on one machine (issue 9): `CNTNR_BENCH_FLEET_NODES` (default
//! 100) real `cntnr-agent` processes, built with the `bench-fake-runtime`
//! feature (containers are entries in memory, nothing runs: see
//! `cntnr_reconcile::fake`), against one etcd 3.5 and then one Consul 1.8
//! agent started by the harness. Each agent has its own node name, state
//! dir, runtime root and HTTP port, and default flags (`--session-ttl 15s`,
//! Consul lock-delay 15 s). The projects are 20 × one service with
//! `deploy.replicas: 10`, `network_mode: none`, no healthcheck, no ports,
//! from a one-file image built here (the agent still imports it and builds
//! every bundle): the store, placement, reconcile and status paths are the
//! real ones.
//!
//! Per store, in order:
//! 1. half the agents, then all of them, idle with no project: store
//!    requests per second over `CNTNR_BENCH_IDLE_SECS` (default 30) each;
//! 2. the 20 projects written at once (raw puts, as `cntnr deploy` writes
//!    them): time until the schedules exist, and until the `status/`
//!    records show all 200 replicas running (read from the store);
//! 3. idle with 20 projects, then with 1 (19 removed): requests per second;
//!    per node, 20 projects against 1 must be about 1×, not about 20×
//!    (idle load O(nodes), not O(nodes × projects));
//! 4. SIGKILL the leader agent: time until another node holds `leader`,
//!    beside TTL + lock-delay + 1 s.
//!
//! Requests are counted at the server: etcd's gRPC messages received
//! (`grpc_server_msg_received_total` from `/metrics`: one per unary call,
//! one per stream message such as a lease keep-alive); for Consul, HTTP
//! requests counted by a loopback proxy the agents connect through (the
//! bench's own reads go to Consul directly). The busiest request kinds of
//! each window are printed below the table.
//!
//! `scripts/bench.sh -p cntnr-agent --features bench-fake-runtime --bench
//! fleet` (root: the agents mount each bundle's overlay rootfs).
//! `CNTNR_BENCH_FLEET_STORES=etcd` (or `consul`) runs one store only.
//! Every agent is killed and every bundle unmounted by Drop guards, on
//! failure too; the servers stop with their guards.
//!
//! Measured on the 2-core development machine (100 agents, 30 s windows,
//! 2026-11-29, after Consul sessions were tied to a liveness check and idle
//! contenders stopped re-acquiring; etcd from the same day's run):
//!
//! ```text
//!                                          etcd 3.5        Consul 1.8.7      goal
//! deploy → schedules written               1.01 s          1.25 s
//! deploy → 200 replicas running            1.47 s          1.99 s            < 5 s
//! idle req/s, 50 nodes, 0 projects         10.0 (0.200/n)  20.0 (0.400/n)
//! idle req/s, 100 nodes, 0 projects        20.0 (0.200/n)  43.3 (0.433/n)
//! idle req/s, 100 nodes, 20 projects       20.0 (0.200/n)  43.4 (0.434/n)
//! idle req/s, 100 nodes, 1 project         20.0 (0.200/n)  43.3 (0.433/n)
//! per node, 20 ÷ 1 projects                1.00×           1.00×             ≈1×, not ≈20×
//! leader failover (SIGKILL → new holder)   12.05 s         25.5–29.9 s       < 16 s / < 31 s
//! ```
//!
//! Idle on etcd is one lease keep-alive per agent every 5 s (TTL / 3);
//! watches are streams and cost nothing while quiet. On Consul it is, per
//! agent every 5 s, the session renewal and the pass of the session's
//! liveness check (a local agent call that reaches the servers only on a
//! change), plus, per agent and minute, the two 60 s blocking reads of
//! `leader` (the follower's and the campaign's) timing out and waiting
//! again: 0.033/s per node, which 30 s windows sample unevenly. No figure
//! grows with the project count. Consul failover: the session dies with its
//! liveness check one TTL (15 s) after the last renewal, so 10–15 s after
//! the kill (renewals every 5 s), then the 15 s lock-delay; before that
//! check, Consul's own TTL (invalidation up to 2 × TTL) gave 41–46 s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cntnr_e2e::{Consul, Etcd};
use sha2::Digest as _;

const PREFIX: &str = "fleet";
const PROJECTS: usize = 20;
const REPLICAS: usize = 10;
/// The agents' defaults (`--session-ttl`, kv's Consul lock-delay).
const SESSION_TTL: Duration = Duration::from_secs(15);
const CONSUL_LOCK_DELAY: Duration = Duration::from_secs(15);
/// After a change, before an idle window starts.
const SETTLE: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(120);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&raw).into_owned()
}

fn http() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent()
    })
}

fn body(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> (u16, String) {
    let mut res = res.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_else(|e| panic!("{what}: reading the reply: {e}"));
    (status, text)
}

// --- the store, read and written raw -------------------------------------

/// The server under test and how the bench reaches it.
enum Server {
    Etcd(Etcd),
    /// Consul, and the counting proxy the agents go through.
    Consul(Consul, proxy::Proxy),
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Etcd(_) => "etcd",
            Server::Consul(..) => "consul",
        }
    }

    /// The `--store` URL agent `i` gets (Consul: a proxy port of its own).
    fn agent_url(&self, i: usize) -> String {
        match self {
            Server::Etcd(e) => e.store_url(),
            Server::Consul(_, p) => format!("consul://127.0.0.1:{}", p.listen(i)),
        }
    }

    fn etcd_call(e: &Etcd, api: &str, req: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/v3/kv/{api}", e.url());
        let (status, text) = body(http().post(&url).send(req.to_string()), &url);
        assert_eq!(status, 200, "POST {url}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"))
    }

    fn put(&self, key: &str, value: &str) {
        match self {
            Server::Etcd(e) => {
                Self::etcd_call(
                    e,
                    "put",
                    serde_json::json!({ "key": b64(key), "value": b64(value) }),
                );
            }
            Server::Consul(c, _) => assert!(c.kv_put(key, value), "consul kv put {key}"),
        }
    }

    fn delete(&self, key: &str) {
        match self {
            Server::Etcd(e) => {
                Self::etcd_call(e, "deleterange", serde_json::json!({ "key": b64(key) }));
            }
            Server::Consul(c, _) => {
                let url = format!("{}/v1/kv/{key}", c.url());
                let (status, text) = body(http().delete(&url).call(), &url);
                assert_eq!(status, 200, "DELETE {url}: {text}");
            }
        }
    }

    /// Every key under `dir` (which ends in `/`) with its value and
    /// whether a session holds it (etcd: a lease).
    fn list(&self, dir: &str) -> Vec<(String, String, bool)> {
        match self {
            Server::Etcd(e) => {
                let mut end = dir.as_bytes().to_vec();
                *end.last_mut().expect("a non-empty dir") += 1;
                let end = String::from_utf8(end).expect("ASCII keys");
                let v = Self::etcd_call(
                    e,
                    "range",
                    serde_json::json!({ "key": b64(dir), "range_end": b64(&end) }),
                );
                v["kvs"]
                    .as_array()
                    .map(|kvs| {
                        kvs.iter()
                            .map(|kv| {
                                let leased = kv["lease"].as_str().is_some_and(|l| l != "0");
                                (
                                    unb64(kv["key"].as_str().unwrap_or_default()),
                                    unb64(kv["value"].as_str().unwrap_or_default()),
                                    leased,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            Server::Consul(c, _) => {
                let url = format!("{}/v1/kv/{dir}?recurse", c.url());
                let (status, text) = body(http().get(&url).call(), &url);
                if status == 404 {
                    return Vec::new();
                }
                assert_eq!(status, 200, "GET {url}: {text}");
                let v: serde_json::Value = serde_json::from_str(&text).expect("Consul KV JSON");
                v.as_array()
                    .map(|kvs| {
                        kvs.iter()
                            .map(|kv| {
                                (
                                    kv["Key"].as_str().unwrap_or_default().to_string(),
                                    unb64(kv["Value"].as_str().unwrap_or_default()),
                                    kv["Session"].as_str().is_some_and(|s| !s.is_empty()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
        }
    }

    /// The node holding `leader`, if a session holds it.
    fn leader(&self) -> Option<String> {
        let key = format!("{PREFIX}/leader");
        match self {
            Server::Etcd(e) => {
                let v = Self::etcd_call(e, "range", serde_json::json!({ "key": b64(&key) }));
                let kv = v["kvs"].as_array()?.first()?.clone();
                Some(unb64(kv["value"].as_str()?))
            }
            Server::Consul(c, _) => {
                let url = format!("{}/v1/kv/{key}", c.url());
                let (status, text) = body(http().get(&url).call(), &url);
                if status != 200 {
                    return None;
                }
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                let kv = v.as_array()?.first()?.clone();
                kv["Session"].as_str().filter(|s| !s.is_empty())?;
                Some(unb64(kv["Value"].as_str()?))
            }
        }
    }

    /// Requests the server has received so far, by kind.
    fn requests(&self) -> BTreeMap<String, u64> {
        match self {
            Server::Etcd(e) => {
                let url = format!("{}/metrics", e.url());
                let (_, text) = body(http().get(&url).call(), &url);
                etcd_received(&text)
            }
            Server::Consul(_, p) => p.counts(),
        }
    }
}

/// `grpc_server_msg_received_total` of etcd's `/metrics`, by method.
fn etcd_received(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches('"').to_string())
            .unwrap_or_default();
        let n: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(method).or_insert(0) += n as u64;
    }
    out
}

/// `after - before`, per kind and in total.
fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (u64, Vec<(String, u64)>) {
    let mut kinds: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    (kinds.iter().map(|(_, v)| v).sum(), kinds)
}

// --- the Consul request counter ------------------------------------------

mod proxy {
    //! A loopback TCP proxy in front of Consul that counts HTTP/1.1
    //! requests by their request line (method and path; KV paths cut to
    //! the key's directory, `?index=` marked as blocking).
    //!
    //! Each agent gets a listener of its own, and its connections reach
    //! Consul from a loopback address of its own (`127.1.x.y`), as from a
    //! host of its own: Consul limits concurrent HTTP connections per
    //! client address (`limits.http_max_conns_per_client`, 200), which a
    //! hundred agents on one address exceed.

    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Proxy {
        upstream: SocketAddr,
        counts: Arc<Mutex<BTreeMap<String, u64>>>,
        open: Arc<AtomicI64>,
        rt: Option<tokio::runtime::Runtime>,
    }

    impl Proxy {
        pub fn start(upstream: SocketAddr) -> Proxy {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("proxy runtime");
            Proxy {
                upstream,
                counts: Default::default(),
                open: Default::default(),
                rt: Some(rt),
            }
        }

        /// A new listener for agent `i`: its port.
        pub fn listen(&self, i: usize) -> u16 {
            let rt = self.rt.as_ref().expect("running");
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("binding the proxy");
            let port = listener.local_addr().expect("proxy address").port();
            let source = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
            let (upstream, counts, open) = (self.upstream, self.counts.clone(), self.open.clone());
            rt.spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(
                        client,
                        source,
                        upstream,
                        counts.clone(),
                        open.clone(),
                    ));
                }
            });
            port
        }

        pub fn counts(&self) -> BTreeMap<String, u64> {
            self.counts.lock().unwrap().clone()
        }

        /// Connections to Consul open now.
        pub fn open(&self) -> i64 {
            self.open.load(Ordering::SeqCst)
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            if let Some(rt) = self.rt.take() {
                rt.shutdown_background();
            }
        }
    }

    async fn connect(
        source: Ipv4Addr,
        upstream: SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
        socket.connect(upstream).await
    }

    async fn relay(
        client: tokio::net::TcpStream,
        source: Ipv4Addr,
        upstream: SocketAddr,
        counts: Arc<Mutex<BTreeMap<String, u64>>>,
        open: Arc<AtomicI64>,
    ) {
        let Ok(server) = connect(source, upstream).await else {
            return;
        };
        open.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let up = async {
            let mut buf = vec![0u8; 16 << 10];
            let mut line: Vec<u8> = Vec::new();
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    if b == b'\n' {
                        if let Some(kind) = request_kind(&line) {
                            *counts.lock().unwrap().entry(kind).or_insert(0) += 1;
                        }
                        line.clear();
                    } else if line.len() < 4096 {
                        line.push(b);
                    }
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        tokio::join!(up, down);
        open.fetch_sub(1, Ordering::SeqCst);
    }

    /// `GET /v1/kv/<dir>` (+ ` (blocking)`), `PUT /v1/session/renew`, …
    fn request_kind(line: &[u8]) -> Option<String> {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let rest = line
            .strip_suffix(" HTTP/1.1")
            .or(line.strip_suffix(" HTTP/1.0"))?;
        // A body without a final newline runs into the next request line
        // (keep-alive): the method is what the text before the target ends with.
        let (head, target) = rest.rsplit_once(' ')?;
        let method = ["DELETE", "POST", "PUT", "GET", "HEAD"]
            .into_iter()
            .find(|m| head.ends_with(m))?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let shown = if segs.get(1) == Some(&"kv") {
            // v1/kv/<prefix>/<dir>/…
            segs.iter().take(4).copied().collect::<Vec<_>>().join("/")
        } else {
            segs.iter().take(3).copied().collect::<Vec<_>>().join("/")
        };
        let blocking = if query.split('&').any(|q| q.starts_with("index=")) {
            " (blocking)"
        } else {
            ""
        };
        Some(format!("{method} /{shown}{blocking}"))
    }
}

// --- the image ---------------------------------------------------------

/// A one-layer OCI layout (tag `latest`): a shell script and a passwd
/// file. The in-memory runtime runs nothing; the agent imports the image
/// and builds bundles from it as from any other.
fn tiny_image(dir: &Path) -> PathBuf {
    let layout = dir.join("image");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let add = |bytes: &[u8]| -> (String, usize) {
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut tar = tar::Builder::new(Vec::new());
    let mut file = |path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    file("bin/app", 0o755, b"#!/bin/sh\nexec sleep infinity\n");
    file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    file("etc/group", 0o644, b"root:x:0:\n");
    let layer = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&layer));
    let (layer_digest, layer_size) = add(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["/bin/app"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let (config_digest, config_size) = add(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest, "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = add(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

fn project_yaml(image: &Path) -> String {
    format!(
        "services:\n  app:\n    image: oci:{}:latest\n    network_mode: none\n    deploy:\n      replicas: {REPLICAS}\n",
        image.display()
    )
}

fn project_name(i: usize) -> String {
    format!("p{i:02}")
}

// --- the agents --------------------------------------------------------

struct AgentProc {
    node: String,
    child: Option<Child>,
    dir: PathBuf,
}

/// Every agent of one run; killed (and their bundles unmounted) on drop.
struct Fleet {
    agents: Vec<AgentProc>,
    binary: PathBuf,
    root: tempfile::TempDir,
}

impl Fleet {
    fn new(binary: &Path) -> Fleet {
        let root = tempfile::Builder::new()
            .prefix("cntnr-fleet-")
            .tempdir()
            .expect("tempdir");
        Fleet {
            agents: Vec::new(),
            binary: binary.to_path_buf(),
            root,
        }
    }

    /// Starts `n` more agents on `url` (they start up concurrently).
    fn spawn(&mut self, n: usize, url: impl Fn(usize) -> String) {
        // Store URLs first: the Consul proxy binds a port for each.
        let first = self.agents.len();
        let urls: Vec<String> = (first..first + n).map(url).collect();
        // Hold every port until all are picked: no two agents share one.
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        for (port, url) in ports.into_iter().zip(urls) {
            let i = self.agents.len();
            let node = format!("n{i:03}");
            let dir = self.root.path().join(&node);
            std::fs::create_dir_all(&dir).unwrap();
            let log = std::fs::File::create(dir.join("agent.log")).unwrap();
            let child = Command::new(&self.binary)
                .args(["--store", &url, "--prefix", PREFIX, "--node", &node])
                .arg("--state-dir")
                .arg(&dir)
                .arg("--runtime-root")
                .arg(dir.join("runtime"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env_remove("CNTNR_STORE")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("CONSUL_HTTP_TOKEN")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawning cntnr-agent");
            self.agents.push(AgentProc {
                node,
                child: Some(child),
                dir,
            });
        }
    }

    /// SIGKILLs the agent of `node`.
    fn kill(&mut self, node: &str) {
        let a = self
            .agents
            .iter_mut()
            .find(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent {node}"));
        if let Some(mut c) = a.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Agents that exited on their own, with the tail of their logs.
    fn casualties(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &mut self.agents {
            if let Some(c) = a.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let log = std::fs::read_to_string(a.dir.join("agent.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    out.push(format!("{} exited ({st}): {:?}", a.node, tail));
                }
            }
        }
        out
    }

    /// The last warnings of a few agents (for a figure that failed).
    fn log_sample(&self) -> String {
        let mut out = String::new();
        for a in self.agents.iter().take(3) {
            let log = std::fs::read_to_string(a.dir.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail: Vec<String> = lines[lines.len().saturating_sub(3)..]
                .iter()
                .map(|l| l.chars().take(300).collect())
                .collect();
            out.push_str(&format!("  {}:\n    {}\n", a.node, tail.join("\n    ")));
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(c) = a.child.as_mut() {
                let _ = c.kill();
            }
        }
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.wait();
            }
            // The overlay rootfs of every bundle the agent built.
            if let Ok(rd) = std::fs::read_dir(a.dir.join("bundles")) {
                for e in rd.flatten() {
                    let _ = rustix::mount::unmount(
                        e.path().join("rootfs"),
                        rustix::mount::UnmountFlags::DETACH,
                    );
                }
            }
        }
    }
}

// --- waiting -----------------------------------------------------------

/// Polls `f` every `every` until it returns `Some`, for at most `WAIT`.
fn poll<T>(every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Replicas reported running in `status/`: (project, container id).
fn running(server: &Server) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (key, value, _) in server.list(&format!("{PREFIX}/status/")) {
        let project = key
            .strip_prefix(&format!("{PREFIX}/status/"))
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&value) else {
            continue;
        };
        for c in v["containers"].as_array().into_iter().flatten() {
            if c["state"] == "running" {
                let id = c["id"].as_str().unwrap_or_default().to_string();
                out.insert((project.clone(), id));
            }
        }
    }
    out
}

/// Status records' errors and containers' last errors (deduplicated, a few).
fn status_errors(server: &Server) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (_, value, _) in server.list(&format!("{PREFIX}/status/")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&value) else {
            continue;
        };
        for e in v["errors"].as_array().into_iter().flatten() {
            out.insert(e.as_str().unwrap_or_default().to_string());
        }
        for c in v["containers"].as_array().into_iter().flatten() {
            if let Some(e) = c["last_error"].as_str() {
                out.insert(e.to_string());
            }
        }
    }
    out.into_iter().take(5).collect()
}

// --- the figures -------------------------------------------------------

/// One idle window.
struct Idle {
    label: String,
    nodes: usize,
    per_sec: f64,
    kinds: Vec<(String, u64)>,
    secs: f64,
}

impl Idle {
    fn per_node(&self) -> f64 {
        self.per_sec / self.nodes as f64
    }
}

fn idle_window(server: &Server, nodes: usize, label: &str, window: Duration) -> Idle {
    std::thread::sleep(SETTLE);
    let before = server.requests();
    let t = Instant::now();
    std::thread::sleep(window);
    let after = server.requests();
    let secs = t.elapsed().as_secs_f64();
    let (total, kinds) = delta(&before, &after);
    Idle {
        label: label.to_string(),
        nodes,
        per_sec: total as f64 / secs,
        kinds,
        secs,
    }
}

/// One store's run.
struct Report {
    store: &'static str,
    nodes: usize,
    schedules: Result<Duration, String>,
    converged: Result<Duration, String>,
    idle: Vec<Idle>,
    failover: Result<Duration, String>,
    failover_goal: Duration,
    notes: Vec<String>,
}

fn wait_nodes(server: &Server, fleet: &mut Fleet, n: usize) {
    let ok = poll(Duration::from_millis(250), || {
        let up = server
            .list(&format!("{PREFIX}/nodes/"))
            .iter()
            .filter(|(_, _, held)| *held)
            .count();
        (up >= n).then_some(())
    });
    if ok.is_none() {
        panic!(
            "{} of {n} agents registered within {WAIT:?}; exited: {:?}\n{}",
            server.list(&format!("{PREFIX}/nodes/")).len(),
            fleet.casualties(),
            fleet.log_sample()
        );
    }
}

fn run_store(server: Server, nodes: usize, window: Duration, image: &Path, agent: &Path) -> Report {
    let mut fleet = Fleet::new(agent);
    let url = |i| server.agent_url(i);
    let mut idle = Vec::new();
    let mut notes = Vec::new();
    let (name, start) = (server.name(), Instant::now());
    let say = |what: &str| eprintln!("fleet/{name} +{}s: {what}", start.elapsed().as_secs());
    say(&format!("starting {nodes} agents"));

    // 1. Idle with no project, at half and at full size.
    let half = nodes / 2;
    fleet.spawn(half, url);
    wait_nodes(&server, &mut fleet, half);
    let log = std::fs::read_to_string(fleet.agents[0].dir.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("bench-fake-runtime"),
        "cntnr-agent was not built with bench-fake-runtime (rebuilt meanwhile?); its log:\n{log}"
    );
    say("registered; idle window");
    idle.push(idle_window(&server, half, "0 projects", window));
    fleet.spawn(nodes - half, url);
    wait_nodes(&server, &mut fleet, nodes);
    poll(Duration::from_millis(250), || server.leader()).expect("a leader");
    say("all registered; idle window");
    idle.push(idle_window(&server, nodes, "0 projects", window));
    if let Server::Consul(_, p) = &server {
        notes.push(format!(
            "{} connections open to Consul with {nodes} agents idle",
            p.open()
        ));
    }

    // 2. Deploy: every project key written at once.
    say(&format!("deploying {PROJECTS} × {REPLICAS}"));
    let yaml = project_yaml(image);
    let total = PROJECTS * REPLICAS;
    let t0 = Instant::now();
    for i in 0..PROJECTS {
        server.put(&format!("{PREFIX}/projects/{}", project_name(i)), &yaml);
    }
    let mut schedules = Err(format!("not all {PROJECTS} within {WAIT:?}"));
    let mut seen = 0;
    let converged = poll(Duration::from_millis(100), || {
        if schedules.is_err() && server.list(&format!("{PREFIX}/schedule/")).len() >= PROJECTS {
            schedules = Ok(t0.elapsed());
        }
        seen = running(&server).len();
        (seen >= total).then(|| t0.elapsed())
    })
    .ok_or_else(|| {
        format!(
            "{seen}/{total} running after {WAIT:?}; errors: {:?}",
            status_errors(&server)
        )
    });
    if converged.is_err() {
        notes.push(format!("agent logs:\n{}", fleet.log_sample()));
    }

    // 3. Idle with 20 projects, then with 1.
    say("idle window");
    idle.push(idle_window(
        &server,
        nodes,
        &format!("{PROJECTS} projects"),
        window,
    ));
    for i in 1..PROJECTS {
        server.delete(&format!("{PREFIX}/projects/{}", project_name(i)));
    }
    let gone = poll(Duration::from_millis(250), || {
        let left = server
            .list(&format!("{PREFIX}/status/"))
            .iter()
            .filter(|(k, _, _)| !k.starts_with(&format!("{PREFIX}/status/{}/", project_name(0))))
            .count();
        (left == 0).then_some(())
    });
    if gone.is_none() {
        notes.push("the 19 removed projects' status records were still there".into());
    }
    say("19 projects removed; idle window");
    idle.push(idle_window(&server, nodes, "1 project", window));

    // 4. Failover.
    let ttl_delay = match server {
        Server::Etcd(_) => Duration::ZERO,
        Server::Consul(..) => CONSUL_LOCK_DELAY,
    };
    let failover_goal = SESSION_TTL + ttl_delay + Duration::from_secs(1);
    let failover = match server.leader() {
        None => Err("no leader to kill".to_string()),
        Some(old) => {
            say(&format!("SIGKILL the leader {old}"));
            let t = Instant::now();
            fleet.kill(&old);
            poll(Duration::from_millis(100), || {
                server.leader().filter(|n| *n != old).map(|_| t.elapsed())
            })
            .ok_or_else(|| format!("no new leader within {WAIT:?}"))
        }
    };
    let dead = fleet.casualties();
    if !dead.is_empty() {
        notes.push(format!("agents that exited by themselves: {dead:?}"));
    }
    say("stopping");
    drop(fleet);
    let store = server.name();
    drop(server);
    say("stopped");
    Report {
        store,
        nodes,
        schedules,
        converged,
        idle,
        failover,
        failover_goal,
        notes,
    }
}

fn secs(d: &Result<Duration, String>) -> String {
    match d {
        Ok(d) => format!("{:.2} s", d.as_secs_f64()),
        Err(e) => format!("FAILED: {e}"),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn print(r: &Report) {
    println!();
    println!(
        "fleet on {}: {} agents (in-memory runtime), {PROJECTS} projects × {REPLICAS} replicas",
        r.store, r.nodes
    );
    println!("{:<46} {:>22}   {:<34}", "figure", "measured", "goal");
    let row = |name: &str, v: String, goal: String| println!("{name:<46} {v:>22}   {goal:<34}");
    row(
        "deploy → schedules written",
        secs(&r.schedules),
        String::new(),
    );
    let conv_ok = r
        .converged
        .as_ref()
        .is_ok_and(|d| *d < Duration::from_secs(5));
    row(
        &format!("deploy → {} replicas running", PROJECTS * REPLICAS),
        secs(&r.converged),
        format!("< 5 s: {}", verdict(conv_ok)),
    );
    for i in &r.idle {
        row(
            &format!("idle req/s, {} nodes, {}", i.nodes, i.label),
            format!("{:.1} ({:.3}/node)", i.per_sec, i.per_node()),
            String::new(),
        );
    }
    let by = |label: &str| {
        r.idle
            .iter()
            .rev()
            .find(|i| i.label == label && i.nodes == r.nodes)
    };
    if let (Some(many), Some(one)) = (by(&format!("{PROJECTS} projects")), by("1 project")) {
        let ratio = many.per_node() / one.per_node().max(1e-9);
        row(
            &format!("idle per node, {PROJECTS} projects ÷ 1 project"),
            format!("{ratio:.2}×"),
            format!("≈1×, not ≈{PROJECTS}× (< 2×): {}", verdict(ratio < 2.0)),
        );
    }
    if let [half, full, ..] = &r.idle[..] {
        let ratio = if half.per_sec > 0.0 {
            format!("{:.2}×", full.per_node() / half.per_node())
        } else {
            "n/a (no request)".to_string()
        };
        row(
            &format!("idle per node, {} ÷ {} nodes", full.nodes, half.nodes),
            ratio,
            "≈1× (linear in nodes)".into(),
        );
    }
    let fo_ok = r.failover.as_ref().is_ok_and(|d| *d < r.failover_goal);
    row(
        "leader failover (SIGKILL → new holder)",
        secs(&r.failover),
        format!(
            "< {} s (TTL + lock-delay + 1 s): {}",
            r.failover_goal.as_secs(),
            verdict(fo_ok)
        ),
    );
    if r.store == "consul" {
        // Consul's TTL is a lower bound: the server invalidates a session
        // up to 2 × TTL after its last renewal (Chubby's contract).
        let bound = 2 * SESSION_TTL + CONSUL_LOCK_DELAY + Duration::from_secs(1);
        let ok = r.failover.as_ref().is_ok_and(|d| *d < bound);
        row(
            "  the same, with Consul's TTL (up to 2 × TTL)",
            String::new(),
            format!(
                "< {} s (2 × TTL + lock-delay + 1 s): {}",
                bound.as_secs(),
                verdict(ok)
            ),
        );
    }
    for i in &r.idle {
        let top: Vec<String> = i
            .kinds
            .iter()
            .take(6)
            .map(|(k, n)| format!("{k} {:.2}/s", *n as f64 / i.secs))
            .collect();
        println!(
            "  busiest, {} nodes, {}: {}",
            i.nodes,
            i.label,
            top.join("; ")
        );
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let nodes = env_num("CNTNR_BENCH_FLEET_NODES", 100).max(2) as usize;
    let window = Duration::from_secs(env_num("CNTNR_BENCH_IDLE_SECS", 30).max(1));
    let stores = std::env::var("CNTNR_BENCH_FLEET_STORES").unwrap_or_else(|_| "etcd,consul".into());
    let scratch = tempfile::Builder::new()
        .prefix("cntnr-fleet-image-")
        .tempdir()
        .expect("tempdir");
    let image = tiny_image(scratch.path());
    // A copy: another cargo command in this checkout may rebuild
    // target/release/cntnr-agent without the feature while this runs.
    let agent = scratch.path().join("cntnr-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_cntnr-agent"), &agent).expect("copying cntnr-agent");
    for store in stores.split(',').map(str::trim) {
        let server = match store {
            "etcd" => Server::Etcd(Etcd::start()),
            "consul" => {
                let c = Consul::start();
                let upstream = c.http_addr().parse().expect("Consul's HTTP address");
                let p = proxy::Proxy::start(upstream);
                Server::Consul(c, p)
            }
            other => panic!("CNTNR_BENCH_FLEET_STORES: unknown store {other:?}"),
        };
        let r = run_store(server, nodes, window, &image, &agent);
        print(&r);
    }
}
