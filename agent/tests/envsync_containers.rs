//! Env sync and replica elections seen from inside real runc containers
//! (busybox printing what it sees), driven through `EnvSync` the way the
//! reconciler drives it, against real etcd: the environment a container
//! starts with, `/run/cntnr/env` after a signal-mode change (no recreate),
//! and `/run/cntnr/leader` in the replicas of an elected service.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cntnr_agent::election_replica::{parse_leader_file, ElectionTiming};
use cntnr_agent::envsync::engine::{EnvStep, EnvSync, LocalReplica, Prepared};
use cntnr_agent::envsync::watch::SyncConfig;
use cntnr_e2e::shared_etcd;
use cntnr_kv::{ConnectOptions, DynStore, StoreUrl};
use cntnr_model::{Prefix, Project, ProjectName, ServiceName};
use cntnr_reconcile::bundle::{self, BundleConfig, ContainerRequest};
use cntnr_reconcile::images::{ImageRecord, ImageStore, StoreOptions};
use cntnr_reconcile::runc::{Runc, RuncConfig};
use cntnr_reconcile::runtime::{ContainerId, Runtime, Signal};
use common::{cleanup_runtime, test_image_ref, wait_for};

/// runc, bundles and images in a temp dir; Drop deletes every container
/// and bundle (also on a failed assertion).
struct World {
    tmp: tempfile::TempDir,
    runc: Runc,
    bundles: BundleConfig,
    images: ImageStore,
    image: ImageRecord,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let images = ImageStore::open(&state, StoreOptions::default()).unwrap();
        let image = images.import(&test_image_ref()).unwrap();
        let bundles = BundleConfig::new(&state, "n1");
        // The agent binary acts as the shim when called by that name.
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cntnr-agent"), bin.join("cntnr-shim"))
            .unwrap();
        let mut cfg = RuncConfig::new(tmp.path().join("runc"), &state);
        cfg.shim = bin.join("cntnr-shim");
        let runc = Runc::new(cfg).unwrap();
        World {
            tmp,
            runc,
            bundles,
            images,
            image,
        }
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.runc.log_path(&ContainerId::new(id).unwrap()))
            .unwrap_or_default()
    }

    /// Creates and starts a replica the way the reconciler does with env
    /// sync: prepared values in its environment, the env file in its bundle.
    async fn run(
        &self,
        sync: &EnvSync,
        project: &ProjectName,
        spec: &Project,
        service: &str,
        replica: u32,
    ) -> PathBuf {
        let name = ServiceName::new(service).unwrap();
        let svc = &spec.services[&name];
        let mut req = ContainerRequest::from_service(project, &name, svc, replica);
        let file = match sync.prepare(project, svc) {
            Prepared::Nothing => None,
            Prepared::Ready { vars, file } => {
                req.environment.extend(vars);
                Some(file)
            }
            other => panic!("{other:?}"),
        };
        let built = bundle::build(&self.bundles, &self.images, &self.image, &req).unwrap();
        if let Some(f) = file {
            EnvSync::write_env_file(&built.path, &f).unwrap();
        }
        self.runc.run(&built.id, &built.path).await.unwrap();
        built.path
    }
}

impl Drop for World {
    fn drop(&mut self) {
        cleanup_runtime(
            &self.tmp.path().join("runc"),
            &self.tmp.path().join("state"),
        );
    }
}

async fn store(prefix: &str) -> DynStore {
    let opts = ConnectOptions {
        registry_prefix: format!("{prefix}/services"),
        connect_timeout: Some(Duration::from_secs(20)),
        ..ConnectOptions::default()
    };
    cntnr_kv::connect(&StoreUrl::parse(&shared_etcd().store_url()).unwrap(), &opts)
        .await
        .unwrap()
}

fn prefix() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "tc{}x{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

