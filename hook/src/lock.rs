//! Exclusive file locks (flock): held by a guard, released on drop or when
//! the process dies (a killed hook never leaves a lock behind).

use crate::HookError;
use rustix::fs::{flock, FlockOperation};
use std::fs::File;
use std::path::Path;

/// A held exclusive lock.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until `path` (created if missing, with its parent dirs) is locked.
    pub fn acquire(path: &Path) -> Result<Self, HookError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(HookError::io("creating lock dir", dir))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(HookError::io("opening lock", path))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| HookError::Io {
            what: "locking",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self { _file: file })
    }
}
