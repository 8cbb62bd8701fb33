//! Test support: builds OCI image layouts from busybox-static, layer by layer,
//! so the tests depend on no registry. Also Drop guards for cleanup.
#![allow(dead_code)]

use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn sha256(data: &[u8]) -> String {
    let out = Sha256::digest(data);
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// One tar entry of a test layer.
pub enum Entry {
    Dir(&'static str, u32),
    File(String, Vec<u8>, u32),
    Symlink(&'static str, String),
    Hardlink(&'static str, &'static str),
    /// A file whose raw tar name is written verbatim (for `../` attacks).
    RawFile(&'static str, &'static [u8]),
    /// A character device (major, minor).
    CharDev(&'static str, u32, u32),
    /// PAX extended header records applying to the next entry.
    Pax(Vec<(&'static str, &'static [u8])>),
}

pub fn file(path: &str, content: &str) -> Entry {
    Entry::File(path.to_string(), content.as_bytes().to_vec(), 0o644)
}

pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::CharDev(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::Pax(records) => {
                let mut data = Vec::new();
                for (k, v) in records {
                    let body_len = k.len() + v.len() + 3; // ' ', '=', '\n'
                    let mut len = body_len + 1;
                    while len != body_len + len.to_string().len() {
                        len = body_len + len.to_string().len();
                    }
                    data.extend_from_slice(format!("{len} {k}=").as_bytes());
                    data.extend_from_slice(v);
                    data.push(b'\n');
                }
                h.set_entry_type(tar::EntryType::XHeader);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, "PaxHeaders/x", data.as_slice())
                    .unwrap();
            }
            Entry::RawFile(raw, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..raw.len()].copy_from_slice(raw.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout, one image per tag.
pub struct LayoutBuilder {
    pub dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl LayoutBuilder {
    pub fn new(dir: &Path) -> Self {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Self {
            dir: dir.to_path_buf(),
            manifests: Vec::new(),
        }
    }

    pub fn blob(&self, data: &[u8]) -> String {
        let d = sha256(data);
        fs::write(self.dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
        d
    }

    /// Adds an image with `layers` (tar bytes each) and exec config `config`
    /// (the `config` object of the image config) under `tag`.
    pub fn image(
        &mut self,
        tag: &str,
        layers: &[Vec<u8>],
        compression: Compression,
        config: serde_json::Value,
    ) -> String {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in layers {
            diff_ids.push(sha256(tar));
            let (data, mt) = match compression {
                Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compression::Gzip => {
                    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(tar).unwrap();
                    (
                        enc.finish().unwrap(),
                        "application/vnd.oci.image.layer.v1.tar+gzip",
                    )
                }
                Compression::Zstd => (
                    zstd::encode_all(tar.as_slice(), 1).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let d = self.blob(&data);
            descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": data.len()}));
        }
        let cfg = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
        let cfg_d = self.blob(&cfg_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_bytes.len()},
            "layers": descs,
        });
        let mb = serde_json::to_vec(&manifest).unwrap();
        let md = self.blob(&mb);
        self.manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": mb.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        md
    }
}

/// The busybox base layer: /bin/busybox plus applet symlinks, /etc/passwd and
/// /etc/group with an `app` user (1000:1000, also in group `extra` 2000).
pub fn busybox_layer() -> Vec<u8> {
    busybox_layer_with(&[])
}

pub fn busybox_layer_with(extra: &[Entry]) -> Vec<u8> {
    let bb = fs::read("/bin/busybox").expect("busybox-static installed (/bin/busybox)");
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox".into(), bb, 0o755),
        Entry::Dir("etc", 0o755),
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        ),
        file("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
        Entry::Dir("home", 0o755),
        Entry::Dir("home/app", 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("root", 0o700),
    ];
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "id", "env", "pwd", "touch", "mkdir", "test", "trap",
        "true", "false", "wc", "head", "df", "stat", "mount", "grep", "ps",
    ] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox".into(),
        ));
    }
    entries.extend(extra.iter().map(clone_entry));
    tar_bytes(&entries)
}

fn clone_entry(e: &Entry) -> Entry {
    match e {
        Entry::Dir(p, m) => Entry::Dir(p, *m),
        Entry::File(p, d, m) => Entry::File(p.clone(), d.clone(), *m),
        Entry::Symlink(p, t) => Entry::Symlink(p, t.clone()),
        Entry::Hardlink(p, t) => Entry::Hardlink(p, t),
        Entry::RawFile(p, d) => Entry::RawFile(p, d),
        Entry::CharDev(p, a, b) => Entry::CharDev(p, *a, *b),
        Entry::Pax(r) => Entry::Pax(r.clone()),
    }
}

pub fn default_config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes", "OVERRIDE=image"],
        "Cmd": ["sh"],
        "WorkingDir": "/",
    })
}

