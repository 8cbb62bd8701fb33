//! Our own layer unpacker: tar, optionally gzip- or zstd-compressed
//! (detected by magic bytes, since Docker and OCI media types both occur).
//!
//! Two modes, chosen by the caller:
//! - [`Mode::Overlay`] (root): each layer goes to its own directory, used as an
//!   overlayfs lower dir. Whiteouts `.wh.NAME` become overlay whiteouts
//!   (a 0/0 character device) and opaque markers `.wh..wh..opq` become the
//!   `trusted.overlay.opaque=y` xattr on the directory, exactly what the
//!   kernel's overlayfs reads. Needs root (mknod, `trusted.*` xattrs).
//! - [`Mode::Apply`] (rootless fallback): layers are applied in order onto one
//!   tree; a whiteout removes the lower path, an opaque marker removes the
//!   lower contents of its directory.
//!
//! Safety: every entry path is joined under the layer root. Absolute paths are
//! made relative; `..` in an entry path refuses the layer; parents are resolved
//! *inside* the root (a symlink to `/etc` in the layer resolves to
//! `<root>/etc`, like `safe_path::scoped_join`), and the final component is
//! never followed. Hardlink targets are resolved the same way. Devices are
//! skipped rootless. The compressed digest and the diff id are both checked
//! over exactly the bytes that were unpacked.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// How whiteouts are represented; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One directory per layer, overlayfs whiteouts (root only).
    Overlay,
    /// Apply onto an existing tree, deleting whited-out paths.
    Apply,
}

/// Options for [`unpack_layer`].
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Whiteout representation.
    pub mode: Mode,
    /// Running without root: skip devices, ownership and privileged xattrs.
    pub rootless: bool,
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An IO error on a path.
    #[error("unpacking layer: {path}: {source}")]
    Io {
        /// Path being handled.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The tar stream itself is malformed.
    #[error("unpacking layer: reading tar stream: {0}")]
    Tar(io::Error),
    /// A path tries to leave the layer root.
    #[error("unpacking layer: refused unsafe path {0:?}")]
    UnsafePath(String),
    /// The compressed blob's digest does not match.
    #[error("layer blob digest mismatch: expected {expected}, got {actual}")]
    BlobDigest {
        /// From the manifest.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// The uncompressed digest does not match the config's diff id.
    #[error("layer diff_id mismatch: expected {expected}, got {actual}")]
    DiffId {
        /// From the image config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

type Result<T> = std::result::Result<T, UnpackError>;

/// A reader feeding a shared hasher, so the digest can be read after the
/// reader was moved into a decoder.
struct Tee<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

fn finish(h: &Rc<RefCell<Sha256>>) -> Digest {
    let out = h.borrow().clone().finalize();
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
        .parse()
        .expect("sha256 output is a valid digest")
}

/// Some producers (umoci's `insert`) end the stream without the last entry's
/// padding and the two zero blocks; GNU tar accepts that, so do we: at EOF we
/// supply zeros. The diff id is hashed below this, over the real bytes only.
struct ZeroPadAtEof<R> {
    inner: R,
    pad: usize,
}

impl<R: Read> Read for ZeroPadAtEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        let n = self.pad.min(buf.len());
        buf[..n].fill(0);
        self.pad -= n;
        Ok(n)
    }
}

/// Unpacks the layer blob at `blob` into `dest` (which must exist) and returns
/// its diff id. `expected_blob` / `expected_diff_id`, when given, are checked
/// after the whole stream was read; on a mismatch the caller must discard
/// `dest` (the image store unpacks into a temp dir and renames on success).
pub fn unpack_layer(
    blob: &Path,
    expected_blob: Option<&Digest>,
    expected_diff_id: Option<&Digest>,
    dest: &Path,
    opts: UnpackOptions,
) -> Result<Digest> {
    let file = File::open(blob).map_err(io_err(blob))?;
    let blob_hash = Rc::new(RefCell::new(Sha256::new()));
    let mut compressed = BufReader::new(Tee {
        inner: file,
        hasher: blob_hash.clone(),
    });
    let magic = compressed.fill_buf().map_err(io_err(blob))?.to_vec();
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(compressed))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(compressed).map_err(io_err(blob))?)
    } else {
        Box::new(compressed)
    };
    let diff_hash = Rc::new(RefCell::new(Sha256::new()));
    let tee = Tee {
        inner: decoded,
        hasher: diff_hash.clone(),
    };
    let mut archive = tar::Archive::new(ZeroPadAtEof {
        inner: tee,
        pad: 1536,
    });
    let mut state = Unpacker {
        root: dest.to_path_buf(),
        opts,
        created: HashSet::new(),
        dir_modes: Vec::new(),
    };
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        state.entry(&mut entry)?;
    }
    state.finish()?;
    // Hash the tar padding and the rest of the compressed stream too.
    let mut rest = archive.into_inner().inner;
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Tar)?;
    drop(rest);
    let diff_id = finish(&diff_hash);
    let blob_digest = finish(&blob_hash);
    if let Some(expected) = expected_blob {
        if *expected != blob_digest {
            return Err(UnpackError::BlobDigest {
                expected: expected.clone(),
                actual: blob_digest,
            });
        }
    }
    if let Some(expected) = expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffId {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(diff_id)
}

