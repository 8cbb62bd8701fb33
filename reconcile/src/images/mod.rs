//! The content-addressed image store under `<state-dir>/images`:
//!
//! ```text
//! images/
//!   blobs/sha256/<hex>     manifests, configs, layer blobs; verified on write and on read
//!   layers/<chain hex>/    one unpacked layer per chain id (overlayfs lower dir, root only)
//!   refs.json              reference -> ImageRecord
//!   locks/                 flock files: `store` (shared by pulls, exclusive for rm/gc),
//!                          `refs`, one per blob and per layer being fetched/unpacked
//!   tmp/                   downloads and unpacks in progress, renamed into place when verified
//! ```
//!
//! Two processes pulling the same image serialize on the per-blob lock: the
//! second finds the verified blob and fetches nothing. A blob whose content does
//! not hash to its name is deleted when found (on read, on unpack, or before a
//! pull reuses it) and fetched again by the next pull.

mod auth;
mod layout;
mod lock;
pub mod model;
mod pull;

pub use lock::FileLock;

use crate::digest::{Digest, InvalidDigest};
use crate::unpack::{self, Mode, UnpackError, UnpackOptions};
use model::{ImageConfig, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// IO on a store path.
    #[error("{what}: {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A reference did not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A digest did not parse.
    #[error(transparent)]
    Digest(#[from] InvalidDigest),
    /// Content did not hash to its digest.
    #[error("blob {expected} is corrupt (content hashes to {actual}); refused")]
    Corrupt {
        /// Expected digest.
        expected: Digest,
        /// What the content hashes to.
        actual: Digest,
    },
    /// A JSON document did not parse.
    #[error("{what}: {source}")]
    Json {
        /// What was being parsed.
        what: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The registry failed.
    #[error("pulling {reference}: {source}")]
    Registry {
        /// Reference being pulled.
        reference: String,
        /// Cause.
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// No manifest for our platform.
    #[error("{reference}: no linux/{arch} image in the index")]
    NoPlatform {
        /// Reference.
        reference: String,
        /// Host arch.
        arch: &'static str,
    },
    /// The image is not in the store.
    #[error("image {0} not found in the store")]
    NotFound(String),
    /// The image is malformed.
    #[error("image {reference}: {reason}")]
    Invalid {
        /// Reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A layer failed to unpack.
    #[error("layer {layer}: {source}")]
    Unpack {
        /// Layer blob digest.
        layer: Digest,
        /// Cause.
        source: UnpackError,
    },
}

impl ImageError {
    /// Worth retrying later (network trouble, a corrupt download that will be re-fetched).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ImageError::Registry { .. } | ImageError::Corrupt { .. }
        )
    }
}

pub(crate) fn ioe<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Result of the image store.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// One layer of a stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain id: the key of the unpacked layer dir.
    pub chain_id: Digest,
    /// Blob size.
    pub size: u64,
}

/// A stored image, as recorded in `refs.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// Canonical reference: `docker.io/library/busybox:latest`, `oci:/abs/dir:tag`.
    pub reference: String,
    /// The index the manifest was selected from, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// Manifest digest (what `image@digest` names).
    pub manifest: Digest,
    /// Config blob digest (the image id).
    pub config: Digest,
    /// Layers, base first.
    pub layers: Vec<LayerRecord>,
}

/// Options of [`ImageStore::open`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Registries (`host[:port]`) reached over plain HTTP. All others use HTTPS.
    pub insecure_registries: Vec<String>,
    /// The docker `config.json` for credentials; default `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
}

/// What a garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// References dropped.
    pub images: Vec<String>,
    /// Blobs deleted.
    pub blobs: usize,
    /// Unpacked layer dirs deleted.
    pub layers: usize,
    /// Unused layer dirs kept because a mounted overlay (a running
    /// container's rootfs) still has them as a lower dir; a later gc, after
    /// that container is gone, removes them.
    pub busy_layers: usize,
}

/// Every `lowerdir` of every overlay mounted in this mount namespace, from
/// `/proc/self/mountinfo` (empty if it cannot be read).
fn mounted_overlay_lower_dirs() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|text| overlay_lower_dirs(&text))
        .unwrap_or_default()
}

/// The `lowerdir` paths of the overlay mounts in a mountinfo text. The
/// kernel escapes space, tab, newline, backslash, `,` and `=` in options as
/// `\ooo` octal.
fn overlay_lower_dirs(mountinfo: &str) -> Vec<PathBuf> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let octal = b
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
            match (b[i], octal) {
                (b'\\', Some(d)) => {
                    out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                    i += 4;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut f = after.split(' ');
        if f.next() != Some("overlay") {
            continue;
        }
        let Some(opts) = f.nth(1) else { continue };
        for opt in opts.split(',') {
            if let Some(lower) = opt.strip_prefix("lowerdir=") {
                dirs.extend(unescape(lower).split(':').map(PathBuf::from));
            }
        }
    }
    dirs
}

