//! The `cntnr-agent` daemon: one per host.
//!
//! Lifecycle (`run`): bind the HTTP listener, then for as long as the agent
//! lives: open the store (waiting, with backoff, while it is unreachable),
//! create a session and run one *session epoch* ([`run_session`]):
//! register `nodes/<node>`, campaign for `leader` and follow who holds it,
//! list + watch `projects/` and `schedule/` into the desired state, write
//! `status/<project>/<node>`. The epoch ends on shutdown (drain, resign,
//! revoke the session: containers keep running), on session loss (start a
//! new one), or when SIGHUP finds changed credentials (reconnect with them).
//!
//! Every task takes a [`CancellationToken`] and is joined before its epoch
//! ends; none is detached.

pub mod audit;
pub mod desired;
pub mod disconnect;
pub mod election;
pub mod host;
pub mod http;
pub mod metrics;
pub mod network;
pub mod node;
pub mod reconciler;
pub mod registrar;
pub mod rollout;
pub mod scheduler;
pub mod signals;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use cntnr_kv::{DynStore, Holder, Session};
use cntnr_model::{NodeName, Prefix};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::{ConnectArgs, StoreConfig};
use desired::DesiredState;
use election::LeaderView;
use metrics::Metrics;
use signals::Signals;

/// `cntnr-agent`: reconciles this host's share of the cluster's compose
/// projects.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cntnr-agent",
    version,
    about = "Run this host's share of the cluster's compose projects"
)]
pub struct AgentArgs {
    /// Store URL: etcd://host:2379[,…], consul://host:8500 or dir:///path
    /// (default: dir://<state-dir>/store).
    #[arg(long, env = "CNTNR_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Key prefix in the store.
    #[arg(long, default_value = "cntnr", value_name = "PREFIX")]
    pub prefix: String,
    /// TLS files and credentials.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// This node's name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// A node label for placement constraints; repeatable.
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// The address other hosts reach this node at (default: the node name).
    #[arg(long, value_name = "ADDR")]
    pub address: Option<String>,
    /// State directory (default /var/lib/cntnr, rootless
    /// ~/.local/share/cntnr).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// runc --root (default /run/cntnr/runc, rootless
    /// $XDG_RUNTIME_DIR/cntnr/runc).
    #[arg(long, value_name = "DIR")]
    pub runtime_root: Option<PathBuf>,
    /// HTTP address for /healthz, /status and /metrics.
    #[arg(long, default_value = "127.0.0.1:7475", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Session (Consul session / etcd lease) TTL.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub session_ttl: Duration,
    /// Allow services with `privileged: true`.
    #[arg(long)]
    pub allow_privileged: bool,
    /// Allow bind mounts under this host path; repeatable (bind mounts
    /// elsewhere are refused).
    #[arg(long = "allow-host-path", value_name = "PREFIX", value_parser = parse_abs_path)]
    pub allow_host_paths: Vec<PathBuf>,
    /// Allow services with `network_mode: host`.
    #[arg(long)]
    pub allow_host_network: bool,
    /// The longest time between two reconcile passes of a project (heals
    /// whatever a missed event left behind).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub resync: Duration,
    /// Container actions run at once per project (independent containers
    /// are created concurrently up to this limit).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    pub parallel: u16,
    /// Env sync's quiet period: a burst of config changes within it causes
    /// one update (one restart in restart mode).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub env_debounce: Duration,
    /// The range project networks' subnets are allocated from (subnets that
    /// overlap a host route are skipped).
    #[arg(long, default_value = "10.90.0.0/16", value_name = "CIDR")]
    pub subnet_pool: cntnr_hook::Ipv4Net,
    /// The prefix length of each project network's subnet.
    #[arg(long, default_value_t = 24, value_name = "PREFIX")]
    pub subnet_size: u8,
    /// A registry (`host[:port]`) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
}

fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty label key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = cntnr_model::units::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?}: must be at least 1s"));
    }
    Ok(d)
}

fn parse_abs_path(s: &str) -> std::result::Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{s:?}: must be an absolute path without `..`"));
    }
    Ok(p)
}

