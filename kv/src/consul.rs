//! The Consul backend: our own client for the HTTP API (v1.8) on reqwest.
//!
//! Versions are `ModifyIndex`es, positions are `X-Consul-Index` values (u64).
//! Writes go through `/v1/txn` so every write returns its index in one round
//! trip. Watches are one blocking recurse query at a time, diffed against
//! the previous result. Sessions have behavior `delete` so bound keys vanish
//! with them, and are tied to a liveness service of their own on the local
//! agent whose TTL check the keepalive passes, so a dead holder's session
//! is invalidated one TTL after its last renewal (Consul's own session TTL
//! allows up to two); locks are KV `acquire`/`release`; the fencing token is the
//! lock key's `ModifyIndex` at acquire, checked with `check-session` +
//! `check-index` in the fenced write's (and fenced delete's) txn. The
//! registry is the local agent's service/check API (`/v1/agent/services`
//! lists what it holds) and `/v1/health/service`; an instance another node
//! holds in the catalog (a dead host's) is deregistered through
//! `/v1/catalog/deregister`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::session::{Session, SessionOps};
use crate::store::{
    Entry, Health, Holder, Leadership, Registration, ServiceInstance, ServiceStream, Snapshot,
    Store, Version, WatchFrom, WatchStream,
};
use crate::url::{ConnectOptions, Secret};
use crate::watch::{check_key, level_watch, spawn_stream, watch_backoff, LevelSource};
use crate::{Error, Result};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The HTTP client for one Consul agent. The ACL token is sent in the
/// `X-Consul-Token` header and never printed (`Debug` redacts it).
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl KvPair {
    fn entry(&self) -> Result<Entry> {
        let value = match &self.value {
            None => Vec::new(),
            Some(v) => B64.decode(v).map_err(|e| Error::Decode {
                what: format!("consul value of {}", self.key),
                message: e.to_string(),
            })?,
        };
        Ok(Entry {
            key: self.key.clone(),
            value,
            version: self.modify_index,
        })
    }
}

