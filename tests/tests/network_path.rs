//! The whole bridge-network path, as the agent will drive it (root only;
//! real runc, the real `cntnr-hook` binary and Debian's CNI plugins):
//! compose file → model → `ContainerRequest::from_service` → the hook's
//! network config and request → `bundle::build` with the bridge wiring →
//! the runc driver's create + start → names through the project's hosts
//! files (also after a restart moves a service to a new IP) → stop, delete,
//! `release_network`, and nothing left on the host.

mod support;

use cntnr_hook::alloc::SubnetPool;
use cntnr_hook::conflist::{bridge_name, ensure_network, network_name, release_network};
use cntnr_hook::hosts::{hosts_file, write_atomic, ReplicaAddr};
use cntnr_hook::{oci_hooks, HookOptions, NetRequest, NetResult, PortRequest, RESULT_FILE};
use cntnr_model::{load_stored, Project, ProjectName, ServiceName};
use cntnr_reconcile::bundle::{self, BridgeNetwork, BundleConfig, ContainerRequest, NetworkMode};
use cntnr_reconcile::images::{ImageRecord, ImageStore, StoreOptions};
use cntnr_reconcile::runc::{Runc, RuncConfig};
use cntnr_reconcile::runtime::{ContainerId, ExecOutput, ExecRequest, Runtime, Signal};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// One test's private world: temp state dir (bundles, images, the hook's
/// subnets/conflists/port claims), run dir (netns pins), runc root, and a
/// test-only subnet pool. Drop force-deletes every container under the runc
/// root (runc runs the poststop DEL), removes bundles, and then removes
/// whatever a failed test may have left of its networks.
struct World {
    tmp: tempfile::TempDir,
    store: ImageStore,
    image: ImageRecord,
    bundles: BundleConfig,
    runc: Runc,
    hook: PathBuf,
    pool: SubnetPool,
    /// (project, network) pairs ensured.
    networks: Vec<(String, String)>,
}

