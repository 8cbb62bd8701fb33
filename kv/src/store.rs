//! The one contract every backend implements: KV, watch, sessions, locks
//! with fencing, and the service registry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::session::Session;
use crate::Result;

/// Opaque per-key version: etcd `mod_revision`, Consul `ModifyIndex`, dir
/// store clock. Strictly increases with every write of the same key (a key
/// deleted and re-created also gets a larger version), so it can be used for
/// compare-and-set and to order events.
pub type Version = u64;

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The full key.
    pub key: String,
    /// The value, as bytes.
    pub value: Vec<u8>,
    /// The version of this value.
    pub version: Version,
}

/// The state of a prefix at one position: what `list` returns and what a
/// watch resumes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries under the prefix, keyed (and so sorted) by key.
    pub entries: BTreeMap<String, Entry>,
    /// Store position this snapshot is consistent with (etcd revision,
    /// Consul `X-Consul-Index`, dir clock). Positions are opaque; they only
    /// mean something to the backend that produced them.
    pub position: u64,
}

impl Snapshot {
    /// Entry for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// Created or updated; `value` is the new value.
    Put,
    /// Deleted (explicitly, by session/lease expiry, or seen missing after a
    /// re-list); `value` is empty.
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The full key.
    pub key: String,
    /// New value for a put, empty for a delete.
    pub value: Vec<u8>,
    /// Version of the put, or the position at which the delete was observed.
    pub version: Version,
    /// Store position after this event: pass the watch's state to resume.
    pub position: u64,
    /// True when the event was synthesized by diffing a re-list against the
    /// last known state (history was gone, or a level-based backend).
    pub synthetic: bool,
}

/// A stream of watch events. It ends only when dropped; transport failures
/// are retried inside with backoff. An `Err` item is informational (the
/// watch keeps going) except for non-retryable errors (bad key, auth),
/// after which the stream ends.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// Where a watch starts.
#[derive(Clone, Debug, Default)]
pub enum WatchFrom {
    /// List the prefix first and emit every entry as a synthetic put, then
    /// follow changes (kube-rs "initial list").
    #[default]
    Start,
    /// Resume from a snapshot the caller already has (e.g. from `list`):
    /// emit exactly the changes after `snapshot.position`. The snapshot is
    /// the state the caller knows, so a delete during a history gap is
    /// reported against it.
    Snapshot(Snapshot),
}

/// A held lock: the proof of leadership and its fencing token.
///
/// Leadership lasts until `resign`, until the session is closed or lost,
/// or until the lock key is deleted by someone else. It is not `Clone`:
/// exactly one owner resigns it.
pub struct Leadership {
    /// The lock key.
    pub key: String,
    /// Fencing token: etcd create-revision of the lock key, Consul
    /// `ModifyIndex` of the acquire, dir store clock at acquire. Greater
    /// for every later leadership of the same key.
    pub token: u64,
    /// The session holding the lock.
    pub session_id: String,
    pub(crate) session_lost: tokio::sync::watch::Receiver<bool>,
    /// Backend-private guard kept alive while leading (dir: the flock).
    pub(crate) guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("session_id", &self.session_id)
            .finish()
    }
}

impl Leadership {
    /// False once the session behind this leadership is known to be lost.
    /// A false here is definitive; a true is a hint only — fenced writes are
    /// what make leader-only writes safe.
    pub fn is_held(&self) -> bool {
        !*self.session_lost.borrow()
    }

    /// The error of a fenced write or delete of `key` this leadership no
    /// longer covers.
    pub(crate) fn fenced_out(&self, key: &str) -> crate::Error {
        crate::Error::FencedOut {
            key: key.into(),
            lock: self.key.clone(),
            token: self.token,
        }
    }

    /// Resolves when the session behind this leadership is lost.
    pub async fn lost(&self) {
        let mut rx = self.session_lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }
}

/// Who holds a lock now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The value the holder campaigned with (e.g. its node name).
    pub value: Vec<u8>,
    /// The holder's fencing token.
    pub token: u64,
    /// The holder's session id.
    pub session_id: String,
}

/// Health of a registered instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving.
    Passing,
    /// Serving, degraded.
    Warning,
    /// Not serving.
    Critical,
}