fn index_of(resp: &Response) -> Option<u64> {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn transport(op: &str, e: reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    Error::Unavailable {
        op: op.into(),
        message: msg,
    }
}

/// Deadline of a non-blocking request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline of a request: a blocking query may take its wait, plus the
/// up-to-wait/16 jitter Consul adds, plus a margin.
fn block_timeout(block: Option<(u64, Duration)>) -> Duration {
    match block {
        Some((_, wait)) => wait + wait / 16 + Duration::from_secs(5),
        None => REQUEST_TIMEOUT,
    }
}

/// Percent-encodes a key for a URL path, keeping `/`.
fn enc_path(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:@".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl ConsulClient {
    /// Builds a client for `address` (`host:port`). Reads the CA file now.
    pub fn new(address: &str, tls: bool, opts: &ConnectOptions) -> Result<ConsulClient> {
        // reqwest is built without a default crypto provider (ring, not
        // aws-lc); install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy();
        if let Some(ca) = &opts.ca {
            let pem = std::fs::read(ca).map_err(|e| Error::io("reading CA file", ca, e))?;
            if !crate::url::looks_like_pem_cert(&pem) {
                return Err(Error::BadUrl {
                    url: format!("consul+https://{address}"),
                    reason: format!("CA file {} holds no PEM certificate", ca.display()),
                });
            }
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::BadUrl {
                url: format!("consul+https://{address}"),
                reason: format!("CA file {}: {e}", ca.display()),
            })?;
            b = b.tls_certs_only([cert]);
        }
        if let (Some(c), Some(k)) = (&opts.cert, &opts.key) {
            let mut pem =
                std::fs::read(c).map_err(|e| Error::io("reading client certificate", c, e))?;
            pem.extend(std::fs::read(k).map_err(|e| Error::io("reading client key", k, e))?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| Error::BadUrl {
                url: format!("consul+https://{address}"),
                reason: format!("client certificate/key: {e}"),
            })?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| Error::BadUrl {
            url: format!("consul://{address}"),
            reason: e.to_string(),
        })?;
        let scheme = if tls { "https" } else { "http" };
        Ok(ConsulClient {
            http,
            base: format!("{scheme}://{address}"),
            token: opts.consul_token.clone(),
        })
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        // Every request has a deadline, so a frozen agent or a dead TCP
        // connection is noticed (and retried) instead of hanging forever.
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(REQUEST_TIMEOUT);
        if let Some(t) = &self.token {
            r = r.header("X-Consul-Token", t.expose());
        }
        r
    }

    /// Sends and classifies the status: 2xx and `ok_404` 404s pass through;
    /// 403 is `Auth`; 5xx and 429 are retryable `Server` errors.
    async fn send(&self, op: &str, r: RequestBuilder, ok: &[StatusCode]) -> Result<Response> {
        let resp = r.send().await.map_err(|e| transport(op, e))?;
        let status = resp.status();
        if status.is_success() || ok.contains(&status) {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let message = format!("{status}: {}", body.trim());
        Err(match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Error::Auth {
                op: op.into(),
                message,
            },
            s if s.is_server_error()
                && (body.contains("ACL not found") || body.contains("Permission denied")) =>
            {
                Error::Auth {
                    op: op.into(),
                    message,
                }
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Error::Server {
                op: op.into(),
                message,
                retryable: true,
            },
            _ => Error::Server {
                op: op.into(),
                message,
                retryable: false,
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(op: &str, resp: Response) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|e| transport(op, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            what: op.into(),
            message: e.to_string(),
        })
    }

    /// `GET /v1/kv/<key>` (optionally `?consistent`, blocking on `index`).
    async fn kv_get(
        &self,
        key: &str,
        consistent: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<KvPair>, u64)> {
        let op = format!("reading {key}");
        let mut q: Vec<(&str, String)> = Vec::new();
        if consistent {
            q.push(("consistent", String::new()));
        }
        if let Some((index, wait)) = block {
            q.push(("index", index.max(1).to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let resp = self
            .send(
                &op,
                self.req(Method::GET, &format!("/v1/kv/{}", enc_path(key)))
                    .query(&q)
                    .timeout(block_timeout(block)),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        let index = index_of(&resp).unwrap_or(0);
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok((None, index));
        }
        let mut pairs: Vec<KvPair> = Self::json(&op, resp).await?;
        Ok((pairs.pop(), index))
    }

    /// `GET /v1/kv/<prefix>?recurse`, blocking on `index` when given.
    async fn kv_list(&self, prefix: &str, block: Option<(u64, Duration)>) -> Result<Snapshot> {
        let op = format!("listing {prefix}");
        let mut q: Vec<(&str, String)> = vec![("recurse", "true".into())];
        if let Some((index, wait)) = block {
            q.push(("index", index.max(1).to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let resp = self
            .send(
                &op,
                self.req(Method::GET, &format!("/v1/kv/{}", enc_path(prefix)))
                    .query(&q)
                    .timeout(block_timeout(block)),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        let position = index_of(&resp).unwrap_or(0);
        let mut entries = BTreeMap::new();
        if resp.status() != StatusCode::NOT_FOUND {
            let pairs: Vec<KvPair> = Self::json(&op, resp).await?;
            for p in pairs {
                let e = p.entry()?;
                entries.insert(e.key.clone(), e);
            }
        }
        Ok(Snapshot { entries, position })
    }

    /// `PUT /v1/txn`. `Ok(Ok(results))` when applied, `Ok(Err(errors))` when
    /// rolled back (409).
    async fn txn(
        &self,
        op: &str,
        ops: serde_json::Value,
    ) -> Result<std::result::Result<Vec<serde_json::Value>, String>> {
        let resp = self
            .send(
                op,
                self.req(Method::PUT, "/v1/txn").json(&ops),
                &[StatusCode::CONFLICT],
            )
            .await?;
        let conflict = resp.status() == StatusCode::CONFLICT;
        let v: serde_json::Value = Self::json(op, resp).await?;
        if conflict {
            let errors = v["Errors"].to_string();
            // An ACL refusal inside a txn is a 409 too: surface it as such,
            // never as a CAS conflict or a lost fence.
            if errors.contains("Permission denied") || errors.contains("ACL not found") {
                return Err(Error::Auth {
                    op: op.into(),
                    message: errors,
                });
            }
            return Ok(Err(errors));
        }
        Ok(Ok(v["Results"].as_array().cloned().unwrap_or_default()))
    }

    /// The `ModifyIndex` of `key` among txn results.
    fn result_index(results: &[serde_json::Value], key: &str) -> u64 {
        results
            .iter()
            .filter(|r| r["KV"]["Key"] == key)
            .filter_map(|r| r["KV"]["ModifyIndex"].as_u64())
            .next_back()
            .unwrap_or(0)
    }
}

/// A Consul-backed store (talks to one local agent).
#[derive(Clone, Debug)]
pub struct ConsulStore {
    c: ConsulClient,
    wait: Duration,
    lock_delay: Duration,
    /// The local agent's node name (`/v1/agent/self` → `Config.NodeName`),
    /// read once when first needed.
    local_node: Arc<tokio::sync::OnceCell<String>>,
}

/// What [`ConsulStore::deregister_instance`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deregistered {
    /// The local agent removed the instance from its own services (it was
    /// there: a 404 from the agent leaves this false).
    pub local: bool,
    /// Other nodes whose catalog entry of the instance was removed through
    /// `/v1/catalog/deregister`.
    pub catalog_nodes: Vec<String>,
}

impl Deregistered {
    /// Whether anything was removed (false: the instance was nowhere).
    pub fn removed(&self) -> bool {
        self.local || !self.catalog_nodes.is_empty()
    }
}

impl ConsulStore {
    /// Connects to the agent at `address`, waiting with backoff (and logging)
    /// while it is unreachable or has no leader, up to
    /// `opts.connect_timeout`. A rejected ACL token fails at once.
    pub async fn connect(address: &str, tls: bool, opts: &ConnectOptions) -> Result<ConsulStore> {
        let c = ConsulClient::new(address, tls, opts)?;
        let what = format!("Consul agent at {address}");
        crate::connect::retry_connect(&what, opts.connect_timeout, || async {
            let resp = c
                .send("connecting", c.req(Method::GET, "/v1/status/leader"), &[])
                .await
                .map_err(|e| e.tls_refusal(&what))?;
            let leader: String = ConsulClient::json("connecting", resp).await?;
            if leader.is_empty() {
                return Err(Error::Unavailable {
                    op: "connecting".into(),
                    message: "no cluster leader yet".into(),
                });
            }
            // An ACL-checked read, so a bad token fails here, not later.
            c.send(
                "checking ACL token",
                c.req(Method::GET, "/v1/kv/cntnr-token-check"),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
            Ok(())
        })
        .await?;
        Ok(ConsulStore {
            c,
            wait: opts.consul_wait,
            lock_delay: opts.consul_lock_delay,
            local_node: Arc::default(),
        })
    }

    /// The HTTP client (for tests and tools).
    pub fn client(&self) -> &ConsulClient {
        &self.c
    }

    fn jittered_wait(&self) -> Duration {
        // Consul adds up to wait/16 itself; we add our own spread so many
        // watchers started together do not wake together.
        let ms = self.wait.as_millis() as u64;
        Duration::from_millis(ms + fastrand::u64(0..=ms / 16))
    }
}

/// Level source over blocking recurse queries, with the client-side rules
/// Consul's docs ask for: an index below 1 is sent as 1, and a query that
/// returns fast without progress (spurious wake-up or index reset) is
/// rate-limited by a token bucket (burst 5, refilling at 10/s), so a
/// misbehaving index never turns into a hot loop. Returns that bring a
/// change are never delayed.
struct ConsulLevel {
    store: ConsulStore,
    bucket: tokio::sync::Mutex<(f64, Instant)>,
}

impl ConsulLevel {
    async fn throttle(&self) {
        let mut b = self.bucket.lock().await;
        let now = Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * 10.0).min(5.0);
        if tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64((1.0 - tokens) / 10.0)).await;
            *b = (0.0, Instant::now());
        } else {
            *b = (tokens - 1.0, now);
        }
    }
}

#[async_trait]
impl LevelSource for ConsulLevel {
    async fn poll(&self, prefix: &str, after: Option<u64>) -> Result<Snapshot> {
        let block = after.map(|i| (i, self.store.jittered_wait()));
        let started = Instant::now();
        let snap = self.store.c.kv_list(prefix, block).await?;
        if let Some(a) = after {
            if snap.position <= a && started.elapsed() < Duration::from_millis(100) {
                self.throttle().await;
            }
        }
        Ok(snap)
    }
}

/// Name of the service every cntnr session registers with the local agent
/// for its liveness check (see [`ConsulStore::create_session`]). Its
/// instances carry [`LIVENESS_META`]; they are not registry entries.
pub const LIVENESS_SERVICE: &str = "cntnr-agent";

/// Meta key (value `session-liveness`) marking an instance of
/// [`LIVENESS_SERVICE`] as a session's liveness service.
pub const LIVENESS_META: &str = "cntnr-role";

/// A session's liveness service on the local agent: one instance of
/// [`LIVENESS_SERVICE`] with a TTL check the session's keepalive passes.
#[derive(Debug)]
struct Liveness {
    service_id: String,
    check_id: String,
}

impl Liveness {
    /// Removes the service and its check (idempotent). Removing the check
    /// invalidates a session still tied to it.
    async fn deregister(&self, c: &ConsulClient) -> Result<()> {
        c.send(
            &format!("deregistering session liveness service {}", self.service_id),
            c.req(
                Method::PUT,
                &format!(
                    "/v1/agent/service/deregister/{}",
                    enc_path(&self.service_id)
                ),
            ),
            &[StatusCode::NOT_FOUND],
        )
        .await?;
        Ok(())
    }

    /// Passes the TTL check. `Ok(false)`: the agent no longer has it (its
    /// removal invalidates the session).
    async fn pass(&self, c: &ConsulClient) -> Result<bool> {
        let r = c
            .send(
                "passing the session's liveness check",
                c.req(
                    Method::PUT,
                    &format!("/v1/agent/check/pass/{}", enc_path(&self.check_id)),
                ),
                &[StatusCode::NOT_FOUND],
            )
            .await;
        match r {
            Ok(resp) => Ok(resp.status() != StatusCode::NOT_FOUND),
            // Consul 1.8 answers 500 for a check it does not hold.
            // With ACLs on it says "Unknown check" instead.
            Err(Error::Server { message, .. })
                if message.contains("does not have associated TTL")
                    || message.contains("Unknown check") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl ConsulStore {
    /// Registers a new liveness service for a session about to be created:
    /// a unique instance of [`LIVENESS_SERVICE`] (so cntnr agents sharing
    /// one Consul agent never collide) whose TTL check — passing now, TTL
    /// = the session's — the keepalive passes with every renewal. A Consul
    /// agent marks a TTL check critical as soon as its TTL lapses, and a
    /// critical check invalidates the sessions tied to it at once, while a
    /// session's own TTL lapses anywhere up to 2 × TTL after its last
    /// renewal. A service check, never a node check: a critical node check
    /// would fail every service of the node. A dead holder's service is
    /// reaped by the agent 1 min (Consul's minimum) after it turned critical.
    async fn register_liveness(&self, ttl: Duration) -> Result<Liveness> {
        let node = self.local_node().await?.to_string();
        let service_id = format!(
            "{LIVENESS_SERVICE}-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let check_id = format!("service:{service_id}");
        let body = json!({
            "ID": service_id,
            "Name": LIVENESS_SERVICE,
            "Meta": {LIVENESS_META: "session-liveness", "cntnr-consul-node": node},
            "Check": {
                "CheckID": check_id,
                "Name": "cntnr session liveness",
                "TTL": format!("{}ms", ttl.as_millis()),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": "1m",
            },
        });
        self.c
            .send(
                &format!("registering session liveness service {service_id}"),
                self.c
                    .req(Method::PUT, "/v1/agent/service/register")
                    .json(&body),
                &[],
            )
            .await?;
        Ok(Liveness {
            service_id,
            check_id,
        })
    }

    /// `PUT /v1/session/create`; the new session's id. A just-registered
    /// check the servers do not know yet (`Missing check`: the agent's sync
    /// of it has not landed) is retried for a few seconds.
    async fn create_session_retrying(&self, body: &serde_json::Value) -> Result<String> {
        let mut wait = Duration::from_millis(100);
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            let r = self
                .c
                .send(
                    "creating session",
                    self.c.req(Method::PUT, "/v1/session/create").json(body),
                    &[],
                )
                .await;
            let resp = match r {
                Err(Error::Server { message, .. })
                    if message.contains("Missing check") && Instant::now() < give_up =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                    continue;
                }
                r => r?,
            };
            let v: serde_json::Value = ConsulClient::json("creating session", resp).await?;
            let id = v["ID"].as_str().unwrap_or_default().to_string();
            if id.is_empty() {
                return Err(Error::Decode {
                    what: "session create response".into(),
                    message: v.to_string(),
                });
            }
            return Ok(id);
        }
    }
}

struct ConsulSession {
    c: ConsulClient,
    /// `None` when the token could not register it (TTL only).
    liveness: Option<Liveness>,
}

impl ConsulSession {
    async fn renew_session(&self, id: &str) -> Result<bool> {
        let resp = self
            .c
            .send(
                "renewing session",
                self.c.req(Method::PUT, &format!("/v1/session/renew/{id}")),
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(resp.status() != StatusCode::NOT_FOUND)
    }
}

#[async_trait]
impl SessionOps for ConsulSession {
    /// Renews the session and passes its liveness check, together: alive
    /// only when both succeed; gone when either is gone.
    async fn renew(&self, id: &str) -> Result<bool> {
        let Some(l) = &self.liveness else {
            return self.renew_session(id).await;
        };
        let (check, session) = tokio::join!(l.pass(&self.c), self.renew_session(id));
        let gone = if matches!(session, Ok(false)) {
            true
        } else if !check? {
            tracing::warn!(session = %id, check = %l.check_id,
                "the session's liveness check is gone from the Consul agent");
            true
        } else {
            false
        };
        if gone {
            // Nothing to keep it for: remove it now rather than leave it
            // critical until the agent reaps it.
            if let Err(e) = l.deregister(&self.c).await {
                tracing::debug!(service = %l.service_id, error = %e,
                    "removing a lost session's liveness service failed; the agent reaps it");
            }
            return Ok(false);
        }
        session
    }

    /// Destroys the session, then removes its liveness service.
    async fn revoke(&self, id: &str) -> Result<()> {
        let destroyed = self
            .c
            .send(
                "destroying session",
                self.c
                    .req(Method::PUT, &format!("/v1/session/destroy/{id}")),
                &[],
            )
            .await;
        let deregistered = match &self.liveness {
            Some(l) => l.deregister(&self.c).await,
            None => Ok(()),
        };
        destroyed?;
        deregistered
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    service: HealthService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    status: String,
}

fn worst(checks: &[HealthCheck]) -> Health {
    let mut h = Health::Passing;
    for c in checks {
        match Health::parse(&c.status) {
            Health::Critical => return Health::Critical,
            Health::Warning => h = Health::Warning,
            Health::Passing => {}
        }
    }
    h
}

impl ConsulStore {
    async fn health(
        &self,
        name: &str,
        passing_only: bool,
        block: Option<(u64, Duration)>,
    ) -> Result<(Vec<ServiceInstance>, u64)> {
        let op = format!("reading health of service {name}");
        let mut q: Vec<(&str, String)> = Vec::new();
        if passing_only {
            q.push(("passing", "true".into()));
        }
        if let Some((index, wait)) = block {
            q.push(("index", index.max(1).to_string()));
            q.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let resp = self
            .c
            .send(
                &op,
                self.c
                    .req(
                        Method::GET,
                        &format!("/v1/health/service/{}", enc_path(name)),
                    )
                    .query(&q)
                    .timeout(block_timeout(block)),
                &[],
            )
            .await?;
        let index = index_of(&resp).unwrap_or(0);
        let entries: Vec<HealthEntry> = ConsulClient::json(&op, resp).await?;
        let mut out: Vec<ServiceInstance> = entries
            .into_iter()
            .map(|e| ServiceInstance {
                name: e.service.service,
                id: e.service.id,
                address: e.service.address,
                port: e.service.port,
                tags: e.service.tags.unwrap_or_default(),
                meta: e.service.meta.unwrap_or_default(),
                health: worst(&e.checks),
            })
            // Sessions' liveness instances are never registry entries, even
            // if an app is registered under the same name.
            .filter(|i| i.meta.get(LIVENESS_META).map(String::as_str) != Some("session-liveness"))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((out, index))
    }

    /// The local agent's node name (`/v1/agent/self` → `Config.NodeName`),
    /// cached after the first successful read.
    pub async fn local_node(&self) -> Result<&str> {
        let name = self
            .local_node
            .get_or_try_init(|| async {
                let op = "reading the local agent's node name";
                let resp = self
                    .c
                    .send(op, self.c.req(Method::GET, "/v1/agent/self"), &[])
                    .await?;
                let v: serde_json::Value = ConsulClient::json(op, resp).await?;
                match v["Config"]["NodeName"].as_str() {
                    Some(n) if !n.is_empty() => Ok(n.to_string()),
                    _ => Err(Error::Decode {
                        what: op.into(),
                        message: "no Config.NodeName in /v1/agent/self".into(),
                    }),
                }
            })
            .await?;
        Ok(name)
    }

    /// `op` (one txn KV operation) on `key`, only while `fence`'s session
    /// still holds its lock key at the index it was won at (its token), in
    /// one atomic txn; `FencedOut` otherwise. The txn's results.
    async fn fenced_txn(
        &self,
        key: &str,
        fence: &Leadership,
        op: serde_json::Value,
        what: &str,
    ) -> Result<Vec<serde_json::Value>> {
        check_key(key)?;
        if !fence.is_held() {
            return Err(fence.fenced_out(key));
        }
        let ops = json!([
            {"KV": {"Verb": "check-session", "Key": fence.key, "Session": fence.session_id}},
            {"KV": {"Verb": "check-index", "Key": fence.key, "Index": fence.token}},
            op,
        ]);
        self.c
            .txn(&format!("fenced {what} of {key}"), ops)
            .await?
            .map_err(|_| fence.fenced_out(key))
    }

    /// Removes instance `id` of service `name` wherever the catalog has it
    /// and says what was removed. When the local agent holds it
    /// (`/v1/agent/service/<id>`), through the agent API, so the agent's own
    /// state forgets it too (and the catalog follows); on any other node of
    /// the catalog (`/v1/catalog/service/<name>`) through
    /// `/v1/catalog/deregister` (the instance and its checks), as that
    /// node's agent is presumed gone — a live agent would put it back with
    /// its next anti-entropy sync. Idempotent: an instance found nowhere
    /// gives an empty [`Deregistered`].
    pub async fn deregister_instance(&self, name: &str, id: &str) -> Result<Deregistered> {
        #[derive(Deserialize)]
        struct CatalogService {
            #[serde(rename = "Node")]
            node: String,
            #[serde(rename = "ServiceID")]
            service_id: String,
        }
        let op = format!("deregistering {name}/{id}");
        let local = self.local_node().await?.to_string();
        let resp = self
            .c
            .send(
                &op,
                self.c.req(
                    Method::GET,
                    &format!("/v1/catalog/service/{}", enc_path(name)),
                ),
                &[],
            )
            .await?;
        let listed: Vec<CatalogService> = ConsulClient::json(&op, resp).await?;
        let nodes: BTreeSet<String> = listed
            .into_iter()
            .filter(|s| s.service_id == id)
            .map(|s| s.node)
            .collect();
        let mut done = Deregistered::default();
        for node in nodes.iter().filter(|n| **n != local) {
            let body = json!({"Node": node, "ServiceID": id});
            self.c
                .send(
                    &format!("{op} from the catalog of node {node}"),
                    self.c
                        .req(Method::PUT, "/v1/catalog/deregister")
                        .json(&body),
                    &[],
                )
                .await?;
            done.catalog_nodes.push(node.clone());
        }
        // The local agent's own state decides for the local node (its
        // anti-entropy makes the catalog follow). Consul 1.8 answers 200 to
        // deregistering an id it does not hold (later versions 404), so ask
        // first rather than claim a removal that did not happen.
        let held = self
            .c
            .send(
                &op,
                self.c
                    .req(Method::GET, &format!("/v1/agent/service/{}", enc_path(id))),
                &[StatusCode::NOT_FOUND],
            )
            .await?
            .status()
            != StatusCode::NOT_FOUND;
        if held {
            let resp = self
                .c
                .send(
                    &op,
                    self.c.req(
                        Method::PUT,
                        &format!("/v1/agent/service/deregister/{}", enc_path(id)),
                    ),
                    &[StatusCode::NOT_FOUND],
                )
                .await?;
            done.local = resp.status() != StatusCode::NOT_FOUND;
        }
        Ok(done)
    }

    async fn try_acquire(&self, session: &Session, key: &str, value: &[u8]) -> Result<bool> {
        let op = format!("acquiring {key}");
        let resp = self
            .c
            .send(
                &op,
                self.c
                    .req(Method::PUT, &format!("/v1/kv/{}", enc_path(key)))
                    .query(&[("acquire", session.id())])
                    .body(value.to_vec()),
                &[],
            )
            .await
            .map_err(|e| match e {
                Error::Server { ref message, .. }
                    if message.contains("invalid session")
                        || message.contains("Invalid session") =>
                {
                    Error::SessionLost {
                        id: session.id().into(),
                    }
                }
                e => e,
            })?;
        ConsulClient::json(&op, resp).await
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn backend(&self) -> &'static str {
        "consul"
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        check_key(key)?;
        self.c
            .kv_get(key, false, None)
            .await?
            .0
            .map(|p| p.entry())
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot> {
        self.c.kv_list(prefix, None).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Version> {
        check_key(key)?;
        let op = format!("writing {key}");
        let ops = json!([{"KV": {"Verb": "set", "Key": key, "Value": B64.encode(value)}}]);
        match self.c.txn(&op, ops).await? {
            Ok(r) => Ok(ConsulClient::result_index(&r, key)),
            Err(errors) => Err(Error::Server {
                op,
                message: errors,
                retryable: false,
            }),
        }
    }

    async fn cas(&self, key: &str, value: &[u8], expected: Option<Version>) -> Result<Version> {
        check_key(key)?;
        let op = format!("compare-and-set {key}");
        let ops = json!([{"KV": {"Verb": "cas", "Key": key, "Value": B64.encode(value), "Index": expected.unwrap_or(0)}}]);
        match self.c.txn(&op, ops).await? {
            Ok(r) => Ok(ConsulClient::result_index(&r, key)),
            Err(_) => {
                let current = self.get(key).await.ok().flatten().map(|e| e.version);
                Err(Error::CasConflict {
                    key: key.into(),
                    expected,
                    current,
                })
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let op = format!("deleting {key}");
        self.c
            .send(
                &op,
                self.c
                    .req(Method::DELETE, &format!("/v1/kv/{}", enc_path(key))),
                &[],
            )
            .await?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::bad_key(prefix, "refusing to delete an empty prefix"));
        }
        let op = format!("deleting prefix {prefix}");
        self.c
            .send(
                &op,
                self.c
                    .req(Method::DELETE, &format!("/v1/kv/{}", enc_path(prefix)))
                    .query(&[("recurse", "true")]),
                &[],
            )
            .await?;
        Ok(())
    }

    fn watch(&self, prefix: &str, from: WatchFrom) -> WatchStream {
        let src = ConsulLevel {
            store: self.clone(),
            bucket: tokio::sync::Mutex::new((5.0, Instant::now())),
        };
        level_watch(src, prefix.to_string(), from)
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(86400) {
            return Err(Error::Server {
                op: "creating session".into(),
                message: format!("Consul session TTL must be between 10s and 24h, not {ttl:?}"),
                retryable: false,
            });
        }
        let liveness = match self.register_liveness(ttl).await {
            Ok(l) => Some(l),
            Err(Error::Auth { op, message }) => {
                // A token that may hold sessions but not register the
                // liveness service: the session works, only its failover
                // falls back to Consul's own TTL (up to 2 × TTL).
                tracing::warn!(%op, error = %message,
                    "the ACL token cannot register the session's liveness service; \
                     a dead holder's session now lasts up to twice its TTL");
                None
            }
            Err(e) => return Err(e),
        };
        let mut body = json!({
            "Name": "cntnr",
            "TTL": format!("{}s", ttl.as_secs()),
            "Behavior": "delete",
            "LockDelay": format!("{}ms", self.lock_delay.as_millis()),
        });
        if let Some(l) = &liveness {
            // Consul 1.7+: node checks and service checks are separate
            // lists; giving either replaces the default `serfHealth`, so
            // it is named again.
            body["NodeChecks"] = json!(["serfHealth"]);
            body["ServiceChecks"] = json!([{"ID": l.check_id}]);
        }
        let created = self.create_session_retrying(&body).await;
        let id = match created {
            Ok(id) => id,
            Err(e) => {
                if let Some(l) = &liveness {
                    let _ = l.deregister(&self.c).await;
                }
                return Err(e);
            }
        };
        Ok(Session::start(
            id,
            ttl,
            Arc::new(ConsulSession {
                c: self.c.clone(),
                liveness,
            }),
        ))
    }

    async fn put_bound(&self, session: &Session, key: &str, value: &[u8]) -> Result<Version> {
        check_key(key)?;
        session.ensure_alive()?;
        let op = format!("writing {key} bound to session {}", session.id());
        let ops = json!([{"KV": {"Verb": "lock", "Key": key, "Value": B64.encode(value), "Session": session.id()}}]);
        match self.c.txn(&op, ops).await? {
            Ok(r) => Ok(ConsulClient::result_index(&r, key)),
            Err(errors)
                if errors.contains("invalid session") || errors.contains("Invalid session") =>
            {
                Err(Error::SessionLost {
                    id: session.id().into(),
                })
            }
            Err(errors) => Err(Error::Server {
                op,
                message: errors,
                retryable: false,
            }),
        }
    }

    async fn campaign(&self, session: &Session, key: &str, value: &[u8]) -> Result<Leadership> {
        check_key(key)?;
        // Lock-delay waits grow from 250ms to the configured lock-delay: a
        // timer, never a request loop. A lock-delay every cntnr session
        // shares (ours) ends at most that long after the key was first
        // seen free yet refused, so the waits also wake right after that.
        let mut delay_wait = Duration::from_millis(250);
        let mut refused_since: Option<Instant> = None;
        loop {
            session.ensure_alive()?;
            if self.try_acquire(session, key, value).await? {
                let (pair, _) = self.c.kv_get(key, true, None).await?;
                match pair {
                    Some(p) if p.session.as_deref() == Some(session.id()) => {
                        return Ok(Leadership {
                            key: key.into(),
                            token: p.modify_index,
                            session_id: session.id().into(),
                            session_lost: session.lost_watch(),
                            guard: None,
                        })
                    }
                    _ => continue, // lost it between acquire and read: campaign again
                }
            }
            let (pair, index) = self.c.kv_get(key, true, None).await?;
            match pair {
                Some(p) if p.session.is_some() => {
                    // Held by someone else: block until it is released. A
                    // wait that times out (or sees a change) with the key
                    // still held waits again without an acquire attempt,
                    // which would be a Raft write per idle contender.
                    delay_wait = Duration::from_millis(250);
                    refused_since = None;
                    let mut index = index;
                    loop {
                        let (pair, next) = tokio::select! {
                            _ = session.lost() => return Err(Error::SessionLost { id: session.id().into() }),
                            r = self.c.kv_get(key, true, Some((index, self.jittered_wait()))) => r?,
                        };
                        if pair.is_none_or(|p| p.session.is_none()) {
                            break;
                        }
                        // Consul's index may go backwards (a reset): then
                        // start over from 0 as its docs say.
                        index = if next < index { 0 } else { next };
                    }
                }
                _ => {
                    // Free, yet acquire failed: the lock-delay of the previous
                    // holder's invalidated session is running.
                    let now = Instant::now();
                    let delay_end = *refused_since.get_or_insert(now)
                        + self.lock_delay
                        + Duration::from_millis(50);
                    let wake = if delay_end > now {
                        (now + delay_wait).min(delay_end)
                    } else {
                        now + delay_wait // a longer lock-delay than ours
                    };
                    tracing::debug!(%key, wait = ?wake - now, "lock-delay in effect; waiting");
                    tokio::select! {
                        _ = session.lost() => return Err(Error::SessionLost { id: session.id().into() }),
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                    delay_wait =
                        (delay_wait * 2).min(self.lock_delay.max(Duration::from_millis(250)));
                }
            }
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>> {
        check_key(key)?;
        let (pair, _) = self.c.kv_get(key, true, None).await?;
        Ok(pair.and_then(|p| {
            let session = p.session.clone()?;
            let value = p.entry().ok()?.value;
            Some(Holder {
                value,
                token: p.modify_index,
                session_id: session,
            })
        }))
    }

    async fn resign(&self, leadership: Leadership) -> Result<()> {
        let key = leadership.key.as_str();
        let op = format!("releasing {key}");
        // Delete the key only while it is still ours at our token: a txn so
        // a successor's key is never touched.
        let ops = json!([
            {"KV": {"Verb": "check-session", "Key": key, "Session": leadership.session_id}},
            {"KV": {"Verb": "delete-cas", "Key": key, "Index": leadership.token}},
        ]);
        self.c.txn(&op, ops).await?.ok();
        Ok(())
    }

    async fn put_fenced(&self, key: &str, value: &[u8], fence: &Leadership) -> Result<Version> {
        let set = json!({"KV": {"Verb": "set", "Key": key, "Value": B64.encode(value)}});
        let r = self.fenced_txn(key, fence, set, "write").await?;
        Ok(ConsulClient::result_index(&r, key))
    }

    async fn delete_fenced(&self, key: &str, fence: &Leadership) -> Result<()> {
        // `delete` is a no-op for an absent key.
        let delete = json!({"KV": {"Verb": "delete", "Key": key}});
        self.fenced_txn(key, fence, delete, "delete")
            .await
            .map(drop)
    }

    async fn register(&self, session: &Session, reg: &Registration) -> Result<()> {
        self.register_with_status(session, reg, Health::Passing)
            .await
    }

    async fn register_with_status(
        &self,
        _session: &Session,
        reg: &Registration,
        status: Health,
    ) -> Result<()> {
        let op = format!("registering service {}/{}", reg.name, reg.id);
        let body = json!({
            "ID": reg.id,
            "Name": reg.name,
            "Address": reg.address,
            "Port": reg.port,
            "Tags": reg.tags,
            "Meta": reg.meta,
            "Check": {
                "CheckID": format!("service:{}", reg.id),
                "Name": format!("cntnr TTL check of {}", reg.id),
                "TTL": format!("{}ms", reg.check_ttl.as_millis()),
                "Status": status.as_str(),
                "DeregisterCriticalServiceAfter": format!("{}ms", reg.deregister_after.as_millis()),
            },
        });
        self.c
            .send(
                &op,
                self.c
                    .req(Method::PUT, "/v1/agent/service/register")
                    .json(&body),
                &[],
            )
            .await?;
        Ok(())
    }

    async fn set_check(
        &self,
        _session: &Session,
        name: &str,
        id: &str,
        health: Health,
        output: &str,
    ) -> Result<()> {
        let op = format!("updating check of {name}/{id}");
        let body = json!({"Status": health.as_str(), "Output": output});
        self.c
            .send(
                &op,
                self.c
                    .req(
                        Method::PUT,
                        &format!("/v1/agent/check/update/service:{}", enc_path(id)),
                    )
                    .json(&body),
                &[],
            )
            .await?;
        Ok(())
    }

    async fn deregister(&self, name: &str, id: &str) -> Result<()> {
        let done = self.deregister_instance(name, id).await?;
        if !done.removed() {
            tracing::debug!(service = %name, instance = %id,
                "deregistering: no such instance on the local agent or in the catalog");
        }
        Ok(())
    }

    async fn instances(&self, name: &str, passing_only: bool) -> Result<Vec<ServiceInstance>> {
        Ok(self.health(name, passing_only, None).await?.0)
    }

    async fn service_names(&self) -> Result<BTreeSet<String>> {
        // `/v1/agent/services`: instance id → the local agent's definition;
        // only the name (`Service`) is needed.
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct AgentService {
            service: String,
            #[serde(default)]
            meta: Option<BTreeMap<String, String>>,
        }
        let op = "listing the local agent's services";
        let resp = self
            .c
            .send(op, self.c.req(Method::GET, "/v1/agent/services"), &[])
            .await?;
        let services: BTreeMap<String, AgentService> = ConsulClient::json(op, resp).await?;
        // Sessions' liveness services are not registry entries.
        Ok(services
            .into_values()
            .filter(|s| {
                s.meta
                    .as_ref()
                    .and_then(|m| m.get(LIVENESS_META))
                    .map(String::as_str)
                    != Some("session-liveness")
            })
            .map(|s| s.service)
            .collect())
    }

    fn watch_service(&self, name: &str, passing_only: bool) -> ServiceStream {
        let this = self.clone();
        let name = name.to_string();
        spawn_stream(move |tx| async move {
            let mut index: Option<u64> = None;
            let mut last: Option<Vec<ServiceInstance>> = None;
            let mut backoff = watch_backoff();
            loop {
                let block = index.map(|i| (i, this.jittered_wait()));
                let started = Instant::now();
                match this.health(&name, passing_only, block).await {
                    Ok((list, new_index)) => {
                        backoff = watch_backoff();
                        // Reset on a backwards index (Consul docs).
                        index = Some(if index.is_some_and(|i| new_index < i) {
                            0
                        } else {
                            new_index
                        });
                        if last.as_ref() != Some(&list) {
                            last = Some(list.clone());
                            if tx.send(Ok(list)).await.is_err() {
                                return;
                            }
                        } else if started.elapsed() < Duration::from_millis(50) {
                            // Fast return with nothing new: rate-limit.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(service = %name, error = %e, ?delay, "service watch failed; retrying");
                        if !e.is_retryable() && tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_never_printed() {
        let opts = ConnectOptions {
            consul_token: Some(Secret::new("s3cr3t-token")),
            ..Default::default()
        };
        let c = ConsulClient::new("127.0.0.1:8500", false, &opts).unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("s3cr3t-token") && s.contains("redacted"), "{s}");
    }

    #[test]
    fn keys_are_path_encoded() {
        assert_eq!(enc_path("cntnr/a b/%x?"), "cntnr/a%20b/%25x%3F");
    }
}