impl World {
    fn new() -> Self {
        let bins = workspace_binaries();
        let tmp = tempfile::Builder::new()
            .prefix("cntnr-e2e-net")
            .tempdir()
            .unwrap();
        let state = tmp.path().join("state");
        let store = ImageStore::open(&state, StoreOptions::default()).unwrap();
        let image = store
            .import(&example_image(&tmp.path().join("image")))
            .unwrap();
        let bundles = BundleConfig::new(&state, "node-e2e");
        let mut rc = RuncConfig::new(tmp.path().join("runc-root"), &state);
        rc.shim = bins.shim;
        rc.timeout = Duration::from_secs(40);
        let runc = Runc::new(rc).unwrap();
        Self {
            tmp,
            store,
            image,
            bundles,
            runc,
            hook: bins.hook,
            // Clear of the hook crate's tests (10.250.0.0/20).
            pool: SubnetPool {
                base: "10.250.96.0/22".parse().unwrap(),
                prefix: 24,
            },
            networks: Vec::new(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    /// The container request of replica 1 of `service`, wired as the agent
    /// must wire it: for bridge mode, each of the service's networks ensured
    /// (subnet + conflist), the request with its published ports, and the
    /// hook's OCI hooks.
    fn request(&mut self, project: &Project, service: &str) -> ContainerRequest {
        let name = ServiceName::new(service).unwrap();
        let spec = &project.services[&name];
        let mut req = ContainerRequest::from_service(&project.name, &name, spec, 1);
        if req.network != NetworkMode::Bridge {
            return req;
        }
        let mut attachments = Vec::new();
        for net in spec.networks.keys() {
            let (att, _) =
                ensure_network(&self.state_dir(), &self.pool, project.name.as_str(), net).unwrap();
            let pair = (project.name.as_str().to_string(), net.clone());
            if !self.networks.contains(&pair) {
                self.networks.push(pair);
            }
            attachments.push(att);
        }
        let mut net = NetRequest::new(attachments);
        net.ports = spec.ports.iter().map(PortRequest::from_model).collect();
        net.state_dir = self.state_dir();
        net.run_dir = self.run_dir();
        let hooks = oci_hooks(&HookOptions {
            binary: self.hook.clone(),
            timeout_secs: 30,
            env: Vec::new(),
        })
        .unwrap();
        req.bridge = Some(BridgeNetwork {
            hooks,
            annotations: [net.to_annotation()].into_iter().collect(),
        });
        req
    }

    /// Bundle build, then the runc driver's create and start.
    async fn start(&mut self, project: &Project, service: &str) -> Started {
        let req = self.request(project, service);
        let b = bundle::build(&self.bundles, &self.store, &self.image, &req).unwrap();
        self.runc.create(&b.id, &b.path).await.unwrap();
        self.runc.start(&b.id).await.unwrap();
        let result = NetResult::read(&b.path.join(RESULT_FILE))
            .unwrap()
            .expect("the hook wrote its result into the bundle");
        Started {
            service: service.to_string(),
            id: b.id,
            bundle: b.path,
            ip: result.primary_ip().expect("an IP on the project network"),
            result,
        }
    }

    /// Renders and atomically replaces the hosts file of every container of
    /// one project from their IPs, as the agent does when a replica changes.
    fn write_hosts(&self, containers: &[&Started]) {
        let replicas: Vec<ReplicaAddr> = containers
            .iter()
            .map(|c| ReplicaAddr {
                service: c.service.clone(),
                replica: 1,
                container_id: c.id.to_string(),
                ip: c.ip,
                aliases: Vec::new(),
            })
            .collect();
        for c in containers {
            let text = hosts_file(c.id.as_str(), Some(c.ip), &replicas, &[]);
            // The hook's idea of the hosts file and the bundle builder's agree.
            let path = cntnr_hook::hosts::hosts_path(&c.bundle);
            assert_eq!(path, bundle::hosts_path(&c.bundle));
            write_atomic(&path, text.as_bytes()).unwrap();
        }
    }

    async fn exec(&self, id: &ContainerId, script: &str) -> ExecOutput {
        self.runc
            .exec(
                id,
                &ExecRequest {
                    args: vec!["sh".into(), "-c".into(), script.into()],
                    env: Vec::new(),
                    cwd: None,
                    timeout: Duration::from_secs(10),
                },
            )
            .await
            .unwrap()
    }

    /// What `nc` in `from` gets from `target:port` (a name or an IP), with
    /// a 2 s connect timeout; Err with its output when it fails.
    async fn nc(&self, from: &ContainerId, target: &str, port: u16) -> Result<String, String> {
        let out = self
            .exec(from, &format!("nc -w 2 {target} {port} </dev/null"))
            .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.code == 0 && !text.is_empty() {
            Ok(text)
        } else {
            Err(format!(
                "exit {}: {text}{}",
                out.code,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`World::nc`], retried for 5 s while the server may still be starting.
    async fn nc_ready(
        &self,
        from: &ContainerId,
        target: &str,
        port: u16,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            match self.nc(from, target, port).await {
                Err(_) if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                r => return r,
            }
        }
    }

    /// Stop (SIGTERM, then SIGKILL), delete (runc runs the poststop DEL),
    /// remove the bundle.
    async fn remove(&self, c: &Started) {
        self.runc
            .stop(
                &c.id,
                Signal::parse("SIGTERM").unwrap(),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        self.runc.delete(&c.id, true).await.unwrap();
        assert!(self.runc.state(&c.id).await.unwrap().is_none());
        bundle::remove(&self.bundles, &c.id).unwrap();
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
        for b in entries(&self.state_dir().join("bundles")) {
            let name = b.file_name().unwrap_or_default().to_string_lossy();
            if let Ok(id) = ContainerId::new(name.to_string()) {
                let _ = bundle::remove(&self.bundles, &id);
            }
        }
        // Safety net for a failed test: what the hook's DEL and
        // release_network would have removed.
        for (project, net) in self.networks.clone() {
            let Ok(name) = network_name(&project, &net) else {
                continue;
            };
            let br = bridge_name(&name);
            let conf = cntnr_hook::conflist::conflist_path(&self.state_dir(), &name);
            let masq = cntnr_hook::cni::Conflist::load(&cntnr_hook::ConflistSource::Path(conf))
                .ok()
                .and_then(|c| c.masquerade);
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &br])
                .output();
            let _ = cntnr_hook::firewall::remove_network_rules(&br, masq);
            let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&name));
            let _ = release_network(&self.state_dir(), &project, &net);
        }
        for pin in entries(&self.run_dir().join("netns")) {
            let _ = cntnr_hook::netns::unpin(&pin);
        }
        // Leave the host as it was: the shared chains go once unused.
        let _ = cntnr_hook::firewall::remove_shared_chains_if_unused();
    }
}

/// A running container of the test.
struct Started {
    service: String,
    id: ContainerId,
    bundle: PathBuf,
    ip: IpAddr,
    result: NetResult,
}

/// HTTP GET `/` on 127.0.0.1:`port` from the host; retries a refused
/// connection for 5 s (start returns before httpd listens).
fn http_get_from_host(port: u16) -> std::io::Result<String> {
    let start = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A host port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn project(name: &str, yaml: &str) -> Project {
    let p = ProjectName::new(name).unwrap();
    load_stored(&p, &format!("projects/{name}"), yaml).expect("compose loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_reach_each_other_by_name_publish_ports_stay_isolated_follow_a_restart_and_leave_nothing(
) {
    if !is_root() {
        panic!("this test needs root (CNI bridges, veths, iptables)");
    }
    let _g = serial();
    // The contract the agent relies on: both crates name the hosts dir alike.
    assert_eq!(
        bundle::HOSTS_DIR_IN_CONTAINER,
        cntnr_hook::hosts::HOSTS_DIR_IN_CONTAINER
    );
    assert_eq!(
        bundle::HOSTS_DIR_IN_BUNDLE,
        cntnr_hook::hosts::HOSTS_DIR_IN_BUNDLE
    );
    let before = snapshot();
    let mut w = World::new();
    let image = format!("oci:{}:latest", w.tmp.path().join("image").display());
    let port = free_port();
    let tag = std::process::id();
    let shop = project(
        &format!("e2e{tag}shop"),
        &format!(
            r#"
services:
  web:
    image: "{image}"
    entrypoint: ["/bin/busybox"]
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    ports: ["127.0.0.1:{port}:80"]
    dns: ["127.0.0.1"]
  db:
    image: "{image}"
    entrypoint: ["/bin/busybox"]
    command: ["nc", "-ll", "-p", "5432", "-e", "echo", "hello from db"]
    dns: ["127.0.0.1"]
"#
        ),
    );
    let other = project(
        &format!("e2e{tag}other"),
        &format!(
            r#"
services:
  probe:
    image: "{image}"
    entrypoint: ["/bin/busybox"]
    command: ["sleep", "3600"]
    dns: ["127.0.0.1"]
"#
        ),
    );

    let web = w.start(&shop, "web").await;
    let db = w.start(&shop, "db").await;
    let probe = w.start(&other, "probe").await;
    w.write_hosts(&[&web, &db]);
    w.write_hosts(&[&probe]);

    // One project network for shop, another for other: different subnets.
    let (web_ip, db_ip, probe_ip) = (web.ip.to_string(), db.ip.to_string(), probe.ip.to_string());
    let prefix = |ip: &str| ip[..ip.rfind('.').unwrap()].to_string();
    assert!(web_ip.starts_with("10.250.9"), "{web_ip}");
    assert_eq!(prefix(&web_ip), prefix(&db_ip));
    assert_ne!(prefix(&web_ip), prefix(&probe_ip));
    assert_eq!(web.result.ports.len(), 1);
    assert_eq!(web.result.ports[0].host_port, port);

    // /etc/hosts is the file the agent just replaced, seen through the symlink.
    let hosts = w.exec(&web.id, "cat /etc/hosts").await;
    let hosts = String::from_utf8_lossy(&hosts.stdout).into_owned();
    assert!(
        hosts.contains(&format!("{db_ip}\tdb db-1 {}", db.id)),
        "{hosts}"
    );

    // web reaches db by its service name.
    assert_eq!(
        w.nc_ready(&web.id, "db", 5432).await.unwrap(),
        "hello from db\n"
    );
    assert_eq!(
        w.nc(&web.id, &db.id.to_string(), 5432).await.unwrap(),
        "hello from db\n"
    );

    // The published port on host loopback reaches web's httpd.
    let page = http_get_from_host(port).unwrap();
    assert!(
        page.starts_with("HTTP/1.") && page.ends_with(INDEX),
        "{page}"
    );

    // Another project: the name does not resolve, and the IP is unreachable.
    let e = w.nc(&probe.id, "db", 5432).await.unwrap_err();
    assert!(e.contains("bad address"), "{e}");
    let e = w.nc(&probe.id, &db_ip, 5432).await.unwrap_err();
    assert!(!e.contains("hello"), "{e}");
    // …while db still answers its own project (the failure is isolation).
    assert_eq!(
        w.nc(&web.id, &db_ip, 5432).await.unwrap(),
        "hello from db\n"
    );

    // Restart db: it comes back with a new IP, and web's name for it
    // follows as soon as the agent has replaced the hosts files (the running
    // container sees the rename through its /etc/hosts symlink).
    w.remove(&db).await;
    let db = w.start(&shop, "db").await;
    assert_ne!(db.ip.to_string(), db_ip, "host-local hands out the next IP");
    w.write_hosts(&[&web, &db]);
    let hosts = w.exec(&web.id, "cat /etc/hosts").await;
    let hosts = String::from_utf8_lossy(&hosts.stdout).into_owned();
    assert!(hosts.contains(&format!("{}\tdb db-1", db.ip)), "{hosts}");
    assert!(!hosts.contains(&format!("{db_ip}\t")), "{hosts}");
    assert_eq!(
        w.nc_ready(&web.id, "db", 5432).await.unwrap(),
        "hello from db\n"
    );

    // Tear everything down as the agent does on project removal.
    for c in [&web, &db, &probe] {
        w.remove(c).await;
    }
    for (p, n) in w.networks.clone() {
        release_network(&w.state_dir(), &p, &n).unwrap();
    }
    let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    let after = snapshot();
    let l = leaks(&before, &after);
    assert!(l.is_empty(), "leaked: {l:#?}");
    let pins = entries(&w.run_dir().join("netns"));
    assert!(pins.is_empty(), "netns pins left: {pins:?}");
    let claims = entries(&w.state_dir().join("net/ports"));
    assert!(claims.is_empty(), "port claims left: {claims:?}");
    let confs = entries(&w.state_dir().join("net/conf"));
    assert!(confs.is_empty(), "conflists left: {confs:?}");
    let subnets = std::fs::read_to_string(w.state_dir().join("net/subnets.json")).unwrap();
    assert_eq!(subnets.trim(), "{}", "subnets released");
}