impl Health {
    /// The Consul spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    pub(crate) fn parse(s: &str) -> Health {
        match s {
            "passing" => Health::Passing,
            "warning" => Health::Warning,
            _ => Health::Critical,
        }
    }
}

/// A service instance to register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Service name (e.g. `shop-web`).
    pub name: String,
    /// Instance id, unique per service (SPEC: `<node>/<container id>`).
    pub id: String,
    /// Address clients connect to.
    pub address: String,
    /// Port clients connect to.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
    /// TTL of the instance's check: if its status is not refreshed with
    /// `set_check` within this time, it counts as critical.
    pub check_ttl: Duration,
    /// Consul only: the agent deregisters the instance after it has been
    /// critical this long (`DeregisterCriticalServiceAfter`).
    pub deregister_after: Duration,
}

/// A registered instance as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstance {
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Aggregated health (worst of its checks; a TTL that ran out is critical).
    pub health: Health,
}

/// A stream of full instance lists for one service, one item per change
/// (the first item is the current list). Sorted by instance id.
pub type ServiceStream = BoxStream<'static, Result<Vec<ServiceInstance>>>;

/// The store contract. Use as `Arc<dyn Store>`.
///
/// Unless a method says otherwise: a call that fails with a retryable error
/// (see [`crate::Error::is_retryable`]) may or may not have been applied,
/// and is safe to repeat when the method is idempotent; calls do not retry
/// internally (watches and session keepalives do).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which backend this is (`etcd`, `consul`, `dir`), for logs.
    fn backend(&self) -> &'static str;

    /// Reads one key. Idempotent. Returns `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<Entry>>;

    /// Reads every key under `prefix` (a plain string prefix; use a trailing
    /// `/` to mean a directory), with the position the read is consistent
    /// with. Idempotent.
    async fn list(&self, prefix: &str) -> Result<Snapshot>;

    /// Writes `key` unconditionally; returns its new version. Idempotent in
    /// effect (the value is the same after a repeat, the version is newer).
    async fn put(&self, key: &str, value: &[u8]) -> Result<Version>;

    /// Writes `key` only if its version is `expected` (`None`: only if it
    /// does not exist). Fails with `CasConflict` otherwise. Not idempotent:
    /// after a timeout, `get` to learn whether it was applied.
    async fn cas(&self, key: &str, value: &[u8], expected: Option<Version>) -> Result<Version>;

    /// Deletes `key`; absent is fine. Idempotent.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Deletes every key under `prefix`. Idempotent. `prefix` must not be
    /// empty.
    async fn delete_prefix(&self, prefix: &str) -> Result<()>;

    /// Follows every change under `prefix` from `from`, in version order,
    /// each change once. One long-lived request per call (etcd watch stream,
    /// one Consul blocking query at a time, inotify for dir). Reconnects with
    /// backoff and resumes where it was; when history is gone it re-lists and
    /// emits the difference (including deletes) as synthetic events.
    ///
    /// etcd reports every revision. Consul and dir are level-based: writes to
    /// one key between two reads collapse into the last one; nothing is
    /// repeated and nothing is missed as a final state.
    fn watch(&self, prefix: &str, from: WatchFrom) -> WatchStream;

    /// Creates a session with `ttl` (etcd lease, Consul session with
    /// behavior `delete`, dir session record) and starts its background
    /// keepalive. Not idempotent (each call is a new session). Consul
    /// requires `ttl` ≥ 10s and rounds as it likes.
    async fn create_session(&self, ttl: Duration) -> Result<Session>;

    /// Writes `key` bound to `session`: the key is deleted when the session
    /// is closed, expires or is lost. Idempotent for the same session.
    /// Fails with `SessionLost` if the session is known lost.
    async fn put_bound(&self, session: &Session, key: &str, value: &[u8]) -> Result<Version>;

    /// Campaigns for the lock `key` under `session`, storing `value` as the
    /// holder's value; waits (without polling the server in a loop) until
    /// held, or fails with `SessionLost`. Cancel-safe: dropping the future
    /// stops campaigning (a lock acquired at that instant is released when
    /// the session ends). Consul lock-delay is waited out with a timer.
    async fn campaign(&self, session: &Session, key: &str, value: &[u8]) -> Result<Leadership>;

    /// Reads who holds lock `key`, if anyone. Idempotent. To follow changes,
    /// `watch` the key.
    async fn holder(&self, key: &str) -> Result<Option<Holder>>;

    /// Gives up `leadership` (deletes the lock key if still ours). Idempotent
    /// in effect: resigning a lost leadership succeeds.
    async fn resign(&self, leadership: Leadership) -> Result<()>;

    /// Writes `key` only while `fence` still holds (etcd: the lock key's
    /// create-revision equals the token; Consul: the lock key is still held
    /// by the session at the token's index; dir: flock held and the lock
    /// file's version equals the token). Fails with `FencedOut` otherwise.
    /// Safe to repeat.
    async fn put_fenced(&self, key: &str, value: &[u8], fence: &Leadership) -> Result<Version>;

    /// Deletes `key` only while `fence` still holds, checked by the server
    /// in the same atomic step as the delete, exactly as for
    /// [`Store::put_fenced`] (etcd: txn comparing the lock key's
    /// create-revision with the token; Consul: txn `check-session` +
    /// `check-index` on the lock key, then `delete`; dir: flock held and the
    /// lock file's version equals the token, under the writer lock). An
    /// absent key is fine while the fence holds. Fails with `FencedOut`
    /// otherwise, and then the key is left as it was. Safe to repeat.
    async fn delete_fenced(&self, key: &str, fence: &Leadership) -> Result<()>;

    /// Registers (or re-registers) a service instance with status passing.
    /// Idempotent. Consul: local agent, `session` unused (the agent owns
    /// the instance; `deregister_after` cleans it up). etcd/dir: a JSON
    /// record under `<registry prefix>/<name>/<id>` bound to `session`.
    async fn register(&self, session: &Session, reg: &Registration) -> Result<()>;

    /// Like [`Store::register`], but with check status `status` from the
    /// start (critical for an instance whose first check has not passed
    /// yet), so it is never seen passing before it is ready. Idempotent.
    /// Consul and etcd do it in one write; the default registers and then
    /// sets the check.
    async fn register_with_status(
        &self,
        session: &Session,
        reg: &Registration,
        status: Health,
    ) -> Result<()> {
        self.register(session, reg).await?;
        if status != Health::Passing {
            self.set_check(session, &reg.name, &reg.id, status, "")
                .await?;
        }
        Ok(())
    }

    /// Sets the instance's TTL check status with an output line. Idempotent.
    /// Must be repeated within `check_ttl` to stay passing.
    async fn set_check(
        &self,
        session: &Session,
        name: &str,
        id: &str,
        health: Health,
        output: &str,
    ) -> Result<()>;

    /// Removes a service instance. Idempotent: an instance that is not
    /// there is fine. Consul: through the local agent's API when the
    /// instance is on the local agent's node (or in no node's catalog), and
    /// through the catalog (`/v1/catalog/deregister`) when another node
    /// holds it — the entry of a host whose Consul agent died with it, which
    /// no agent would otherwise remove until Consul reaps the node.
    /// etcd/dir: deletes the record.
    async fn deregister(&self, name: &str, id: &str) -> Result<()>;

    /// Lists the instances of `name` (Consul: `/v1/health/service`), only
    /// passing ones when `passing_only`. Sorted by id. Idempotent.
    async fn instances(&self, name: &str, passing_only: bool) -> Result<Vec<ServiceInstance>>;

    /// Names of the services with at least one instance this store handle
    /// can deregister, whoever registered it: the starting point for
    /// cleaning up entries whose names are no longer known (an agent that
    /// restarts after a project was removed). Idempotent; filter the
    /// instances (`instances(name, false)`) by id and meta before touching
    /// any. Consul: the services registered with the local agent
    /// (`/v1/agent/services`), not the whole catalog (`deregister` reaches
    /// other nodes' entries too, given their name). etcd/dir: every `<name>` with an instance record
    /// under the registry prefix.
    async fn service_names(&self) -> Result<BTreeSet<String>>;

    /// Follows the instances of `name`: yields the full list on every
    /// change (first item: current list). Never fatal; reconnects inside.
    fn watch_service(&self, name: &str, passing_only: bool) -> ServiceStream;
}

/// Shared store handle.
pub type DynStore = Arc<dyn Store>;
