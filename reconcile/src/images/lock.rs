//! Advisory file locks (flock), so several processes share one store safely.

use std::fs::File;
use std::io;
use std::path::Path;

/// A held flock; released on drop (when the file closes).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` is held (creating the file).
    pub fn exclusive(path: &Path) -> io::Result<Self> {
        Self::take(path, rustix::fs::FlockOperation::LockExclusive)
    }

    /// Blocks until a shared lock on `path` is held (creating the file).
    pub fn shared(path: &Path) -> io::Result<Self> {
        Self::take(path, rustix::fs::FlockOperation::LockShared)
    }

    fn take(path: &Path, op: rustix::fs::FlockOperation) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(Self { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