/// Normalizes an entry path into plain components: a leading `/` and `.` are
/// dropped, `..` refuses the entry.
fn sanitize(raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(UnpackError::UnsafePath(raw.display().to_string())),
        }
    }
    Ok(out)
}

const MAX_SYMLINKS: usize = 40;

/// Resolves `rel` (a directory path) under `root`, following symlinks only
/// within `root` (absolute targets restart at `root`, `..` stops at `root`).
/// With `create`, missing components become directories and non-directories
/// in the way are replaced. Returns the host path of a real directory inside
/// `root`.
pub fn resolve_dir_in_root(root: &Path, rel: &Path, create: bool) -> io::Result<PathBuf> {
    let mut queue: VecDeque<OsString> = rel.components().filter_map(comp_name).collect();
    let mut cur: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let mut p = root.to_path_buf();
        p.extend(&cur);
        p.push(&c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => cur.push(c),
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target = fs::read_link(&p)?;
                if target.is_absolute() {
                    cur.clear();
                }
                let mut pre: Vec<OsString> = target.components().filter_map(comp_name).collect();
                pre.extend(queue.drain(..));
                queue = pre.into();
            }
            Ok(_) if create => {
                fs::remove_file(&p)?;
                fs::create_dir(&p)?;
                cur.push(c);
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    p.display().to_string(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p)?;
                cur.push(c);
            }
            Err(e) => return Err(e),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&cur);
    Ok(p)
}

fn comp_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

struct Unpacker {
    root: PathBuf,
    opts: UnpackOptions,
    /// Host paths this layer created (an opaque marker keeps them).
    created: HashSet<PathBuf>,
    /// Directory modes applied at the end, so a read-only dir can still be filled.
    dir_modes: Vec<(PathBuf, u32)>,
}

