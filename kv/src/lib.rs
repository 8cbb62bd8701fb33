//! cntnr-kv: one async contract for everything the agent knows about the
//! cluster — KV get/list/put/CAS/delete, resumable prefix watches, sessions
//! (Consul sessions, etcd leases), locks/elections with fencing tokens, and a
//! service registry — with three backends: `consul` (our own client on
//! reqwest), `etcd` (etcd-client) and `dir` (the embedded single-host store).
//!
//! Open a store with [`connect()`] from a [`StoreUrl`]; use it as
//! [`DynStore`] (`Arc<dyn Store>`). The [`Store`] trait documents each
//! method's contract: idempotence, what a timeout leaves behind, what
//! session loss means.
//!
//! # Versions and positions
//! A key's [`Version`] is etcd's `mod_revision`, Consul's `ModifyIndex`, or
//! the dir store clock (the file's mtime in ns, see [`dir`]). A
//! [`Snapshot::position`] / [`WatchEvent::position`] is the store-wide
//! position (etcd revision, `X-Consul-Index`, dir clock) a state is
//! consistent with. Both are opaque `u64`s meaningful only to their backend.
//!
//! # Watches
//! [`Store::watch`] is an explicit state machine (kube-rs watcher style):
//! `Empty` → list and emit every entry → `Watching(state)` → follow changes.
//! Failures never end the stream: it backs off (backon, 100ms → 10s with
//! jitter) and resumes from its last position, so nothing is lost or
//! repeated. When history is gone (etcd `ErrCompacted`, a Consul index that
//! went backwards) it re-lists and emits the difference against its last
//! known state as `synthetic` events, deletes included.
//! - etcd: one watch stream per prefix from `revision + 1`; every revision
//!   is delivered.
//! - Consul: one blocking `?recurse&index&wait` query at a time, diffed
//!   against the previous result; an unchanged index emits nothing; a token
//!   bucket rate-limits fast returns; the wait carries jitter.
//! - dir: inotify wakes a scan (under the writer lock, so it is consistent),
//!   plus a periodic rescan as a safety net.
//!
//! Consul and dir are level-based: several writes to one key between two
//! reads arrive as one event with the latest value.
//!
//! # Sessions, locks, fencing
//! A [`Session`] is kept alive in the background and declared lost at once
//! when the server says so or a whole TTL passes without a successful
//! renewal. [`Store::campaign`] returns a [`Leadership`] whose `token`
//! fences [`Store::put_fenced`] and [`Store::delete_fenced`] on the server (etcd txn on the lock key's
//! create-revision; Consul txn `check-session` + `check-index`; dir flock +
//! lock-file version under the writer lock).

#![warn(missing_docs)]

mod connect;
pub mod consul;
pub mod dir;
mod error;
pub mod etcd;
mod registry;
mod session;
mod store;
mod url;
mod watch;

pub use connect::connect;
pub use error::{Error, Result};
pub use session::Session;
pub use store::{
    DynStore, Entry, EventKind, Health, Holder, Leadership, Registration, ServiceInstance,
    ServiceStream, Snapshot, Store, Version, WatchEvent, WatchFrom, WatchStream,
};
pub use url::{ConnectOptions, Secret, StoreUrl};
