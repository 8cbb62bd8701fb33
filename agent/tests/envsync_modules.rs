//! Env sync and replica election modules (issue 7) against real etcd and
//! real Consul: the project watches and their debounce, and the leader
//! files of replicas campaigning through the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cntnr_agent::election_replica::{
    parse_leader_file, Candidate, ElectionRecord, ElectionTiming, LeaderState, ReplicaElection,
};
use cntnr_agent::envsync::watch::{ProjectSync, SyncConfig};
use cntnr_agent::envsync::{self, Needs};
use cntnr_e2e::{shared_consul, shared_etcd};
use cntnr_kv::{ConnectOptions, DynStore, Registration, StoreUrl};
use cntnr_model::{Prefix, ProjectName, ServiceName};

static N: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Etcd,
    Consul,
    Dir,
}

struct Env {
    store: DynStore,
    prefix: Prefix,
    project: ProjectName,
    /// Unique per test (Consul's catalog is shared by every test).
    tag: String,
    backend: Backend,
    /// The dir store's root.
    _dir: Option<tempfile::TempDir>,
}

async fn env(backend: Backend) -> Env {
    let tag = format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let dir = matches!(backend, Backend::Dir).then(|| tempfile::tempdir().unwrap());
    let url = match backend {
        Backend::Etcd => shared_etcd().store_url(),
        Backend::Consul => shared_consul().store_url(),
        Backend::Dir => format!("dir://{}", dir.as_ref().unwrap().path().display()),
    };
    let opts = ConnectOptions {
        registry_prefix: format!("{tag}/services"),
        connect_timeout: Some(Duration::from_secs(20)),
        consul_lock_delay: Duration::from_secs(2),
        ..ConnectOptions::default()
    };
    let store = cntnr_kv::connect(&StoreUrl::parse(&url).unwrap(), &opts)
        .await
        .unwrap();
    Env {
        store,
        prefix: Prefix::new(tag.clone()).unwrap(),
        project: ProjectName::new("shop").unwrap(),
        tag,
        backend,
        _dir: dir,
    }
}

impl Env {
    fn config_key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix.config_dir(&self.project))
    }

    fn ttl(&self) -> Duration {
        match self.backend {
            Backend::Etcd | Backend::Dir => Duration::from_secs(3),
            Backend::Consul => Duration::from_secs(10),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Keys under the test's own prefix only.
        let store = self.store.clone();
        let prefix = format!("{}/", self.prefix);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let _ = store.delete_prefix(&prefix).await;
                })
        })
        .join();
    }
}

async fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config_value(s: &ProjectSync, k: &str) -> Option<String> {
    s.current()
        .and_then(|c| c.sources.config.get(k).cloned())
        .map(|v| String::from_utf8(v).unwrap())
}

