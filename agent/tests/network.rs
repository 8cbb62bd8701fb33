//! Bridge networking through the real agent (root; real runc, the real
//! `cntnr-hook`, Debian's CNI plugins in /usr/lib/cni): compose services on
//! their project network reach each other by name, not across projects;
//! published ports answer on the host; a restarted container's name follows
//! its new IP; removing a project leaves no veth, bridge, IPAM directory,
//! iptables rule, subnet or config list; a hook killed mid-ADD and retried
//! brings the container up once; a port already in use and an invalid
//! network config fail only their project, with a one-line error.
//!
//! The tests share the host's iptables chains and compare the host before
//! and after, so they run one at a time ([`serial`]); the guard removes the
//! shared chains once unused, so a run leaves no rule behind. Every
//! container's service sets `dns: ["127.0.0.1"]`, so no name lookup ever
//! leaves the host.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cntnr_e2e::host::{leaks, snapshot, Snapshot};
use common::{deploy, status_record as status, text, Agent, Kind, TestStore};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// What the test image's httpd serves at `/`.
const INDEX: &str = "hello from cntnr";

/// One network test at a time; on drop (after the test's agents, declared
/// later, are gone) the shared chains go once nothing uses them.
struct Serial {
    _g: MutexGuard<'static, ()>,
}

fn serial() -> Serial {
    static M: Mutex<()> = Mutex::new(());
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (CNI bridges, veths, iptables)"
    );
    hook_binary();
    Serial {
        _g: M.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        // Safety net for a failed test (the test's agents, dropped before
        // this, deleted their containers, whose DELs remove all this): the
        // bridge, rules and IPAM dir of every network of this test binary's
        // projects (`n<pid>…`) still there.
        let mine = format!("cntnr.n{}", std::process::id());
        if let Ok(rd) = std::fs::read_dir("/var/lib/cni/networks") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with(&mine) {
                    continue;
                }
                let br = cntnr_hook::conflist::bridge_name(&name);
                let subnet = std::fs::read_dir(e.path()).ok().and_then(|rd| {
                    rd.flatten().find_map(|f| {
                        let ip: std::net::Ipv4Addr =
                            f.file_name().to_string_lossy().parse().ok()?;
                        let [a, b, c, _] = ip.octets();
                        format!("{a}.{b}.{c}.0/24").parse().ok()
                    })
                });
                let _ = Command::new("ip").args(["link", "del", &br]).output();
                let _ = cntnr_hook::firewall::remove_network_rules(&br, subnet);
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let _ = cntnr_hook::firewall::remove_shared_chains_if_unused();
    }
}

/// Builds `cntnr-hook` next to the agent binary, where the agent looks for
/// it (`cargo test -p cntnr-agent` alone does not build other crates'
/// binaries, and a stale one must not be tested).
fn hook_binary() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let agent = Path::new(env!("CARGO_BIN_EXE_cntnr-agent"));
        let dir = agent.parent().unwrap();
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(cntnr_e2e::workspace_root())
            .args([
                "build",
                "-p",
                "cntnr-hook",
                "--bin",
                "cntnr-hook",
                "--profile",
            ])
            .arg(if profile == "debug" { "dev" } else { &profile })
            .arg("--target-dir")
            .arg(dir.parent().unwrap())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "building cntnr-hook: {}",
            text(&out.stderr)
        );
        assert!(dir.join("cntnr-hook").is_file());
    });
}

/// A project name unique to this test run.
fn name(tag: &str) -> String {
    format!("n{}{tag}", std::process::id())
}

fn remove(s: &TestStore, project: &str) {
    let out = s.cntnr(s.tmp.path(), &["rm", project]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn container<'a>(rec: &'a Value, id: &str) -> Option<&'a Value> {
    rec["containers"].as_array()?.iter().find(|c| c["id"] == id)
}

/// The status record once every container in `ids` runs with an IP.
fn wait_up(s: &TestStore, project: &str, ids: &[&str]) -> Value {
    common::wait_for(WAIT, &format!("{ids:?} running with IPs"), || {
        status(s, project, "n1").filter(|r| {
            ids.iter().all(|id| {
                container(r, id).is_some_and(|c| {
                    c["state"] == "running" && c["ips"].as_array().is_some_and(|a| !a.is_empty())
                })
            })
        })
    })
}

fn ip_of(rec: &Value, id: &str) -> String {
    container(rec, id).unwrap()["ips"][0]
        .as_str()
        .unwrap()
        .to_string()
}

