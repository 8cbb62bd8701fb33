//! OCI bundles: `<state-dir>/bundles/<id>/` holding `config.json`, the rootfs
//! and the generated `/etc` files.
//!
//! Rootfs, root: an overlayfs mounted at `rootfs/` with the image's shared,
//! read-only layer dirs as lower dirs and a per-container `upper/` + `work/`.
//! Nothing is copied, so creation cost does not grow with image size.
//!
//! Rootfs, rootless (euid != 0): the layers are applied into a private
//! `rootfs/` dir (a copy). Chosen on purpose: kernel overlayfs inside a user
//! namespace needs Linux ≥ 5.11 and the layer dirs owned by the mapped user,
//! and overlay whiteouts (0/0 char devices, `trusted.` xattrs) cannot be
//! created rootless at all; a copy works everywhere, at a cost proportional
//! to image size, paid per container.
//!
//! Rootless user namespace: the agent's user is root; subordinate ranges from
//! `/etc/subuid` / `/etc/subgid` are mapped too where configured, so a service
//! can run as a non-root `user:` (see [`idmap`], also for its limits).
//!
//! `init: true`: the host's static tini ([`DEFAULT_INIT_BINARY`]) is
//! bind-mounted read-only at [`INIT_PATH`] and prepended as `tini -- …`, as
//! docker does; without it, such a request is refused with the reason.
//!
//! Input: [`ContainerRequest`], a flat description of one replica, built from
//! the model's normalized `ServiceSpec` by [`ContainerRequest::from_service`].
//!
//! Networking: `host` shares the host's namespace (policy
//! `allow_host_network`), `none` gets a new one with loopback only, `bridge`
//! a new one that the CNI hook (crate cntnr-hook) wires. This crate knows
//! nothing of CNI: the agent fills [`ContainerRequest::bridge`] with the
//! hook's OCI hooks and request annotation ([`BridgeNetwork`]); without it
//! a bridge container is as isolated as `none`. Rootless agents give every
//! container the host's network and ignore the wiring (no CNI without root).
//!
//! Names: `/etc/hosts` in the rootfs is a symlink to
//! `/run/cntnr/net/hosts` ([`HOSTS_DIR_IN_CONTAINER`]), where the bundle's
//! `net/` dir ([`hosts_path`]) is bind-mounted read-only. The builder writes
//! the initial file (localhost, the hostname, `extra_hosts`); the agent may
//! replace it atomically (write a temp file in that dir, rename) whenever
//! the project's replicas change, and the container sees the new file at
//! once. A bind-mounted file would pin the old inode and never see a rename.
//! The same holds for `/run/cntnr/env` and `/run/cntnr/leader`: `<bundle>/run`
//! ([`run_dir`]) is mounted read-only at [`RUN_DIR_IN_CONTAINER`] before
//! the hosts dir, which sits on its `net/`.

mod from_service;
pub mod idmap;
mod rootfs;
mod spec;
pub mod user;

pub use spec::{host_names, DEFAULT_CAPABILITIES};

use crate::images::{ImageError, ImageRecord, ImageStore};
use crate::runtime::{ContainerId, InvalidContainerId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Agent policy: secure by default.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `--allow-privileged`.
    pub allow_privileged: bool,
    /// `--allow-host-path`: bind mount sources must be under one of these.
    pub allow_host_paths: Vec<PathBuf>,
    /// `--allow-host-network`.
    pub allow_host_network: bool,
}

/// Where and how bundles are built on this node.
#[derive(Clone, Debug)]
pub struct BundleConfig {
    /// `<state-dir>`: bundles, volumes.
    pub state_dir: PathBuf,
    /// This node's name (annotation `cntnr.node`).
    pub node: String,
    /// Policy.
    pub policy: Policy,
    /// Rootless mode (euid != 0): user namespace, copied rootfs, no cgroup limits, host network.
    pub rootless: bool,
    /// Rootless: the user namespace's id mappings (see [`idmap`]); `None`
    /// maps only the agent's own uid/gid, to root.
    pub rootless_ids: Option<idmap::RootlessIds>,
    /// Host binary mounted read-only at [`INIT_PATH`] and run as the
    /// container's PID 1 for `init: true`; it must be static (the image has
    /// none of the host's libraries). Default: [`DEFAULT_INIT_BINARY`] if
    /// installed.
    pub init_binary: Option<PathBuf>,
}

/// Where the init binary appears in a container (docker's path).
pub const INIT_PATH: &str = "/sbin/docker-init";

/// Debian `tini`'s statically linked tini.
pub const DEFAULT_INIT_BINARY: &str = "/usr/bin/tini-static";

impl BundleConfig {
    /// Defaults for this process: rootless iff euid != 0, with the
    /// subordinate id ranges [`idmap::RootlessIds::detect`] finds; the init
    /// binary [`DEFAULT_INIT_BINARY`] if it exists.
    pub fn new(state_dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        let rootless = !rustix::process::geteuid().is_root();
        Self {
            state_dir: state_dir.into(),
            node: node.into(),
            policy: Policy::default(),
            rootless,
            rootless_ids: rootless.then(idmap::RootlessIds::detect),
            init_binary: Some(PathBuf::from(DEFAULT_INIT_BINARY)).filter(|p| p.is_file()),
        }
    }