async fn sources_follow_the_store(backend: Backend) {
    let e = env(backend).await;
    let api = format!("{}-api", e.tag);
    e.store
        .put(&e.config_key("db/url"), b"postgres://one")
        .await
        .unwrap();
    // Another project's key and the cluster's keys are never read.
    e.store
        .put(&format!("{}/config/other/db/url", e.prefix), b"theirs")
        .await
        .unwrap();
    let session = e.store.create_session(e.ttl()).await.unwrap();
    let reg = |n: u16| Registration {
        name: api.clone(),
        id: format!("n1/shop-api-{n}"),
        address: format!("10.9.0.{n}"),
        port: 8080,
        tags: vec![],
        meta: BTreeMap::new(),
        check_ttl: Duration::from_secs(120),
        deregister_after: Duration::from_secs(600),
    };
    e.store.register(&session, &reg(1)).await.unwrap();

    let needs = Needs {
        config: true,
        services: [api.clone()].into(),
        leaders: true,
    };
    let sync = ProjectSync::start(
        e.store.clone(),
        &e.prefix,
        &e.project,
        needs,
        SyncConfig::default(),
    );
    let first = sync.ready().await;
    assert_eq!(first.generation, 0);
    assert_eq!(
        first.sources.config.keys().collect::<Vec<_>>(),
        vec!["db/url"]
    );
    assert_eq!(first.sources.services[&api], vec!["10.9.0.1:8080"]);
    assert!(first.sources.leaders.is_empty());

    // One change: one publication.
    e.store
        .put(&e.config_key("db/url"), b"postgres://two")
        .await
        .unwrap();
    wait_until("the new value", || {
        (config_value(&sync, "db/url").as_deref() == Some("postgres://two")).then_some(())
    })
    .await;
    let g = sync.current().unwrap().generation;
    assert_eq!(g, 1);

    // A burst of 20 writes within the quiet period: one publication.
    for i in 0..20 {
        e.store
            .put(&e.config_key("db/url"), format!("burst-{i}").as_bytes())
            .await
            .unwrap();
    }
    wait_until("the burst's last value", || {
        (config_value(&sync, "db/url").as_deref() == Some("burst-19")).then_some(())
    })
    .await;
    // Nothing else is pending: a later publication would come within the
    // quiet period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sync.current().unwrap().generation,
        g + 1,
        "one publication per burst"
    );

    // Scaling the upstream service updates the list.
    e.store.register(&session, &reg(2)).await.unwrap();
    wait_until("the second instance", || {
        let c = sync.current()?;
        (c.sources.services[&api] == vec!["10.9.0.1:8080", "10.9.0.2:8080"]).then_some(())
    })
    .await;

    // An election record names the leader; a delete removes the key.
    let rec = ElectionRecord {
        instance: "n1/shop-db-1".into(),
        address: "10.9.1.1".into(),
    };
    e.store
        .put(
            &format!("{}db", e.prefix.elections_dir(&e.project)),
            &serde_json::to_vec(&rec).unwrap(),
        )
        .await
        .unwrap();
    e.store.delete(&e.config_key("db/url")).await.unwrap();
    wait_until("the leader and the removed key", || {
        let c = sync.current()?;
        (c.sources.leaders.get("db").map(String::as_str) == Some("10.9.1.1")
            && c.sources.config.is_empty())
        .then_some(())
    })
    .await;
    assert!(!format!("{:?}", sync.current().unwrap()).contains("burst"));

    // Resolution of a service's variables from that state.
    let mut ann = BTreeMap::new();
    ann.insert("cntnr.env.UP".to_string(), format!("service:{api}"));
    ann.insert("cntnr.env.DB".to_string(), "kv:db/url".to_string());
    ann.insert("cntnr.env.PRIMARY".to_string(), "leader:db".to_string());
    let (settings, errs) = cntnr_model::annotations::parse_agent_settings(&ann);
    assert!(errs.is_empty(), "{errs:?}");
    let r = envsync::resolve(&settings, &sync.current().unwrap().sources);
    assert_eq!(r.values["UP"], "10.9.0.1:8080,10.9.0.2:8080");
    assert_eq!(r.values["PRIMARY"], "10.9.1.1");
    assert_eq!(r.missing, vec!["DB (kv:db/url)".to_string()]);

    sync.stop().await;
    for n in [1, 2] {
        e.store.deregister(&api, &reg(n).id).await.unwrap();
    }
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_follow_the_store_etcd() {
    sources_follow_the_store(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_follow_the_store_consul() {
    sources_follow_the_store(Backend::Consul).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_follow_the_store_dir() {
    sources_follow_the_store(Backend::Dir).await;
}

fn read_state(p: &Path) -> Option<LeaderState> {
    parse_leader_file(&std::fs::read_to_string(p).ok()?)
}

fn candidates(e: &Env, dir: &Path, n: u32) -> Vec<Candidate> {
    (1..=n)
        .map(|i| Candidate {
            project: e.project.clone(),
            service: ServiceName::new("db").unwrap(),
            instance: format!("n1/shop-db-{i}"),
            address: format!("10.9.2.{i}"),
            leader_file: dir.join(format!("leader-{i}")),
        })
        .collect()
}

fn leaders(files: &[PathBuf]) -> Vec<usize> {
    files
        .iter()
        .enumerate()
        .filter(|(_, f)| read_state(f).is_some_and(|s| s.leader))
        .map(|(i, _)| i)
        .collect()
}

async fn election_record(e: &Env) -> Option<ElectionRecord> {
    let key = format!("{}db", e.prefix.elections_dir(&e.project));
    let entry = e.store.get(&key).await.unwrap()?;
    Some(serde_json::from_slice(&entry.value).unwrap())
}

async fn exactly_one_leader_and_takeover(backend: Backend) {
    let e = env(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let cands = candidates(&e, dir.path(), 3);
    let files: Vec<PathBuf> = cands.iter().map(|c| c.leader_file.clone()).collect();
    let mut elections: Vec<Option<ReplicaElection>> = cands
        .into_iter()
        .map(|c| {
            Some(ReplicaElection::start(
                e.store.clone(),
                &e.prefix,
                c,
                ElectionTiming::new(e.ttl()),
            ))
        })
        .collect();
    let first = wait_until("a leader", || {
        let l = leaders(&files);
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(first.len(), 1, "exactly one leader: {first:?}");
    let old = first[0];
    let old_state = read_state(&files[old]).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(old_state.valid_until_ms > now, "{old_state:?}");
    assert!(old_state.token > 0);
    let rec = election_record(&e).await.expect("the winner's record");
    assert_eq!(rec.instance, format!("n1/shop-db-{}", old + 1));
    assert_eq!(rec.address, format!("10.9.2.{}", old + 1));
    for (i, f) in files.iter().enumerate() {
        if i != old {
            assert_eq!(read_state(f), Some(LeaderState::default()));
        }
    }

    // The leader's container stops: it resigns, another takes over with a
    // greater token.
    elections[old].take().unwrap().resign_now().await;
    assert_eq!(read_state(&files[old]), Some(LeaderState::default()));
    let next = wait_until("a new leader", || {
        let l = leaders(&files);
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next[0], old);
    let new_state = read_state(&files[next[0]]).unwrap();
    assert!(
        new_state.token > old_state.token,
        "{old_state:?} → {new_state:?}"
    );
    let rec = election_record(&e).await.expect("the new winner's record");
    assert_eq!(rec.instance, format!("n1/shop-db-{}", next[0] + 1));

    // A graceful resign of a running leader waits for its deadline.
    let leader = elections[next[0]].take().unwrap();
    leader.resign().await;
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(after >= new_state.valid_until_ms);
    for el in elections.into_iter().flatten() {
        el.resign_now().await;
    }
    assert!(election_record(&e).await.is_none(), "released on resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_takeover_etcd() {
    exactly_one_leader_and_takeover(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_takeover_consul() {
    exactly_one_leader_and_takeover(Backend::Consul).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_takeover_dir() {
    exactly_one_leader_and_takeover(Backend::Dir).await;
}

/// The leader's agent freezes (no renewals, no writes): its file's
/// deadline passes before another replica's file says `true`, and the new
/// token is greater.
async fn frozen_leader_deadline_passes_before_takeover(backend: Backend) {
    let e = env(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cands = candidates(&e, dir.path(), 2).into_iter();
    let timing = ElectionTiming::new(e.ttl());
    let a = ReplicaElection::start(e.store.clone(), &e.prefix, cands.next().unwrap(), timing);
    let fa = dir.path().join("leader-1");
    let fb = dir.path().join("leader-2");
    wait_until("the first leader", || {
        read_state(&fa).is_some_and(|s| s.leader).then_some(())
    })
    .await;
    let b = ReplicaElection::start(e.store.clone(), &e.prefix, cands.next().unwrap(), timing);
    wait_until("the second candidate's file", || read_state(&fb)).await;
    a.freeze();
    // Let a write in flight land, then the file no longer changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let frozen = read_state(&fa).unwrap();
    assert!(frozen.leader);
    let took_over = wait_until("the takeover", || read_state(&fb).filter(|s| s.leader)).await;
    let written_ms = std::fs::metadata(&fb)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(
        read_state(&fa),
        Some(frozen),
        "a frozen agent writes nothing"
    );
    assert!(
        frozen.valid_until_ms < written_ms,
        "old deadline {} must pass before the new leader's file ({written_ms})",
        frozen.valid_until_ms
    );
    assert!(took_over.token > frozen.token, "{frozen:?} → {took_over:?}");
    b.resign_now().await;
    a.resign_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_deadline_passes_before_takeover_etcd() {
    frozen_leader_deadline_passes_before_takeover(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_deadline_passes_before_takeover_consul() {
    frozen_leader_deadline_passes_before_takeover(Backend::Consul).await;
}

const ENGINE_COMPOSE: &str = r#"
services:
  web:
    image: busybox
    deploy:
      replicas: 2
    annotations:
      cntnr.env.DB: kv:db/url
      cntnr.env.PRIMARY: leader:db
  sig:
    image: busybox
    annotations:
      cntnr.env.DB: kv:db/url
      cntnr.env-on-change: signal:SIGUSR1
  db:
    image: busybox
    deploy:
      replicas: 2
    annotations:
      cntnr.election: "true"
      cntnr.env-on-change: signal:SIGUSR2
"#;

fn local(dir: &Path, service: &str, replica: u32, healthy: bool) -> envsync::engine::LocalReplica {
    let id = format!("shop-{service}-{replica}");
    let bundle = dir.join(&id);
    std::fs::create_dir_all(bundle.join("run")).unwrap();
    envsync::engine::LocalReplica {
        instance: format!("n1/{id}"),
        id,
        service: ServiceName::new(service).unwrap(),
        replica,
        running: true,
        healthy,
        bundle,
        address: format!("10.9.3.{replica}"),
    }
}

/// The reconciler's side of env sync, without runc: prepare (wait until
/// set, then values), a change requeues the project, restart mode recreates
/// one replica at a time, signal mode rewrites the file and asks for the
/// signal, an elected service's replicas get one leader and a signal on
/// each flip, and a stopped leader is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_prepares_plans_and_elects_etcd() {
    use envsync::engine::{EnvStep, EnvSync, Prepared};
    let e = env(Backend::Etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = cntnr_model::load_stored(&e.project, "compose", ENGINE_COMPOSE).unwrap();
    let (sync, mut signals) = EnvSync::new(
        e.store.clone(),
        e.prefix.clone(),
        SyncConfig::with_debounce(Duration::from_millis(300)),
        ElectionTiming::new(e.ttl()),
    );
    let (tx, mut triggers) = tokio::sync::mpsc::unbounded_channel();
    sync.set_triggers(Some(tx));
    sync.sync_project(&e.project, Some(&spec));
    wait_until("the sources", || sync.is_loaded(&e.project).then_some(())).await;
    let web = &spec.services[&ServiceName::new("web").unwrap()];
    let sig = &spec.services[&ServiceName::new("sig").unwrap()];
    let db = &spec.services[&ServiceName::new("db").unwrap()];
    assert_eq!(sync.prepare(&e.project, db), Prepared::Nothing);
    match sync.prepare(&e.project, web) {
        Prepared::Wait(line) => assert_eq!(
            line,
            "waiting: missing env source: DB (kv:db/url), PRIMARY (leader:db)"
        ),
        other => panic!("{other:?}"),
    }

    // The db replicas elect one leader; it feeds web's PRIMARY.
    let dbs = [
        local(dir.path(), "db", 1, true),
        local(dir.path(), "db", 2, true),
    ];
    sync.sync_elections(&e.project, Some(&spec), &dbs);
    let leader = wait_until("a db leader", || {
        let l: Vec<usize> = (0..2)
            .filter(|i| sync.leader_state(&dbs[*i].id).is_some_and(|s| s.leader))
            .collect();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(leader.len(), 1);
    let first = leader[0];
    let s = signals.recv().await.unwrap();
    assert_eq!(s.container, dbs[first].id);
    assert_eq!((s.signal.as_str(), s.why), ("SIGUSR2", "leader"));

    e.store
        .put(&e.config_key("db/url"), b"postgres://s3cret-one")
        .await
        .unwrap();
    // The change requeues the project.
    tokio::time::timeout(Duration::from_secs(30), triggers.recv())
        .await
        .unwrap()
        .unwrap();
    let (vars, file) = wait_until("web's values", || match sync.prepare(&e.project, web) {
        Prepared::Ready { vars, file } => Some((vars, file)),
        _ => None,
    })
    .await;
    assert_eq!(vars["DB"], "postgres://s3cret-one");
    assert_eq!(vars["PRIMARY"], format!("10.9.3.{}", first + 1));
    assert!(!format!("{:?}", sync.prepare(&e.project, web)).contains("s3cret"));

    // Containers created with those values.
    let webs = [
        local(dir.path(), "web", 1, true),
        local(dir.path(), "web", 2, true),
    ];
    for w in &webs {
        EnvSync::write_env_file(&w.bundle, &file).unwrap();
    }
    let sigc = local(dir.path(), "sig", 1, true);
    let Prepared::Ready { file: sfile, .. } = sync.prepare(&e.project, sig) else {
        panic!("sig ready");
    };
    EnvSync::write_env_file(&sigc.bundle, &sfile).unwrap();
    let all: Vec<_> = webs.iter().chain([&sigc]).cloned().collect();
    assert!(
        sync.plan_env(&e.project, &spec, &all).is_empty(),
        "up to date"
    );

    // A change: web (restart mode) recreates replica 1 only; sig (signal
    // mode) gets its file rewritten and a signal.
    e.store
        .put(&e.config_key("db/url"), b"postgres://s3cret-two")
        .await
        .unwrap();
    wait_until("the new value", || match sync.prepare(&e.project, web) {
        Prepared::Ready { vars, .. } if vars["DB"] == "postgres://s3cret-two" => Some(()),
        _ => None,
    })
    .await;
    let steps = sync.plan_env(&e.project, &spec, &all);
    assert_eq!(
        steps,
        vec![
            EnvStep::Signal(envsync::engine::SignalRequest {
                container: "shop-sig-1".into(),
                signal: "SIGUSR1".into(),
                why: "env",
            }),
            EnvStep::Recreate("shop-web-1".into()),
        ]
    );
    let sig_file =
        std::fs::read_to_string(cntnr_reconcile::bundle::env_path(&sigc.bundle)).unwrap();
    assert_eq!(sig_file, "DB=postgres://s3cret-two\n");
    // While replica 1 is being recreated (absent) or not yet healthy,
    // replica 2 waits.
    let mut during = all.clone();
    during[0].running = false;
    during[0].healthy = false;
    assert!(sync.plan_env(&e.project, &spec, &during).is_empty());
    let Prepared::Ready { file, .. } = sync.prepare(&e.project, web) else {
        panic!("web ready");
    };
    EnvSync::write_env_file(&webs[0].bundle, &file).unwrap();
    during[0].running = true;
    assert!(
        sync.plan_env(&e.project, &spec, &during).is_empty(),
        "not healthy yet"
    );
    during[0].healthy = true;
    assert_eq!(
        sync.plan_env(&e.project, &spec, &during),
        vec![EnvStep::Recreate("shop-web-2".into())]
    );

    // The leader's container stops: the other replica takes over with a
    // greater token; both get a signal for their flip.
    let old = sync.leader_state(&dbs[first].id).unwrap();
    let mut stopped = dbs.clone();
    stopped[first].running = false;
    sync.sync_elections(&e.project, Some(&spec), &stopped);
    let other = 1 - first;
    let new = wait_until("the takeover", || {
        sync.leader_state(&dbs[other].id).filter(|s| s.leader)
    })
    .await;
    assert!(new.token > old.token, "{old:?} → {new:?}");
    let mut flipped = Vec::new();
    while flipped.len() < 2 {
        let s = tokio::time::timeout(Duration::from_secs(30), signals.recv())
            .await
            .unwrap()
            .unwrap();
        flipped.push(s.container);
    }
    flipped.sort();
    assert_eq!(
        flipped,
        vec!["shop-db-1".to_string(), "shop-db-2".to_string()]
    );
    wait_until("web's new PRIMARY", || {
        match sync.prepare(&e.project, web) {
            Prepared::Ready { vars, .. } if vars["PRIMARY"] == format!("10.9.3.{}", other + 1) => {
                Some(())
            }
            _ => None,
        }
    })
    .await;

    sync.sync_elections(&e.project, Some(&spec), &[]);
    sync.sync_project(&e.project, None);
    sync.shutdown();
}