/// `sh -c script` in container `id`: (exit code, stdout + stderr).
fn exec(a: &Agent, id: &str, script: &str) -> (i32, String) {
    let out = Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["exec", id, "sh", "-c", script])
        .output()
        .expect("runc exec");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// What `nc` in `from` gets from `target:port` (2 s connect timeout).
fn nc(a: &Agent, from: &str, target: &str, port: u16) -> Result<String, String> {
    let (code, out) = exec(a, from, &format!("nc -w 2 {target} {port} </dev/null"));
    if code == 0 && out.contains("hello") {
        Ok(out)
    } else {
        Err(format!("exit {code}: {out}"))
    }
}

/// [`nc`] retried until it answers (a server still starting, a hosts file
/// not yet rewritten), or the last error after `WAIT`.
fn nc_ready(a: &Agent, from: &str, target: &str, port: u16) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match nc(a, from, target, port) {
            Err(_) if start.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(200)),
            r => return r,
        }
    }
}

/// HTTP GET `/` on 127.0.0.1:`port` from the host, retried while refused.
fn http_from_host(port: u16) -> String {
    common::wait_for(WAIT, &format!("an answer on 127.0.0.1:{port}"), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.").then_some(out)
    })
}

/// What the agent's host keeps per project network: subnet allocations and
/// config lists under the state dir, netns pins of its containers.
fn network_state(a: &Agent, project: &str) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = format!("cntnr.{project}.");
    let net = a.state_dir().join("net");
    if let Ok(t) = std::fs::read_to_string(net.join("subnets.json")) {
        let m: BTreeMap<String, Value> = serde_json::from_str(&t).unwrap();
        out.extend(
            m.into_keys()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| format!("subnet {k}")),
        );
    }
    for dir in [net.join("conf"), net.join("ports")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f.contains(project))
                    .map(|f| format!("{}/{f}", dir.display())),
            );
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/cntnr/netns") {
        out.extend(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&format!("{project}-")))
                .map(|f| format!("netns pin {f}")),
        );
    }
    out
}