    /// The bundle dir of `id`.
    pub fn bundle_path(&self, id: &ContainerId) -> PathBuf {
        self.state_dir.join("bundles").join(id.as_str())
    }

    /// The dir of named volume `name` of `project`.
    pub fn volume_path(&self, project: &str, name: &str) -> PathBuf {
        self.state_dir
            .join("volumes")
            .join(format!("{project}_{name}"))
    }
}

/// Where the container's hosts dir is mounted (read-only); `/etc/hosts` is a
/// symlink to `hosts` in it. Must equal `cntnr_hook::hosts::HOSTS_DIR_IN_CONTAINER`
/// (checked by the e2e tests; this crate may not depend on the hook's).
pub const HOSTS_DIR_IN_CONTAINER: &str = "/run/cntnr/net";

/// The hosts dir inside a bundle, mounted at [`HOSTS_DIR_IN_CONTAINER`]
/// (= `cntnr_hook::hosts::HOSTS_DIR_IN_BUNDLE`).
pub const HOSTS_DIR_IN_BUNDLE: &str = "net";

/// The hosts file of the container whose bundle dir is `bundle`: what the
/// container reads as `/etc/hosts`. Replace it atomically (temp file in the
/// same dir + rename), never in place.
pub fn hosts_path(bundle: &Path) -> PathBuf {
    bundle.join(HOSTS_DIR_IN_BUNDLE).join("hosts")
}

/// Where the container's run dir is mounted (read-only): the agent's
/// files for the container, `env` ([`env_path`]) and `leader`
/// ([`leader_path`]); the hosts dir is mounted at `net/` under it.
pub const RUN_DIR_IN_CONTAINER: &str = "/run/cntnr";

/// The run dir of the container whose bundle dir is `bundle`, mounted at
/// [`RUN_DIR_IN_CONTAINER`]. Replace files in it atomically (temp file in
/// the same dir + rename), never in place.
pub fn run_dir(bundle: &Path) -> PathBuf {
    bundle.join("run")
}

/// `/run/cntnr/env`: synced variables, `KEY=VALUE` lines.
pub fn env_path(bundle: &Path) -> PathBuf {
    run_dir(bundle).join("env")
}

/// `/run/cntnr/leader`: the replica's election state.
pub fn leader_path(bundle: &Path) -> PathBuf {
    run_dir(bundle).join("leader")
}

/// Network mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new network namespace, wired by the CNI hook when the request
    /// carries [`ContainerRequest::bridge`] (else loopback only).
    #[default]
    Bridge,
    /// A new, empty network namespace (loopback only).
    None,
    /// The host's network namespace (policy `allow_host_network`; forced rootless).
    Host,
}

/// What wires a `bridge` container's network namespace, as the agent builds
/// it from cntnr-hook (`hooks` = `cntnr_hook::oci_hooks(..)`, `annotations`
/// = `cntnr_hook::NetRequest::to_annotation()`). Only valid with
/// [`NetworkMode::Bridge`]; ignored rootless.
#[derive(Clone, Debug, Default)]
pub struct BridgeNetwork {
    /// OCI hooks that set the namespace up and tear it down
    /// (`createRuntime` and `poststop`); they replace any other hooks.
    pub hooks: oci_spec::runtime::Hooks,
    /// Annotations the hooks read; they override the service's annotations
    /// of the same key (a compose file cannot forge a network request),
    /// and are overridden only by cntnr's identity annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A mount requested by the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountRequest {
    /// Host path bind mount (policy `allow_host_paths`).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path in the container.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// Named volume `<state-dir>/volumes/<project>_<name>`.
    Volume {
        /// Volume name.
        name: String,
        /// Path in the container.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// tmpfs.
    Tmpfs {
        /// Path in the container.
        target: String,
        /// Size in bytes.
        size: Option<u64>,
        /// Mode, e.g. 0o1777.
        mode: Option<u32>,
    },
}

/// A resource limit (`ulimits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ulimit {
    /// `nofile`, `nproc`, ...
    pub name: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// `deploy.resources.limits`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// CPUs (fractional).
    pub cpus: Option<f64>,
    /// Memory in bytes.
    pub memory: Option<i64>,
    /// Max pids.
    pub pids: Option<i64>,
}

