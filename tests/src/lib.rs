//! cntnr-e2e: end-to-end tests that drive the built binaries as an operator
//! would, and the shared harness that starts real etcd and Consul servers for
//! every integration test in the workspace.
//!
//! # The harness
//!
//! ```no_run
//! use cntnr_e2e::{shared_consul, shared_etcd, Etcd};
//!
//! // One server per test binary, started on first use and stopped when the
//! // test binary exits (however it exits).
//! let etcd = shared_etcd();
//! let out = etcd.etcdctl(&["put", "k", "v"]);
//! assert!(out.status.success());
//! let consul = shared_consul();
//! println!("{}", consul.store_url());
//!
//! // An owned server, for tests that stop, restart or pause it.
//! let mut own = Etcd::start();
//! own.stop();
//! own.restart();
//! ```
//!
//! The harness is blocking and needs no async runtime, so it works the same
//! from `#[test]` and `#[tokio::test]`. Servers listen on 127.0.0.1 only, on
//! ports picked free at start. Binaries come from `scripts/install-deps.sh`
//! (see [`dep_bin`]).
//!
//! Cleanup does not rely on destructors, which never run for statics or
//! after SIGKILL: each server runs under a small `sh` supervisor whose stdin
//! is a pipe held by the test process. When the test process ends, the
//! kernel closes the pipe, the supervisor reads EOF, stops the server and
//! removes its temporary directory.

pub mod host;
pub mod servers;

pub use servers::{dep_bin, shared_consul, shared_etcd, workspace_root, Consul, Etcd, TlsFiles};