/// The image store. Cheap to clone; every method is safe to call from several
/// processes at once.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    opts: StoreOptions,
}

impl ImageStore {
    /// Opens (creating) the store at `<state_dir>/images`.
    pub fn open(state_dir: &Path, opts: StoreOptions) -> Result<Self> {
        let root = state_dir.join("images");
        for d in ["blobs/sha256", "layers", "locks", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(ioe("creating image store", &p))?;
        }
        Ok(Self { root, opts })
    }

    /// The store's root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `d` lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where the unpacked layer with chain id `chain` lives.
    pub fn layer_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<FileLock> {
        let p = self.root.join("locks").join(name);
        if exclusive {
            FileLock::exclusive(&p)
        } else {
            FileLock::shared(&p)
        }
        .map_err(ioe("locking image store", &p))
    }

    /// Held (shared) by pulls and imports; `rm`/`gc` take it exclusively so they
    /// never sweep blobs of a pull in progress.
    pub(crate) fn store_lock(&self, exclusive: bool) -> Result<FileLock> {
        self.lock("store", exclusive)
    }

    pub(crate) fn blob_lock(&self, d: &Digest) -> Result<FileLock> {
        self.lock(&format!("blob-{}", d.hex()), true)
    }

    fn tmp_path(&self, tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// True when blob `d` is present and hashes to `d`. A present but corrupt
    /// blob is deleted (so it is fetched again).
    pub fn has_valid_blob(&self, d: &Digest) -> Result<bool> {
        let p = self.blob_path(d);
        let f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(ImageError::Io {
                    what: "opening blob",
                    path: p,
                    source: e,
                })
            }
        };
        let (actual, _) = crate::digest::HashingReader::new(f)
            .finish()
            .map_err(ioe("reading blob", &p))?;
        if actual == *d {
            return Ok(true);
        }
        let _ = fs::remove_file(&p);
        Ok(false)
    }

    /// Reads blob `d`, verifying it. A corrupt blob is deleted and refused.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let mut buf = Vec::new();
        fs::File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(ioe("reading blob", &p))?;
        let actual = Digest::of(&buf);
        if actual != *d {
            let _ = fs::remove_file(&p);
            return Err(ImageError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        Ok(buf)
    }

    /// Stores `data` as blob `d`, refusing it unless it hashes to `d`.
    pub fn put_blob(&self, d: &Digest, data: &[u8]) -> Result<()> {
        let actual = Digest::of(data);
        if actual != *d {
            return Err(ImageError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        let _l = self.blob_lock(d)?;
        if self.has_valid_blob(d)? {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let mut f = fs::File::create(&tmp).map_err(ioe("writing blob", &tmp))?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(ioe("writing blob", &tmp))?;
        let dst = self.blob_path(d);
        fs::rename(&tmp, &dst).map_err(ioe("storing blob", &dst))
    }

    /// Moves the file at `tmp` into the store as blob `d` after verifying it.
    /// The caller holds the blob lock.
    pub(crate) fn commit_blob_file(&self, d: &Digest, tmp: &Path) -> Result<()> {
        let f = fs::File::open(tmp).map_err(ioe("reading download", tmp))?;
        let (actual, _) = crate::digest::HashingReader::new(f)
            .finish()
            .map_err(ioe("reading download", tmp))?;
        if actual != *d {
            let _ = fs::remove_file(tmp);
            return Err(ImageError::Corrupt {
                expected: d.clone(),
                actual,
            });
        }
        let dst = self.blob_path(d);
        fs::rename(tmp, &dst).map_err(ioe("storing blob", &dst))
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn load_refs(&self) -> Result<BTreeMap<String, ImageRecord>> {
        let p = self.refs_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ImageError::Json {
                what: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::Io {
                what: "reading refs",
                path: p,
                source: e,
            }),
        }
    }

    fn save_refs(&self, refs: &BTreeMap<String, ImageRecord>) -> Result<()> {
        let tmp = self.tmp_path("refs");
        let data = serde_json::to_vec_pretty(refs).expect("refs serialize");
        fs::write(&tmp, data).map_err(ioe("writing refs", &tmp))?;
        let p = self.refs_path();
        fs::rename(&tmp, &p).map_err(ioe("writing refs", &p))
    }

    /// Records `rec` under its reference (replacing an older one).
    pub(crate) fn save_record(&self, rec: &ImageRecord) -> Result<()> {
        let _l = self.lock("refs", true)?;
        let mut refs = self.load_refs()?;
        refs.insert(rec.reference.clone(), rec.clone());
        self.save_refs(&refs)
    }

    /// Builds a record from a stored manifest: reads and checks the config.
    pub(crate) fn record_from(
        &self,
        reference: String,
        index: Option<Digest>,
        manifest_digest: Digest,
    ) -> Result<ImageRecord> {
        let mbytes = self.read_blob(&manifest_digest)?;
        let manifest: Manifest =
            serde_json::from_slice(&mbytes).map_err(|source| ImageError::Json {
                what: format!("manifest of {reference}"),
                source,
            })?;
        let config: Digest = manifest.config.digest.parse()?;
        let cfg = self.image_config_by_digest(&config, &reference)?;
        if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Invalid {
                reference,
                reason: format!(
                    "{} layers but {} diff_ids",
                    manifest.layers.len(),
                    cfg.rootfs.diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        let mut chain: Option<Digest> = None;
        for (desc, diff) in manifest.layers.iter().zip(&cfg.rootfs.diff_ids) {
            let diff_id: Digest = diff.parse()?;
            let chain_id = Digest::chain(chain.as_ref(), &diff_id);
            chain = Some(chain_id.clone());
            layers.push(LayerRecord {
                digest: desc.digest.parse()?,
                diff_id,
                chain_id,
                size: desc.size,
            });
        }
        Ok(ImageRecord {
            reference,
            index,
            manifest: manifest_digest,
            config,
            layers,
        })
    }

    fn image_config_by_digest(&self, d: &Digest, reference: &str) -> Result<ImageConfig> {
        let bytes = self.read_blob(d)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: format!("config of {reference}"),
            source,
        })
    }

    /// The image config of a stored image (verified on read).
    pub fn image_config(&self, rec: &ImageRecord) -> Result<ImageConfig> {
        self.image_config_by_digest(&rec.config, &rec.reference)
    }

    /// Normalizes a reference the way records are keyed.
    pub fn canonical_reference(reference: &str) -> Result<String> {
        if reference.starts_with("oci:") {
            let (path, tag) = layout::parse_oci_ref(reference)?;
            return Ok(layout::canonical(&path, tag.as_deref()));
        }
        let r: oci_client::Reference =
            reference
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::BadReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })?;
        Ok(r.whole())
    }

    /// The stored image for `reference`, if any.
    pub fn get(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let key = Self::canonical_reference(reference)?;
        Ok(self.load_refs()?.remove(&key))
    }

    /// Every stored image.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.load_refs()?.into_values().collect())
    }

    /// Removes `reference` and every blob and layer no other image uses.
    /// Removing an absent image succeeds (idempotent). Returns whether it existed.
    pub fn remove(&self, reference: &str) -> Result<bool> {
        let key = Self::canonical_reference(reference)?;
        let _store = self.store_lock(true)?;
        let refs = self.load_refs()?;
        let existed = refs.contains_key(&key);
        let keep: BTreeSet<String> = refs.into_keys().filter(|k| *k != key).collect();
        self.sweep(&keep)?;
        Ok(existed)
    }

    /// Garbage collection: drops every image not in `in_use` (references as the
    /// compose files spell them, or canonical), then every blob, unpacked layer
    /// and temp file no kept image needs. The caller passes every image a
    /// container on this node or a desired project uses.
    pub fn gc<S: AsRef<str>>(&self, in_use: &[S]) -> Result<GcReport> {
        let keep: BTreeSet<String> = in_use
            .iter()
            .filter_map(|r| Self::canonical_reference(r.as_ref()).ok())
            .collect();
        let _store = self.store_lock(true)?;
        self.sweep(&keep)
    }

    /// Called with the store lock held exclusively.
    fn sweep(&self, keep: &BTreeSet<String>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let refs = {
            let _l = self.lock("refs", true)?;
            let mut refs = self.load_refs()?;
            let dropped: Vec<String> = refs
                .keys()
                .filter(|k| !keep.contains(*k))
                .cloned()
                .collect();
            for k in &dropped {
                refs.remove(k);
            }
            self.save_refs(&refs)?;
            report.images = dropped;
            refs
        };
        let mut live_blobs = BTreeSet::new();
        let mut live_layers = BTreeSet::new();
        for rec in refs.values() {
            live_blobs.extend(rec.index.iter().map(|d| d.hex().to_string()));
            live_blobs.insert(rec.manifest.hex().to_string());
            live_blobs.insert(rec.config.hex().to_string());
            for l in &rec.layers {
                live_blobs.insert(l.digest.hex().to_string());
                live_layers.insert(l.chain_id.hex().to_string());
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(ioe("listing blobs", &blobs))? {
            let e = e.map_err(ioe("listing blobs", &blobs))?;
            if !live_blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                fs::remove_file(e.path()).map_err(ioe("removing blob", &e.path()))?;
                report.blobs += 1;
            }
        }
        let layers = self.root.join("layers");
        // `rm` of an image a container still runs from must not pull its
        // layers out from under the overlay mount.
        let mounted = mounted_overlay_lower_dirs();
        for e in fs::read_dir(&layers).map_err(ioe("listing layers", &layers))? {
            let e = e.map_err(ioe("listing layers", &layers))?;
            if !live_layers.contains(e.file_name().to_string_lossy().as_ref()) {
                if mounted.iter().any(|m| m.starts_with(e.path())) {
                    report.busy_layers += 1;
                    continue;
                }
                unpack::remove_tree(&e.path()).map_err(ioe("removing layer", &e.path()))?;
                report.layers += 1;
            }
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp)
            .map_err(ioe("listing tmp", &tmp))?
            .flatten()
        {
            let _ = unpack::remove_tree(&e.path());
        }
        Ok(report)
    }

    /// Makes sure every layer of `rec` is unpacked (once per chain id, in
    /// overlay mode) and returns the layer dirs, base first. Root only.
    pub fn layer_dirs(&self, rec: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for l in &rec.layers {
            let dir = self.layer_path(&l.chain_id);
            if !dir.is_dir() {
                let _lock = self.lock(&format!("layer-{}", l.chain_id.hex()), true)?;
                if !dir.is_dir() {
                    let tmp = self.tmp_path("layer");
                    fs::create_dir(&tmp).map_err(ioe("creating layer dir", &tmp))?;
                    let opts = UnpackOptions {
                        mode: Mode::Overlay,
                        rootless: false,
                    };
                    if let Err(e) = self.unpack_one(l, &tmp, opts) {
                        let _ = unpack::remove_tree(&tmp);
                        return Err(e);
                    }
                    fs::rename(&tmp, &dir).map_err(ioe("storing layer", &dir))?;
                }
            }
            out.push(dir);
        }
        Ok(out)
    }

    /// Applies every layer of `rec`, in order, onto `dest` (the rootless
    /// fallback: a private copy per container).
    pub fn apply_layers(&self, rec: &ImageRecord, dest: &Path, rootless: bool) -> Result<()> {
        for l in &rec.layers {
            self.unpack_one(
                l,
                dest,
                UnpackOptions {
                    mode: Mode::Apply,
                    rootless,
                },
            )?;
        }
        Ok(())
    }

    fn unpack_one(&self, l: &LayerRecord, dest: &Path, opts: UnpackOptions) -> Result<()> {
        let blob = self.blob_path(&l.digest);
        match unpack::unpack_layer(&blob, Some(&l.digest), Some(&l.diff_id), dest, opts) {
            Ok(_) => Ok(()),
            Err(UnpackError::BlobDigest { expected, actual }) => {
                // Tampered or truncated on disk: never use it; the next pull re-fetches.
                let _ = fs::remove_file(&blob);
                Err(ImageError::Corrupt { expected, actual })
            }
            // A truncated blob usually fails decompression before the digest
            // check: find out which it was.
            Err(source) => match self.has_valid_blob(&l.digest) {
                Ok(false) => {
                    let actual = Digest::of(&fs::read(&blob).unwrap_or_default());
                    Err(ImageError::Corrupt {
                        expected: l.digest.clone(),
                        actual,
                    })
                }
                _ => Err(ImageError::Unpack {
                    layer: l.digest.clone(),
                    source,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_lower_dirs_come_from_overlay_mounts_only_and_are_unescaped() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:52 / /run/c/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/layers/b:/s/layers/a,upperdir=/s/c/upper,workdir=/s/c/work
91 22 0:53 / /x rw - overlay overlay rw,lowerdir=/with\\040space/l,upperdir=/u,workdir=/w
92 22 0:54 / /y rw - tmpfs tmpfs rw,lowerdir=/not/overlay
";
        assert_eq!(
            overlay_lower_dirs(info),
            vec![
                PathBuf::from("/s/layers/b"),
                PathBuf::from("/s/layers/a"),
                PathBuf::from("/with space/l"),
            ]
        );
    }
}