/// Removes `projects` through the store and waits until the agent has
/// deleted their containers and status; then nothing of them may be left
/// on the host (compared with `before`) or in the agent's state dir.
fn remove_and_check_clean(s: &TestStore, a: &Agent, projects: &[&str], before: &Snapshot) {
    for p in projects {
        remove(s, p);
    }
    common::wait_for(WAIT, "containers and status gone", || {
        (a.runc_list().is_empty() && projects.iter().all(|p| status(s, p, "n1").is_none()))
            .then_some(())
    });
    let left = common::wait_for(WAIT, "networks released", || {
        let left: Vec<String> = projects.iter().flat_map(|p| network_state(a, p)).collect();
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    let l = leaks(before, &snapshot());
    assert!(l.is_empty(), "leaked: {l:#?}");
}

fn free_port() -> u16 {
    common::free_port()
}

/// `web` (httpd, published on 127.0.0.1) and `db` (a one-line TCP server,
/// restarted when it dies) in one project.
fn shop(image: &str, port: u16) -> String {
    format!(
        r#"
services:
  web:
    image: "{image}"
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    ports: ["127.0.0.1:{port}:80"]
    dns: ["127.0.0.1"]
    dns_search: [corp.test]
    hostname: frontend
    domainname: shop.test
    extra_hosts: ["gw.test:192.0.2.1"]
    stop_grace_period: 1s
  db:
    image: "{image}"
    command: ["nc", "-ll", "-p", "5432", "-e", "echo", "hello from db"]
    dns: ["127.0.0.1"]
    restart: always
    stop_grace_period: 1s
    networks:
      default:
        aliases: [postgres]
"#
    )
}

/// One `web` service: busybox httpd, published on 127.0.0.1:`port`.
fn web(image: &str, port: u16) -> String {
    format!(
        r#"
services:
  web:
    image: "{image}"
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    ports: ["127.0.0.1:{port}:80"]
    dns: ["127.0.0.1"]
    stop_grace_period: 1s
"#
    )
}

fn probe(image: &str) -> String {
    format!(
        r#"
services:
  probe:
    image: "{image}"
    command: ["sleep", "3600"]
    dns: ["127.0.0.1"]
    stop_signal: SIGKILL
"#
    )
}

fn services_reach_each_other_by_name(kind: Kind, tag: &str) {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(kind, tag);
    let a = s.agent("n1");
    let image = common::test_image_ref();
    let port = free_port();
    let (shop_p, other_p) = (name(&format!("{tag}shop")), name(&format!("{tag}other")));
    deploy(&s, &shop_p, &shop(&image, port));
    deploy(&s, &other_p, &probe(&image));
    let (web, db, prb) = (
        format!("{shop_p}-web-1"),
        format!("{shop_p}-db-1"),
        format!("{other_p}-probe-1"),
    );
    let rec = wait_up(&s, &shop_p, &[&web, &db]);
    assert_eq!(rec["errors"], serde_json::json!([]), "{rec}");
    let other = wait_up(&s, &other_p, &[&prb]);
    let (web_ip, db_ip, probe_ip) = (ip_of(&rec, &web), ip_of(&rec, &db), ip_of(&other, &prb));
    let net = |ip: &str| ip[..ip.rfind('.').unwrap()].to_string();
    assert_eq!(net(&web_ip), net(&db_ip), "one project network");
    assert_ne!(net(&web_ip), net(&probe_ip), "a network per project");
    let ports = &container(&rec, &web).unwrap()["ports"];
    assert_eq!(
        ports,
        &serde_json::json!([{"host_ip": "127.0.0.1", "host_port": port, "container_port": 80, "protocol": "tcp"}])
    );

    // `cntnr ps` shows the IPs and the published port.
    let ps = text(&s.cntnr(s.tmp.path(), &["ps", &shop_p]).stdout);
    let web_line = ps.lines().find(|l| l.contains(&web)).unwrap_or_default();
    assert!(
        web_line.contains(&web_ip) && web_line.contains(&format!("127.0.0.1:{port}->80/tcp")),
        "{ps}"
    );
    let json = s.cntnr_json(&["ps", &shop_p]);
    assert_eq!(
        json[0]["status"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == db.as_str())
            .unwrap()["ips"][0],
        db_ip.as_str()
    );

    // web reaches db by service name, alias and container id.
    for target in ["db", "postgres", db.as_str()] {
        let got = nc_ready(&a, &web, target, 5432).unwrap();
        assert_eq!(got, "hello from db\n", "{target}");
    }
    // Its /etc/hosts is the agent's, through the symlink.
    let (_, hosts) = exec(&a, &web, "cat /etc/hosts");
    assert!(
        hosts.contains(&format!("{db_ip}\tdb postgres db-1 {db}\n")),
        "{hosts}"
    );
    // hostname, domainname, extra_hosts, dns and dns_search are honoured.
    assert!(
        hosts.contains(&format!("{web_ip}\tfrontend.shop.test frontend\n")),
        "{hosts}"
    );
    assert!(hosts.contains("192.0.2.1\tgw.test\n"), "{hosts}");
    assert_eq!(exec(&a, &web, "hostname").1, "frontend\n");
    assert_eq!(
        exec(&a, &web, "cat /proc/sys/kernel/domainname").1,
        "shop.test\n"
    );
    let (_, resolv) = exec(&a, &web, "cat /etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 127.0.0.1") && resolv.contains("search corp.test"),
        "{resolv}"
    );

    // The published port answers on the host.
    let page = http_from_host(port);
    assert!(page.contains(INDEX), "{page}");

    // Another project cannot resolve db (nor reach its address).
    let e = nc(&a, &prb, "db", 5432).unwrap_err();
    assert!(e.contains("bad address"), "{e}");
    let e = nc(&a, &prb, &db_ip, 5432).unwrap_err();
    assert!(!e.contains("hello"), "{e}");

    // Restart db (killed; `restart: always`): it comes back on a new IP,
    // and web's name for it follows.
    let out = Command::new("runc")
        .arg("--root")
        .arg(a.runtime_root())
        .args(["kill", &db, "KILL"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rec = common::wait_for(WAIT, "db running again on a new IP", || {
        status(&s, &shop_p, "n1").filter(|r| {
            container(r, &db).is_some_and(|c| {
                c["state"] == "running"
                    && c["restarts"].as_u64() >= Some(1)
                    && c["ips"][0].as_str().is_some_and(|ip| ip != db_ip)
            })
        })
    });
    let new_ip = ip_of(&rec, &db);
    let hosts = common::wait_for(WAIT, "web's hosts file naming db's new IP", || {
        let (_, hosts) = exec(&a, &web, "cat /etc/hosts");
        hosts
            .contains(&format!("{new_ip}\tdb postgres"))
            .then_some(hosts)
    });
    assert!(!hosts.contains(&format!("{db_ip}\t")), "{hosts}");
    assert_eq!(nc_ready(&a, &web, "db", 5432).unwrap(), "hello from db\n");

    remove_and_check_clean(&s, &a, &[&shop_p, &other_p], &before);
    // The port is free again.
    let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn services_reach_each_other_by_name_publish_ports_follow_a_restart_and_leave_nothing_dir() {
    services_reach_each_other_by_name(Kind::Dir, "d");
}

#[test]
fn services_reach_each_other_by_name_publish_ports_follow_a_restart_and_leave_nothing_etcd() {
    services_reach_each_other_by_name(Kind::Etcd, "e");
}

/// Files of host-local's IPAM dir of a network that name `id` (one per
/// address held).
fn ipam_entries(network: &str, id: &str) -> usize {
    std::fs::read_dir(Path::new("/var/lib/cni/networks").join(network))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|t| t.lines().next() == Some(id))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn hook_killed_mid_add_then_retried_comes_up_once_and_leaks_nothing() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Dir, "fp");
    // The hook SIGKILLs itself right after the bridge plugin's ADD: a
    // veth, an address and the bridge exist, the result file does not.
    let mut a = s.agent_with("n1", &[], &[(cntnr_hook::FAILPOINT_ENV, "after-bridge")]);
    let image = common::test_image_ref();
    let port = free_port();
    let p = name("fp");
    let id = format!("{p}-web-1");
    deploy(&s, &p, &web(&image, port));
    let rec = common::wait_for(WAIT, "the killed hook's error in status", || {
        status(&s, &p, "n1").filter(|r| {
            container(r, &id).is_some_and(|c| {
                c["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("network hook failed (signal: killed)"))
            })
        })
    });
    let err = container(&rec, &id).unwrap()["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!err.contains('\n'), "{err}");
    eprintln!("{id}: {err}");

    // Retry without the failpoint (a new agent; the failed attempts left
    // whatever the killed hook had made).
    a.restart(&[]);
    let rec = wait_up(&s, &p, &[&id]);
    assert_eq!(
        a.runc_list(),
        vec![(id.clone(), "running".to_string())],
        "one container"
    );
    let network = format!("cntnr.{p}.default");
    assert_eq!(ipam_entries(&network, &id), 1, "one address held");
    let (_, links) = exec(&a, &id, "ip -o addr show eth0");
    assert_eq!(links.matches(" inet ").count(), 1, "{links}");
    assert!(links.contains(&ip_of(&rec, &id)), "{links}");
    assert!(http_from_host(port).contains(INDEX));

    remove_and_check_clean(&s, &a, &[&p], &before);
}

#[test]
fn a_port_in_use_or_an_invalid_network_fails_only_its_project_with_a_clear_error() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Etcd, "busy");
    let a = s.agent("n1");
    let image = common::test_image_ref();
    // A host process holds this port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().port();
    let good_port = free_port();
    let (busy_p, ext_p, good_p) = (name("busy"), name("ext"), name("good"));
    let web = |port: u16| web(&image, port);
    deploy(&s, &busy_p, &web(busy));
    deploy(
        &s,
        &ext_p,
        &format!(
            r#"
services:
  web:
    image: "{image}"
    command: ["sleep", "3600"]
    dns: ["127.0.0.1"]
    networks: [outside]
networks:
  outside:
    external: true
"#
        ),
    );
    deploy(&s, &good_p, &web(good_port));

    let error_of = |project: &str, want: &str| -> String {
        let rec = common::wait_for(WAIT, &format!("{project}'s error"), || {
            status(&s, project, "n1").filter(|r| {
                r["errors"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains(want)))
                })
            })
        });
        let line = rec["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|l| l.contains(want))
            .unwrap()
            .to_string();
        assert!(!line.contains('\n'), "{line}");
        eprintln!("{project}: {line}");
        assert_ne!(
            container(&rec, &format!("{project}-web-1")).unwrap()["state"],
            "running"
        );
        line
    };
    let line = error_of(&busy_p, &busy.to_string());
    assert!(line.contains("network hook failed"), "{line}");
    assert!(
        line.contains(&format!("port 127.0.0.1:{busy}/tcp is already in use")),
        "{line}"
    );
    assert!(line.contains(&format!("{busy_p}-web-1")), "{line}");
    let line = error_of(&ext_p, "external");
    assert!(
        line.contains(&format!("project \"{ext_p}\"")) && line.contains("network \"outside\""),
        "{line}"
    );

    // The other project runs and answers.
    let rec = wait_up(&s, &good_p, &[&format!("{good_p}-web-1")]);
    assert_eq!(rec["errors"], serde_json::json!([]), "{rec}");
    assert!(http_from_host(good_port).contains(INDEX));
    // Another container already holds a port: the newcomer fails, the
    // holder keeps it.
    let dup_p = name("dup");
    deploy(&s, &dup_p, &web(good_port));
    let line = error_of(&dup_p, "already published");
    assert!(
        line.contains(&format!(
            "port 127.0.0.1:{good_port}/tcp is already published by container {good_p}-web-1"
        )),
        "{line}"
    );
    assert!(http_from_host(good_port).contains(INDEX));
    // The failed ones hold nothing: no container, no port claim, no pin.
    assert!(
        a.runc_list()
            .iter()
            .all(|(id, _)| id.starts_with(&format!("{good_p}-"))),
        "{:?}",
        a.runc_list()
    );
    drop(holder);

    remove_and_check_clean(&s, &a, &[&busy_p, &ext_p, &good_p, &dup_p], &before);
}

