//! cntnr-hook against real runc and the real CNI plugins of Debian's
//! containernetworking-plugins (root only). Each test runs busybox
//! containers under a private runc root, on its own project networks cut
//! from its own test-only pool, and proves by listing links, iptables rules
//! and IPAM dirs before and after that deleting its containers leaves
//! nothing behind.

mod support;

use cntnr_hook::{HostPortRange, PortProtocol, PortRequest};
use std::io::{Read, Write};
use std::process::Command;
use support::*;

fn published(port: u16) -> PortRequest {
    PortRequest {
        host_ip: Some("127.0.0.1".parse().unwrap()),
        host_port: Some(HostPortRange {
            start: port,
            end: port,
        }),
        container_port: 80,
        protocol: PortProtocol::Tcp,
    }
}

/// HTTP GET `/` on 127.0.0.1:`port` from the host. Retries a refused
/// connection for 3 s: `runc run -d` returns before httpd listens.
fn http_get_from_host(port: u16) -> std::io::Result<String> {
    let start = std::time::Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && start.elapsed().as_secs() < 3 =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn two_containers_on_one_project_network_reach_each_other_by_ip() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("same", 0);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let req = w.request(vec![net], vec![]);
    let web = w.bundle(&format!("{p}-web-1"), HTTPD, Some(&req), &[]);
    let db = w.bundle(&format!("{p}-db-1"), HTTPD, Some(&req), &[]);
    w.run(&web).unwrap();
    w.run(&db).unwrap();
    let (web_ip, db_ip) = (ip_of(&web), ip_of(&db));
    assert!(
        web_ip.starts_with("10.250.0.") && db_ip.starts_with("10.250.0."),
        "{web_ip} {db_ip}"
    );
    assert_ne!(web_ip, db_ip);
    assert_eq!(http_get_ready(&w, &web.id, &db_ip, 80).unwrap(), INDEX);
    assert_eq!(http_get(&w, &db.id, &web_ip, 80).unwrap(), INDEX);

    // CHECK passes on a wired container.
    let out = w.hook("check", &w.state(&web.id));
    assert!(
        out.status.success(),
        "check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bridge and IPAM dir exist while containers run; one veth each.
    let br = &w.bridges()[0];
    assert_eq!(
        std::fs::read_dir(format!("/sys/class/net/{br}/brif"))
            .unwrap()
            .count(),
        2
    );

    w.delete(&web.id).unwrap();
    // The network stays while db uses it.
    assert!(std::path::Path::new(&format!("/sys/class/net/{br}")).exists());
    let db_state = serde_json::json!({"ociVersion": "1.0.2", "id": db.id, "status": "stopped", "bundle": db.bundle});
    // The agent releases the network too early (its conflist file is gone):
    // DEL runs with the config ADD used, cached in the result file.
    cntnr_hook::conflist::release_network(&w.state_dir(), &p, "default").unwrap();
    w.delete(&db.id).unwrap();
    // DEL again with the netns, IPAM entry and pin all gone: still succeeds.
    let out = w.hook("delete", &db_state);
    assert!(
        out.status.success(),
        "second delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_leaks(&w, &before);
}

#[test]
fn a_container_on_another_projects_network_cannot_reach_the_first() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("iso", 2);
    let (pa, pb) = (w.project("a"), w.project("b"));
    let na = w.network(&pa, "default");
    let nb = w.network(&pb, "default");
    let a = w.bundle(
        &format!("{pa}-db-1"),
        HTTPD,
        Some(&w.request(vec![na.clone()], vec![])),
        &[],
    );
    let a2 = w.bundle(
        &format!("{pa}-web-1"),
        HTTPD,
        Some(&w.request(vec![na], vec![])),
        &[],
    );
    let b = w.bundle(
        &format!("{pb}-web-1"),
        HTTPD,
        Some(&w.request(vec![nb], vec![])),
        &[],
    );
    w.run(&a).unwrap();
    w.run(&a2).unwrap();
    w.run(&b).unwrap();
    let (a_ip, b_ip) = (ip_of(&a), ip_of(&b));
    assert!(
        !a_ip.starts_with(&b_ip[..b_ip.rfind('.').unwrap()]),
        "different subnets: {a_ip} {b_ip}"
    );
    // Reachable from its own project, so the failure below is isolation.
    assert_eq!(http_get_ready(&w, &a2.id, &a_ip, 80).unwrap(), INDEX);
    assert_eq!(http_get_ready(&w, &b.id, &b_ip, 80).unwrap(), INDEX);
    let e = http_get(&w, &b.id, &a_ip, 80).unwrap_err();
    assert!(!e.is_empty());
    assert!(
        http_get(&w, &a.id, &b_ip, 80).is_err(),
        "isolation holds both ways"
    );
    for c in [&a, &a2, &b] {
        w.delete(&c.id).unwrap();
    }
    assert_no_leaks(&w, &before);
}

#[test]
fn a_published_port_on_host_loopback_reaches_the_container() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("port", 4);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let port = free_port();
    let web = w.bundle(
        &format!("{p}-web-1"),
        HTTPD,
        Some(&w.request(vec![net], vec![published(port)])),
        &[],
    );
    w.run(&web).unwrap();
    let res = cntnr_hook::NetResult::read(&web.bundle.join(cntnr_hook::RESULT_FILE))
        .unwrap()
        .unwrap();
    assert_eq!(res.ports.len(), 1);
    assert_eq!(res.ports[0].host_port, port);
    let body = http_get_from_host(port).unwrap();
    assert!(
        body.starts_with("HTTP/1.") && body.ends_with(INDEX),
        "{body}"
    );
    w.delete(&web.id).unwrap();
    let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the DNAT rule went with the container"
    );
    assert_no_leaks(&w, &before);
}

