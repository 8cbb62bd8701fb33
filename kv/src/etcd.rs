//! The etcd backend (etcd v3 API through etcd-client).
//!
//! Versions are `mod_revision`s, positions are store revisions. Sessions are
//! leases; locks are a txn on the lock key's create-revision (the fencing
//! token); the registry is JSON records bound to the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, EventType, GetOptions, Identity, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::Mutex;

use crate::registry;
use crate::session::{Session, SessionOps};
use crate::store::{
    Entry, EventKind, Health, Holder, Leadership, Registration, ServiceInstance, ServiceStream,
    Snapshot, Store, Version, WatchEvent, WatchFrom, WatchStream,
};
use crate::url::ConnectOptions;
use crate::watch::{check_key, diff, spawn_stream, watch_backoff};
use crate::{Error, Result};

/// A connected etcd store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    registry_prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

pub(crate) fn map_err(op: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => {
            use tonic_code::*;
            let msg = s.message().to_string();
            let code = s.code() as i32;
            if code == UNAUTHENTICATED
                || code == PERMISSION_DENIED
                || msg.contains("authentication failed")
                || msg.contains("permission denied")
                || msg.contains("user name is empty")
                || msg.contains("invalid auth token")
            {
                Error::Auth {
                    op: op.into(),
                    message: msg,
                }
            } else if matches!(
                code,
                UNAVAILABLE
                    | DEADLINE_EXCEEDED
                    | ABORTED
                    | RESOURCE_EXHAUSTED
                    | CANCELLED
                    | UNKNOWN
            ) {
                Error::Unavailable {
                    op: op.into(),
                    message: msg,
                }
            } else {
                Error::Server {
                    op: op.into(),
                    message: msg,
                    retryable: false,
                }
            }
        }
        E::TransportError(t) => Error::Unavailable {
            op: op.into(),
            message: error_chain(&t),
        },
        E::IoError(io) => Error::Unavailable {
            op: op.into(),
            message: io.to_string(),
        },
        E::WatchError(m) | E::LeaseKeepAliveError(m) => Error::Unavailable {
            op: op.into(),
            message: m,
        },
        other => Error::Server {
            op: op.into(),
            message: other.to_string(),
            retryable: false,
        },
    }
}

/// gRPC status codes (numeric, so we need no direct tonic dependency).
mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn entry(kv: &KeyValue) -> Result<Entry> {
    let key = String::from_utf8(kv.key().to_vec()).map_err(|_| Error::Decode {
        what: "etcd key".into(),
        message: "not UTF-8".into(),
    })?;
    Ok(Entry {
        key,
        value: kv.value().to_vec(),
        version: kv.mod_revision() as u64,
    })
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("reading", path, e))
}

impl EtcdStore {
    /// Connects, retrying with backoff while the cluster is unreachable
    /// (logging what it waits for) until `opts.connect_timeout`. Bad
    /// credentials or TLS files fail at once.
    pub async fn connect(
        endpoints: &[String],
        tls: bool,
        opts: &ConnectOptions,
    ) -> Result<EtcdStore> {
        let scheme = if tls { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let mut copts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((user, pw)) = &opts.etcd_user {
            // etcd's simple auth tokens expire (5 min idle by default): refresh.
            copts = copts
                .with_user(user.clone(), pw.expose().to_string())
                .with_auto_token_refresh(true);
        }
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &opts.ca {
                let pem = read_file(ca)?;
                if !crate::url::looks_like_pem_cert(&pem) {
                    return Err(Error::BadUrl {
                        url: format!("etcd+https://{}", endpoints.join(",")),
                        reason: format!("CA file {} holds no PEM certificate", ca.display()),
                    });
                }
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            match (&opts.cert, &opts.key) {
                (Some(c), Some(k)) => {
                    t = t.identity(Identity::from_pem(read_file(c)?, read_file(k)?))
                }
                (None, None) => {}
                _ => {
                    return Err(Error::BadUrl {
                        url: format!("etcd+https://{}", endpoints.join(",")),
                        reason: "--cert and --key must be given together".into(),
                    })
                }
            }
            copts = copts.with_tls(t);
        }
        let what = format!("etcd at {}", endpoints.join(","));
        let attempt = || async {
            let mut c = Client::connect(&urls, Some(copts.clone()))
                .await
                .map_err(|e| map_err("connecting", e).tls_refusal(&what))?;
            c.status()
                .await
                .map_err(|e| map_err("connecting", e).tls_refusal(&what))?;
            Ok::<_, Error>(c)
        };
        let client = crate::connect::retry_connect(&what, opts.connect_timeout, attempt).await?;
        Ok(EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
            registry_prefix: opts.registry_prefix.clone(),
        })
    }

