//! Pinning the container's network namespace for the life of its network.
//!
//! At `poststop` the container's processes are gone, and with them the
//! namespace runc created; plugins would then DEL with no netns and leave
//! what they can only find inside it (the bridge plugin reads the
//! container's addresses from its interface to remove their masquerade
//! rules). So `create` bind-mounts `/proc/<pid>/ns/net` onto
//! `<run-dir>/netns/<container id>` before the first ADD, DEL runs against
//! that pin (removing the veth synchronously), and only then is it
//! unmounted. The run dir is a tmpfs: a reboot drops pins and namespaces
//! together.

use crate::HookError;
use rustix::mount::{mount_bind, unmount, UnmountFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The pin of `container_id`.
pub fn pin_path(run_dir: &Path, container_id: &str) -> PathBuf {
    run_dir.join("netns").join(container_id)
}

/// Whether `path` is a mounted namespace (not the empty placeholder file).
pub fn is_pinned(path: &Path) -> bool {
    let (Ok(f), Some(Ok(d))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    f.dev() != d.dev()
}

/// Whether `ns` is this process's own network namespace (the host's, for
/// the hook): a container sharing it must never be wired.
pub fn is_own_netns(ns: &Path) -> Result<bool, HookError> {
    let a = std::fs::metadata(ns).map_err(HookError::io("reading netns", ns))?;
    let own = Path::new("/proc/self/ns/net");
    let b = std::fs::metadata(own).map_err(HookError::io("reading netns", own))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Bind-mounts the network namespace of `pid` onto the pin of `container_id`.
pub fn pin(run_dir: &Path, container_id: &str, pid: u32) -> Result<PathBuf, HookError> {
    let path = pin_path(run_dir, container_id);
    let dir = path.parent().expect("has parent");
    std::fs::create_dir_all(dir).map_err(HookError::io("creating netns dir", dir))?;
    std::fs::File::create(&path).map_err(HookError::io("creating netns pin", &path))?;
    let src = PathBuf::from(format!("/proc/{pid}/ns/net"));
    mount_bind(&src, &path).map_err(|e| HookError::Io {
        what: "bind-mounting the container's netns",
        path: path.clone(),
        source: e.into(),
    })?;
    Ok(path)
}

/// Unmounts and removes the pin. Idempotent.
pub fn unpin(path: &Path) -> Result<(), HookError> {
    while is_pinned(path) {
        unmount(path, UnmountFlags::DETACH).map_err(|e| HookError::Io {
            what: "unmounting netns pin",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HookError::io("removing netns pin", path)(e)),
    }
}
