//! cntnr-hook: container networking for cntnr, as an OCI hook driving CNI
//! plugins.
//!
//! runc calls the `cntnr-hook` binary at `createRuntime` (`cntnr-hook
//! create`: CNI ADD into the network namespace runc just created, found
//! through the pid in the OCI state on stdin) and at `poststop`
//! (`cntnr-hook delete`: CNI DEL). What to attach comes from the
//! container's annotation [`REQUEST_ANNOTATION`] ([`NetRequest`]); what was
//! attached goes to `<bundle>/cntnr-net.json` ([`NetResult`]).
//!
//! The library is also what the agent and the bundle builder use:
//! - [`oci_hooks`]: the `hooks` entries for `config.json`;
//! - [`conflist::ensure_network`] / [`conflist::release_network`]: a
//!   project network's subnet ([`alloc`]) and CNI config list;
//! - [`PortRequest::from_model`]: compose `ports:` into the request;
//! - [`hosts::hosts_file`] / [`hosts::write_atomic`]: service names;
//! - [`NetResult::read`]: the container's IPs and published ports.
//!
//! # Wiring it in
//!
//! The bundle builder, for a `network_mode: bridge` container (root only):
//! keep the `network` namespace without a path (runc creates it), set
//! `hooks` to [`oci_hooks`] (`createRuntime` → `cntnr-hook create`,
//! `poststop` → `cntnr-hook delete`, both with the timeout), add the
//! annotation from [`NetRequest::to_annotation`], mount
//! [`hosts::hosts_mount`] and make `/etc/hosts` a symlink into it. For
//! `host` and `none`: no hooks, no request.
//!
//! The agent (`cntnr-agent`'s `daemon::network`), per project network,
//! before creating containers:
//! [`conflist::ensure_network`] (subnet + config list, idempotent); per
//! container: a [`NetRequest`] with the service's networks in order (the
//! first gets `eth0` and the published ports, [`PortRequest::from_model`]);
//! after start: [`NetResult::read`] of `<bundle>/cntnr-net.json` (IPs,
//! chosen host ports) for registration and `cntnr ps`, and
//! [`hosts::hosts_file`] + [`hosts::write_atomic`] into
//! [`hosts::hosts_path`] of every container of the project whenever a
//! replica starts, stops or changes IP; on project removal, after its
//! containers: [`conflist::release_network`]. A create that fails with the
//! hook's error carries it in runc's message (`error running hook #0: …`).
//!
//! Rootless agents use no CNI (creating bridges, veths and iptables rules
//! needs root on the host): their containers share the host's network, and
//! the hook refuses to run without root.
//!
//! Host state the hook owns, and when it goes away:
//! - netns pin `<run-dir>/netns/<id>`, port claims
//!   `<state-dir>/net/ports/*`, the result file: per container, removed by DEL;
//! - the bridge `cn-<hash>`, its isolation rule and host-local's
//!   `/var/lib/cni/networks/<net>`: per network, removed by the DEL of its
//!   last container;
//! - the subnet allocation and conflist: per network, until the agent calls
//!   [`conflist::release_network`] (so a network keeps its subnet while its
//!   project exists).

pub mod alloc;
pub mod check;
pub mod cli;
pub mod cni;
pub mod conflist;
pub mod create;
pub mod delete;
pub mod firewall;
pub mod hooks;
pub mod hosts;
pub mod ipnet;
mod lock;
pub mod netns;
pub mod ports;
pub mod request;
pub mod state;

pub use hooks::{oci_hooks, HookOptions, FAILPOINT_ENV, TIMEOUT_ENV};
pub use ipnet::Ipv4Net;
pub use request::{
    ConflistSource, HostPortRange, NetRequest, NetResult, NetworkAttachment, NetworkResult,
    PortProtocol, PortRequest, REQUEST_ANNOTATION, RESULT_FILE,
};
pub use state::OciState;

use std::path::{Path, PathBuf};

/// Why networking a container failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A bad request, state or config (a user or wiring error; retrying the
    /// same input fails the same way).
    #[error("{0}")]
    Request(String),
    /// A CNI plugin failed; `message` is its CNI error (`msg: details`).
    #[error("CNI {command} network {network:?} plugin {plugin}: {message}")]
    Plugin {
        /// `ADD`, `DEL`, `CHECK`.
        command: &'static str,
        /// CNI network name.
        network: String,
        /// Plugin type.
        plugin: String,
        /// What it said.
        message: String,
    },
    /// A published port is held by a host process or another container.
    #[error("{0}")]
    PortInUse(String),
    /// `ip` or `iptables` failed.
    #[error("{0}")]
    Command(String),
    /// The hook ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// IO on a path.
    #[error("{what}: {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl HookError {
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> HookError + 'a {
        move |source| HookError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether retrying the same container may succeed (a timeout, a plugin
    /// or command failure) rather than fail again the same way (a bad
    /// request, a port in use — until its holder goes).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HookError::Plugin { .. }
                | HookError::Command(_)
                | HookError::Timeout(_)
                | HookError::Io { .. }
        )
    }
}
