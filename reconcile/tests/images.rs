//! Image store and unpacker against real OCI layouts built here (and one
//! produced by umoci), with real overlayfs mounts.

mod support;

use cntnr_reconcile::images::{ImageError, ImageStore, StoreOptions};
use cntnr_reconcile::unpack::{unpack_layer, Mode, UnpackOptions};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use support::*;

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("state"), StoreOptions::default()).unwrap()
}

#[test]
fn import_layout_and_unpack_each_layer_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = busybox_image(&tmp.path().join("layout"));
    let s = store(tmp.path());
    let rec = s.import(&reference).unwrap();
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(s.get(&reference).unwrap().as_ref(), Some(&rec));
    // Idempotent import.
    assert_eq!(s.import(&reference).unwrap(), rec);
    let cfg = s.image_config(&rec).unwrap();
    assert_eq!(cfg.config.unwrap().cmd.unwrap(), vec!["sh"]);
    let dirs = s.layer_dirs(&rec).unwrap();
    assert_eq!(dirs, vec![s.layer_path(&rec.layers[0].chain_id)]);
    let bb = dirs[0].join("bin/busybox");
    assert_eq!(
        fs::metadata(&bb).unwrap().len(),
        fs::metadata("/bin/busybox").unwrap().len()
    );
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let ino = fs::metadata(&bb).unwrap().ino();
    // Second call reuses the unpacked dir.
    s.layer_dirs(&rec).unwrap();
    assert_eq!(fs::metadata(&bb).unwrap().ino(), ino);
    assert_eq!(s.list().unwrap().len(), 1);
}

fn stack_layers() -> Vec<Vec<u8>> {
    let base = tar_bytes(&[
        Entry::Dir("a", 0o755),
        file("a/keep", "keep"),
        file("a/gone", "gone"),
        Entry::Dir("opq", 0o755),
        file("opq/old1", "old"),
        Entry::Dir("opq/olddir", 0o755),
        file("opq/olddir/x", "x"),
        Entry::Dir("dir_gone", 0o755),
        file("dir_gone/f", "f"),
        file("replaced", "v1"),
    ]);
    let top = tar_bytes(&[
        Entry::Dir("a", 0o755),
        file("a/.wh.gone", ""),
        file("a/new", "new"),
        Entry::Dir("opq", 0o755),
        file("opq/.wh..wh..opq", ""),
        file("opq/fresh", "fresh"),
        file(".wh.dir_gone", ""),
        file("replaced", "v2"),
        file("hard_src", "linked"),
        Entry::Hardlink("hard_dst", "hard_src"),
        Entry::Symlink("link", "/a/keep".into()),
    ]);
    vec![base, top]
}

fn check_stack(root: &Path) {
    assert_eq!(fs::read_to_string(root.join("a/keep")).unwrap(), "keep");
    assert!(!root.join("a/gone").exists(), "whiteout removes a/gone");
    assert_eq!(fs::read_to_string(root.join("a/new")).unwrap(), "new");
    let mut opq: Vec<_> = fs::read_dir(root.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opq.sort();
    assert_eq!(opq, vec!["fresh"], "opaque dir hides every lower entry");
    assert!(!root.join("dir_gone").exists());
    assert_eq!(fs::read_to_string(root.join("replaced")).unwrap(), "v2");
    assert_eq!(fs::read_to_string(root.join("hard_dst")).unwrap(), "linked");
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("/a/keep")
    );
    let mut top: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["a", "hard_dst", "hard_src", "link", "opq", "replaced"]
    );
}

#[test]
fn whiteouts_and_opaque_dirs_apply_file_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = LayoutBuilder::new(&tmp.path().join("layout"));
    b.image(
        "stack",
        &stack_layers(),
        Compression::Zstd,
        default_config(),
    );
    let s = store(tmp.path());
    let rec = s
        .import(&format!(
            "oci:{}:stack",
            tmp.path().join("layout").display()
        ))
        .unwrap();
    let dest = tmp.path().join("applied");
    fs::create_dir(&dest).unwrap();
    s.apply_layers(&rec, &dest, !is_root()).unwrap();
    check_stack(&dest);
}