    /// The underlying client (for tests and tools).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn list_at(&self, prefix: &str) -> Result<Snapshot> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| map_err(&format!("listing {prefix}"), e))?;
        let mut entries = BTreeMap::new();
        for kv in resp.kvs() {
            let e = entry(kv)?;
            entries.insert(e.key.clone(), e);
        }
        let position = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
        Ok(Snapshot { entries, position })
    }

    async fn txn(&self, op: &str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let mut kv = self.client.kv_client();
        kv.txn(txn).await.map_err(|e| map_err(op, e))
    }

    /// `op` on `key`, only while `fence`'s lock key still has the
    /// create-revision it was won at (its token); `FencedOut` otherwise.
    async fn fenced_txn(
        &self,
        key: &str,
        fence: &Leadership,
        op: TxnOp,
        what: &str,
    ) -> Result<etcd_client::TxnResponse> {
        check_key(key)?;
        if !fence.is_held() {
            return Err(fence.fenced_out(key));
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                fence.key.as_str(),
                CompareOp::Equal,
                fence.token as i64,
            )])
            .and_then([op]);
        let resp = self.txn(&format!("fenced {what} of {key}"), txn).await?;
        if !resp.succeeded() {
            return Err(fence.fenced_out(key));
        }
        Ok(resp)
    }

    async fn lease_id(session: &Session) -> Result<i64> {
        session.ensure_alive()?;
        session.id().parse::<i64>().map_err(|_| Error::SessionLost {
            id: session.id().into(),
        })
    }

    /// Waits until `key` is deleted after `rev`, or the session is lost.
    async fn wait_deleted(&self, key: &str, rev: u64, session: &Session) -> Result<()> {
        let mut w = self.client.watch_client();
        let mut stream = w
            .watch(
                key,
                Some(WatchOptions::new().with_start_revision(rev as i64 + 1)),
            )
            .await
            .map_err(|e| map_err(&format!("watching lock {key}"), e))?;
        loop {
            tokio::select! {
                _ = session.lost() => return Err(Error::SessionLost { id: session.id().into() }),
                msg = stream.message() => {
                    match msg.map_err(|e| map_err(&format!("watching lock {key}"), e))? {
                        None => return Ok(()), // stream ended: re-check
                        Some(r) => {
                            if r.canceled() || r.events().iter().any(|e| e.event_type() == EventType::Delete) {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }
}

struct EtcdSession {
    client: Client,
    keeper: Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

#[async_trait]
impl SessionOps for EtcdSession {
    async fn renew(&self, id: &str) -> Result<bool> {
        let lease: i64 = id.parse().unwrap_or_default();
        let mut guard = self.keeper.lock().await;
        if guard.is_none() {
            let mut lc = self.client.lease_client();
            *guard = Some(
                lc.keep_alive(lease)
                    .await
                    .map_err(|e| map_err("renewing lease", e))?,
            );
        }
        let (keeper, stream) = guard.as_mut().expect("keeper set");
        let res = async {
            keeper.keep_alive().await?;
            stream.message().await
        }
        .await;
        match res {
            Ok(Some(r)) => Ok(r.ttl() > 0),
            Ok(None) => {
                *guard = None;
                Err(Error::Unavailable {
                    op: "renewing lease".into(),
                    message: "keepalive stream ended".into(),
                })
            }
            Err(e) => {
                *guard = None;
                Err(map_err("renewing lease", e))
            }
        }
    }

    async fn revoke(&self, id: &str) -> Result<()> {
        let lease: i64 = id.parse().unwrap_or_default();
        let mut lc = self.client.lease_client();
        match lc.revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(map_err("revoking lease", e)),
        }
    }
}

/// States of an etcd watch (kube-rs watcher style).
enum WatchState {
    /// History is unknown or gone: list the prefix and emit the difference
    /// against `known` (empty at start: every entry is a put).
    Relist { known: BTreeMap<String, Entry> },
    /// Following one watch stream from `rev + 1`, `state` being the prefix
    /// as of `rev`.
    Watching {
        state: BTreeMap<String, Entry>,
        rev: u64,
    },
}

/// What ended one watch stream.
enum StreamEnd {
    /// The consumer is gone.
    Closed,
    /// `ErrCompacted`: the revision to resume from is gone.
    Compacted,
    /// Transport failure, server restart, cancel: reopen from the same
    /// revision after a backoff.
    Broken,
}

/// etcd watch: `Relist` → `Watching` → (stream broken: back off, reopen
/// from the last revision seen, so nothing is lost or repeated) or
/// (`ErrCompacted`: `Relist` against the last known state, so deletes in the
/// gap are still reported, as synthetic events).
fn etcd_watch(store: EtcdStore, prefix: String, from: WatchFrom) -> WatchStream {
    spawn_stream(move |tx| async move {
        let mut st = match from {
            WatchFrom::Start => WatchState::Relist {
                known: BTreeMap::new(),
            },
            WatchFrom::Snapshot(s) => WatchState::Watching {
                state: s.entries,
                rev: s.position,
            },
        };
        let mut backoff = watch_backoff();
        loop {
            st = match st {
                WatchState::Relist { known } => match store.list_at(&prefix).await {
                    Ok(snap) => {
                        for ev in diff(&known, &snap.entries, snap.position, true) {
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                        backoff = watch_backoff();
                        WatchState::Watching {
                            state: snap.entries,
                            rev: snap.position,
                        }
                    }
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                        tracing::warn!(%prefix, error = %e, ?delay, "etcd list for watch failed; retrying");
                        if !e.is_retryable() && tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        WatchState::Relist { known }
                    }
                },
                WatchState::Watching { mut state, mut rev } => {
                    let mut progressed = false;
                    let end =
                        follow(&store, &prefix, &mut state, &mut rev, &tx, &mut progressed).await;
                    if progressed {
                        backoff = watch_backoff();
                    }
                    match end {
                        StreamEnd::Closed => return,
                        StreamEnd::Compacted => {
                            tracing::warn!(%prefix, from = rev + 1, "etcd history compacted; relisting against last known state");
                            WatchState::Relist { known: state }
                        }
                        StreamEnd::Broken => {
                            let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                            tracing::warn!(%prefix, ?delay, "etcd watch broke; resuming from revision {}", rev + 1);
                            tokio::time::sleep(delay).await;
                            WatchState::Watching { state, rev }
                        }
                    }
                }
            };
        }
    })
}

/// Opens one watch stream from `rev + 1` and forwards its events, keeping
/// `state` and `rev` up to date, until the stream ends.
async fn follow(
    store: &EtcdStore,
    prefix: &str,
    state: &mut BTreeMap<String, Entry>,
    rev: &mut u64,
    tx: &tokio::sync::mpsc::Sender<Result<WatchEvent>>,
    progressed: &mut bool,
) -> StreamEnd {
    let mut wc = store.client.watch_client();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*rev as i64 + 1);
    let mut stream = match wc.watch(prefix, Some(opts)).await {
        Ok(s) => s,
        Err(e) => {
            let e = map_err(&format!("watching {prefix}"), e);
            tracing::warn!(%prefix, error = %e, "etcd watch failed to open");
            if !e.is_retryable() && tx.send(Err(e)).await.is_err() {
                return StreamEnd::Closed;
            }
            return StreamEnd::Broken;
        }
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return StreamEnd::Broken,
            Err(e) => {
                tracing::debug!(%prefix, error = %map_err("watching", e), "etcd watch stream error");
                return StreamEnd::Broken;
            }
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return StreamEnd::Compacted;
            }
            tracing::warn!(%prefix, reason = resp.cancel_reason(), "etcd watch canceled");
            return StreamEnd::Broken;
        }
        *progressed = true;
        let events = resp.events();
        for (i, ev) in events.iter().enumerate() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(e) = entry(kv) else {
                tracing::warn!(%prefix, "skipping non-UTF-8 key in watch");
                continue;
            };
            let r = e.version;
            // Events of one revision (a txn) arrive together; the position
            // only reaches `r` with the last of them, so resuming from any
            // event's position never skips the rest of its revision.
            let last_of_rev = events
                .get(i + 1)
                .and_then(|n| n.kv())
                .is_none_or(|n| n.mod_revision() as u64 != r);
            let position = if last_of_rev { r } else { r - 1 };
            let out = match ev.event_type() {
                EventType::Put => {
                    state.insert(e.key.clone(), e.clone());
                    WatchEvent {
                        kind: EventKind::Put,
                        key: e.key,
                        value: e.value,
                        version: r,
                        position,
                        synthetic: false,
                    }
                }
                EventType::Delete => {
                    state.remove(&e.key);
                    WatchEvent {
                        kind: EventKind::Delete,
                        key: e.key,
                        value: Vec::new(),
                        version: r,
                        position,
                        synthetic: false,
                    }
                }
            };
            *rev = (*rev).max(position);
            if tx.send(Ok(out)).await.is_err() {
                return StreamEnd::Closed;
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        check_key(key)?;
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(key, None)
            .await
            .map_err(|e| map_err(&format!("reading {key}"), e))?;
        resp.kvs().first().map(entry).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot> {
        self.list_at(prefix).await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Version> {
        check_key(key)?;
        let mut kv = self.client.kv_client();
        let resp = kv
            .put(key, value, None)
            .await
            .map_err(|e| map_err(&format!("writing {key}"), e))?;
        Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0))
    }

    async fn cas(&self, key: &str, value: &[u8], expected: Option<Version>) -> Result<Version> {
        check_key(key)?;
        let cmp = match expected {
            None => Compare::create_revision(key, CompareOp::Equal, 0),
            Some(v) => Compare::mod_revision(key, CompareOp::Equal, v as i64),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(&format!("compare-and-set {key}"), txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision() as u64),
            _ => None,
        });
        Err(Error::CasConflict {
            key: key.into(),
            expected,
            current,
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let mut kv = self.client.kv_client();
        kv.delete(key, None)
            .await
            .map_err(|e| map_err(&format!("deleting {key}"), e))?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::bad_key(prefix, "refusing to delete an empty prefix"));
        }
        let mut kv = self.client.kv_client();
        kv.delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| map_err(&format!("deleting prefix {prefix}"), e))?;
        Ok(())
    }

    fn watch(&self, prefix: &str, from: WatchFrom) -> WatchStream {
        etcd_watch(self.clone(), prefix.to_string(), from)
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        let secs = ttl.as_secs().max(1) as i64;
        let mut lc = self.client.lease_client();
        let resp = lc
            .grant(secs, None)
            .await
            .map_err(|e| map_err("granting lease", e))?;
        let ops = Arc::new(EtcdSession {
            client: self.client.clone(),
            keeper: Mutex::new(None),
        });
        Ok(Session::start(
            resp.id().to_string(),
            Duration::from_secs(resp.ttl().max(1) as u64),
            ops,
        ))
    }

    async fn put_bound(&self, session: &Session, key: &str, value: &[u8]) -> Result<Version> {
        check_key(key)?;
        let lease = Self::lease_id(session).await?;
        let mut kv = self.client.kv_client();
        match kv
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
        {
            Ok(resp) => Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0)),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Err(Error::SessionLost {
                    id: session.id().into(),
                })
            }
            Err(e) => Err(map_err(&format!("writing {key}"), e)),
        }
    }

    async fn campaign(&self, session: &Session, key: &str, value: &[u8]) -> Result<Leadership> {
        check_key(key)?;
        loop {
            let lease = Self::lease_id(session).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = match self.txn(&format!("campaigning for {key}"), txn).await {
                Err(Error::Server { message, .. }) if message.contains("lease not found") => {
                    return Err(Error::SessionLost {
                        id: session.id().into(),
                    })
                }
                r => r?,
            };
            let rev = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
            let token = if resp.succeeded() {
                Some(rev)
            } else {
                // Already ours (a repeated campaign after a timeout)?
                resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .filter(|kv| kv.lease() == lease)
                        .map(|kv| kv.create_revision() as u64),
                    _ => None,
                })
            };
            if let Some(token) = token {
                return Ok(Leadership {
                    key: key.into(),
                    token,
                    session_id: session.id().into(),
                    session_lost: session.lost_watch(),
                    guard: None,
                });
            }
            self.wait_deleted(key, rev, session).await?;
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>> {
        check_key(key)?;
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(key, None)
            .await
            .map_err(|e| map_err(&format!("reading lock {key}"), e))?;
        Ok(resp.kvs().first().map(|kv| Holder {
            value: kv.value().to_vec(),
            token: kv.create_revision() as u64,
            session_id: kv.lease().to_string(),
        }))
    }

    async fn resign(&self, leadership: Leadership) -> Result<()> {
        let key = leadership.key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key,
                CompareOp::Equal,
                leadership.token as i64,
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(&format!("resigning {key}"), txn).await?;
        Ok(())
    }

    async fn put_fenced(&self, key: &str, value: &[u8], fence: &Leadership) -> Result<Version> {
        let resp = self
            .fenced_txn(key, fence, TxnOp::put(key, value, None), "write")
            .await?;
        Ok(resp.header().map(|h| h.revision() as u64).unwrap_or(0))
    }

    async fn delete_fenced(&self, key: &str, fence: &Leadership) -> Result<()> {
        // Deleting an absent key succeeds.
        self.fenced_txn(key, fence, TxnOp::delete(key, None), "delete")
            .await
            .map(drop)
    }

    async fn register(&self, session: &Session, reg: &Registration) -> Result<()> {
        registry::register_record(self, &self.registry_prefix, session, reg).await
    }

    async fn register_with_status(
        &self,
        session: &Session,
        reg: &Registration,
        status: Health,
    ) -> Result<()> {
        registry::register_record_with(self, &self.registry_prefix, session, reg, status).await
    }

    async fn set_check(
        &self,
        session: &Session,
        name: &str,
        id: &str,
        health: Health,
        output: &str,
    ) -> Result<()> {
        registry::set_check_record(
            self,
            &self.registry_prefix,
            session,
            (name, id),
            health,
            output,
        )
        .await
    }

    async fn deregister(&self, name: &str, id: &str) -> Result<()> {
        let key = registry::record_key(&self.registry_prefix, name, id)?;
        self.delete(&key).await
    }

    async fn instances(&self, name: &str, passing_only: bool) -> Result<Vec<ServiceInstance>> {
        let snap = self
            .list_at(&registry::service_prefix(&self.registry_prefix, name))
            .await?;
        Ok(registry::instances(&snap, passing_only))
    }

    async fn service_names(&self) -> Result<BTreeSet<String>> {
        let root = registry::registry_root(&self.registry_prefix);
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(
                root.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(|e| map_err(&format!("listing service names under {root}"), e))?;
        let keys: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        Ok(registry::service_names(
            &self.registry_prefix,
            keys.iter().map(String::as_str),
        ))
    }

    fn watch_service(&self, name: &str, passing_only: bool) -> ServiceStream {
        let prefix = registry::service_prefix(&self.registry_prefix, name);
        registry::service_stream(self.clone(), prefix, passing_only, Duration::from_secs(1))
    }
}
