//! This host's container machinery, built from the agent's flags: the image
//! store (`<state-dir>/images`), the bundle builder (`<state-dir>/bundles`,
//! the policy flags) and the runc driver (`--runtime-root`, logs and exit
//! records under `<state-dir>`). Rootless defaults apply when euid != 0.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use cntnr_reconcile::bundle::{BundleConfig, Policy as BundlePolicy};
/// Built with `bench-fake-runtime` (the fleet bench only): an in-memory
/// runtime that runs nothing, under the same name.
#[cfg(feature = "bench-fake-runtime")]
pub(crate) use cntnr_reconcile::fake::FakeRuntime as Runc;
use cntnr_reconcile::images::{ImageStore, StoreOptions};
/// The container runtime the agent drives (one place to swap it).
#[cfg(not(feature = "bench-fake-runtime"))]
pub(crate) use cntnr_reconcile::runc::Runc;
use cntnr_reconcile::runc::RuncConfig;

use super::Policy;

/// The runtime side of the agent.
#[derive(Debug, Clone)]
pub struct Host {
    /// runc under `--runtime-root`.
    pub runc: Runc,
    /// Images under `<state-dir>/images`.
    pub images: ImageStore,
    /// How bundles are built (state dir, node, policy, rootless).
    pub bundles: BundleConfig,
    /// Bridge networking through `cntnr-hook` (off rootless).
    pub net: super::network::Net,
}

impl Host {
    /// Opens the image store, creates the runc root and state dirs.
    pub fn new(
        state_dir: &Path,
        runtime_root: &Path,
        node: &str,
        policy: &Policy,
        insecure_registries: &[String],
    ) -> Result<Host> {
        let images = ImageStore::open(
            state_dir,
            StoreOptions {
                insecure_registries: insecure_registries.to_vec(),
                docker_config: None,
            },
        )
        .context("opening the image store")?;
        let mut bundles = BundleConfig::new(state_dir, node);
        bundles.policy = BundlePolicy {
            allow_privileged: policy.allow_privileged,
            allow_host_paths: policy.allow_host_paths.clone(),
            allow_host_network: policy.allow_host_network,
        };
        let mut cfg = RuncConfig::new(runtime_root, state_dir);
        cfg.shim = shim_binary(state_dir)?;
        let runc = Runc::new(cfg)
            .with_context(|| format!("preparing the runc root {}", runtime_root.display()))?;
        #[cfg(feature = "bench-fake-runtime")]
        tracing::warn!(
            "built with bench-fake-runtime: containers are simulated in memory, nothing runs"
        );
        let net =
            super::network::Net::new(state_dir, !crate::store::rootless(), policy.subnet_pool)?;
        Ok(Host {
            runc,
            images,
            bundles,
            net,
        })
    }
}

/// The `cntnr-shim` next to this executable if installed, else this
/// executable linked as `<state-dir>/bin/cntnr-shim` (it acts as the shim
/// when called by that name).
fn shim_binary(state_dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the agent's executable")?;
    if let Some(sibling) = exe.parent().map(|d| d.join("cntnr-shim")) {
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    let dir = state_dir.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("cntnr-shim");
    if std::fs::read_link(&link).ok().as_deref() != Some(exe.as_path()) {
        let tmp = dir.join(".cntnr-shim.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&exe, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &link))
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(link)
}

/// Test failpoints: `CNTNR_FAILPOINT=after-create` (or `after-start`) makes
/// the agent exit at once, as if SIGKILLed, right after the first `runc
/// create` (`start`) it performs, so tests can prove a restarted agent
/// finishes the job without duplicates or orphans.
pub fn failpoint(name: &str) {
    if std::env::var("CNTNR_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::exit(137);
    }
}