/// The security policy the runtime will enforce (parsed and kept; shown in
/// `/status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Policy {
    /// `--allow-privileged`.
    pub allow_privileged: bool,
    /// `--allow-host-path`.
    pub allow_host_paths: Vec<PathBuf>,
    /// `--allow-host-network`.
    pub allow_host_network: bool,
    /// `--subnet-pool` cut by `--subnet-size`.
    #[serde(serialize_with = "pool_text")]
    pub subnet_pool: cntnr_hook::alloc::SubnetPool,
}

fn pool_text<S: serde::Serializer>(
    p: &cntnr_hook::alloc::SubnetPool,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{} in /{}s", p.base, p.prefix))
}

/// State shared by the agent's tasks and its HTTP endpoint.
#[derive(Debug)]
pub struct Shared {
    /// This node.
    pub node: NodeName,
    /// The store prefix.
    pub prefix: Prefix,
    /// `<prefix>/leader`.
    pub leader_key: String,
    /// Metrics.
    pub metrics: Metrics,
    /// Projects and schedules.
    pub desired: Mutex<DesiredState>,
    /// Bumped on every change of `desired` (the leader's placement loop
    /// follows it).
    desired_rev: watch::Sender<u64>,
    /// Replicas the leader could not place, per project (this agent's
    /// view while it leads; empty otherwise), one line each.
    pub unplaced: Mutex<BTreeMap<cntnr_model::ProjectName, Vec<String>>>,
    /// Whether a store session is held (`cntnr.on-disconnect`).
    pub link: disconnect::Link,
    leader: Mutex<LeaderView>,
    session: Mutex<Option<String>>,
    synced: AtomicBool,
    ready: AtomicBool,
    info: serde_json::Value,
}

impl Shared {
    fn lock_leader(&self) -> std::sync::MutexGuard<'_, LeaderView> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records who holds the leader key.
    pub fn set_leader_holder(&self, h: Option<&Holder>) {
        let mut l = self.lock_leader();
        l.node = h.map(|h| String::from_utf8_lossy(&h.value).into_owned());
        l.token = h.map(|h| h.token);
    }

