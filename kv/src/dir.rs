//! The embedded single-host store: key `K` is the file `<root>/K`.
//!
//! Layout under `<root>/.cntnr/` (names starting with `.` are never keys):
//! `lock` (flock serializing writers), `clock` (the store clock, see below),
//! `sessions/<id>.json` (session records) and `locks/<key>` (flock files of
//! locks/elections).
//!
//! Versions: every write through this crate takes the store lock, draws
//! `v = max(now in ns, clock + 1)`, persists `v` in `clock`, and stamps the
//! new file's mtime with `v` before renaming it into place. A key's version
//! is its file's mtime in nanoseconds, so a file an operator writes by hand
//! gets a version too (its real mtime, which is later than every clock value
//! drawn before it unless the wall clock jumped back). Operators should
//! write by hand atomically too (write a dotfile, `mv` it into place): a
//! watcher may otherwise see a half-written file before the final one, and
//! two hand writes within one kernel timestamp tick share a version (the
//! watch still reports the new content). Writes through this crate are atomic:
//! temp file, write, fsync, rename, fsync of the directory — a crash leaves
//! the old or the new file, never half of one.
//!
//! Sessions belong to the process: a record holds its pid, the process start
//! time (against pid reuse), TTL and last renewal, and the bound keys with
//! their versions. Every open store runs a reaper that removes the bound
//! keys of sessions whose process is gone or whose TTL ran out (a bound key
//! is only removed if it still has the version the session wrote, so a
//! successor's write is never undone).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use notify::Watcher;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::registry;
use crate::session::{Session, SessionOps};
use crate::store::{
    Entry, Health, Holder, Leadership, Registration, ServiceInstance, ServiceStream, Snapshot,
    Store, Version, WatchFrom, WatchStream,
};
use crate::url::ConnectOptions;
use crate::watch::{check_key, level_watch, LevelSource};
use crate::{Error, Result};

/// Keys of the dir store: the common rules, and no path segment starting
/// with `.` (such names are the store's own files and temp files).
fn check_dir_key(key: &str) -> Result<()> {
    check_key(key)?;
    if key.split('/').any(|seg| seg.starts_with('.')) {
        return Err(Error::bad_key(
            key,
            "dir store keys must not have a segment starting with '.'",
        ));
    }
    Ok(())
}

/// The dir store. Cheap to clone.
#[derive(Clone)]
pub struct DirStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    meta: PathBuf,
    rescan: Duration,
    registry_prefix: String,
    reaper: CancellationToken,
    /// Scans run by watches since the store was opened (see `watch_scans`).
    scans: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reaper.cancel();
    }
}

impl std::fmt::Debug for DirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

fn mtime_ns(md: &std::fs::Metadata) -> u64 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// Start time of a process (field 22 of `/proc/<pid>/stat`), to tell a live
/// process from a reused pid.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SessionRecord {
    pid: u32,
    start: Option<u64>,
    ttl_ms: u64,
    renewed_ms: u64,
    /// Bound keys and the version this session wrote.
    keys: BTreeMap<String, u64>,
}

impl SessionRecord {
    fn expired(&self, now_ms: u64) -> bool {
        let dead = match proc_start(self.pid) {
            None => true,
            Some(s) => self.start.is_some_and(|mine| mine != s),
        };
        dead || now_ms > self.renewed_ms.saturating_add(self.ttl_ms)
    }
}