#[test]
fn whiteouts_and_opaque_dirs_through_overlayfs() {
    if !is_root() {
        eprintln!("overlay layer dirs need root; covered by the Apply test rootless");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut b = LayoutBuilder::new(&tmp.path().join("layout"));
    b.image(
        "stack",
        &stack_layers(),
        Compression::Gzip,
        default_config(),
    );
    let s = store(tmp.path());
    let rec = s
        .import(&format!(
            "oci:{}:stack",
            tmp.path().join("layout").display()
        ))
        .unwrap();
    let dirs = s.layer_dirs(&rec).unwrap();
    // In the top layer dir: overlay whiteouts and the opaque xattr.
    let wh = fs::symlink_metadata(dirs[1].join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(dirs[1].join("opq"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    // Mounted, the kernel applies them.
    let merged = tmp.path().join("merged");
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    for d in [&merged, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(data).unwrap().as_c_str(),
    )
    .unwrap();
    let _g = MountGuard(merged.clone());
    check_stack(&merged);
}

#[test]
fn malicious_layer_writes_nothing_outside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // An absolute symlink to a host dir, then a write through it, and an absolute path.
    let escape = tar_bytes(&[
        Entry::Symlink("evil", outside.display().to_string()),
        file("evil/pwned", "x"),
        Entry::Symlink("up", "../../../../../..".into()),
        file("up/pwned2", "x"),
        Entry::RawFile(
            Box::leak(format!("{}/pwned3", outside.display()).into_boxed_str()),
            b"x",
        ),
    ]);
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let blob = tmp.path().join("escape.tar");
    fs::write(&blob, &escape).unwrap();
    let opts = UnpackOptions {
        mode: Mode::Apply,
        rootless: !is_root(),
    };
    unpack_layer(&blob, None, None, &root, opts).unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    // Each write resolved inside the root: the symlinks are scoped to it.
    let inside = root.join(outside.strip_prefix("/").unwrap());
    assert!(inside.join("pwned").is_file());
    assert!(inside.join("pwned3").is_file());
    assert!(root.join("pwned2").is_file());
    assert_eq!(fs::read_link(root.join("evil")).unwrap(), outside);

    // `../` entries refuse the layer.
    let dotdot = tar_bytes(&[RawEntry::dotdot()]);
    let root2 = tmp.path().join("a/b/root2");
    fs::create_dir_all(&root2).unwrap();
    let blob2 = tmp.path().join("dotdot.tar");
    fs::write(&blob2, &dotdot).unwrap();
    let err = unpack_layer(&blob2, None, None, &root2, opts).unwrap_err();
    assert!(err.to_string().contains("unsafe path"), "{err}");
    assert!(!tmp.path().join("a/escaped").exists());
    assert!(!tmp.path().join("escaped").exists());
}

struct RawEntry;
impl RawEntry {
    fn dotdot() -> Entry {
        Entry::RawFile("../escaped", b"x")
    }
}

#[test]
fn tampered_or_truncated_blob_is_refused_then_refetched() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = busybox_image(&tmp.path().join("layout"));
    let s = store(tmp.path());
    let rec = s.import(&reference).unwrap();
    let blob = s.blob_path(&rec.layers[0].digest);
    // Truncate the layer blob in the store.
    let data = fs::read(&blob).unwrap();
    fs::write(&blob, &data[..data.len() / 2]).unwrap();
    let err = s.layer_dirs(&rec).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(!blob.exists(), "corrupt blob deleted");
    assert!(
        !s.layer_path(&rec.layers[0].chain_id).exists(),
        "nothing half-unpacked kept"
    );
    // Tamper with the config: refused on read.
    let cfg = s.blob_path(&rec.config);
    fs::write(&cfg, b"{\"tampered\":true}").unwrap();
    assert!(matches!(
        s.image_config(&rec),
        Err(ImageError::Corrupt { .. })
    ));
    // Re-import fetches both again and everything works.
    let rec2 = s.import(&reference).unwrap();
    assert_eq!(rec2, rec);
    s.layer_dirs(&rec2).unwrap();
    // A tampered source layout is refused at import.
    let tmp2 = tempfile::tempdir().unwrap();
    let reference2 = busybox_image(&tmp2.path().join("layout"));
    let src_blob = tmp2
        .path()
        .join("layout/blobs/sha256")
        .join(rec.layers[0].digest.hex());
    let mut d = fs::read(&src_blob).unwrap();
    d[100] ^= 0xff;
    fs::write(&src_blob, d).unwrap();
    let s2 = store(tmp2.path());
    assert!(matches!(
        s2.import(&reference2),
        Err(ImageError::Corrupt { .. })
    ));
}

#[test]
fn gc_and_rm_remove_unused_images_blobs_and_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.image(
        "one",
        &[busybox_layer()],
        Compression::Gzip,
        default_config(),
    );
    b.image(
        "two",
        &[busybox_layer(), tar_bytes(&[file("extra", "2")])],
        Compression::Gzip,
        default_config(),
    );
    let s = store(tmp.path());
    let one = format!("oci:{}:one", layout.display());
    let two = format!("oci:{}:two", layout.display());
    let r1 = s.import(&one).unwrap();
    let r2 = s.import(&two).unwrap();
    s.layer_dirs(&r1).unwrap();
    s.layer_dirs(&r2).unwrap();
    let report = s.gc(std::slice::from_ref(&one)).unwrap();
    assert_eq!(
        report.images,
        vec![ImageStore::canonical_reference(&two).unwrap()]
    );
    assert_eq!(report.layers, 1, "the shared base layer stays");
    assert!(s.layer_path(&r1.layers[0].chain_id).exists());
    assert!(!s.layer_path(&r2.layers[1].chain_id).exists());
    assert!(!s.blob_path(&r2.manifest).exists());
    assert!(s.blob_path(&r1.layers[0].digest).exists());
    assert!(s.remove(&one).unwrap());
    assert!(!s.remove(&one).unwrap(), "rm is idempotent");
    assert!(s.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 0);
}

/// Regression: `rm` (and gc) of an image a container still runs from deleted
/// the layer dirs under the container's overlay mount.
#[test]
fn rm_keeps_layers_a_mounted_overlay_still_uses() {
    if !is_root() {
        eprintln!("overlay mounts need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reference = busybox_image(&tmp.path().join("layout"));
    let s = store(tmp.path());
    let rec = s.import(&reference).unwrap();
    let dirs = s.layer_dirs(&rec).unwrap();
    let merged = tmp.path().join("merged");
    let (upper, work) = (tmp.path().join("upper"), tmp.path().join("work"));
    for d in [&merged, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs[0].display(),
        upper.display(),
        work.display()
    );
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(data).unwrap().as_c_str(),
    )
    .unwrap();
    let guard = MountGuard(merged.clone());
    assert!(s.remove(&reference).unwrap());
    assert!(s.list().unwrap().is_empty(), "the name is gone");
    assert!(
        dirs[0].join("bin/busybox").exists(),
        "the mounted layer stays"
    );
    assert!(merged.join("bin/busybox").exists());
    let busy = s.gc::<&str>(&[]).unwrap();
    assert_eq!((busy.layers, busy.busy_layers), (0, 1));
    drop(guard);
    let freed = s.gc::<&str>(&[]).unwrap();
    assert_eq!((freed.layers, freed.busy_layers), (1, 0));
    assert!(!dirs[0].exists(), "unmounted, the next gc removes it");
}

#[test]
fn image_built_by_umoci_imports_and_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("umoci");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .output()
            .expect("umoci installed");
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let l = layout.display().to_string();
    run(&["init", "--layout", &l]);
    run(&["new", "--image", &format!("{l}:bb")]);
    run(&[
        "insert",
        "--rootless",
        "--image",
        &format!("{l}:bb"),
        "/bin/busybox",
        "/bin/busybox",
    ]);
    run(&[
        "config",
        "--image",
        &format!("{l}:bb"),
        "--config.entrypoint",
        "/bin/busybox",
        "--config.cmd",
        "true",
    ]);
    let s = store(tmp.path());
    let rec = s.import(&format!("oci:{l}:bb")).unwrap();
    let dest = tmp.path().join("rootfs");
    fs::create_dir(&dest).unwrap();
    s.apply_layers(&rec, &dest, !is_root()).unwrap();
    assert!(dest.join("bin/busybox").is_file());
    let cfg = s.image_config(&rec).unwrap().config.unwrap();
    assert_eq!(cfg.entrypoint.unwrap(), vec!["/bin/busybox"]);
}

#[test]
fn devices_xattrs_and_hardlinks_unpack_as_root_and_devices_skip_rootless() {
    let layer = tar_bytes(&[
        Entry::Dir("dev", 0o755),
        Entry::CharDev("dev/null", 1, 3),
        Entry::Pax(vec![("SCHILY.xattr.user.cntnr", b"tagged")]),
        file("tagged", "x"),
        file("orig", "same inode"),
        Entry::Hardlink("link", "orig"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("l.tar");
    fs::write(&blob, &layer).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let rootful = is_root();
    unpack_layer(
        &blob,
        None,
        None,
        &root,
        UnpackOptions {
            mode: Mode::Overlay,
            rootless: !rootful,
        },
    )
    .unwrap();
    let dev = fs::symlink_metadata(root.join("dev/null"));
    if rootful {
        let dev = dev.unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));
    } else {
        assert!(dev.is_err(), "devices are skipped rootless");
    }
    let mut buf = [0u8; 16];
    match rustix::fs::lgetxattr(root.join("tagged"), "user.cntnr", &mut buf) {
        Ok(n) => assert_eq!(&buf[..n], b"tagged"),
        Err(rustix::io::Errno::OPNOTSUPP) => eprintln!("filesystem without user xattrs"),
        Err(e) => panic!("xattr: {e}"),
    }
    assert_eq!(
        fs::metadata(root.join("link")).unwrap().ino(),
        fs::metadata(root.join("orig")).unwrap().ino()
    );
    // The diff id is the digest of the uncompressed tar; a wrong one is refused.
    let wrong = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        .parse()
        .unwrap();
    let root2 = tmp.path().join("root2");
    fs::create_dir(&root2).unwrap();
    let err = unpack_layer(
        &blob,
        None,
        Some(&wrong),
        &root2,
        UnpackOptions {
            mode: Mode::Apply,
            rootless: true,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("diff_id mismatch"), "{err}");
}

#[test]
fn index_in_layout_selects_the_host_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut b = LayoutBuilder::new(&layout);
    let amd64 = b.image(
        "single",
        &[busybox_layer()],
        Compression::Gzip,
        default_config(),
    );
    let arm_manifest = b.blob(b"{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:0000000000000000000000000000000000000000000000000000000000000000\",\"size\":0},\"layers\":[]}");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_manifest, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd64, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let ib = serde_json::to_vec(&index).unwrap();
    let id = b.blob(&ib);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": ib.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    ]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let s = store(tmp.path());
    let rec = s
        .import(&format!("oci:{}:multi", layout.display()))
        .unwrap();
    assert_eq!(rec.manifest.to_string(), amd64);
    assert_eq!(rec.index.as_ref().map(ToString::to_string), Some(id));
}
