//! The container rootfs: overlayfs (root) or a private copy (rootless).

use super::{ioe, BundleConfig, BundleError};
use crate::images::{ImageRecord, ImageStore};
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

/// Prepares `<bundle>/rootfs` and returns its path.
pub(super) fn prepare(
    cfg: &BundleConfig,
    store: &ImageStore,
    image: &ImageRecord,
    bundle: &Path,
) -> Result<PathBuf, BundleError> {
    let rootfs = bundle.join("rootfs");
    fs::create_dir(&rootfs).map_err(ioe("creating rootfs", &rootfs))?;
    if cfg.rootless {
        store.apply_layers(image, &rootfs, true)?;
        return Ok(rootfs);
    }
    let lower = store.layer_dirs(image)?;
    let (upper, work) = (bundle.join("upper"), bundle.join("work"));
    for d in [&upper, &work] {
        fs::create_dir(d).map_err(ioe("creating overlay dir", d))?;
    }
    if lower.is_empty() {
        // overlayfs needs a lower dir; an image without layers gets an empty one.
        let empty = bundle.join("empty");
        fs::create_dir(&empty).map_err(ioe("creating overlay dir", &empty))?;
        return mount_overlay(&[empty], &upper, &work, &rootfs).map(|_| rootfs);
    }
    mount_overlay(&lower, &upper, &work, &rootfs)?;
    Ok(rootfs)
}

fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), BundleError> {
    // overlayfs lists the top-most lower dir first.
    let lowers: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4096 {
        return Err(BundleError::Invalid {
            service: target.display().to_string(),
            reason: format!(
                "{} layers: overlay mount options exceed a page",
                lower.len()
            ),
        });
    }
    let data = CString::new(data).map_err(|e| BundleError::Invalid {
        service: target.display().to_string(),
        reason: e.to_string(),
    })?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| BundleError::Io {
        what: "mounting overlayfs",
        path: target.to_path_buf(),
        source: e.into(),
    })
}

/// Unmounts the rootfs if mounted; missing or not mounted is fine.
pub(super) fn unmount(rootfs: &Path) -> Result<(), BundleError> {
    loop {
        match rustix::mount::unmount(rootfs, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => continue, // stacked mounts: peel them all
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
                return Ok(())
            }
            Err(e) => {
                return Err(BundleError::Io {
                    what: "unmounting rootfs",
                    path: rootfs.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}