    /// Records whether this agent leads (with its token).
    pub fn set_leading(&self, token: Option<u64>) {
        let mut l = self.lock_leader();
        l.is_self = token.is_some();
        if token.is_none() {
            self.unplaced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        if let Some(t) = token {
            l.node = Some(self.node.to_string());
            l.token = Some(t);
        }
        self.metrics.set_leader(token.is_some());
    }

    /// Who leads, as last seen.
    pub fn leader(&self) -> LeaderView {
        self.lock_leader().clone()
    }

    /// Whether the first full sync of the desired state is done (before
    /// it, the reconciler and placement wait: an empty view would remove
    /// everything).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Marks the first full sync of the desired state done.
    pub fn mark_synced(&self) {
        if !self.synced.swap(true, Ordering::SeqCst) {
            tracing::info!("desired state synced");
        }
    }

    /// Whether the first full reconcile is done (`READY=1` was sent).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Signals a change of the desired state.
    pub fn desired_changed(&self) {
        self.desired_rev.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Follows changes of the desired state.
    pub fn desired_changes(&self) -> watch::Receiver<u64> {
        self.desired_rev.subscribe()
    }

    /// Marks the first full reconcile done (every project known at the
    /// first sync, and every project with containers here, had a pass):
    /// `READY=1` to systemd, once.
    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!("first full reconcile done: ready");
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "notifying systemd");
            }
        }
    }

    fn set_session(&self, id: Option<String>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// The `/status` document.
    pub fn status_json(&self) -> serde_json::Value {
        let desired = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        let mut projects = serde_json::Map::new();
        for (name, p) in &desired.projects {
            let schedule = match desired.schedules.get(name) {
                Some(Ok(r)) => json!(r),
                Some(Err(e)) => json!({ "error": e }),
                None => serde_json::Value::Null,
            };
            let v = match &p.spec {
                Ok(spec) => json!({
                    "generation": p.version,
                    "state": "valid",
                    "services": spec.services.keys().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "errors": [],
                    "warnings": spec.warnings,
                    "schedule": schedule,
                }),
                Err(errors) => json!({
                    "generation": p.version,
                    "state": "invalid",
                    "services": [],
                    "errors": errors,
                    "warnings": [],
                    "schedule": schedule,
                }),
            };
            projects.insert(name.to_string(), v);
        }
        let leader = self.leader();
        json!({
            "node": self.node.as_str(),
            "ready": self.ready.load(Ordering::SeqCst),
            "session": *self.session.lock().unwrap_or_else(|e| e.into_inner()),
            "leader": leader.node,
            "leader_token": leader.token,
            "is_leader": leader.is_self,
            "agent": self.info,
            "projects": projects,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The IP registered services are reached at: `--address` if it is one,
/// else what it resolves to (first IPv4), else loopback.
fn node_ip(address: &str) -> std::net::IpAddr {
    if let Ok(ip) = address.parse() {
        return ip;
    }
    use std::net::ToSocketAddrs;
    let resolved = (address, 0u16).to_socket_addrs().ok().and_then(|mut a| {
        let all: Vec<_> = a.by_ref().collect();
        all.iter()
            .find(|s| s.is_ipv4())
            .or(all.first())
            .map(|s| s.ip())
    });
    resolved.unwrap_or_else(|| {
        tracing::warn!(%address, "--address is not an IP and does not resolve; registering services at 127.0.0.1");
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_runtime_root() -> PathBuf {
    if crate::store::rootless() {
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("cntnr/runc");
        }
    }
    PathBuf::from("/run/cntnr/runc")
}

/// Entry point of the `cntnr-agent` binary.
pub fn main() -> ExitCode {
    let args = AgentArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace(['\n', '\r'], " "));
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent until a signal drains it.
pub async fn run(args: AgentArgs) -> Result<()> {
    check_args(&args)?;
    let node_raw = args.node.clone().unwrap_or_else(hostname);
    let node = NodeName::new(node_raw.as_str()).map_err(|e| anyhow::anyhow!("--node: {e}"))?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(crate::store::default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let mut config = StoreConfig::resolve(
        args.store.as_deref(),
        &args.prefix,
        Some(&state_dir),
        &args.connect,
    )?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let runtime_root = args
        .runtime_root
        .clone()
        .unwrap_or_else(default_runtime_root);
    let labels: BTreeMap<String, String> = args.node_labels.iter().cloned().collect();
    let address = args.address.clone().unwrap_or_else(|| node.to_string());
    let policy = Policy {
        allow_privileged: args.allow_privileged,
        allow_host_paths: args.allow_host_paths.clone(),
        allow_host_network: args.allow_host_network,
        subnet_pool: cntnr_hook::alloc::SubnetPool::new(args.subnet_pool, args.subnet_size)
            .map_err(|e| anyhow::anyhow!("--subnet-size: {e}"))?,
    };
    let started = now_secs();
    let shared = Arc::new(Shared {
        node: node.clone(),
        prefix: config.prefix.clone(),
        leader_key: config.leader_key(),
        metrics: Metrics::new(),
        desired: Mutex::new(DesiredState::default()),
        desired_rev: watch::channel(0).0,
        unplaced: Mutex::new(BTreeMap::new()),
        link: disconnect::Link::default(),
        leader: Mutex::new(LeaderView::default()),
        session: Mutex::new(None),
        synced: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        info: json!({
            "version": env!("CARGO_PKG_VERSION"),
            "store": config.url.to_string(),
            "prefix": config.prefix.as_str(),
            "state_dir": state_dir,
            "runtime_root": runtime_root,
            "listen": args.listen.to_string(),
            "address": address,
            "labels": labels,
            "rootless": crate::store::rootless(),
            "started": started,
            "session_ttl_secs": args.session_ttl.as_secs(),
            "policy": policy,
        }),
    });
    let host = host::Host::new(
        &state_dir,
        &runtime_root,
        node.as_str(),
        &policy,
        &args.insecure_registries,
    )?;
    let health = registrar::Supervisor::start(
        host.runc.clone(),
        node.clone(),
        node_ip(&address),
        crate::registration::RegistrationTimings {
            check_ttl: args.session_ttl,
            ..Default::default()
        },
        &state_dir,
    );
    health.preload().await;
    let engine = Arc::new(reconciler::Engine::new(
        host,
        shared.clone(),
        reconciler::Tuning {
            resync: args.resync,
            parallel: usize::from(args.parallel),
            backoff: cntnr_reconcile::plan::Backoff::default(),
        },
        health.clone(),
    ));
    let node_record = cntnr_model::records::NodeRecord {
        labels,
        address,
        version: env!("CARGO_PKG_VERSION").to_string(),
        rootless: crate::store::rootless(),
        started,
    };

    let stop_signals = CancellationToken::new();
    let (signals, signal_task) =
        signals::install(stop_signals.clone()).context("installing signal handlers")?;
    tracing::info!(node = %node, store = %config.url, listen = %args.listen, "cntnr-agent starting");
    let http_cancel = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(listener, shared.clone(), http_cancel.clone()));
    let disconnect_task = tokio::spawn(disconnect::run(
        engine.clone(),
        shared.clone(),
        http_cancel.clone(),
    ));

    let result = async {
        let mut restart_delay = Duration::from_millis(500);
        loop {
            let store = tokio::select! {
                _ = signals.shutdown.cancelled() => break Ok(()),
                r = config.connect(None) => r?,
            };
            let epoch = Epoch {
                store,
                engine: engine.clone(),
                shared: shared.clone(),
                signals: signals.clone(),
                ttl: args.session_ttl,
                env_debounce: args.env_debounce,
                node_record: node_record.clone(),
            };
            match epoch.run(&mut config, &args.connect).await {
                Outcome::Shutdown => break Ok(()),
                Outcome::Reload => {
                    tracing::info!("reconnecting with the new credentials");
                    restart_delay = Duration::from_millis(500);
                }
                Outcome::Restart(why) => {
                    tracing::warn!(%why, delay = ?restart_delay, "starting a new session");
                    tokio::select! {
                        _ = signals.shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(restart_delay) => {}
                    }
                    restart_delay = (restart_delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    .await;

    health.shutdown();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    http_cancel.cancel();
    let _ = http_task.await;
    let _ = disconnect_task.await;
    stop_signals.cancel();
    let _ = signal_task.await;
    if result.is_ok() {
        tracing::info!("drained; exiting (containers keep running)");
    }
    result
}

/// How a session epoch ended.
#[derive(Debug)]
enum Outcome {
    /// A signal asked to stop.
    Shutdown,
    /// SIGHUP brought new credentials.
    Reload,
    /// The session was lost or a task failed.
    Restart(String),
}

/// One session's worth of agent.
struct Epoch {
    store: DynStore,
    engine: Arc<reconciler::Engine>,
    shared: Arc<Shared>,
    signals: Signals,
    ttl: Duration,
    env_debounce: Duration,
    node_record: cntnr_model::records::NodeRecord,
}

/// How long draining may take before tasks are aborted.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

impl Epoch {
    async fn run(self, config: &mut StoreConfig, conn: &ConnectArgs) -> Outcome {
        let shared = &self.shared;
        let shutdown = &self.signals.shutdown;
        let session = match self.create_session().await {
            Some(s) => Arc::new(s),
            None => return Outcome::Shutdown,
        };
        shared.metrics.session_created();
        shared.set_session(Some(session.id().to_string()));
        shared.link.up();
        tracing::info!(session = %session.id(), backend = self.store.backend(), "session created");

        let cancel = shutdown.child_token();
        let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
        // The registry writer first: entries of running containers are
        // refreshed (or re-created under this session) at once, even while
        // the node record waits (e.g. for Consul's lock-delay).
        tasks.spawn(named(
            "registrar",
            registrar::run(
                self.store.clone(),
                session.clone(),
                self.engine.health().clone(),
                shared.clone(),
                cancel.clone(),
            ),
        ));
        // The node record next: once the agent reports ready, it is listed.
        if let Err(e) = node::register(
            self.store.clone(),
            session.clone(),
            shared.clone(),
            self.node_record.clone(),
            cancel.clone(),
        )
        .await
        {
            cancel.cancel();
            while tasks.join_next().await.is_some() {}
            shared.set_session(None);
            shared.link.down();
            return Outcome::Restart(format!("registering the node: {e:#}"));
        }
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let (holder_tx, holder_rx) = watch::channel(None);
        tasks.spawn(named(
            "leader-follow",
            election::follow(
                self.store.clone(),
                shared.clone(),
                holder_tx,
                cancel.clone(),
            ),
        ));
        tasks.spawn(named(
            "campaign",
            election::campaign(
                self.store.clone(),
                session.clone(),
                shared.clone(),
                holder_rx,
                cancel.clone(),
            ),
        ));
        // The status writer stops last, so the desired task's final
        // updates are flushed: it has its own token.
        let status_cancel = CancellationToken::new();
        let mut status_task = tokio::spawn(status::run(
            self.store.clone(),
            session.clone(),
            shared.clone(),
            status_rx,
            status_cancel.clone(),
        ));
        let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
        // Env sync and replica elections for this session: a debounced
        // change requeues its project; signals go out through runc.
        let (envsync, mut env_signals) = crate::envsync::engine::EnvSync::new(
            self.store.clone(),
            shared.prefix.clone(),
            crate::envsync::watch::SyncConfig::with_debounce(self.env_debounce),
            crate::election_replica::ElectionTiming::new(self.ttl),
        );
        envsync.set_triggers(Some(trigger_tx.clone()));
        envsync.set_session(Some(session.clone()));
        self.engine.set_envsync(Some(envsync.clone()));
        {
            let engine = self.engine.clone();
            let cancel = cancel.clone();
            tasks.spawn(named("env-signals", async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        r = env_signals.recv() => match r {
                            Some(req) => engine.deliver_signal(&req).await,
                            None => return Ok(()),
                        },
                    }
                }
            }));
        }
        tasks.spawn(named(
            "desired",
            desired::run(
                self.store.clone(),
                shared.clone(),
                trigger_tx.clone(),
                cancel.clone(),
            ),
        ));
        tasks.spawn(named(
            "reconciler",
            reconciler::run(
                self.engine.clone(),
                trigger_tx,
                trigger_rx,
                status_tx,
                cancel.clone(),
            ),
        ));

        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Outcome::Shutdown,
                _ = session.lost() => break Outcome::Restart("the session was lost".into()),
                _ = self.signals.reload.notified() => match config.reload_credentials(conn) {
                    Ok(true) => break Outcome::Reload,
                    Ok(false) => tracing::info!("credentials unchanged"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "keeping the current credentials"),
                },
                Some(done) = tasks.join_next() => match done {
                    Ok((_, Ok(()))) if cancel.is_cancelled() => break Outcome::Shutdown,
                    Ok((name, Ok(()))) => tracing::debug!(task = name, "task finished"),
                    Ok((name, Err(e))) => break Outcome::Restart(format!("{name}: {e:#}")),
                    Err(e) => break Outcome::Restart(format!("a task panicked: {e}")),
                },
            }
        };
        if matches!(outcome, Outcome::Restart(_)) {
            shared.link.down();
        }

        // Drain: stop the loops (the campaign resigns), flush status, then
        // revoke the session so nodes/<node> and status keys go at once.
        cancel.cancel();
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain deadline passed; aborting the remaining tasks");
            tasks.shutdown().await;
        }
        status_cancel.cancel();
        if tokio::time::timeout(DRAIN_DEADLINE, &mut status_task)
            .await
            .is_err()
        {
            tracing::warn!("status writer did not stop in time; aborting it");
            status_task.abort();
        }
        self.engine.set_envsync(None);
        envsync.shutdown();
        shared.set_leading(None);
        shared.set_session(None);
        if !session.is_lost() {
            let id = session.id().to_string();
            match tokio::time::timeout(Duration::from_secs(5), session.close()).await {
                Ok(Ok(())) => tracing::info!(session = %id, "session revoked"),
                Ok(Err(e)) => {
                    shared.metrics.store_error("revoke");
                    tracing::warn!(session = %id, error = %e, "revoking the session failed; it expires after its TTL");
                }
                Err(_) => {
                    tracing::warn!(session = %id, "revoking the session timed out; it expires after its TTL")
                }
            }
        }
        outcome
    }

    /// Creates a session, retrying with backoff while the store fails;
    /// `None` on shutdown.
    async fn create_session(&self) -> Option<Session> {
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = self.signals.shutdown.cancelled() => return None,
                r = self.store.create_session(self.ttl) => match r {
                    Ok(s) => return Some(s),
                    Err(e) => {
                        self.shared.metrics.store_error("create_session");
                        tracing::warn!(error = %e, ?delay, "waiting for the store to create a session");
                    }
                }
            }
            tokio::select! {
                _ = self.signals.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

async fn named<F>(name: &'static str, f: F) -> (&'static str, Result<()>)
where
    F: std::future::Future<Output = Result<()>>,
{
    (name, f.await)
}

/// Refuses obviously conflicting settings early (kept separate so it is
/// testable without starting anything).
pub fn check_args(args: &AgentArgs) -> Result<()> {
    if let Some(n) = &args.node {
        NodeName::new(n.as_str()).map_err(|e| anyhow::anyhow!("--node: {e}"))?;
    }
    if args.session_ttl > Duration::from_secs(86400) {
        bail!("--session-ttl: at most 24h");
    }
    cntnr_hook::alloc::SubnetPool::new(args.subnet_pool, args.subnet_size)
        .map_err(|e| anyhow::anyhow!("--subnet-size: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let a = AgentArgs::try_parse_from([
            "cntnr-agent",
            "--node",
            "n1",
            "--node-label",
            "zone=a",
            "--node-label",
            "disk=ssd",
            "--allow-host-path",
            "/srv",
            "--session-ttl",
            "20s",
        ])
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:7475".parse().unwrap());
        assert_eq!(a.session_ttl, Duration::from_secs(20));
        assert_eq!(a.node_labels.len(), 2);
        assert_eq!(a.allow_host_paths, vec![PathBuf::from("/srv")]);
        assert!(check_args(&a).is_ok());
        let d = AgentArgs::try_parse_from(["cntnr-agent"]).unwrap();
        assert_eq!(d.session_ttl, Duration::from_secs(15));
        assert_eq!(d.prefix, "cntnr");
        for bad in [
            &["cntnr-agent", "--node-label", "novalue"][..],
            &["cntnr-agent", "--allow-host-path", "relative"],
            &["cntnr-agent", "--session-ttl", "10ms"],
            &["cntnr-agent", "--listen", "nowhere"],
        ] {
            assert!(AgentArgs::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let bad_node = AgentArgs::try_parse_from(["cntnr-agent", "--node", "a/b"]).unwrap();
        assert!(check_args(&bad_node).is_err());
        // The subnet pool: default 10.90.0.0/16 in /24s; a size the pool
        // cannot be cut into is refused before anything starts.
        assert_eq!(d.subnet_pool.to_string(), "10.90.0.0/16");
        assert_eq!(d.subnet_size, 24);
        let pool = AgentArgs::try_parse_from([
            "cntnr-agent",
            "--subnet-pool",
            "10.77.0.0/20",
            "--subnet-size",
            "26",
        ])
        .unwrap();
        assert!(check_args(&pool).is_ok());
        assert!(
            AgentArgs::try_parse_from(["cntnr-agent", "--subnet-pool", "10.77.0.0/33"]).is_err()
        );
        for size in ["16", "31"] {
            let a = AgentArgs::try_parse_from([
                "cntnr-agent",
                "--subnet-pool",
                "10.77.0.0/20",
                "--subnet-size",
                size,
            ])
            .unwrap();
            let e = check_args(&a).unwrap_err().to_string();
            assert!(
                e.contains("--subnet-size") && e.contains("10.77.0.0/20"),
                "{e}"
            );
        }
    }
}