#[test]
fn killed_mid_add_then_retried_comes_up_once_with_nothing_leaked() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("kill", 6);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let port = free_port();
    let req = w.request(vec![net], vec![published(port)]);
    let id = format!("{p}-web-1");
    let c = w.bundle(
        &id,
        HTTPD,
        Some(&req),
        &["CNTNR_HOOK_FAILPOINT=after-bridge"],
    );
    let e = w.run(&c).unwrap_err();
    assert!(
        e.contains("hook") && e.contains("killed"),
        "runc reports the killed hook: {e}"
    );
    assert!(!w.exists(&id), "runc removed the failed container");
    // runc ran the poststop hook after the failed createRuntime: its DEL
    // already cleaned up what the killed ADD left.
    assert_eq!(leaks(&before, &snapshot()), Vec::<String>::new());

    // Retry, without the failpoint: comes up once.
    let c = w.bundle(&id, HTTPD, Some(&req), &[]);
    w.run(&c).unwrap();
    let ip = ip_of(&c);
    let net_dir = std::path::Path::new("/var/lib/cni/networks").join(&w.networks[0]);
    let reserved: Vec<String> = std::fs::read_dir(&net_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert_eq!(reserved, [ip], "exactly one address reserved");
    let br = &w.bridges()[0];
    assert_eq!(
        std::fs::read_dir(format!("/sys/class/net/{br}/brif"))
            .unwrap()
            .count(),
        1,
        "one veth"
    );
    assert!(http_get_from_host(port).unwrap().ends_with(INDEX));
    w.delete(&id).unwrap();
    assert_no_leaks(&w, &before);
}

#[test]
fn a_port_in_use_fails_create_with_a_clear_error_and_leaks_nothing() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("busy", 8);

    // Held by a host process.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let p = w.project("a");
    let net = w.network(&p, "default");
    let c = w.bundle(
        &format!("{p}-web-1"),
        HTTPD,
        Some(&w.request(vec![net.clone()], vec![published(port)])),
        &[],
    );
    let e = w.run(&c).unwrap_err();
    assert!(
        e.contains(&format!(
            "127.0.0.1:{port}/tcp is already in use on this host"
        )),
        "{e}"
    );
    drop(holder);

    // Held by another container (portmap binds nothing, so only claims see it).
    let q = w.project("b");
    let qnet = w.network(&q, "default");
    let port = free_port();
    let first = w.bundle(
        &format!("{q}-web-1"),
        HTTPD,
        Some(&w.request(vec![qnet], vec![published(port)])),
        &[],
    );
    w.run(&first).unwrap();
    let second = w.bundle(
        &format!("{p}-web-2"),
        HTTPD,
        Some(&w.request(vec![net], vec![published(port)])),
        &[],
    );
    let e = w.run(&second).unwrap_err();
    assert!(
        e.contains(&format!("already published by container {}", first.id)),
        "{e}"
    );
    // The first is unaffected.
    assert!(http_get_from_host(port).unwrap().ends_with(INDEX));
    w.delete(&first.id).unwrap();
    assert_no_leaks(&w, &before);
}

