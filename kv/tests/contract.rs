//! The store contract, run unchanged against real etcd 3.5, real Consul
//! 1.8.7 and the dir backend. Every case is an `async fn(Backend)`; the
//! `contract!` macro generates one `#[tokio::test]` per backend per case.
//! Shared servers (one per test binary) with a unique key prefix per test;
//! owned servers only where a test restarts one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cntnr_e2e::{shared_consul, shared_etcd, Consul, Etcd};
use cntnr_kv::{
    ConnectOptions, DynStore, Error, EventKind, Health, Registration, Session, StoreUrl,
    WatchEvent, WatchFrom, WatchStream,
};
use futures::StreamExt;
use tokio::time::{timeout, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Etcd,
    Consul,
    Dir,
}

/// A store to test against, with a key prefix no other test uses.
struct Env {
    backend: Backend,
    store: DynStore,
    prefix: String,
    /// The registry prefix the store was opened with.
    registry: String,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

fn test_opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Some(Duration::from_secs(20)),
        consul_wait: Duration::from_secs(5),
        consul_lock_delay: Duration::from_secs(1),
        // Long, so a test that passes cannot be relying on the rescan.
        dir_rescan: Duration::from_secs(5),
        ..Default::default()
    }
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        name
    )
}

async fn open(url: &str, opts: &ConnectOptions) -> DynStore {
    cntnr_kv::connect(&StoreUrl::parse(url).unwrap(), opts)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn env(backend: Backend, name: &str) -> Env {
    let registry = format!("{}/services", unique(name));
    let opts = ConnectOptions {
        registry_prefix: registry.clone(),
        ..test_opts()
    };
    let (url, dir) = match backend {
        Backend::Etcd => (
            tokio::task::spawn_blocking(|| shared_etcd().store_url())
                .await
                .unwrap(),
            None,
        ),
        Backend::Consul => (
            tokio::task::spawn_blocking(|| shared_consul().store_url())
                .await
                .unwrap(),
            None,
        ),
        Backend::Dir => {
            let d = tempfile::tempdir().unwrap();
            (format!("dir://{}", d.path().display()), Some(d))
        }
    };
    let store = open(&url, &opts).await;
    Env {
        backend,
        store,
        prefix: format!("{}/", unique(name)),
        registry,
        url,
        _dir: dir,
    }
}

/// Session TTL per backend: Consul's minimum is 10s.
fn ttl(b: Backend) -> Duration {
    match b {
        Backend::Consul => Duration::from_secs(10),
        _ => Duration::from_secs(2),
    }
}

async fn next_event(w: &mut WatchStream, within: Duration) -> WatchEvent {
    match timeout(within, w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// Collects events until `done(events)` or the deadline.
async fn collect_until(
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

async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Cases

async fn crud_and_cas_conflicts(b: Backend) {
    let e = env(b, "crud").await;
    let s = &e.store;
    let k = format!("{}a/b", e.prefix);
    assert_eq!(s.get(&k).await.unwrap(), None);
    let v1 = s.put(&k, b"one").await.unwrap();
    let got = s.get(&k).await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"one"[..], v1));
    let v2 = s.put(&k, b"two").await.unwrap();
    assert!(v2 > v1, "versions increase: {v1} then {v2}");

    // CAS on the right version wins, on a stale one loses with the current version.
    let v3 = s.cas(&k, b"three", Some(v2)).await.unwrap();
    assert!(v3 > v2);
    match s.cas(&k, b"stale", Some(v2)).await {
        Err(Error::CasConflict { current, .. }) => assert_eq!(current, Some(v3)),
        other => panic!("stale CAS: {other:?}"),
    }
    // Create-only CAS.
    let k2 = format!("{}a/c", e.prefix);
    let c1 = s.cas(&k2, b"new", None).await.unwrap();
    assert!(matches!(
        s.cas(&k2, b"again", None).await,
        Err(Error::CasConflict { .. })
    ));
    assert_eq!(s.get(&k2).await.unwrap().unwrap().version, c1);

    let snap = s.list(&e.prefix).await.unwrap();
    assert_eq!(
        snap.entries.keys().cloned().collect::<Vec<_>>(),
        vec![k.clone(), k2.clone()]
    );
    assert_eq!(snap.get(&k).unwrap().value, b"three");
    assert!(snap.position >= v3.max(c1));

    s.delete(&k).await.unwrap();
    s.delete(&k).await.unwrap(); // idempotent
    assert_eq!(s.get(&k).await.unwrap(), None);
    // A deleted key re-created gets a larger version.
    let v4 = s.put(&k, b"back").await.unwrap();
    assert!(v4 > v3);

    s.put(&format!("{}z/1", e.prefix), b"x").await.unwrap();
    s.delete_prefix(&format!("{}a/", e.prefix)).await.unwrap();
    let left: Vec<_> = s
        .list(&e.prefix)
        .await
        .unwrap()
        .entries
        .into_keys()
        .collect();
    assert_eq!(left, vec![format!("{}z/1", e.prefix)]);
    assert!(matches!(s.get("bad//key").await, Err(Error::BadKey { .. })));
}

/// 1,000 writes to distinct keys from 4 writers, while a churn task keeps
/// rewriting and deleting other keys under the same prefix: the watch sees
/// each write exactly once, with the version the server gave it, in version
/// order.
async fn watch_sees_1000_writes_under_churn_exactly_once_in_order(b: Backend) {
    let e = env(b, "churn").await;
    let p = e.prefix.clone();
    let start = e.store.list(&p).await.unwrap().position;
    let mut w = e.store.watch(&p, WatchFrom::Start);
    // Let the watch establish (its initial listing is empty).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (s, p, stop) = (e.store.clone(), p.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("{p}churn/{}", i % 7);
                if i % 3 == 2 {
                    s.delete(&k).await.unwrap();
                } else {
                    s.put(&k, format!("c{i}").as_bytes()).await.unwrap();
                }
                i += 1;
            }
        })
    };
    let mut writers = Vec::new();
    for wi in 0..4 {
        let (s, p) = (e.store.clone(), p.clone());
        writers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..250 {
                let k = format!("{p}k/{wi}-{j:03}");
                let v = s.put(&k, format!("v{wi}-{j}").as_bytes()).await.unwrap();
                got.push((k, v));
            }
            got
        }));
    }
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    for wtask in writers {
        written.extend(wtask.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    churn.await.unwrap();
    assert_eq!(written.len(), 1000);

    let kp = format!("{p}k/");
    let events = collect_until(&mut w, Duration::from_secs(60), |evs| {
        evs.iter().filter(|e| e.key.starts_with(&kp)).count() >= 1000
    })
    .await;
    // Nothing more may arrive for the written keys.
    let extra = collect_until(&mut w, Duration::from_millis(1500), |_| false).await;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for ev in events
        .iter()
        .chain(extra.iter())
        .filter(|e| e.key.starts_with(&kp))
    {
        assert_eq!(ev.kind, EventKind::Put, "{ev:?}");
        assert!(
            seen.insert(ev.key.clone(), ev.version).is_none(),
            "duplicate event {ev:?}"
        );
    }
    assert_eq!(seen.len(), 1000, "missing {} writes", 1000 - seen.len());
    assert_eq!(
        seen, written,
        "versions seen differ from the versions the server gave"
    );
    let all: Vec<&WatchEvent> = events.iter().chain(extra.iter()).collect();
    for pair in all.windows(2) {
        assert!(
            pair[0].version <= pair[1].version,
            "out of order: {:?} then {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            pair[0].position <= pair[1].position,
            "positions go back: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    if b == Backend::Etcd {
        // etcd keeps every revision: our stream must be exactly the server's
        // history of the prefix (churn included), no gap, no duplicate.
        let history = etcd_history(&e.url, &p, start, all.last().unwrap().version).await;
        let ours: Vec<(EventKind, String, u64)> = all
            .iter()
            .map(|e| (e.kind, e.key.clone(), e.version))
            .collect();
        assert_eq!(
            ours.len(),
            history.len(),
            "event count differs from the server's history"
        );
        assert!(ours == history, "stream differs from the server's history");
    }
    // The final state the watch reports equals the store's.
    let mut state = cntnr_kv::Snapshot::default();
    for ev in &all {
        state.apply(ev);
    }
    let now = e.store.list(&p).await.unwrap();
    assert_eq!(state.entries, now.entries);
}

/// The server's own history of `prefix` in revisions (from, to], read with
/// a raw etcd-client watch.
async fn etcd_history(
    url: &str,
    prefix: &str,
    from: u64,
    to: u64,
) -> Vec<(EventKind, String, u64)> {
    let endpoint = url.trim_start_matches("etcd://");
    let client = etcd_client::Client::connect([format!("http://{endpoint}")], None)
        .await
        .unwrap();
    let mut wc = client.watch_client();
    let opts = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(from as i64 + 1);
    let mut s = wc.watch(prefix, Some(opts)).await.unwrap();
    let mut out = Vec::new();
    while out
        .last()
        .is_none_or(|(_, _, v): &(EventKind, String, u64)| *v < to)
    {
        let msg = timeout(Duration::from_secs(10), s.message())
            .await
            .expect("history")
            .unwrap()
            .unwrap();
        for ev in msg.events() {
            let kv = ev.kv().unwrap();
            let kind = match ev.event_type() {
                etcd_client::EventType::Put => EventKind::Put,
                etcd_client::EventType::Delete => EventKind::Delete,
            };
            out.push((
                kind,
                String::from_utf8(kv.key().to_vec()).unwrap(),
                kv.mod_revision() as u64,
            ));
        }
    }
    out
}

/// Reads events until every key in `keys` was seen; asserts none twice.
async fn expect_each_once(w: &mut WatchStream, keys: &BTreeSet<String>, within: Duration) {
    let evs = collect_until(w, within, |evs| {
        let seen: BTreeSet<&String> = evs.iter().map(|e| &e.key).collect();
        keys.iter().all(|k| seen.contains(k))
    })
    .await;
    let extra = collect_until(w, Duration::from_millis(1500), |_| false).await;
    let mut count: BTreeMap<&String, usize> = BTreeMap::new();
    for ev in evs.iter().chain(extra.iter()) {
        *count.entry(&ev.key).or_default() += 1;
    }
    for k in keys {
        assert_eq!(
            count.get(k).copied().unwrap_or(0),
            1,
            "key {k} seen {:?} times",
            count.get(k)
        );
    }
}

/// Restart (or, for dir, reopen by another writer) mid-watch: writes before
/// and right after the restart, while the watch is still reconnecting, are
/// each seen exactly once.
async fn watch_resumes_after_server_restart(b: Backend) {
    enum Owned {
        Etcd(Etcd),
        Consul(Consul),
        Dir(tempfile::TempDir),
    }
    let mut owned = match b {
        Backend::Etcd => Owned::Etcd(tokio::task::spawn_blocking(Etcd::start).await.unwrap()),
        Backend::Consul => Owned::Consul(tokio::task::spawn_blocking(Consul::start).await.unwrap()),
        Backend::Dir => Owned::Dir(tempfile::tempdir().unwrap()),
    };
    let url = match &owned {
        Owned::Etcd(s) => s.store_url(),
        Owned::Consul(s) => s.store_url(),
        Owned::Dir(d) => format!("dir://{}", d.path().display()),
    };
    let store = open(&url, &test_opts()).await;
    let p = "restart/";
    let mut w = store.watch(p, WatchFrom::Start);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut keys = BTreeSet::new();
    for i in 0..50 {
        let k = format!("{p}before/{i:02}");
        store.put(&k, b"x").await.unwrap();
        keys.insert(k);
    }
    expect_each_once(&mut w, &keys, Duration::from_secs(20)).await;

    let writer: DynStore = match &mut owned {
        Owned::Etcd(s) => {
            tokio::task::block_in_place(|| s.restart());
            store.clone()
        }
        Owned::Consul(s) => {
            tokio::task::block_in_place(|| s.restart());
            store.clone()
        }
        // No server to restart: a second opener (as another process would)
        // writes, and the watch must see it through inotify/rescan.
        Owned::Dir(_) => open(&url, &test_opts()).await,
    };
    let mut after = BTreeSet::new();
    for i in 0..50 {
        let k = format!("{p}after/{i:02}");
        let put = async {
            loop {
                match writer.put(&k, b"y").await {
                    Ok(v) => return v,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        timeout(Duration::from_secs(30), put)
            .await
            .expect("write after restart");
        after.insert(k);
    }
    expect_each_once(&mut w, &after, Duration::from_secs(40)).await;
    // And nothing from before came again.
    let again = collect_until(&mut w, Duration::from_millis(500), |_| false).await;
    assert!(
        again.iter().all(|e| !keys.contains(&e.key)),
        "replayed: {again:?}"
    );
}

/// The holder stops renewing: it is told when the TTL runs out, and its
/// bound keys vanish (and a watcher sees the delete).
async fn session_expiry_removes_bound_keys_and_notifies_holder(b: Backend) {
    let e = env(b, "expiry").await;
    let sess = e.store.create_session(ttl(b)).await.unwrap();
    let k = format!("{}nodes/n1", e.prefix);
    let unbound = format!("{}plain", e.prefix);
    e.store.put_bound(&sess, &k, b"alive").await.unwrap();
    e.store.put(&unbound, b"stays").await.unwrap();
    let mut w = e.store.watch(&e.prefix, WatchFrom::Start);
    let first = collect_until(&mut w, Duration::from_secs(10), |evs| evs.len() >= 2).await;
    assert_eq!(first.len(), 2);

    // Renewals keep it alive past its TTL.
    tokio::time::sleep(ttl(b) + Duration::from_millis(500)).await;
    assert!(!sess.is_lost());
    assert!(e.store.get(&k).await.unwrap().is_some());

    let frozen_at = Instant::now();
    sess.freeze_keepalive(true);
    timeout(ttl(b) + Duration::from_secs(2), sess.lost())
        .await
        .expect("holder notified of loss");
    assert!(frozen_at.elapsed() <= ttl(b) + Duration::from_secs(2));
    assert!(matches!(
        e.store.put_bound(&sess, &k, b"late").await,
        Err(Error::SessionLost { .. })
    ));
    // The server expires it (Consul: between TTL and 2×TTL).
    let ev = next_event(&mut w, ttl(b) * 2 + Duration::from_secs(5)).await;
    assert_eq!((ev.kind, ev.key.as_str()), (EventKind::Delete, k.as_str()));
    assert!(e.store.get(&k).await.unwrap().is_none());
    assert!(e.store.get(&unbound).await.unwrap().is_some());
}

/// Closing a session revokes it at once: bound keys go without waiting
/// for the TTL.
async fn session_close_revokes_now(b: Backend) {
    let e = env(b, "close").await;
    let sess = e.store.create_session(ttl(b)).await.unwrap();
    let k = format!("{}leader", e.prefix);
    e.store.put_bound(&sess, &k, b"me").await.unwrap();
    let t = Instant::now();
    sess.close().await.unwrap();
    let s = e.store.clone();
    eventually(
        "bound key removed after close",
        Duration::from_secs(3),
        || {
            let (s, k) = (s.clone(), k.clone());
            async move { s.get(&k).await.unwrap().is_none() }
        },
    )
    .await;
    assert!(t.elapsed() < ttl(b), "close must not wait for the TTL");
}

/// Invalidates a session from outside, as a server-side expiry would.
async fn depose(e: &Env, sess: &Session) {
    match e.backend {
        Backend::Etcd => {
            let id: i64 = sess.id().parse().unwrap();
            let out = tokio::task::spawn_blocking(move || {
                shared_etcd().etcdctl(&["lease", "revoke", &format!("{id:x}")])
            })
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Backend::Consul => {
            let base = e.url.replace("consul://", "http://");
            let r = reqwest::Client::new()
                .put(format!("{base}/v1/session/destroy/{}", sess.id()))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        Backend::Dir => {
            // A process that stops renewing: its TTL runs out.
            sess.freeze_keepalive(true);
        }
    }
}

/// Two contenders: exactly one holds the lock at a time; after the holder is
/// deposed the other takes over, and the deposed holder's fenced write is
/// rejected while the new holder's goes through.
async fn two_contenders_one_holder_and_deposed_write_fenced(b: Backend) {
    let e = env(b, "lock").await;
    let lock = format!("{}leader", e.prefix);
    let sched = format!("{}schedule", e.prefix);
    let sa = e.store.create_session(ttl(b)).await.unwrap();
    let sb = e.store.create_session(ttl(b)).await.unwrap();
    let a = e.store.campaign(&sa, &lock, b"a").await.unwrap();
    let holder = e.store.holder(&lock).await.unwrap().unwrap();
    assert_eq!(
        (holder.value.as_slice(), holder.token),
        (&b"a"[..], a.token)
    );
    e.store.put_fenced(&sched, b"by a", &a).await.unwrap();

    let sb = Arc::new(sb);
    let contender = {
        let (s, sb, lock) = (e.store.clone(), sb.clone(), lock.clone());
        tokio::spawn(async move { s.campaign(&sb, &lock, b"b").await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!contender.is_finished(), "b got the lock while a holds it");

    depose(&e, &sa).await;
    let bl = timeout(ttl(b) * 3 + Duration::from_secs(5), contender)
        .await
        .expect("b takes over")
        .unwrap()
        .unwrap();
    assert!(
        bl.token > a.token,
        "fencing tokens grow: {} then {}",
        a.token,
        bl.token
    );
    let holder = e.store.holder(&lock).await.unwrap().unwrap();
    assert_eq!(
        (holder.value.as_slice(), holder.token),
        (&b"b"[..], bl.token)
    );

    // The deposed leader's late write is rejected, the new leader's is not.
    match e.store.put_fenced(&sched, b"late a", &a).await {
        Err(Error::FencedOut { token, .. }) => assert_eq!(token, a.token),
        other => panic!("deposed write: {other:?}"),
    }
    e.store.put_fenced(&sched, b"by b", &bl).await.unwrap();
    assert_eq!(e.store.get(&sched).await.unwrap().unwrap().value, b"by b");

    // Resign hands it back quickly.
    e.store.resign(bl).await.unwrap();
    assert!(e.store.holder(&lock).await.unwrap().is_none());
}

/// Fenced deletes (the leader's clean-up, issue 9): the holder deletes, an
/// absent key included; a deposed holder's delete is rejected and the key
/// stays, while the new holder's goes through; and once the lock key is
/// released behind the holder's back (what a resign does), its delete is
/// rejected too although it still believes it leads.
async fn fenced_delete_by_the_holder_only(b: Backend) {
    let e = env(b, "fdel").await;
    let lock = format!("{}leader", e.prefix);
    let req = format!("{}rebalance/shop", e.prefix);
    let sa = e.store.create_session(ttl(b)).await.unwrap();
    let sb = e.store.create_session(ttl(b)).await.unwrap();
    let a = e.store.campaign(&sa, &lock, b"a").await.unwrap();

    e.store.put(&req, b"one").await.unwrap();
    e.store.delete_fenced(&req, &a).await.unwrap();
    assert!(e.store.get(&req).await.unwrap().is_none());
    e.store.delete_fenced(&req, &a).await.unwrap(); // absent: fine
    e.store
        .delete_fenced(&format!("{}never-written", e.prefix), &a)
        .await
        .unwrap();

    // Deposed: b takes over; a's late delete is rejected, the key stays.
    e.store.put(&req, b"two").await.unwrap();
    let sb = Arc::new(sb);
    let contender = {
        let (s, sb, lock) = (e.store.clone(), sb.clone(), lock.clone());
        tokio::spawn(async move { s.campaign(&sb, &lock, b"b").await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!contender.is_finished(), "b got the lock while a holds it");
    depose(&e, &sa).await;
    let bl = timeout(ttl(b) * 3 + Duration::from_secs(5), contender)
        .await
        .expect("b takes over")
        .unwrap()
        .unwrap();
    match e.store.delete_fenced(&req, &a).await {
        Err(Error::FencedOut {
            key,
            lock: fence,
            token,
        }) => assert_eq!(
            (key.as_str(), fence.as_str(), token),
            (req.as_str(), lock.as_str(), a.token)
        ),
        other => panic!("deposed delete: {other:?}"),
    }
    assert_eq!(e.store.get(&req).await.unwrap().unwrap().value, b"two");
    e.store.delete_fenced(&req, &bl).await.unwrap();
    assert!(e.store.get(&req).await.unwrap().is_none());

    // The lock key released behind b's back: b still holds its session,
    // only the store can tell, and it refuses.
    e.store.put(&req, b"three").await.unwrap();
    e.store.delete(&lock).await.unwrap();
    assert!(bl.is_held(), "b's session is alive");
    match e.store.delete_fenced(&req, &bl).await {
        Err(Error::FencedOut { token, .. }) => assert_eq!(token, bl.token),
        other => panic!("delete after the lock was released: {other:?}"),
    }
    assert_eq!(e.store.get(&req).await.unwrap().unwrap().value, b"three");
    e.store.resign(bl).await.unwrap();
    sb.close().await.unwrap();
}

/// Registry: an instance registered with a status is never seen otherwise
/// (a starting container is critical from its first appearance, not
/// briefly passing): the first state a service watch reports is that status.
async fn registry_register_with_status_is_never_seen_passing_first(b: Backend) {
    let e = env(b, "regst").await;
    let sess = e.store.create_session(ttl(b)).await.unwrap();
    let name = unique("api");
    let reg = Registration {
        name: name.clone(),
        id: "node1/shop-api-1".into(),
        address: "127.0.0.1".into(),
        port: 8081,
        tags: vec![],
        meta: Default::default(),
        check_ttl: Duration::from_secs(30),
        deregister_after: Duration::from_secs(120),
    };
    let mut watch = e.store.watch_service(&name, false);
    e.store
        .register_with_status(&sess, &reg, Health::Critical)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let l = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("watch shows the instance")
            .unwrap()
            .unwrap();
        if let Some(i) = l.into_iter().next() {
            break i;
        }
    };
    assert_eq!(first.health, Health::Critical, "{first:?}");
    assert!(e.store.instances(&name, true).await.unwrap().is_empty());
    e.store.deregister(&name, &reg.id).await.unwrap();
}

/// Registry: register, TTL check passing then critical (refresh stops),
/// visible in the health listing (Consul: `/v1/health/service`) and in a
/// service watch; deregister removes it.
async fn registry_register_ttl_check_and_deregister(b: Backend) {
    let e = env(b, "reg").await;
    let sess = e.store.create_session(ttl(b)).await.unwrap();
    let name = unique("web");
    let reg = Registration {
        name: name.clone(),
        id: "node1/shop-web-1".into(),
        address: "127.0.0.1".into(),
        port: 8080,
        tags: vec!["http".into()],
        meta: [("project".to_string(), "shop".to_string())].into(),
        check_ttl: Duration::from_secs(3),
        deregister_after: Duration::from_secs(120),
    };
    let mut watch = e.store.watch_service(&name, true);
    e.store.register(&sess, &reg).await.unwrap();
    e.store
        .set_check(&sess, &name, &reg.id, Health::Passing, "ok")
        .await
        .unwrap();
    let list = e.store.instances(&name, true).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let i = &list[0];
    assert_eq!(
        (i.id.as_str(), i.address.as_str(), i.port, i.health),
        (reg.id.as_str(), "127.0.0.1", 8080, Health::Passing)
    );
    assert_eq!(i.tags, reg.tags);
    assert_eq!(i.meta.get("project").map(String::as_str), Some("shop"));
    // The watch reports it passing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("watch shows passing")
            .unwrap()
            .unwrap();
        if l.len() == 1 {
            break;
        }
    }

    // No refresh: the TTL runs out and it turns critical.
    let s = e.store.clone();
    let n = name.clone();
    eventually("TTL check turns critical", Duration::from_secs(10), || {
        let (s, n) = (s.clone(), n.clone());
        async move {
            let all = s.instances(&n, false).await.unwrap();
            all.len() == 1 && all[0].health == Health::Critical
        }
    })
    .await;
    assert!(e.store.instances(&name, true).await.unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("watch drops critical")
            .unwrap()
            .unwrap();
        if l.is_empty() {
            break;
        }
    }
    // An explicit status works too.
    e.store
        .set_check(&sess, &name, &reg.id, Health::Warning, "slow")
        .await
        .unwrap();
    assert_eq!(
        e.store.instances(&name, false).await.unwrap()[0].health,
        Health::Warning
    );

    e.store.deregister(&name, &reg.id).await.unwrap();
    e.store.deregister(&name, &reg.id).await.unwrap(); // idempotent
    assert!(e.store.instances(&name, false).await.unwrap().is_empty());
}

/// Registry: `service_names` lists every name with an instance, whoever
/// registered it and under any name (the agent's clean-up of entries whose
/// names it no longer knows starts from it); a name goes once its last
/// instance is deregistered. On Consul it is the local agent's services,
/// shared with the other tests here, so only ours are compared there.
async fn registry_service_names_list_every_registered_name(b: Backend) {
    let e = env(b, "names").await;
    let sess = e.store.create_session(ttl(b)).await.unwrap();
    let (a, z) = (unique("alpha"), unique("zeta"));
    let reg = |name: &str, id: &str| Registration {
        name: name.to_string(),
        id: id.to_string(),
        address: "127.0.0.1".into(),
        port: 8080,
        tags: vec![],
        meta: [("node".to_string(), "node1".to_string())].into(),
        check_ttl: Duration::from_secs(30),
        deregister_after: Duration::from_secs(120),
    };
    let ours = |names: &BTreeSet<String>| -> BTreeSet<String> {
        names
            .iter()
            .filter(|n| **n == a || **n == z)
            .cloned()
            .collect()
    };
    let before = e.store.service_names().await.unwrap();
    assert!(ours(&before).is_empty(), "{before:?}");
    if b != Backend::Consul {
        assert!(before.is_empty(), "{before:?}");
    }

    // Two instances of one name (one bound to a session, one from another
    // registrant's session), one of another, ids with and without `/`.
    let other = e.store.create_session(ttl(b)).await.unwrap();
    e.store
        .register(&sess, &reg(&a, "node1/shop-a-1"))
        .await
        .unwrap();
    e.store
        .register_with_status(&other, &reg(&a, "node2/shop-a-1"), Health::Critical)
        .await
        .unwrap();
    e.store.register(&other, &reg(&z, "tool-z")).await.unwrap();
    // A plain key beside the records is not a service.
    if b != Backend::Consul {
        e.store
            .put(&format!("{}/lonely", e.registry), b"x")
            .await
            .unwrap();
    }
    let names = e.store.service_names().await.unwrap();
    assert_eq!(ours(&names), [a.clone(), z.clone()].into(), "{names:?}");
    if b != Backend::Consul {
        assert_eq!(names, [a.clone(), z.clone()].into());
    }

    // One of two instances gone: the name stays; the last gone: it goes.
    e.store.deregister(&a, "node1/shop-a-1").await.unwrap();
    let names = e.store.service_names().await.unwrap();
    assert_eq!(ours(&names), [a.clone(), z.clone()].into(), "{names:?}");
    e.store.deregister(&a, "node2/shop-a-1").await.unwrap();
    e.store.deregister(&z, "tool-z").await.unwrap();
    let names = e.store.service_names().await.unwrap();
    assert!(ours(&names).is_empty(), "{names:?}");
    sess.close().await.unwrap();
    other.close().await.unwrap();
}

/// A watch resumed from a snapshot sees exactly what happened after it,
/// including deletes.
async fn watch_resumes_from_snapshot(b: Backend) {
    let e = env(b, "resume").await;
    let p = &e.prefix;
    e.store.put(&format!("{p}a"), b"1").await.unwrap();
    e.store.put(&format!("{p}b"), b"1").await.unwrap();
    let snap = e.store.list(p).await.unwrap();
    e.store.delete(&format!("{p}a")).await.unwrap();
    let vc = e.store.put(&format!("{p}c"), b"1").await.unwrap();
    let mut w = e.store.watch(p, WatchFrom::Snapshot(snap));
    // Reported at once, not after a wait period or rescan.
    let evs = collect_until(&mut w, Duration::from_secs(2), |evs| evs.len() >= 2).await;
    let got: Vec<_> = evs.iter().map(|e| (e.kind, e.key.clone())).collect();
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        [
            (EventKind::Delete, format!("{p}a")),
            (EventKind::Put, format!("{p}c"))
        ]
        .into(),
    );
    assert_eq!(
        evs.iter()
            .find(|e| e.kind == EventKind::Put)
            .unwrap()
            .version,
        vc
    );
    // Spurious wake-ups (Consul wait timeouts, dir rescans) emit nothing.
    let none = collect_until(&mut w, Duration::from_secs(6), |_| false).await;
    assert!(none.is_empty(), "{none:?}");
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod etcd { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Etcd).await }
        )* }
        mod consul { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Consul).await }
        )* }
        mod dir { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Dir).await }
        )* }
    };
}

contract!(
    crud_and_cas_conflicts,
    watch_sees_1000_writes_under_churn_exactly_once_in_order,
    watch_resumes_after_server_restart,
    watch_resumes_from_snapshot,
    session_expiry_removes_bound_keys_and_notifies_holder,
    session_close_revokes_now,
    two_contenders_one_holder_and_deposed_write_fenced,
    fenced_delete_by_the_holder_only,
    registry_register_ttl_check_and_deregister,
    registry_register_with_status_is_never_seen_passing_first,
    registry_service_names_list_every_registered_name,
);