struct Cleanup(DynStore, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (store, prefix) = (self.0.clone(), format!("{}/", self.1));
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

fn local(bundle: &Path, service: &str, replica: u32) -> LocalReplica {
    let id = format!("shop-{service}-{replica}");
    LocalReplica {
        instance: format!("n1/{id}"),
        id,
        service: ServiceName::new(service).unwrap(),
        replica,
        running: true,
        healthy: true,
        bundle: bundle.to_path_buf(),
        address: format!("10.9.4.{replica}"),
    }
}

async fn wait_log(w: &World, id: &str, want: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let log = w.log(id);
        if log.contains(want) {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{want:?} never in {id}'s log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_mode_container_rereads_the_file_after_the_signal() {
    let w = World::new();
    let p = prefix();
    let store = store(&p).await;
    let _cleanup = Cleanup(store.clone(), p.clone());
    let project = ProjectName::new("shop").unwrap();
    let compose = format!(
        r#"
services:
  app:
    image: "{}"
    command: ["sh", "-c", "echo start:$GREETING; trap 'echo hup:$(cat /run/cntnr/env)' HUP; while true; do sleep 0.1; done"]
    annotations:
      cntnr.env.GREETING: kv:greeting
      cntnr.env-on-change: signal:SIGHUP
"#,
        test_image_ref()
    );
    let spec = cntnr_model::load_stored(&project, "compose", &compose).unwrap();
    let key = format!("{p}/config/shop/greeting");
    store.put(&key, b"hello-one").await.unwrap();
    let (sync, _signals) = EnvSync::new(
        store.clone(),
        Prefix::new(p.clone()).unwrap(),
        SyncConfig::with_debounce(Duration::from_millis(200)),
        ElectionTiming::new(Duration::from_secs(3)),
    );
    sync.sync_project(&project, Some(&spec));
    wait_for(Duration::from_secs(30), "sources", || {
        sync.is_loaded(&project).then_some(())
    });
    let bundle = w.run(&sync, &project, &spec, "app", 1).await;
    wait_log(&w, "shop-app-1", "start:hello-one").await;
    let locals = [local(&bundle, "app", 1)];
    assert!(sync.plan_env(&project, &spec, &locals).is_empty());

    store.put(&key, b"hello-two").await.unwrap();
    let steps = wait_for(Duration::from_secs(30), "the change", || {
        let s = sync.plan_env(&project, &spec, &locals);
        (!s.is_empty()).then_some(s)
    });
    let [EnvStep::Signal(req)] = steps.as_slice() else {
        panic!("{steps:?}");
    };
    assert_eq!(req.signal, "SIGHUP");
    let id = ContainerId::new(req.container.as_str()).unwrap();
    w.runc
        .kill(&id, Signal::parse(&req.signal).unwrap())
        .await
        .unwrap();
    let log = wait_log(&w, "shop-app-1", "hup:GREETING=hello-two").await;
    // The same process: one start line, the environment it started with.
    assert_eq!(log.matches("start:").count(), 1, "{log}");
    assert!(
        sync.plan_env(&project, &spec, &locals).is_empty(),
        "up to date"
    );
    sync.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elected_replicas_see_one_leader_and_a_consumer_gets_its_address() {
    let w = World::new();
    let p = prefix();
    let store = store(&p).await;
    let _cleanup = Cleanup(store.clone(), p.clone());
    let project = ProjectName::new("shop").unwrap();
    let img = test_image_ref();
    let compose = format!(
        r#"
services:
  db:
    image: "{img}"
    deploy:
      replicas: 3
    command: ["sh", "-c", "trap 'echo flip' HUP; while true; do echo \"leader:$(head -1 /run/cntnr/leader 2>/dev/null)\"; sleep 0.2; done"]
    annotations:
      cntnr.election: "true"
  web:
    image: "{img}"
    command: ["sh", "-c", "echo primary:$PRIMARY; sleep 1000"]
    annotations:
      cntnr.env.PRIMARY: leader:db
"#
    );
    let spec = cntnr_model::load_stored(&project, "compose", &compose).unwrap();
    let (sync, mut signals) = EnvSync::new(
        store.clone(),
        Prefix::new(p.clone()).unwrap(),
        SyncConfig::with_debounce(Duration::from_millis(200)),
        ElectionTiming::new(Duration::from_secs(3)),
    );
    let sync: Arc<EnvSync> = sync;
    sync.sync_project(&project, Some(&spec));
    let mut dbs = Vec::new();
    for r in 1..=3 {
        let b = w.run(&sync, &project, &spec, "db", r).await;
        dbs.push(local(&b, "db", r));
    }
    sync.sync_elections(&project, Some(&spec), &dbs);
    // Deliver flips as the daemon would.
    let runc = w.runc.clone();
    let deliver = tokio::spawn(async move {
        while let Some(s) = signals.recv().await {
            let id = ContainerId::new(s.container.as_str()).unwrap();
            let _ = runc.kill(&id, Signal::parse(&s.signal).unwrap()).await;
        }
    });
    let leader = wait_for(
        Duration::from_secs(60),
        "one container printing true",
        || (1..=3).find(|r| w.log(&format!("shop-db-{r}")).contains("leader:true")),
    );
    wait_log(&w, &format!("shop-db-{leader}"), "flip").await;
    for r in (1..=3).filter(|r| *r != leader) {
        let log = wait_log(&w, &format!("shop-db-{r}"), "leader:false").await;
        assert!(!log.contains("leader:true"), "{log}");
    }
    let state = parse_leader_file(
        &std::fs::read_to_string(bundle::leader_path(&dbs[leader as usize - 1].bundle)).unwrap(),
    )
    .unwrap();
    assert!(state.leader && state.token > 0);

    // A consumer of leader:db starts with the leader's address.
    wait_for(Duration::from_secs(30), "web ready", || {
        matches!(
            sync.prepare(&project, &spec.services[&ServiceName::new("web").unwrap()]),
            Prepared::Ready { .. }
        )
        .then_some(())
    });
    w.run(&sync, &project, &spec, "web", 1).await;
    wait_log(&w, "shop-web-1", &format!("primary:10.9.4.{leader}")).await;

    sync.sync_elections(&project, Some(&spec), &[]);
    sync.shutdown();
    deliver.abort();
}
