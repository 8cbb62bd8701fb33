//! cntnr-kv: one async contract for everything the agent knows about the
//! cluster — KV get/list/put/CAS/delete, resumable prefix watches, sessions
//! (Consul sessions, etcd leases), locks/elections with fencing tokens, and a
//! service registry — with three backends: `consul` (our own client on
//! reqwest), `etcd` (etcd-client) and `dir` (the embedded single-host store).
//!
//! Open a store with [`connect`] from a [`StoreUrl`]; use it as
//! [`DynStore`] (`Arc<dyn Store>`). The [`Store`] trait documents each
//! method's contract: idempotence, what a timeout leaves behind, what
//! session loss means.

pub mod connect;
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