/// An agent started from a copy of its binary alone in a directory.
struct LoneAgent {
    child: std::process::Child,
    state: tempfile::TempDir,
}

impl LoneAgent {
    fn runtime_root(&self) -> std::path::PathBuf {
        self.state.path().join("runc")
    }
}

impl Drop for LoneAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        common::cleanup_runtime(&self.runtime_root(), self.state.path());
    }
}

#[test]
fn an_agent_without_a_cntnr_hook_beside_it_is_its_own_hook() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Dir, "lone");
    let state = tempfile::tempdir().unwrap();
    let bin = state.path().join("bin-copy");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("cntnr-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_cntnr-agent"), &exe).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(state.path().join("agent.log")).unwrap();
    let child = Command::new(&exe)
        .args(["--store", &s.url, "--prefix", &s.prefix, "--node", "n1"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--runtime-root")
        .arg(state.path().join("runc"))
        .args(["--listen", &listen])
        .env_remove("CNTNR_STORE")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let a = LoneAgent { child, state };
    let image = common::test_image_ref();
    let port = free_port();
    let p = name("lone");
    let id = format!("{p}-web-1");
    deploy(&s, &p, &web(&image, port));
    wait_up(&s, &p, &[&id]);
    // runc ran the agent's own executable as the hook.
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(a.state.path().join("bundles").join(&id).join("config.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["hooks"]["createRuntime"][0]["path"],
        exe.to_str().unwrap()
    );
    assert_eq!(config["hooks"]["createRuntime"][0]["args"][0], "cntnr-hook");
    assert!(http_from_host(port).contains(INDEX));

    remove(&s, &p);
    common::wait_for(WAIT, "the container and its network gone", || {
        (common::runc_list(&a.runtime_root()).is_empty()
            && status(&s, &p, "n1").is_none()
            && !a
                .state
                .path()
                .join(format!("net/conf/cntnr.{p}.default.conflist"))
                .exists())
        .then_some(())
    });
    let l = leaks(&before, &snapshot());
    assert!(l.is_empty(), "leaked: {l:#?}");
}

#[test]
fn a_network_no_service_uses_any_more_is_released_while_the_project_lives() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Dir, "move");
    let a = s.agent("n1");
    let image = common::test_image_ref();
    let p = name("move");
    let id = format!("{p}-app-1");
    let on = |net: &str| {
        format!(
            r#"
services:
  app:
    image: "{image}"
    command: ["sleep", "3600"]
    dns: ["127.0.0.1"]
    stop_signal: SIGKILL
    networks: [{net}]
networks:
  {net}: {{}}
"#
        )
    };
    deploy(&s, &p, &on("front"));
    let rec = wait_up(&s, &p, &[&id]);
    let front = format!("cntnr.{p}.front");
    let front_bridge = cntnr_hook::conflist::bridge_name(&front);
    assert!(network_state(&a, &p).contains(&format!("subnet {front}")));
    assert!(snapshot().links.contains(&front_bridge));
    let old_ip = ip_of(&rec, &id);

    // The service moves to another network: its container is recreated
    // there, and the old network goes entirely (bridge with the old
    // container's DEL, subnet and config list with the agent's next pass).
    deploy(&s, &p, &on("back"));
    common::wait_for(WAIT, "app on the new network, the old one released", || {
        let rec = status(&s, &p, "n1")?;
        let c = container(&rec, &id)?;
        let moved = c["state"] == "running" && c["ips"][0].as_str().is_some_and(|ip| ip != old_ip);
        let state = network_state(&a, &p);
        (moved
            && !state.iter().any(|l| l.contains(&front))
            && state.contains(&format!("subnet cntnr.{p}.back")))
        .then_some(())
    });
    assert!(!snapshot().links.contains(&front_bridge));
    assert!(!Path::new("/var/lib/cni/networks").join(&front).exists());

    remove_and_check_clean(&s, &a, &[&p], &before);
}