#[test]
fn an_invalid_network_config_fails_create_with_the_plugins_message() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("bad", 10);
    let p = w.project("a");
    let mut req = w.request(vec![], vec![]);
    req.networks.push(cntnr_hook::NetworkAttachment {
        conflist: cntnr_hook::ConflistSource::Inline(serde_json::json!({
            "cniVersion": "1.0.0", "name": format!("cntnr.{p}.bad"),
            "plugins": [{"type": "bridge", "bridge": "cn-badtest0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "not-a-subnet"}]]}}]
        })),
        ifname: None,
    });
    w.networks.push(format!("cntnr.{p}.bad"));
    let c = w.bundle(&format!("{p}-web-1"), HTTPD, Some(&req), &[]);
    let e = w.run(&c).unwrap_err();
    assert!(
        e.contains("CNI ADD network") && e.contains("plugin bridge"),
        "{e}"
    );
    assert!(e.contains("not-a-subnet"), "the plugin's own message: {e}");
    assert_no_leaks(&w, &before);
}

#[test]
fn the_leak_check_sees_a_leftover_bridge_and_rule() {
    let _g = serial();
    let before = snapshot();
    let br = "cn-leakcheck0";
    let _ = std::process::Command::new("ip")
        .args(["link", "del", br])
        .output();
    assert!(std::process::Command::new("ip")
        .args(["link", "add", br, "type", "bridge"])
        .status()
        .unwrap()
        .success());
    let r = std::panic::catch_unwind(|| {
        cntnr_hook::firewall::ensure_network_rules(br, Some("10.250.30.0/24".parse().unwrap()))
            .unwrap();
        leaks(&before, &snapshot())
    });
    let _ = std::process::Command::new("ip")
        .args(["link", "del", br])
        .output();
    cntnr_hook::firewall::remove_network_rules(br, Some("10.250.30.0/24".parse().unwrap()))
        .unwrap();
    let l = r.unwrap();
    assert!(l.iter().any(|l| l == &format!("link {br}")), "{l:?}");
    assert!(
        l.iter().any(|l| l.contains(&format!("-i {br} ! -o {br}"))),
        "{l:?}"
    );
    assert!(
        l.iter()
            .any(|l| l.contains("-j MASQUERADE") && l.contains(br)),
        "{l:?}"
    );
    assert!(leaks(&before, &snapshot()).is_empty());
}

#[test]
fn killed_mid_add_without_poststop_the_retry_cleans_up_first() {
    // The worst case: the hook is killed and nobody runs DEL (runc itself
    // died too). The leftovers are real; the next create of the same id
    // removes them before its ADD.
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("nops", 12);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let port = free_port();
    let req = w.request(vec![net], vec![published(port)]);
    let id = format!("{p}-web-1");
    let c = w.bundle(&id, HTTPD, Some(&req), &[]);
    strip_hooks(&c);
    w.create(&c).unwrap();
    let state = w.state(&id);

    let out = w.hook_env(
        "create",
        &state,
        &[("CNTNR_HOOK_FAILPOINT", "after-portmap")],
    );
    assert!(!out.status.success());
    let left = leaks(&before, &snapshot());
    assert!(
        left.iter().any(|l| l.starts_with("link cn-")),
        "the bridge is left: {left:?}"
    );
    assert!(
        left.iter().any(|l| l.contains("CNI-DN-")),
        "portmap's chain is left: {left:?}"
    );

    let out = w.hook("create", &state);
    assert!(
        out.status.success(),
        "retry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ip = ip_of(&c);
    let net_dir = std::path::Path::new("/var/lib/cni/networks").join(&w.networks[0]);
    let reserved: Vec<String> = std::fs::read_dir(&net_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert_eq!(reserved, [ip], "exactly one address reserved");
    let br = &w.bridges()[0];
    assert_eq!(
        std::fs::read_dir(format!("/sys/class/net/{br}/brif"))
            .unwrap()
            .count(),
        1,
        "one veth"
    );
    let dnat = snapshot()
        .iptables
        .iter()
        .filter(|l| l.contains("-j DNAT") && l.contains(&format!("--dport {port} ")))
        .count();
    assert_eq!(dnat, 1, "one DNAT rule for the port");

    let out = w.hook("delete", &state);
    assert!(
        out.status.success(),
        "delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.delete(&id).unwrap();
    assert_no_leaks(&w, &before);
}

#[test]
fn a_plugin_that_hangs_hits_the_hook_timeout_and_is_rolled_back() {
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("hang", 14);
    let p = w.project("a");
    // A plugin that never answers ADD, chained after the real bridge plugin.
    let plugins = w.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let hang = plugins.join("hang");
    std::fs::write(
        &hang,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && exec sleep 60\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let name = format!("cntnr.{p}.hang");
    w.networks.push(name.clone());
    let mut req = w.request(vec![], vec![]);
    req.cni_path = Some(format!("{}:/usr/lib/cni", plugins.display()));
    req.networks.push(cntnr_hook::NetworkAttachment {
        conflist: cntnr_hook::ConflistSource::Inline(serde_json::json!({
            "cniVersion": "1.0.0", "name": name,
            "plugins": [
                {"type": "bridge", "bridge": cntnr_hook::conflist::bridge_name(&name), "isGateway": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.14.0/24"}]]}},
                {"type": "hang"}
            ]
        })),
        ifname: None,
    });
    let id = format!("{p}-web-1");
    let c = w.bundle(&id, HTTPD, Some(&req), &[]);
    strip_hooks(&c);
    w.create(&c).unwrap();
    let state = w.state(&id);
    let t = std::time::Instant::now();
    let out = w.hook_env("create", &state, &[("CNTNR_HOOK_TIMEOUT", "4")]);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plugin hang did not finish in time"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(4),
        "within the hook's budget: {took:?}"
    );
    // The rollback removed what the bridge plugin had set up.
    assert_eq!(leaks(&before, &snapshot()), Vec::<String>::new());
    w.delete(&id).unwrap();
    assert_no_leaks(&w, &before);
}

#[test]
fn service_names_resolve_through_an_atomically_rewritten_hosts_file() {
    use cntnr_hook::hosts::{hosts_file, hosts_path, write_atomic, ReplicaAddr};
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("names", 16);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let req = w.request(vec![net], vec![]);
    let web = w.bundle(&format!("{p}-web-1"), HTTPD, Some(&req), &[]);
    let db = w.bundle(&format!("{p}-db-1"), HTTPD, Some(&req), &[]);
    w.run(&web).unwrap();
    w.run(&db).unwrap();
    let replica = |c: &Container, service: &str| ReplicaAddr {
        service: service.into(),
        replica: 1,
        container_id: c.id.clone(),
        ip: ip_of(c).parse().unwrap(),
        aliases: vec![],
    };
    // What the agent does when replicas change: render, replace atomically.
    let all = [replica(&web, "web"), replica(&db, "db")];
    let content = hosts_file(&web.id, Some(all[0].ip), &all, &[]);
    write_atomic(&hosts_path(&web.bundle), content.as_bytes()).unwrap();
    // The rename is seen inside the running container (dir mount + symlink).
    let out = w.exec(&web.id, &["cat", "/etc/hosts"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), content);
    // And the name resolves: `db` reaches db's httpd.
    assert_eq!(http_get_ready(&w, &web.id, "db", 80).unwrap(), INDEX);

    // db restarts with a new IP: the file follows.
    w.delete(&db.id).unwrap();
    let db = w.bundle(&format!("{p}-db-2"), HTTPD, Some(&req), &[]);
    w.run(&db).unwrap();
    let all = [replica(&web, "web"), replica(&db, "db")];
    let content = hosts_file(&web.id, Some(all[0].ip), &all, &[]);
    write_atomic(&hosts_path(&web.bundle), content.as_bytes()).unwrap();
    assert!(
        String::from_utf8_lossy(&w.exec(&web.id, &["cat", "/etc/hosts"]).stdout)
            .contains(&format!("{}\tdb ", ip_of(&db)))
    );
    assert_eq!(http_get_ready(&w, &web.id, "db", 80).unwrap(), INDEX);
    w.delete(&web.id).unwrap();
    w.delete(&db.id).unwrap();
    assert_no_leaks(&w, &before);
}

/// Restores the FORWARD policy on drop.
struct ForwardPolicy(String);

impl ForwardPolicy {
    fn set(policy: &str) -> Self {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", "filter"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let old = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(":FORWARD ")?
                    .split(' ')
                    .next()
                    .map(String::from)
            })
            .unwrap_or_else(|| "ACCEPT".into());
        assert!(std::process::Command::new("iptables")
            .args(["-P", "FORWARD", policy])
            .status()
            .unwrap()
            .success());
        Self(old)
    }
}

impl Drop for ForwardPolicy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .args(["-P", "FORWARD", &self.0])
            .status();
    }
}

#[test]
fn networks_work_and_stay_isolated_under_a_forward_drop_policy() {
    // Docker sets FORWARD's policy to DROP; cntnr's networks must not depend on ACCEPT.
    let _g = serial();
    let before = snapshot();
    let _policy = ForwardPolicy::set("DROP");
    let mut w = World::new("drop", 18);
    let (pa, pb) = (w.project("a"), w.project("b"));
    let na = w.network(&pa, "default");
    let nb = w.network(&pb, "default");
    let a1 = w.bundle(
        &format!("{pa}-web-1"),
        HTTPD,
        Some(&w.request(vec![na.clone()], vec![])),
        &[],
    );
    let a2 = w.bundle(
        &format!("{pa}-db-1"),
        HTTPD,
        Some(&w.request(vec![na], vec![])),
        &[],
    );
    let b = w.bundle(
        &format!("{pb}-web-1"),
        HTTPD,
        Some(&w.request(vec![nb], vec![])),
        &[],
    );
    for c in [&a1, &a2, &b] {
        w.run(c).unwrap();
    }
    assert_eq!(http_get_ready(&w, &a1.id, &ip_of(&a2), 80).unwrap(), INDEX);
    assert!(http_get(&w, &b.id, &ip_of(&a2), 80).is_err());
    for c in [&a1, &a2, &b] {
        w.delete(&c.id).unwrap();
    }
    assert_no_leaks(&w, &before);
}

#[test]
fn a_stale_ipam_entry_of_the_same_id_after_a_reboot_does_not_block_create() {
    // A reboot drops containers, netns pins and bundles, but host-local's
    // reservations in /var/lib/cni survive; host-local refuses a second
    // address for the same container id.
    let _g = serial();
    let before = snapshot();
    let mut w = World::new("boot", 22);
    let p = w.project("a");
    let net = w.network(&p, "default");
    let req = w.request(vec![net], vec![]);
    let id = format!("{p}-web-1");
    let c = w.bundle(&id, HTTPD, Some(&req), &[]);
    strip_hooks(&c);
    w.create(&c).unwrap();
    let out = w.hook("create", &w.state(&id));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "Reboot": the container, its pin and its bundle vanish without a DEL.
    w.delete(&id).unwrap();
    cntnr_hook::netns::unpin(&cntnr_hook::netns::pin_path(&w.run_dir(), &id)).unwrap();
    std::fs::remove_file(c.bundle.join(cntnr_hook::RESULT_FILE)).unwrap();
    assert!(cntnr_hook::firewall::ipam_holds(&w.networks[0], &id));

    let c = w.bundle(&id, HTTPD, Some(&req), &[]);
    strip_hooks(&c);
    w.create(&c).unwrap();
    let state = w.state(&id);
    let out = w.hook("create", &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.hook("delete", &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.delete(&id).unwrap();
    assert_no_leaks(&w, &before);
}

#[test]
fn without_root_the_hook_refuses_and_says_rootless_uses_the_host_network() {
    // Every World's drop prunes shared host chains: serialize it too.
    let _g = serial();
    let w = World::new("rootless", 24);
    let mut req = w.request(vec![], vec![]);
    req.state_dir = "/nonexistent".into();
    let (k, v) = req.to_annotation();
    let state = serde_json::json!({"ociVersion": "1.0.2", "id": "x-web-1", "status": "creating", "pid": 1,
        "bundle": "/nonexistent", "annotations": {k: v}});
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            HOOK,
            "create",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root: rootless agents run containers on the host network"),
        "{err}"
    );
}

/// The shared chains (ours and portmap's) are removed once no network uses
/// them, so a test run leaves no iptables rule behind; while a network's
/// rules exist, they stay.
#[test]
fn shared_chains_go_once_no_network_uses_them() {
    let _serial = serial();
    let chain_exists = |table: &str, chain: &str| {
        Command::new("iptables")
            .args(["-w", "-t", table, "-S", chain])
            .output()
            .unwrap()
            .status
            .success()
    };
    let br = "cn-prunetest0";
    cntnr_hook::firewall::ensure_network_rules(br, None).unwrap();
    assert!(chain_exists("filter", "CNTNR-ISOLATION"));
    assert!(
        !cntnr_hook::firewall::remove_shared_chains_if_unused().unwrap(),
        "in use: nothing removed"
    );
    assert!(chain_exists("filter", "CNTNR-ISOLATION"));
    cntnr_hook::firewall::remove_network_rules(br, None).unwrap();
    cntnr_hook::firewall::remove_shared_chains_if_unused().unwrap();
    let save = Command::new("iptables-save").output().unwrap();
    let save = String::from_utf8_lossy(&save.stdout);
    assert!(
        !save.contains("CNTNR-") && !save.contains("CNI-HOSTPORT"),
        "left: {save}"
    );
    assert!(
        !cntnr_hook::firewall::remove_shared_chains_if_unused().unwrap(),
        "idempotent"
    );
}
