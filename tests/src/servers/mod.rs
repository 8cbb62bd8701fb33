//! Real etcd and Consul servers for tests: owned instances and one shared
//! instance of each per test binary.

mod consul;
mod deps;
mod etcd;
mod http;
mod instance;
mod ports;
mod supervisor;
mod tls;

use std::sync::OnceLock;
use std::time::Duration;

pub use consul::Consul;
pub use deps::{dep_bin, workspace_root};
pub use etcd::Etcd;
pub use tls::TlsFiles;

/// How long a server may take to answer after it was started.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a start is retried when another process took one of the ports
/// between picking it and the server binding it.
pub(crate) const PORT_RACE_ATTEMPTS: u32 = 5;

/// The etcd server shared by every test of this test binary.
///
/// Started on first use; stopped, and its directory removed, when the test
/// binary exits. Tests sharing it must use distinct key prefixes. Never stop,
/// restart or pause it: use [`Etcd::start`] for that.
pub fn shared_etcd() -> &'static Etcd {
    static ETCD: OnceLock<Etcd> = OnceLock::new();
    ETCD.get_or_init(Etcd::start)
}

/// The Consul agent (`-dev`, in memory) shared by every test of this test
/// binary.
///
/// Started on first use; stopped when the test binary exits. Tests sharing it
/// must use distinct key prefixes and service names. Never stop, restart or
/// pause it: use [`Consul::start`] or [`Consul::start_dev`] for that.
pub fn shared_consul() -> &'static Consul {
    static CONSUL: OnceLock<Consul> = OnceLock::new();
    CONSUL.get_or_init(Consul::start_dev)
}