/// A busybox image as `oci:DIR:busybox`; returns the reference.
pub fn busybox_image(dir: &Path) -> String {
    let mut b = LayoutBuilder::new(dir);
    b.image(
        "busybox",
        &[busybox_layer()],
        Compression::Gzip,
        default_config(),
    );
    format!("oci:{}:busybox", dir.display())
}

/// Unmounts (lazily) on drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

use cntnr_reconcile::bundle::{self, BundleConfig, ContainerRequest};
use cntnr_reconcile::images::{ImageRecord, ImageStore, StoreOptions};
use cntnr_reconcile::runc::{Runc, RuncConfig};
use cntnr_reconcile::runtime::{ContainerId, Runtime};

/// A test's private world: state dir, runc root, image store, a busybox image.
/// Drop force-deletes every container under the runc root (ours and the
/// foreign ones the test made), unmounts every rootfs and removes the dirs.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub store: ImageStore,
    pub bundles: BundleConfig,
    pub runc: Runc,
    pub image: ImageRecord,
    pub project: String,
}

impl World {
    pub fn new() -> Self {
        Self::with_state(tempfile::tempdir().unwrap())
    }

    pub fn with_state(tmp: tempfile::TempDir) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let state = tmp.path().join("state");
        let store = ImageStore::open(&state, StoreOptions::default()).unwrap();
        let reference = busybox_image(&tmp.path().join("layout"));
        let image = store.import(&reference).unwrap();
        let bundles = BundleConfig::new(&state, "node-a");
        let mut rc = RuncConfig::new(tmp.path().join("runc-root"), &state);
        rc.shim = PathBuf::from(env!("CARGO_BIN_EXE_cntnr-shim"));
        rc.timeout = std::time::Duration::from_secs(20);
        let runc = Runc::new(rc).unwrap();
        let project = format!(
            "t{}x{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Self {
            tmp,
            store,
            bundles,
            runc,
            image,
            project,
        }
    }

    pub fn request(&self, service: &str, command: &[&str]) -> ContainerRequest {
        ContainerRequest {
            project: self.project.clone(),
            service: service.into(),
            replica: 1,
            config_hash: "hash1".into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    /// Bundle build + create + start.
    pub async fn run(&self, req: &ContainerRequest) -> ContainerId {
        let b = bundle::build(&self.bundles, &self.store, &self.image, req).unwrap();
        self.runc.run(&b.id, &b.path).await.unwrap();
        b.id
    }

    pub fn log(&self, id: &ContainerId) -> String {
        fs::read_to_string(self.runc.log_path(id)).unwrap_or_default()
    }

    pub fn runc_root(&self) -> PathBuf {
        self.runc.config().root.clone()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let root = self.runc_root();
        let ids = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output();
        if let Ok(out) = ids {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
        let bundles = self.tmp.path().join("state/bundles");
        if let Ok(rd) = fs::read_dir(&bundles) {
            for e in rd.flatten() {
                if let Ok(id) = ContainerId::new(e.file_name().to_string_lossy().to_string()) {
                    let _ = bundle::remove(&self.bundles, &id);
                }
            }
        }
        for e in fs::read_dir(self.tmp.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = rustix::mount::unmount(
                e.path().join("rootfs"),
                rustix::mount::UnmountFlags::DETACH,
            );
        }
    }
}