/// Removes whatever is at `path` (never following a symlink). Missing is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let rel = sanitize(&raw)?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            return Ok(()); // the root itself ("./")
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = resolve_dir_in_root(&self.root, parent_rel, true).map_err(io_err(&rel))?;
        let name_bytes = name.as_bytes();
        if name_bytes == b".wh..wh..opq" {
            return self.opaque(&parent);
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            return self.whiteout(&parent.join(OsStr::from_bytes(hidden)));
        }
        let path = parent.join(&name);
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(UnpackError::Tar)? & 0o7777;
        let uid = header.uid().map_err(UnpackError::Tar)? as u32;
        let gid = header.gid().map_err(UnpackError::Tar)? as u32;
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&path).map_err(io_err(&path))?;
                        fs::create_dir(&path).map_err(io_err(&path))?;
                    }
                    Err(_) => fs::create_dir(&path).map_err(io_err(&path))?,
                }
                self.dir_modes.push((path.clone(), mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_any(&path).map_err(io_err(&path))?;
                let mut f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                io::copy(entry, &mut f).map_err(io_err(&path))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let _ = f.set_modified(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime),
                    );
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| {
                        UnpackError::UnsafePath(format!(
                            "symlink without target: {}",
                            raw.display()
                        ))
                    })?;
                remove_any(&path).map_err(io_err(&path))?;
                symlink(&target, &path).map_err(io_err(&path))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| {
                        UnpackError::UnsafePath(format!(
                            "hardlink without target: {}",
                            raw.display()
                        ))
                    })?;
                let target_rel = sanitize(&target_raw)?;
                let tname = target_rel
                    .file_name()
                    .ok_or_else(|| UnpackError::UnsafePath(target_raw.display().to_string()))?;
                let tparent = resolve_dir_in_root(
                    &self.root,
                    target_rel.parent().unwrap_or(Path::new("")),
                    false,
                )
                .map_err(io_err(&target_rel))?;
                let target = tparent.join(tname);
                let meta = fs::symlink_metadata(&target).map_err(io_err(&target))?;
                if meta.is_dir() {
                    return Err(UnpackError::UnsafePath(format!(
                        "hardlink to a directory: {}",
                        raw.display()
                    )));
                }
                if target != path {
                    remove_any(&path).map_err(io_err(&path))?;
                    fs::hard_link(&target, &path).map_err(io_err(&path))?;
                }
                self.created.insert(path);
                return Ok(()); // shares the target's inode: owner and mode are the target's
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if self.opts.rootless && kind != tar::EntryType::Fifo {
                    return Ok(());
                }
                remove_any(&path).map_err(io_err(&path))?;
                let ft = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let major = header
                    .device_major()
                    .map_err(UnpackError::Tar)?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(UnpackError::Tar)?
                    .unwrap_or(0);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    ft,
                    rustix::fs::Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| UnpackError::Io {
                    path: path.clone(),
                    source: e.into(),
                })?;
            }
            // PAX/GNU metadata entries are consumed by the tar crate; anything
            // else (sparse files, ...) is not produced by image builders.
            other => {
                return Err(UnpackError::UnsafePath(format!(
                    "unsupported entry type {other:?}: {}",
                    raw.display()
                )))
            }
        }
        if !self.opts.rootless {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err(&path))?;
        }
        if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Tar)?;
                if let Some(xname) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let r = rustix::fs::lsetxattr(
                        &path,
                        OsStr::from_bytes(xname),
                        ext.value_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    );
                    if let Err(e) = r {
                        // Rootless cannot set trusted.*/security.*; some filesystems lack xattrs.
                        if !self.opts.rootless && e != rustix::io::Errno::OPNOTSUPP {
                            return Err(UnpackError::Io {
                                path: path.clone(),
                                source: e.into(),
                            });
                        }
                    }
                }
            }
        }
        if matches!(
            kind,
            tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Fifo
                | tar::EntryType::Char
                | tar::EntryType::Block
        ) {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        }
        self.created.insert(path);
        Ok(())
    }

    fn whiteout(&mut self, target: &Path) -> Result<()> {
        match self.opts.mode {
            Mode::Apply => remove_any(target).map_err(io_err(target)),
            Mode::Overlay => {
                remove_any(target).map_err(io_err(target))?;
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    target,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| UnpackError::Io {
                    path: target.to_path_buf(),
                    source: e.into(),
                })?;
                self.created.insert(target.to_path_buf());
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir: &Path) -> Result<()> {
        match self.opts.mode {
            Mode::Overlay => rustix::fs::lsetxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| UnpackError::Io {
                path: dir.to_path_buf(),
                source: e.into(),
            }),
            Mode::Apply => {
                for child in fs::read_dir(dir).map_err(io_err(dir))? {
                    let child = child.map_err(io_err(dir))?.path();
                    if !self.created.contains(&child) {
                        remove_any(&child).map_err(io_err(&child))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        for (path, mode) in self.dir_modes.drain(..).rev() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

/// Removes a directory tree (or file) that may contain read-only directories;
/// missing is fine. Never follows symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match remove_any(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path)?;
            remove_any(path)
        }
        r => r,
    }
}

fn make_writable(path: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    if m.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for e in fs::read_dir(path)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_strips_root_and_refuses_parent() {
        assert_eq!(
            sanitize(Path::new("/etc/./passwd")).unwrap(),
            PathBuf::from("etc/passwd")
        );
        assert!(sanitize(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn resolve_keeps_absolute_symlinks_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("real")).unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("../../../../", root.join("up")).unwrap();
        assert_eq!(
            resolve_dir_in_root(root, Path::new("abs"), false).unwrap(),
            root.join("real")
        );
        assert_eq!(
            resolve_dir_in_root(root, Path::new("up/real"), false).unwrap(),
            root.join("real")
        );
        assert_eq!(
            resolve_dir_in_root(root, Path::new("up/new"), true).unwrap(),
            root.join("new")
        );
    }
}
