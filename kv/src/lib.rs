//! cntnr-kv: one async contract for everything the agent knows about the
//! cluster — KV get/list/put/CAS/delete, resumable prefix watches, sessions
//! (Consul sessions, etcd leases), locks/elections with fencing tokens, and a
//! service registry — with three backends: `consul` (our own client on
//! reqwest), `etcd` (etcd-client) and `dir` (the embedded single-host store).
//!
//! Not built yet: this crate is filled in by the store-layer issue.
