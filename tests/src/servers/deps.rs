//! Where the harness finds the workspace and the server binaries.

use std::env;
use std::path::{Path, PathBuf};

/// The root of the cntnr workspace (the directory holding the root
/// `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cntnr-e2e lives one level below the workspace root")
        .to_path_buf()
}

/// The path of a dependency binary such as `etcd`, `etcdctl` or `consul`.
///
/// Looks, in order, at:
/// 1. `CNTNR_<NAME>_BIN` (name upper-cased, `-` as `_`), e.g. `CNTNR_ETCD_BIN`;
/// 2. `$CNTNR_DEPS_DIR/bin/<name>` (default `<workspace>/.deps/bin/<name>`),
///    where `scripts/install-deps.sh` puts the binaries;
/// 3. `PATH`.
///
/// When none has it, returns the `.deps/bin` path anyway; callers check that
/// it exists and point at `scripts/install-deps.sh`.
pub fn dep_bin(name: &str) -> PathBuf {
    let var = format!("CNTNR_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = env::var_os(&var).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let deps = env::var_os("CNTNR_DEPS_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".deps"));
    let local = deps.join("bin").join(name);
    if local.is_file() {
        return local;
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or(local)
}

/// [`dep_bin`], or a panic that says how to get the binary.
pub(crate) fn require_bin(name: &str) -> PathBuf {
    let path = dep_bin(name);
    assert!(
        path.is_file(),
        "{name} binary not found (looked for {}, CNTNR_{}_BIN and PATH): run scripts/install-deps.sh",
        path.display(),
        name.to_uppercase().replace('-', "_"),
    );
    path
}