/// Registration and direct checks of bridge containers: a service that only
/// `expose`s a port registers at the container's own IP (from the hook's
/// result) and its `cntnr.check.http` probe reaches that IP; one that
/// publishes a port registers at the node's address and the host port.
#[test]
fn bridge_replicas_register_at_their_ip_or_published_port_and_are_probed_directly() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Dir, "reg");
    let a = s.agent("n1");
    let image = common::test_image_ref();
    let port = free_port();
    let p = name("reg");
    deploy(
        &s,
        &p,
        &format!(
            r#"
services:
  api:
    image: "{image}"
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    expose: ["80"]
    dns: ["127.0.0.1"]
    stop_grace_period: 1s
    annotations: {{cntnr.check.http: "/"}}
  front:
    image: "{image}"
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    ports: ["127.0.0.1:{port}:80"]
    dns: ["127.0.0.1"]
    stop_grace_period: 1s
    annotations: {{cntnr.check.http: "/"}}
"#
        ),
    );
    let (api, front) = (format!("{p}-api-1"), format!("{p}-front-1"));
    let rec = wait_up(&s, &p, &[&api, &front]);
    let api_ip = ip_of(&rec, &api);
    // Passing means the agent's HTTP probe reached the container itself.
    let instances = common::wait_for(WAIT, "both instances passing", || {
        let v = s.cntnr_json(&["services", "--passing"]);
        (v.as_array().map_or(0, Vec::len) == 2).then_some(v)
    });
    let of = |svc: &str| {
        instances
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"].as_str().unwrap().ends_with(&format!("{p}-{svc}-1")))
            .unwrap_or_else(|| panic!("no {svc} instance in {instances}"))
            .clone()
    };
    let (i_api, i_front) = (of("api"), of("front"));
    assert_eq!(i_api["address"], api_ip.as_str(), "{i_api}");
    assert_eq!(i_api["port"], 80, "{i_api}");
    assert_eq!(i_front["address"], "127.0.0.1", "{i_front}");
    assert_eq!(i_front["port"], u64::from(port), "{i_front}");
    // A broken endpoint turns the direct check (and the entry) critical.
    let (code, out) = exec(&a, &api, "rm /var/www/index.html");
    assert_eq!(code, 0, "{out}");
    common::wait_for(WAIT, "api critical after its page is gone", || {
        let v = s.cntnr_json(&["services", "--passing"]);
        (v.as_array().map_or(0, Vec::len) == 1).then_some(())
    });
    remove_and_check_clean(&s, &a, &[&p], &before);
}

/// `--subnet-pool`/`--subnet-size`: project networks get their subnets from
/// the configured range, cut to the configured size.
#[test]
fn project_subnets_come_from_the_configured_pool() {
    let _serial = serial();
    let before = snapshot();
    let s = TestStore::new(Kind::Dir, "pool");
    let a = s.agent_with(
        "n1",
        &["--subnet-pool", "10.93.128.0/20", "--subnet-size", "28"],
        &[],
    );
    let image = common::test_image_ref();
    let p = name("pool");
    deploy(&s, &p, &probe(&image));
    let id = format!("{p}-probe-1");
    let rec = wait_up(&s, &p, &[&id]);
    let ip: std::net::Ipv4Addr = ip_of(&rec, &id).parse().unwrap();
    let o = ip.octets();
    assert!(
        o[0] == 10 && o[1] == 93 && (128..144).contains(&o[2]),
        "{ip} is not in 10.93.128.0/20"
    );
    // A /28: the container's interface says so.
    let (code, out) = exec(&a, &id, "ip -4 -o addr show eth0");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{ip}/28")), "{out}");
    remove_and_check_clean(&s, &a, &[&p], &before);
}