/// One replica to run, as the agent derives it from a `ServiceSpec`.
#[derive(Clone, Debug, Default)]
pub struct ContainerRequest {
    /// Project.
    pub project: String,
    /// Service.
    pub service: String,
    /// Replica, from 1.
    pub replica: u32,
    /// Config hash of the service spec.
    pub config_hash: String,
    /// `entrypoint` (`Some(vec![])` clears the image's).
    pub entrypoint: Option<Vec<String>>,
    /// `command`.
    pub command: Option<Vec<String>>,
    /// `environment`, merged over the image's.
    pub environment: BTreeMap<String, String>,
    /// `working_dir`.
    pub working_dir: Option<String>,
    /// `user`.
    pub user: Option<String>,
    /// `hostname` (default: the container id).
    pub hostname: Option<String>,
    /// `domainname`: the UTS domain name; `hostname.domainname` is added
    /// to /etc/hosts.
    pub domainname: Option<String>,
    /// `extra_hosts`: (name, address).
    pub extra_hosts: Vec<(String, String)>,
    /// `dns` (default: the host's resolv.conf).
    pub dns: Vec<String>,
    /// `dns_search`.
    pub dns_search: Vec<String>,
    /// Mounts.
    pub mounts: Vec<MountRequest>,
    /// `read_only`.
    pub read_only: bool,
    /// `cap_add` (`ALL` allowed).
    pub cap_add: Vec<String>,
    /// `cap_drop` (`ALL` allowed).
    pub cap_drop: Vec<String>,
    /// `privileged`.
    pub privileged: bool,
    /// `ulimits`.
    pub ulimits: Vec<Ulimit>,
    /// `sysctls`.
    pub sysctls: BTreeMap<String, String>,
    /// Limits.
    pub limits: Limits,
    /// `init`.
    pub init: bool,
    /// `stop_signal` (default: the image's, else SIGTERM).
    pub stop_signal: Option<String>,
    /// `network_mode`.
    pub network: NetworkMode,
    /// The service's `annotations` (cntnr's own keys cannot be overridden).
    pub annotations: BTreeMap<String, String>,
    /// The wiring of a `bridge` network namespace (the CNI hook), filled by
    /// the agent; `None`: loopback only. An error with `host` or `none`.
    pub bridge: Option<BridgeNetwork>,
}

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Bad id parts.
    #[error(transparent)]
    Id(#[from] InvalidContainerId),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// IO on a bundle path.
    #[error("{what}: {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The request violates policy or is invalid (a user error).
    #[error("{service}: {reason}")]
    Invalid {
        /// `project/service`.
        service: String,
        /// Why.
        reason: String,
    },
    /// oci-spec refused a value.
    #[error("building config.json: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

pub(crate) fn ioe<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A built bundle, ready for `Runtime::create`.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Container id.
    pub id: ContainerId,
    /// Bundle dir (holds `config.json`).
    pub path: PathBuf,
    /// The spec written to `config.json`.
    pub spec: oci_spec::runtime::Spec,
}

/// Builds the bundle for `req` from the stored image `image`: rootfs
/// (overlay or copy), generated `/etc` files, `config.json`. A leftover
/// bundle of the same id is removed first, so this is safe to re-run — but
/// only once no container of that id exists any more (delete it first: its
/// rootfs would be unmounted under it).
pub fn build(
    cfg: &BundleConfig,
    store: &ImageStore,
    image: &ImageRecord,
    req: &ContainerRequest,
) -> Result<Bundle, BundleError> {
    let id = ContainerId::for_replica(&req.project, &req.service, req.replica)?;
    let path = cfg.bundle_path(&id);
    remove(cfg, &id)?;
    let result = (|| {
        std::fs::create_dir_all(&path).map_err(ioe("creating bundle", &path))?;
        let rootfs = rootfs::prepare(cfg, store, image, &path)?;
        let image_config = store.image_config(image)?;
        let spec = spec::build(cfg, &id, &path, &rootfs, &image_config, req)?;
        let config = path.join("config.json");
        let data = serde_json::to_vec_pretty(&spec).expect("spec serializes");
        std::fs::write(&config, data).map_err(ioe("writing config.json", &config))?;
        Ok(Bundle {
            id: id.clone(),
            path: path.clone(),
            spec,
        })
    })();
    if result.is_err() {
        let _ = remove(cfg, &id);
    }
    result
}

/// Removes the bundle of `id`: unmounts its rootfs, deletes the dir.
/// Idempotent: a missing or half-built bundle is fine.
pub fn remove(cfg: &BundleConfig, id: &ContainerId) -> Result<(), BundleError> {
    let path = cfg.bundle_path(id);
    rootfs::unmount(&path.join("rootfs"))?;
    match crate::unpack::remove_tree(&path) {
        // Rootless with subordinate ranges, the container may have left files
        // owned by ids of the range, which only root of a user namespace
        // with the same maps may remove.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let ids = cfg.rootless_ids.as_ref().filter(|_| cfg.rootless);
            match ids.filter(|i| i.uids.len() > 1 || i.gids.len() > 1) {
                Some(ids) => remove_in_userns(ids, &path),
                None => Err(e),
            }
        }
        r => r,
    }
    .map_err(ioe("removing bundle", &path))
}

fn remove_in_userns(ids: &idmap::RootlessIds, path: &Path) -> std::io::Result<()> {
    let out = std::process::Command::new("unshare")
        .args(ids.unshare_args())
        .args(["--", "rm", "-rf", "--one-file-system", "--"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "rm -rf in the user namespace: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
