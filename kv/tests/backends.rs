//! Backend-specific behaviour the generic contract cannot express: etcd
//! compaction, server-side fencing, Consul lock-delay, credentials and TLS
//! errors, dir crash recovery and hand-written files.

use std::collections::BTreeSet;
use std::time::Duration;

use cntnr_e2e::{shared_consul, shared_etcd, Consul, Etcd};
use cntnr_kv::{
    ConnectOptions, DynStore, Error, EventKind, Secret, StoreUrl, WatchEvent, WatchFrom,
    WatchStream,
};
use futures::StreamExt;
use tokio::time::{timeout, Instant};

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Some(Duration::from_secs(20)),
        consul_wait: Duration::from_secs(5),
        consul_lock_delay: Duration::from_secs(1),
        dir_rescan: Duration::from_millis(500),
        ..Default::default()
    }
}

async fn open(url: &str, o: &ConnectOptions) -> cntnr_kv::Result<DynStore> {
    cntnr_kv::connect(&StoreUrl::parse(url)?, o).await
}

async fn collect(
    w: &mut WatchStream,
    within: Duration,
    mut done: impl FnMut(&[WatchEvent]) -> bool,
) -> Vec<WatchEvent> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, w.next()).await {
            Ok(Some(Ok(ev))) => out.push(ev),
            Ok(Some(Err(e))) => panic!("watch error: {e}"),
            Ok(None) => panic!("watch ended"),
            Err(_) => break,
        }
    }
    out
}

fn ctl(etcd: &Etcd, args: &[&str]) -> String {
    let out = etcd.etcdctl(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn current_revision(etcd: &Etcd) -> u64 {
    let out = ctl(etcd, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Status"]["header"]["revision"].as_u64().unwrap()
}

/// History compacted while the watcher was away: the watch re-lists and
/// reports the delete that happened in the gap (synthetic), exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_relists_after_compaction_and_sees_delete() {
    let mut etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let store = open(&etcd.store_url(), &opts()).await.unwrap();
    store.put("c/a", b"1").await.unwrap();
    store.put("c/b", b"1").await.unwrap();

    // Variant 1, deterministic: the caller's watch is gone, history up to
    // now is compacted, and it resumes from its own state.
    let mut w = store.watch("c/", WatchFrom::Start);
    let mut state = cntnr_kv::Snapshot::default();
    for ev in collect(&mut w, Duration::from_secs(5), |e| e.len() >= 2).await {
        state.apply(&ev);
    }
    drop(w);
    store.delete("c/a").await.unwrap();
    store.put("c/c", b"1").await.unwrap();
    let rev = current_revision(&etcd).to_string();
    tokio::task::block_in_place(|| ctl(&etcd, &["compact", &rev]));
    let mut w = store.watch("c/", WatchFrom::Snapshot(state.clone()));
    let evs = collect(&mut w, Duration::from_secs(10), |e| e.len() >= 2).await;
    let got: BTreeSet<_> = evs
        .iter()
        .map(|e| (e.kind, e.key.clone(), e.synthetic))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Delete, "c/a".to_string(), true),
            (EventKind::Put, "c/c".to_string(), true)
        ]
        .into()
    );
    for ev in &evs {
        state.apply(ev);
    }

    // Variant 2, mid-watch: the server restarts, and before the watch
    // reconnects a key is deleted and history compacted. The delete is
    // seen exactly once either way (live or by relist).
    tokio::task::block_in_place(|| {
        etcd.restart();
        ctl(&etcd, &["del", "c/b"]);
        ctl(&etcd, &["put", "c/d", "1"]);
        let rev = current_revision(&etcd).to_string();
        ctl(&etcd, &["compact", &rev]);
    });
    let evs = collect(&mut w, Duration::from_secs(30), |e| e.len() >= 2).await;
    let extra = collect(&mut w, Duration::from_secs(2), |_| false).await;
    let got: Vec<_> = evs
        .iter()
        .chain(extra.iter())
        .map(|e| (e.kind, e.key.clone()))
        .collect();
    assert_eq!(got.len(), 2, "{evs:?} {extra:?}");
    assert!(
        got.contains(&(EventKind::Delete, "c/b".to_string())),
        "{got:?}"
    );
    assert!(
        got.contains(&(EventKind::Put, "c/d".to_string())),
        "{got:?}"
    );
}

