//! The agent's process lifecycle, observed from outside: READY=1 to
//! systemd after the first sync, waiting for an unreachable store, a
//! second signal cutting a hung drain short, and SIGHUP re-reading a
//! credential file.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Kind, TestStore};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn ready_is_sent_to_systemd_after_the_first_sync() {
    let s = TestStore::new(Kind::Dir, "ready");
    let sock_path = s.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut agent = s.agent_with("n1", &[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification within 30s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // Ready means synced: /status says so and the node is registered.
    let st = common::wait_for(WAIT, "/status", || agent.status());
    assert_eq!(st["ready"], true);
    assert!(s.raw_get(&s.key("nodes/n1")).is_some());
    agent.signal("TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    assert!(agent.wait_exit(WAIT).success());
}

#[test]
fn unreachable_store_is_waited_for_and_sigterm_still_exits() {
    let mut s = TestStore::new(Kind::Dir, "unreachable");
    s.url = format!("etcd://127.0.0.1:{}", common::free_port());
    let mut agent = s.agent("n1");
    // HTTP answers before the store does; the agent is not ready.
    let st = common::wait_for(WAIT, "/status", || agent.status());
    assert_eq!(st["ready"], false);
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    common::wait_for(WAIT, "a log line saying what it waits for", || {
        agent.log_text().contains("waiting for").then_some(())
    });
    assert!(agent.running());
    let t = Instant::now();
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.log_text());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn second_signal_exits_at_once_when_the_drain_hangs() {
    let etcd = cntnr_e2e::Etcd::start();
    let mut s = TestStore::new(Kind::Dir, "second");
    s.url = etcd.store_url();
    let mut agent = s.agent("n1");
    common::wait_for(WAIT, "the agent to be ready", || {
        agent.status().filter(|st| st["ready"] == true)
    });
    // With the server frozen, resigning and revoking cannot finish.
    etcd.pause();
    agent.signal("TERM");
    common::wait_for(WAIT, "the drain to start", || {
        agent.log_text().contains("draining").then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.running(),
        "the drain should be stuck on the frozen store"
    );
    let t = Instant::now();
    agent.signal("TERM");
    let st = agent.wait_exit(WAIT);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(130), "{}", agent.log_text());
    etcd.resume();
}

#[test]
fn sighup_rereads_the_token_file_and_reconnects_when_it_changed() {
    let s = TestStore::new(Kind::Consul, "hup");
    let token = s.tmp.path().join("token");
    std::fs::write(&token, "token-one\n").unwrap();
    let mut agent = s.agent_with("n1", &["--consul-token-file", token.to_str().unwrap()], &[]);
    let sessions = |a: &common::Agent| {
        let m = a.get("/metrics")?.1;
        m.lines()
            .find_map(|l| l.strip_prefix("cntnr_sessions_total "))
            .map(|v| v.trim().to_string())
    };
    common::wait_for(WAIT, "ready", || {
        agent.status().filter(|st| st["ready"] == true)
    });
    assert_eq!(sessions(&agent).as_deref(), Some("1"));

    // Unchanged: nothing happens.
    agent.signal("HUP");
    common::wait_for(WAIT, "the re-read", || {
        agent
            .log_text()
            .contains("credentials unchanged")
            .then_some(())
    });
    assert_eq!(sessions(&agent).as_deref(), Some("1"));

    // Changed: a new connection and session; the node is registered again
    // and still leads. The token never reaches the log.
    std::fs::write(&token, "token-two\n").unwrap();
    agent.signal("HUP");
    common::wait_for(WAIT, "a second session", || {
        (sessions(&agent).as_deref() == Some("2")).then_some(())
    });
    common::wait_for(WAIT, "node registered and leading again", || {
        let st = agent.status()?;
        (st["is_leader"] == true && s.raw_get(&s.key("nodes/n1")).is_some()).then_some(())
    });
    // An unreadable file keeps the current credentials and the agent.
    std::fs::write(&token, "").unwrap();
    agent.signal("HUP");
    common::wait_for(WAIT, "the refusal", || {
        agent
            .log_text()
            .contains("keeping the current credentials")
            .then_some(())
    });
    assert!(agent.running());
    let log = agent.log_text();
    assert!(
        !log.contains("token-one") && !log.contains("token-two"),
        "{log}"
    );
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).success());
}

#[test]
fn a_revoked_session_is_replaced_and_the_node_registered_again() {
    let s = TestStore::new(Kind::Etcd, "revoked");
    let mut agent = s.agent("n1");
    let first = common::wait_for(WAIT, "ready", || {
        agent
            .status()
            .filter(|st| st["ready"] == true && st["is_leader"] == true)
    });
    let lease: u64 = first["session"].as_str().unwrap().parse().unwrap();
    // An operator (or the server) kills the lease behind the agent's back.
    let out = cntnr_e2e::shared_etcd().etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
    assert!(out.status.success(), "{out:?}");
    common::wait_for(WAIT, "a new session, registered and leading", || {
        let st = agent.status()?;
        (st["session"].is_string()
            && st["session"] != first["session"]
            && st["is_leader"] == true
            && s.raw_get(&s.key("nodes/n1")).is_some())
        .then_some(())
    });
    assert!(agent.running());
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.log_text());
}

#[test]
fn a_change_made_while_the_store_was_down_is_seen_after_it_returns() {
    let mut etcd = cntnr_e2e::Etcd::start();
    let mut s = TestStore::new(Kind::Dir, "outage");
    s.url = etcd.store_url();
    let mut agent = s.agent("n1");
    common::wait_for(WAIT, "ready", || {
        agent.status().filter(|st| st["ready"] == true)
    });
    etcd.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.running(), "the agent must outlive a store outage");
    etcd.restart();
    let put = etcd.etcdctl(&[
        "put",
        &s.key("projects/late"),
        // Never pulled: no network in tests.
        "services:\n  web:\n    image: busybox\n    pull_policy: never\n",
    ]);
    assert!(put.status.success(), "{put:?}");
    common::wait_for(WAIT, "the project written after the outage", || {
        agent
            .status()
            .filter(|st| st["projects"]["late"]["state"] == "valid")
    });
    agent.signal("TERM");
    assert!(agent.wait_exit(WAIT).success(), "{}", agent.log_text());
}