/// The store-wide writer lock, held while this value lives.
struct WriteLock(File);

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl Inner {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn lock(&self) -> Result<WriteLock> {
        let p = self.meta.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io("opening store lock", &p, e))?;
        f.lock().map_err(|e| Error::io("locking store", &p, e))?;
        Ok(WriteLock(f))
    }

    /// Draws the next clock value. Caller holds the write lock.
    fn tick(&self, _held: &WriteLock) -> Result<u64> {
        let p = self.meta.join("clock");
        let last: u64 = std::fs::read_to_string(&p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let v = now_ns().max(last + 1);
        std::fs::write(&p, v.to_string()).map_err(|e| Error::io("writing store clock", &p, e))?;
        Ok(v)
    }

    fn read_clock(&self) -> u64 {
        std::fs::read_to_string(self.meta.join("clock"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn read(&self, key: &str) -> Result<Option<Entry>> {
        let p = self.path(key);
        match std::fs::read(&p) {
            Ok(value) => {
                let md = std::fs::metadata(&p).map_err(|e| Error::io("reading", &p, e))?;
                if md.is_dir() {
                    return Ok(None);
                }
                Ok(Some(Entry {
                    key: key.into(),
                    value,
                    version: mtime_ns(&md),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => Ok(None),
            Err(e) => Err(Error::io("reading", &p, e)),
        }
    }

    /// Atomically writes `path` with `value`, stamped with version `v`.
    fn write_file(path: &Path, value: &[u8], v: u64) -> Result<()> {
        let dir = path.parent().expect("key path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(value)?;
            f.set_modified(UNIX_EPOCH + Duration::from_nanos(v))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io("writing", path, e));
        }
        Ok(())
    }

    fn write(&self, held: &WriteLock, key: &str, value: &[u8]) -> Result<u64> {
        let p = self.path(key);
        if p.is_dir() {
            return Err(Error::bad_key(
                key,
                "a directory of keys exists at this path",
            ));
        }
        let v = self.tick(held)?;
        Self::write_file(&p, value, v)?;
        Ok(v)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match std::fs::remove_file(&p) {
            Ok(()) => {
                if let Some(d) = p.parent() {
                    let _ = File::open(d).and_then(|f| f.sync_all());
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", &p, e)),
        }
    }

    fn scan(&self, prefix: &str) -> Result<Snapshot> {
        self.scan_with(prefix, None)
    }

    /// Scans `prefix`. With `cache` (the previous scan), a file whose mtime
    /// and size are unchanged is not read again.
    fn scan_with(&self, prefix: &str, cache: Option<&BTreeMap<String, Entry>>) -> Result<Snapshot> {
        let base_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = if base_rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(base_rel)
        };
        let mut entries = BTreeMap::new();
        let mut stack = vec![(base, base_rel.to_string())];
        let mut max_v = 0;
        while let Some((dir, rel)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.kind() == std::io::ErrorKind::NotADirectory =>
                {
                    continue
                }
                Err(e) => return Err(Error::io("listing", &dir, e)),
            };
            for de in rd {
                let de = de.map_err(|e| Error::io("listing", &dir, e))?;
                let Some(name) = de.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = match de.file_type() {
                    Ok(t) => t,
                    Err(_) => continue,
                };
                if ft.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((de.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    if let Some(c) = cache.and_then(|c| c.get(&key)) {
                        if let Ok(md) = de.metadata() {
                            if mtime_ns(&md) == c.version && md.len() == c.value.len() as u64 {
                                max_v = max_v.max(c.version);
                                entries.insert(key, c.clone());
                                continue;
                            }
                        }
                    }
                    // Raced with a delete/rename: skip, the next scan sees it.
                    if let Ok(Some(e)) = self.read(&key) {
                        max_v = max_v.max(e.version);
                        entries.insert(key, e);
                    }
                }
            }
        }
        Ok(Snapshot {
            entries,
            position: self.read_clock().max(max_v),
        })
    }

    /// A scan under the writer lock: every write through this crate with a
    /// version up to the returned position is in it, none after.
    fn scan_consistent(
        &self,
        prefix: &str,
        cache: Option<&BTreeMap<String, Entry>>,
    ) -> Result<Snapshot> {
        let _held = self.lock()?;
        self.scan_with(prefix, cache)
    }

    fn sessions_dir(&self) -> PathBuf {
        self.meta.join("sessions")
    }

    fn session_path(&self, id: &str) -> PathBuf {
        self.sessions_dir().join(format!("{id}.json"))
    }

    fn read_session(&self, id: &str) -> Option<SessionRecord> {
        let bytes = std::fs::read(self.session_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_session(&self, held: &WriteLock, id: &str, rec: &SessionRecord) -> Result<()> {
        let v = self.tick(held)?;
        Self::write_file(
            &self.session_path(id),
            &serde_json::to_vec(rec).expect("session record"),
            v,
        )
    }

    /// Removes a session and the bound keys that still carry its writes.
    fn reap(&self, held: &WriteLock, id: &str, rec: &SessionRecord) -> Result<()> {
        for (key, v) in &rec.keys {
            if let Some(e) = self.read(key)? {
                if e.version == *v {
                    self.remove(key)?;
                }
            }
        }
        let _ = held;
        let p = self.session_path(id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing session", &p, e)),
        }
    }

    /// One reaper pass: every session whose process is gone or whose TTL
    /// ran out loses its bound keys.
    fn reap_expired(&self) -> Result<()> {
        let rd = match std::fs::read_dir(self.sessions_dir()) {
            Ok(rd) => rd,
            Err(_) => return Ok(()),
        };
        let now = registry::now_ms();
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(rec) = self.read_session(id) else {
                continue;
            };
            if rec.expired(now) {
                let held = self.lock()?;
                // Re-read under the lock: it may have been renewed meanwhile.
                if let Some(rec) = self.read_session(id) {
                    if rec.expired(registry::now_ms()) {
                        tracing::info!(
                            session = id,
                            pid = rec.pid,
                            "dir store: reaping expired session"
                        );
                        self.reap(&held, id, &rec)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn lock_file(&self, key: &str) -> PathBuf {
        self.meta
            .join("locks")
            .join(key.replace('%', "%25").replace('/', "%2F"))
    }

    fn holder_session(&self, key: &str, version: u64) -> String {
        let Ok(rd) = std::fs::read_dir(self.sessions_dir()) else {
            return String::new();
        };
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(rec) = self.read_session(id) {
                if rec.keys.get(key) == Some(&version) {
                    return id.to_string();
                }
            }
        }
        String::new()
    }
}

impl DirStore {
    /// How many directory scans the watches of this store have run. An idle
    /// watch scans once per rescan period, plus once per inotify change; a
    /// number growing faster means watches wake themselves (for metrics and
    /// the regression test of that bug).
    pub fn watch_scans(&self) -> u64 {
        self.inner.scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens (creating if needed) the store at `root` and starts its reaper
    /// (needs a tokio runtime). Reaps sessions of dead processes at once.
    ///
    /// A root this process opened before and whose `.cntnr/` is gone now
    /// (the directory was moved or deleted under a running agent) is *not*
    /// recreated: an empty store would tell the agent to remove every
    /// container. The store opens, and every call that needs the writer
    /// lock (lists, watches, writes, sessions) fails until it is back.
    pub fn open(root: &Path, opts: &ConnectOptions) -> Result<DirStore> {
        static OPENED: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let meta = root.join(".cntnr");
        let reopened = !OPENED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(root.to_path_buf());
        if reopened && !meta.is_dir() {
            tracing::warn!(
                root = %root.display(),
                "dir store: the store directory vanished; not recreating it (store calls fail until it is back)"
            );
        } else {
            for d in [meta.clone(), meta.join("sessions"), meta.join("locks")] {
                std::fs::create_dir_all(&d)
                    .map_err(|e| Error::io("creating store directory", &d, e))?;
            }
        }
        let inner = Arc::new(Inner {
            root: root.to_path_buf(),
            meta,
            rescan: opts.dir_rescan,
            registry_prefix: opts.registry_prefix.clone(),
            reaper: CancellationToken::new(),
            scans: std::sync::atomic::AtomicU64::new(0),
        });
        inner.reap_expired()?;
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let cancel = inner.reaper.clone();
        let period = opts.dir_rescan.min(Duration::from_millis(500));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let r = tokio::task::spawn_blocking(move || inner.reap_expired()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "dir store reaper failed");
                }
            }
        });
        Ok(DirStore { inner })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `f` on `key`, only while `fence` still holds its lock: checked
    /// (lock file version = token) under the writer lock, so no write of the
    /// lock file can slip between the check and `f`; `FencedOut` otherwise.
    async fn fenced<T: Send + 'static>(
        &self,
        key: &str,
        fence: &Leadership,
        f: impl FnOnce(&Inner, &WriteLock) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        check_dir_key(key)?;
        if !fence.is_held() || !Self::guard_held(fence) {
            return Err(fence.fenced_out(key));
        }
        let (lock, token) = (fence.key.clone(), fence.token);
        let r = self
            .blocking(move |i| {
                let held = i.lock()?;
                if i.read(&lock)?.is_none_or(|e| e.version != token) {
                    return Ok(None);
                }
                f(i, &held).map(Some)
            })
            .await?;
        r.ok_or_else(|| fence.fenced_out(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .unwrap_or_else(|e| {
                Err(Error::Server {
                    op: "dir store".into(),
                    message: e.to_string(),
                    retryable: false,
                })
            })
    }
}

/// Level source for dir watches: inotify (recursive, on the deepest existing
/// directory of the prefix) wakes a scan; a periodic rescan catches anything
/// inotify misses (overflow, network filesystems, directories created later).
struct DirLevel {
    store: DirStore,
    wake: Arc<tokio::sync::Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
    last: std::sync::Mutex<Option<(BTreeMap<String, Entry>, u64)>>,
}

#[async_trait]
impl LevelSource for DirLevel {
    async fn poll(&self, prefix: &str, after: Option<u64>) -> Result<Snapshot> {
        // The first poll scans at once (a watch resumed from a snapshot must
        // report what changed since without waiting for a wake-up); later
        // ones wait for inotify or the rescan tick.
        let first = self.last.lock().expect("dir watch state").is_none();
        if after.is_some() && !first {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.store.inner.rescan) => {}
            }
        }
        self.store
            .inner
            .scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = prefix.to_string();
        let cache = self
            .last
            .lock()
            .expect("dir watch state")
            .as_ref()
            .map(|(e, _)| e.clone());
        let mut snap = self
            .store
            .blocking(move |i| i.scan_consistent(&p, cache.as_ref()))
            .await?;
        let mut last = self.last.lock().expect("dir watch state");
        match &*last {
            Some((entries, pos)) if *entries == snap.entries => snap.position = *pos,
            Some((_, pos)) => {
                // Something changed: the position must move even when only a
                // hand-deleted file did (it draws no clock value).
                snap.position = snap.position.max(pos + 1);
            }
            _ => {}
        }
        *last = Some((snap.entries.clone(), snap.position));
        Ok(snap)
    }
}

struct DirSession {
    store: DirStore,
}

#[async_trait]
impl SessionOps for DirSession {
    async fn renew(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.store
            .blocking(move |i| {
                let held = i.lock()?;
                let Some(mut rec) = i.read_session(&id) else {
                    return Ok(false);
                };
                rec.renewed_ms = registry::now_ms();
                i.write_session(&held, &id, &rec)?;
                Ok(true)
            })
            .await
    }

    async fn revoke(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.store
            .blocking(move |i| {
                let held = i.lock()?;
                match i.read_session(&id) {
                    Some(rec) => i.reap(&held, &id, &rec),
                    None => Ok(()),
                }
            })
            .await
    }
}

/// Keeps a lock's flock while leading; releases it when the leadership is
/// dropped or the session is lost.
struct DirLockGuard {
    file: Arc<std::sync::Mutex<Option<File>>>,
    cancel: CancellationToken,
}

impl Drop for DirLockGuard {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(f) = self.file.lock().expect("lock guard").take() {
            let _ = f.unlock();
        }
    }
}

impl DirStore {
    fn guard_held(fence: &Leadership) -> bool {
        fence
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<DirLockGuard>())
            .is_some_and(|g| g.file.lock().expect("lock guard").is_some())
    }
}

#[async_trait]
impl Store for DirStore {
    fn backend(&self) -> &'static str {
        "dir"
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        check_dir_key(key)?;
        let key = key.to_string();
        self.blocking(move |i| i.read(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Snapshot> {
        let prefix = prefix.to_string();
        self.blocking(move |i| i.scan_consistent(&prefix, None))
            .await
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Version> {
        check_dir_key(key)?;
        let (key, value) = (key.to_string(), value.to_vec());
        self.blocking(move |i| {
            let held = i.lock()?;
            i.write(&held, &key, &value)
        })
        .await
    }

    async fn cas(&self, key: &str, value: &[u8], expected: Option<Version>) -> Result<Version> {
        check_dir_key(key)?;
        let (key, value) = (key.to_string(), value.to_vec());
        self.blocking(move |i| {
            let held = i.lock()?;
            let current = i.read(&key)?.map(|e| e.version);
            if current != expected {
                return Err(Error::CasConflict {
                    key,
                    expected,
                    current,
                });
            }
            i.write(&held, &key, &value)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_dir_key(key)?;
        let key = key.to_string();
        self.blocking(move |i| {
            let _held = i.lock()?;
            i.remove(&key)
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        if prefix.is_empty() {
            return Err(Error::bad_key(prefix, "refusing to delete an empty prefix"));
        }
        let prefix = prefix.to_string();
        self.blocking(move |i| {
            let _held = i.lock()?;
            for key in i.scan(&prefix)?.entries.keys() {
                i.remove(key)?;
            }
            Ok(())
        })
        .await
    }

    fn watch(&self, prefix: &str, from: WatchFrom) -> WatchStream {
        let wake = Arc::new(tokio::sync::Notify::new());
        // Watch the deepest existing directory of the prefix, recursively.
        let mut dir = self.inner.root.join(match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        });
        while !dir.is_dir() && dir != self.inner.root {
            dir.pop();
        }
        let w = wake.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Session renewals and the clock live under `.cntnr/`: they
            // are not keys and must not wake watchers.
            // Temp files (`.name.tmp.*`) are not keys either: their rename
            // into place is what matters.
            let hidden = |p: &Path| {
                p.components().any(|c| c.as_os_str() == ".cntnr")
                    || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            };
            let ours = matches!(&res, Ok(ev) if !ev.paths.is_empty() && ev.paths.iter().all(|p| hidden(p)));
            // Reads (opening a directory or file) are not changes. A rescan
            // itself opens every directory, so waking on them would turn one
            // change into an endless rescan loop. Only a close after writing
            // counts among access events.
            let read_only = matches!(
                &res,
                Ok(ev) if matches!(
                    ev.kind,
                    notify::EventKind::Access(a)
                        if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write)
                )
            );
            if !ours && !read_only {
                w.notify_one();
            }
        })
        .and_then(|mut watcher| {
            watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "inotify unavailable; relying on periodic rescan");
                None
            }
        };
        let src = DirLevel {
            store: self.clone(),
            wake,
            _watcher: watcher,
            last: std::sync::Mutex::new(None),
        };
        level_watch(src, prefix.to_string(), from)
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        let pid = std::process::id();
        let id = format!("{pid}-{:016x}", fastrand::u64(..));
        let rec = SessionRecord {
            pid,
            start: proc_start(pid),
            ttl_ms: ttl.as_millis() as u64,
            renewed_ms: registry::now_ms(),
            keys: BTreeMap::new(),
        };
        let id2 = id.clone();
        self.blocking(move |i| {
            let held = i.lock()?;
            i.write_session(&held, &id2, &rec)
        })
        .await?;
        Ok(Session::start(
            id,
            ttl,
            Arc::new(DirSession {
                store: self.clone(),
            }),
        ))
    }

    async fn put_bound(&self, session: &Session, key: &str, value: &[u8]) -> Result<Version> {
        check_dir_key(key)?;
        session.ensure_alive()?;
        let (key, value, id) = (key.to_string(), value.to_vec(), session.id().to_string());
        self.blocking(move |i| {
            let held = i.lock()?;
            let Some(mut rec) = i.read_session(&id) else {
                return Err(Error::SessionLost { id });
            };
            // Record the binding first: a crash between the two writes
            // leaves a binding to nothing, never an unbound key.
            let v = i.tick(&held)?;
            let p = i.path(&key);
            if p.is_dir() {
                return Err(Error::bad_key(
                    &key,
                    "a directory of keys exists at this path",
                ));
            }
            rec.keys.insert(key.clone(), v);
            i.write_session(&held, &id, &rec)?;
            Inner::write_file(&p, &value, v)?;
            Ok(v)
        })
        .await
    }

    async fn campaign(&self, session: &Session, key: &str, value: &[u8]) -> Result<Leadership> {
        check_dir_key(key)?;
        session.ensure_alive()?;
        let lock_path = self.inner.lock_file(key);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("opening lock file", &lock_path, e))?;
        let file = match file.try_lock() {
            Ok(()) => file,
            Err(std::fs::TryLockError::WouldBlock) => {
                // Block in a thread (flock wakes us; no polling). If we stop
                // waiting, the thread's file is dropped, releasing the lock.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let lp = lock_path.clone();
                std::thread::spawn(move || {
                    let r = file
                        .lock()
                        .map(|_| file)
                        .map_err(|e| Error::io("locking", &lp, e));
                    let _ = tx.send(r);
                });
                tokio::select! {
                    _ = session.lost() => return Err(Error::SessionLost { id: session.id().into() }),
                    r = rx => r.map_err(|_| Error::Server { op: format!("locking {key}"), message: "lock thread died".into(), retryable: true })??,
                }
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("locking", &lock_path, e))
            }
        };
        let guard = DirLockGuard {
            file: Arc::new(std::sync::Mutex::new(Some(file))),
            cancel: CancellationToken::new(),
        };
        let token = match self.put_bound(session, key, value).await {
            Ok(v) => v,
            Err(e) => return Err(e), // guard drops: flock released
        };
        // Release the flock as soon as the session is lost.
        let (f, c, mut lost) = (
            guard.file.clone(),
            guard.cancel.clone(),
            session.lost_watch(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = c.cancelled() => {}
                _ = lost.wait_for(|l| *l) => {
                    if let Some(f) = f.lock().expect("lock guard").take() {
                        let _ = f.unlock();
                    }
                }
            }
        });
        Ok(Leadership {
            key: key.into(),
            token,
            session_id: session.id().into(),
            session_lost: session.lost_watch(),
            guard: Some(Box::new(guard)),
        })
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>> {
        check_dir_key(key)?;
        let key = key.to_string();
        self.blocking(move |i| {
            Ok(i.read(&key)?.map(|e| Holder {
                session_id: i.holder_session(&key, e.version),
                value: e.value,
                token: e.version,
            }))
        })
        .await
    }

    async fn resign(&self, leadership: Leadership) -> Result<()> {
        let (key, token) = (leadership.key.clone(), leadership.token);
        self.blocking(move |i| {
            let _held = i.lock()?;
            if i.read(&key)?.is_some_and(|e| e.version == token) {
                i.remove(&key)?;
            }
            Ok(())
        })
        .await?;
        drop(leadership);
        Ok(())
    }

    async fn put_fenced(&self, key: &str, value: &[u8], fence: &Leadership) -> Result<Version> {
        let (k, value) = (key.to_string(), value.to_vec());
        self.fenced(key, fence, move |i, held| i.write(held, &k, &value))
            .await
    }

    async fn delete_fenced(&self, key: &str, fence: &Leadership) -> Result<()> {
        let k = key.to_string();
        self.fenced(key, fence, move |i, _| i.remove(&k)).await
    }

    async fn register(&self, session: &Session, reg: &Registration) -> Result<()> {
        registry::register_record(self, &self.inner.registry_prefix, session, reg).await
    }

    async fn register_with_status(
        &self,
        session: &Session,
        reg: &Registration,
        status: Health,
    ) -> Result<()> {
        registry::register_record_with(self, &self.inner.registry_prefix, session, reg, status)
            .await
    }

    async fn set_check(
        &self,
        session: &Session,
        name: &str,
        id: &str,
        health: Health,
        output: &str,
    ) -> Result<()> {
        registry::set_check_record(
            self,
            &self.inner.registry_prefix,
            session,
            (name, id),
            health,
            output,
        )
        .await
    }

    async fn deregister(&self, name: &str, id: &str) -> Result<()> {
        let key = registry::record_key(&self.inner.registry_prefix, name, id)?;
        self.delete(&key).await
    }

    async fn instances(&self, name: &str, passing_only: bool) -> Result<Vec<ServiceInstance>> {
        let snap = self
            .list(&registry::service_prefix(&self.inner.registry_prefix, name))
            .await?;
        Ok(registry::instances(&snap, passing_only))
    }

    async fn service_names(&self) -> Result<BTreeSet<String>> {
        let prefix = &self.inner.registry_prefix;
        let snap = self.list(&registry::registry_root(prefix)).await?;
        Ok(registry::service_names(
            prefix,
            snap.entries.keys().map(String::as_str),
        ))
    }

    fn watch_service(&self, name: &str, passing_only: bool) -> ServiceStream {
        let prefix = registry::service_prefix(&self.inner.registry_prefix, name);
        registry::service_stream(self.clone(), prefix, passing_only, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_segments_are_not_keys() {
        assert!(check_dir_key("cntnr/.cntnr/x").is_err());
        assert!(check_dir_key(".cntnr/lock").is_err());
        assert!(check_dir_key("a/.b.tmp").is_err());
        check_dir_key("cntnr/projects/shop").unwrap();
    }

    /// A store directory moved away under a process that uses it is not
    /// recreated empty by a reopen (the agent reconnects after a lost
    /// session): calls fail until it is back, then see the old data.
    #[tokio::test]
    async fn a_vanished_root_is_not_recreated_by_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let opts = ConnectOptions::default();
        let s = DirStore::open(&root, &opts).unwrap();
        s.put("p/projects/shop", b"x").await.unwrap();
        drop(s);
        let away = tmp.path().join("away");
        std::fs::rename(&root, &away).unwrap();
        let s = DirStore::open(&root, &opts).unwrap();
        assert!(!root.exists(), "reopen recreated the store directory");
        assert!(s.list("p/projects/").await.is_err());
        assert!(s.put("p/projects/other", b"y").await.is_err());
        std::fs::rename(&away, &root).unwrap();
        let snap = s.list("p/projects/").await.unwrap();
        assert_eq!(snap.entries.len(), 1);
    }

    #[test]
    fn proc_start_tells_live_from_dead() {
        assert!(proc_start(std::process::id()).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let rec = SessionRecord {
            pid,
            start: Some(1),
            ttl_ms: 60_000,
            renewed_ms: registry::now_ms(),
            keys: BTreeMap::new(),
        };
        assert!(rec.expired(registry::now_ms()));
        let me = SessionRecord {
            pid: std::process::id(),
            start: proc_start(std::process::id()),
            ..rec
        };
        assert!(!me.expired(registry::now_ms()));
        assert!(me.expired(registry::now_ms() + 120_000), "TTL ran out");
    }
}