/// The fence is checked by the server, not only locally: with the lock key
/// deleted behind the leader's back and taken by another, the old leader's
/// fenced write fails although its session is alive.
async fn fenced_write_rejected_by_server(store: DynStore, prefix: &str) {
    let lock = format!("{prefix}/leader");
    let target = format!("{prefix}/schedule");
    let sa = store.create_session(Duration::from_secs(10)).await.unwrap();
    let sb = store.create_session(Duration::from_secs(10)).await.unwrap();
    let a = store.campaign(&sa, &lock, b"a").await.unwrap();
    store.put_fenced(&target, b"a1", &a).await.unwrap();
    store.delete(&lock).await.unwrap();
    let b = timeout(Duration::from_secs(10), store.campaign(&sb, &lock, b"b"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.is_held(),
        "a's session is alive; only the server can tell"
    );
    assert!(matches!(
        store.put_fenced(&target, b"a2", &a).await,
        Err(Error::FencedOut { .. })
    ));
    store.put_fenced(&target, b"b1", &b).await.unwrap();
    assert_eq!(store.get(&target).await.unwrap().unwrap().value, b"b1");
    sa.close().await.unwrap();
    sb.close().await.unwrap();
}

/// Fenced deletes are checked by the server too: the lock key deleted
/// behind the leader's back and taken by another, the old leader's fenced
/// delete fails (its session is alive) and the key stays; the new leader's
/// goes through.
async fn fenced_delete_rejected_by_server(store: DynStore, prefix: &str) {
    let lock = format!("{prefix}/leader");
    let target = format!("{prefix}/schedule/gone-project");
    let sa = store.create_session(Duration::from_secs(10)).await.unwrap();
    let sb = store.create_session(Duration::from_secs(10)).await.unwrap();
    let a = store.campaign(&sa, &lock, b"a").await.unwrap();
    store.put(&target, b"s1").await.unwrap();
    store.delete_fenced(&target, &a).await.unwrap();
    assert!(store.get(&target).await.unwrap().is_none());
    store.put(&target, b"s2").await.unwrap();
    store.delete(&lock).await.unwrap();
    let b = timeout(Duration::from_secs(10), store.campaign(&sb, &lock, b"b"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.is_held(),
        "a's session is alive; only the server can tell"
    );
    assert!(matches!(
        store.delete_fenced(&target, &a).await,
        Err(Error::FencedOut { .. })
    ));
    assert_eq!(store.get(&target).await.unwrap().unwrap().value, b"s2");
    store.delete_fenced(&target, &b).await.unwrap();
    assert!(store.get(&target).await.unwrap().is_none());
    sa.close().await.unwrap();
    sb.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_fenced_delete_rejected_by_server() {
    let url = tokio::task::spawn_blocking(|| shared_etcd().store_url())
        .await
        .unwrap();
    fenced_delete_rejected_by_server(open(&url, &opts()).await.unwrap(), "fdel-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_fenced_delete_rejected_by_server() {
    let url = tokio::task::spawn_blocking(|| shared_consul().store_url())
        .await
        .unwrap();
    fenced_delete_rejected_by_server(open(&url, &opts()).await.unwrap(), "fdel-consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_fenced_write_rejected_by_server() {
    let url = tokio::task::spawn_blocking(|| shared_etcd().store_url())
        .await
        .unwrap();
    fenced_write_rejected_by_server(open(&url, &opts()).await.unwrap(), "fence-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_fenced_write_rejected_by_server() {
    let url = tokio::task::spawn_blocking(|| shared_consul().store_url())
        .await
        .unwrap();
    fenced_write_rejected_by_server(open(&url, &opts()).await.unwrap(), "fence-consul").await;
}

/// After the holder's session is invalidated, Consul refuses the lock for
/// the lock-delay; the contender waits it out (timer, not a request loop)
/// and gets it soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_lock_delay_honoured() {
    let consul = tokio::task::spawn_blocking(shared_consul).await.unwrap();
    let delay = Duration::from_secs(3);
    let o = ConnectOptions {
        consul_lock_delay: delay,
        ..opts()
    };
    let store = open(&consul.store_url(), &o).await.unwrap();
    let lock = "lockdelay/leader";
    let sa = store.create_session(Duration::from_secs(10)).await.unwrap();
    let sb = store.create_session(Duration::from_secs(10)).await.unwrap();
    let _a = store.campaign(&sa, lock, b"a").await.unwrap();
    // Invalidate a's session (as an expiry would): lock-delay starts now.
    let r = reqwest::Client::new()
        .put(format!("{}/v1/session/destroy/{}", consul.url(), sa.id()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let t0 = Instant::now();
    let b = timeout(Duration::from_secs(15), store.campaign(&sb, lock, b"b"))
        .await
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        took >= delay - Duration::from_millis(300),
        "acquired after {took:?}, before the {delay:?} lock-delay ran out"
    );
    assert!(
        took <= delay + Duration::from_secs(3),
        "waited {took:?}, far past the lock-delay"
    );
    assert_eq!(store.holder(lock).await.unwrap().unwrap().token, b.token);
    sb.close().await.unwrap();
}

/// etcd with authentication: a wrong password is a clear, non-retryable
/// auth error; the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_bad_credentials_give_clear_error() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    tokio::task::block_in_place(|| {
        ctl(
            &etcd,
            &[
                "user",
                "add",
                "root",
                "--new-user-password=right-pw",
                "--interactive=false",
            ],
        );
        ctl(&etcd, &["auth", "enable"]);
    });
    let bad = ConnectOptions {
        etcd_user: Some(("root".into(), Secret::new("wrong-pw"))),
        ..opts()
    };
    let e = open(&etcd.store_url(), &bad).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(!msg.contains("wrong-pw") && !msg.contains('\n'), "{msg}");

    let good = ConnectOptions {
        etcd_user: Some(("root".into(), Secret::new("right-pw"))),
        ..opts()
    };
    let store = open(&etcd.store_url(), &good).await.unwrap();
    store.put("auth/k", b"v").await.unwrap();
    assert_eq!(store.get("auth/k").await.unwrap().unwrap().value, b"v");
}

/// An unreachable server is retried with backoff until the connect timeout,
/// and the error says what was waited for; bad TLS files fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_and_bad_tls_files_give_clear_errors() {
    let quick = ConnectOptions {
        connect_timeout: Some(Duration::from_secs(2)),
        ..opts()
    };
    // A port nothing listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, what) in [
        (
            format!("etcd://127.0.0.1:{port}"),
            format!("etcd at 127.0.0.1:{port}"),
        ),
        (
            format!("consul://127.0.0.1:{port}"),
            format!("Consul agent at 127.0.0.1:{port}"),
        ),
    ] {
        let t = Instant::now();
        let e = open(&url, &quick).await.unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains(&what), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{url}: took {:?}",
            t.elapsed()
        );
    }
    let missing = ConnectOptions {
        ca: Some("/nonexistent/ca.pem".into()),
        ..opts()
    };
    for url in [
        format!("etcd+https://127.0.0.1:{port}"),
        format!("consul+https://127.0.0.1:{port}"),
    ] {
        let e = open(&url, &missing).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{url}: {e}");
        assert!(!e.is_retryable());
    }
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let bad = ConnectOptions {
        ca: Some(garbage),
        ..opts()
    };
    for url in [
        format!("etcd+https://127.0.0.1:{port}"),
        format!("consul+https://127.0.0.1:{port}"),
    ] {
        let e = open(&url, &bad).await.unwrap_err();
        assert!(matches!(e, Error::BadUrl { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
    // Bad URLs never reach the network.
    for url in ["etcd:/x", "consul://h", "dir://rel", "zk://h:1"] {
        let e = open(url, &opts()).await.unwrap_err();
        assert!(matches!(e, Error::BadUrl { .. }), "{url}: {e:?}");
    }
}

/// dir: a process that died with bound keys (its session record names a
/// dead pid) is cleaned up by the next opener; an operator's hand-written
/// file is a key with a version, seen by watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_crashed_session_reaped_and_hand_written_files_seen() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("dir://{}", d.path().display());
    {
        let store = open(&url, &opts()).await.unwrap();
        let sess = store
            .create_session(Duration::from_secs(3600))
            .await
            .unwrap();
        store
            .put_bound(&sess, "cntnr/nodes/n1", b"up")
            .await
            .unwrap();
        store.put("cntnr/projects/shop", b"yaml").await.unwrap();
        // Simulate the process dying: rewrite the record with a dead pid.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let rec_path = d
            .path()
            .join(".cntnr/sessions")
            .join(format!("{}.json", sess.id()));
        let mut rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
        rec["pid"] = dead.into();
        std::fs::write(&rec_path, serde_json::to_vec(&rec).unwrap()).unwrap();
        std::mem::forget(sess); // no close, no keepalive: as after a crash
    }
    let store = open(&url, &opts()).await.unwrap();
    assert!(
        store.get("cntnr/nodes/n1").await.unwrap().is_none(),
        "dead process's bound key reaped at open"
    );
    assert!(store.get("cntnr/projects/shop").await.unwrap().is_some());

    let mut w = store.watch("cntnr/projects/", WatchFrom::Start);
    let first = collect(&mut w, Duration::from_secs(5), |e| !e.is_empty()).await;
    assert_eq!(first[0].key, "cntnr/projects/shop");
    std::fs::create_dir_all(d.path().join("cntnr/projects")).unwrap();
    // As an operator should: write a dotfile, then rename it into place.
    std::fs::write(d.path().join("cntnr/projects/.blog.tmp"), "by hand").unwrap();
    std::fs::rename(
        d.path().join("cntnr/projects/.blog.tmp"),
        d.path().join("cntnr/projects/blog"),
    )
    .unwrap();
    let ev = collect(&mut w, Duration::from_secs(5), |e| !e.is_empty()).await;
    assert_eq!(
        (ev[0].kind, ev[0].key.as_str(), ev[0].value.as_slice()),
        (EventKind::Put, "cntnr/projects/blog", &b"by hand"[..])
    );
    let v = store
        .get("cntnr/projects/blog")
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(ev[0].version, v);
    // CAS works on a hand-written file's version.
    store
        .cas("cntnr/projects/blog", b"v2", Some(v))
        .await
        .unwrap();
    std::fs::remove_file(d.path().join("cntnr/projects/blog")).unwrap();
    let evs = collect(&mut w, Duration::from_secs(5), |e| {
        e.iter().any(|e| e.kind == EventKind::Delete)
    })
    .await;
    assert!(
        evs.iter()
            .any(|e| e.kind == EventKind::Delete && e.key == "cntnr/projects/blog"),
        "{evs:?}"
    );
    // No temp files are ever visible as keys.
    assert_eq!(store.list("cntnr/").await.unwrap().entries.len(), 1);
}

/// A Consul whose index goes backwards (a dev agent restarted with its data
/// lost): the watch notices, re-lists, and reports the lost keys as deletes
/// and the new ones as puts — nothing is silently kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_index_reset_relists_and_reports_deletes() {
    let mut consul = tokio::task::spawn_blocking(cntnr_e2e::Consul::start_dev)
        .await
        .unwrap();
    let store = open(&consul.store_url(), &opts()).await.unwrap();
    // Push the index well above where a fresh agent starts.
    for i in 0..150 {
        store.put(&format!("other/{i}"), b"x").await.unwrap();
    }
    store.put("reset/a", b"1").await.unwrap();
    store.put("reset/b", b"1").await.unwrap();
    let mut w = store.watch("reset/", WatchFrom::Start);
    let first = collect(&mut w, Duration::from_secs(5), |e| e.len() >= 2).await;
    assert_eq!(first.len(), 2);
    let before = first.iter().map(|e| e.position).max().unwrap();

    tokio::task::block_in_place(|| consul.restart());
    // The writer's connection may need a moment after the restart.
    let put_c = async {
        loop {
            match store.put("reset/c", b"1").await {
                Ok(v) => return v,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let vc = timeout(Duration::from_secs(20), put_c).await.unwrap();
    assert!(
        vc < before,
        "the test needs the index to go backwards ({vc} vs {before})"
    );
    let evs = collect(&mut w, Duration::from_secs(30), |e| e.len() >= 3).await;
    let got: BTreeSet<_> = evs.iter().map(|e| (e.kind, e.key.clone())).collect();
    assert_eq!(
        got,
        [
            (EventKind::Delete, "reset/a".to_string()),
            (EventKind::Delete, "reset/b".to_string()),
            (EventKind::Put, "reset/c".to_string()),
        ]
        .into(),
        "{evs:?}"
    );
    assert!(
        evs.iter()
            .filter(|e| e.kind == EventKind::Delete)
            .all(|e| e.synthetic),
        "deletes found by the relist are marked synthetic: {evs:?}"
    );
}

/// A frozen server (SIGSTOP: connections stay open, nothing answers) longer
/// than any request deadline: the watch notices, retries, and once the
/// server is back, resumes — each write seen exactly once.
async fn watch_survives_frozen_server(url: &str, pause: impl Fn(), resume: impl Fn()) {
    let store = open(url, &opts()).await.unwrap();
    let mut w = store.watch("frozen/", WatchFrom::Start);
    store.put("frozen/a", b"1").await.unwrap();
    let first = collect(&mut w, Duration::from_secs(10), |e| !e.is_empty()).await;
    assert_eq!(first.len(), 1);
    tokio::task::block_in_place(&pause);
    tokio::time::sleep(Duration::from_secs(14)).await;
    tokio::task::block_in_place(&resume);
    let put = async {
        loop {
            match store.put("frozen/b", b"1").await {
                Ok(v) => return v,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("{e}"),
            }
        }
    };
    timeout(Duration::from_secs(30), put).await.unwrap();
    let evs = collect(&mut w, Duration::from_secs(30), |e| !e.is_empty()).await;
    let extra = collect(&mut w, Duration::from_secs(2), |_| false).await;
    let keys: Vec<_> = evs
        .iter()
        .chain(extra.iter())
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys, vec!["frozen/b"], "{evs:?} {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_frozen_server() {
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    watch_survives_frozen_server(&etcd.store_url(), || etcd.pause(), || etcd.resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_watch_survives_frozen_agent() {
    let consul = tokio::task::spawn_blocking(cntnr_e2e::Consul::start_dev)
        .await
        .unwrap();
    watch_survives_frozen_server(&consul.store_url(), || consul.pause(), || consul.resume()).await;
}

/// Regression: a dir watch's own scan opens directories, and inotify reports
/// those reads; waking on them made an idle watch rescan hundreds of times a
/// second (an idle agent burned a whole core). Idle, with a one-hour rescan
/// period, a watch must scan only on real changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_idle_watch_does_not_wake_itself() {
    use cntnr_kv::Store;
    let d = tempfile::tempdir().unwrap();
    let o = ConnectOptions {
        dir_rescan: Duration::from_secs(3600),
        ..opts()
    };
    let store = cntnr_kv::dir::DirStore::open(d.path(), &o).unwrap();
    for i in 0..20 {
        store
            .put(&format!("cntnr/projects/p{i}"), b"yaml")
            .await
            .unwrap();
    }
    let mut w = store.watch("cntnr/projects/", WatchFrom::Start);
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let ev = timeout(Duration::from_secs(10), w.next())
            .await
            .expect("initial events")
            .expect("stream open")
            .expect("no error");
        seen.insert(ev.key);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = store.watch_scans();
    // Drive the stream while idle: nothing may arrive, and scans must not run.
    let idle = timeout(Duration::from_secs(2), w.next()).await;
    assert!(idle.is_err(), "idle watch produced {idle:?}");
    let idle_scans = store.watch_scans() - before;
    assert!(
        idle_scans <= 2,
        "an idle dir watch ran {idle_scans} scans in 2 s: it wakes itself"
    );
    // A real change still wakes it, long before the rescan period.
    store.put("cntnr/projects/new", b"v2").await.unwrap();
    let ev = timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a real write is seen without waiting for the rescan period")
        .expect("stream open")
        .expect("no error");
    assert_eq!(ev.key, "cntnr/projects/new");
    assert_eq!(ev.value, b"v2");
}

/// A store behind TLS or credentials: put, get and a watch work end to end.
async fn put_get_watch(store: &DynStore, prefix: &str) {
    let mut w = store.watch(prefix, WatchFrom::Start);
    let key = format!("{prefix}k");
    store.put(&key, b"guarded value").await.unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().value,
        b"guarded value"
    );
    let seen = collect(&mut w, Duration::from_secs(10), |e| !e.is_empty()).await;
    assert!(
        seen.iter()
            .any(|e| e.key == key && e.kind == EventKind::Put && e.value == b"guarded value"),
        "{seen:?}"
    );
}

/// A refused TLS handshake is an error at once, not an endless retry: one
/// line, naming the store and TLS. `connect_timeout` is unlimited here, so a
/// retry loop would hang until the outer timeout fails the test.
async fn assert_tls_refused(url: &str, o: &ConnectOptions, store: &str) {
    let unlimited = ConnectOptions {
        connect_timeout: None,
        ..o.clone()
    };
    let e = timeout(Duration::from_secs(20), open(url, &unlimited))
        .await
        .unwrap_or_else(|_| panic!("{url}: a refused TLS handshake was retried for 20s"))
        .unwrap_err();
    let msg = e.to_string();
    assert!(!e.is_retryable(), "{url}: {e:?}");
    assert!(!msg.contains('\n'), "{url}: multi-line error {msg}");
    assert!(msg.contains(store), "{url}: store not named in {msg}");
    assert!(msg.contains("TLS"), "{url}: TLS not named in {msg}");
}

/// etcd over TLS: with the server's CA, KV and watches work; with an
/// unrelated CA the connect fails at once with a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_with_right_ca_works_and_wrong_ca_fails_fast() {
    let etcd = tokio::task::spawn_blocking(Etcd::start_tls).await.unwrap();
    let files = etcd.tls_files().unwrap().clone();
    let url = etcd.store_url();
    assert!(url.starts_with("etcd+https://"), "{url}");
    let good = ConnectOptions {
        ca: Some(files.ca()),
        ..opts()
    };
    let store = open(&url, &good).await.unwrap();
    put_get_watch(&store, "tls/").await;

    let wrong = ConnectOptions {
        ca: Some(files.untrusted_ca()),
        ..opts()
    };
    assert_tls_refused(&url, &wrong, "etcd at").await;
}

/// etcd with client-certificate auth: the client certificate gets in; a
/// client without one is refused at once with a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_mtls_needs_the_client_certificate() {
    let etcd = tokio::task::spawn_blocking(Etcd::start_mtls).await.unwrap();
    let url = etcd.store_url();
    let full = ConnectOptions {
        ca: etcd.ca_file(),
        cert: etcd.client_cert_file(),
        key: etcd.client_key_file(),
        ..opts()
    };
    let store = open(&url, &full).await.unwrap();
    put_get_watch(&store, "mtls/").await;

    // Without one, the server closes the connection after the handshake
    // (TLS 1.3 sends its refusal late, and the gRPC client reports only
    // "connection closed"), so it looks like a network failure: retried,
    // but only up to the connect timeout, and the error names the server.
    let no_cert = ConnectOptions {
        ca: etcd.ca_file(),
        connect_timeout: Some(Duration::from_secs(3)),
        ..opts()
    };
    let e = timeout(Duration::from_secs(20), open(&url, &no_cert))
        .await
        .expect("bounded by connect_timeout")
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(
        msg.contains(&format!("etcd at {}", etcd.endpoint())),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// Consul over HTTPS: with the agent's CA, KV and watches work; with an
/// unrelated CA the connect fails at once with a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_tls_with_right_ca_works_and_wrong_ca_fails_fast() {
    let consul = tokio::task::spawn_blocking(Consul::start_tls)
        .await
        .unwrap();
    let files = consul.tls_files().unwrap().clone();
    let url = consul.store_url();
    assert!(url.starts_with("consul+https://"), "{url}");
    let good = ConnectOptions {
        ca: Some(files.ca()),
        ..opts()
    };
    let store = open(&url, &good).await.unwrap();
    put_get_watch(&store, "tls/").await;
    let sess = store.create_session(Duration::from_secs(10)).await.unwrap();
    store.put_bound(&sess, "tls/bound", b"1").await.unwrap();
    sess.close().await.unwrap();
    assert!(store.get("tls/bound").await.unwrap().is_none());

    let wrong = ConnectOptions {
        ca: Some(files.untrusted_ca()),
        ..opts()
    };
    assert_tls_refused(&url, &wrong, "Consul agent at").await;
}

/// Consul with ACLs (default deny): the management token can read, write,
/// hold sessions and register services; no token or a wrong token is a
/// one-line `Auth` error that never contains the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_acl_token_works_and_wrong_or_missing_token_is_auth_error() {
    let token = "3f1c2a9e-acl-test-management-token";
    let consul = tokio::task::spawn_blocking(move || Consul::start_with_acl(token))
        .await
        .unwrap();
    let url = consul.store_url();
    let good = ConnectOptions {
        consul_token: Some(Secret::new(token)),
        ..opts()
    };
    let store = open(&url, &good).await.unwrap();
    put_get_watch(&store, "acl/").await;
    let sess = store.create_session(Duration::from_secs(10)).await.unwrap();
    store.put_bound(&sess, "acl/bound", b"1").await.unwrap();
    let reg = cntnr_kv::Registration {
        name: "acl-web".into(),
        id: "node1/acl-web-1".into(),
        address: "127.0.0.1".into(),
        port: 8080,
        tags: vec![],
        meta: Default::default(),
        check_ttl: Duration::from_secs(30),
        deregister_after: Duration::from_secs(120),
    };
    store.register(&sess, &reg).await.unwrap();
    let list = store.instances("acl-web", false).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    store.deregister("acl-web", &reg.id).await.unwrap();
    sess.close().await.unwrap();

    let wrong_token = "wrong-token-7d0c-should-never-print";
    for (what, o) in [
        ("no token", opts()),
        (
            "wrong token",
            ConnectOptions {
                consul_token: Some(Secret::new(wrong_token)),
                ..opts()
            },
        ),
    ] {
        let unlimited = ConnectOptions {
            connect_timeout: None,
            ..o
        };
        let e = timeout(Duration::from_secs(20), open(&url, &unlimited))
            .await
            .unwrap_or_else(|_| panic!("{what}: refused token retried for 20s"))
            .unwrap_err();
        let (display, debug) = (e.to_string(), format!("{e:?}"));
        assert!(matches!(e, Error::Auth { .. }), "{what}: {debug}");
        assert!(!e.is_retryable(), "{what}: {debug}");
        assert!(!display.contains('\n'), "{what}: multi-line {display}");
        assert!(
            display.contains("ACL not found") || display.contains("Permission denied"),
            "{what}: {display}"
        );
        for secret in [token, wrong_token] {
            assert!(!display.contains(secret), "{what}: token in {display}");
            assert!(!debug.contains(secret), "{what}: token in {debug}");
        }
    }
    // The refused clients wrote nothing.
    assert_eq!(
        consul.kv_get("acl/k").as_deref(),
        Some("guarded value"),
        "the value written with the token"
    );
}
