//! What etcd and Consul instances share: a directory, a log, a supervisor,
//! and waiting until the server answers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::supervisor::{alive, log_tail, temp_dir, Supervisor};
use super::READY_TIMEOUT;

/// Why a server did not become ready.
pub(crate) enum StartError {
    /// The server exited; the tail of its log.
    Exited { log: String },
    /// It still did not answer after [`READY_TIMEOUT`]; the last readiness
    /// error and the tail of its log.
    Timeout { last: String, log: String },
}

impl StartError {
    /// Another process took one of the ports after we picked it.
    pub(crate) fn is_port_race(&self) -> bool {
        match self {
            StartError::Exited { log } => log.contains("address already in use"),
            StartError::Timeout { .. } => false,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Exited { log } => write!(f, "it exited; its log ends with:\n{log}"),
            StartError::Timeout { last, log } => write!(
                f,
                "not ready within {}s (last check: {last}); its log ends with:\n{log}",
                READY_TIMEOUT.as_secs()
            ),
        }
    }
}

/// One server process under its supervisor, with its own directory.
pub(crate) struct Instance {
    dir: PathBuf,
    log: PathBuf,
    supervisor: Mutex<Supervisor>,
}

impl Instance {
    /// Creates the directory and the supervisor; `argv` is built from the
    /// directory (it usually names a data dir inside it). Starts nothing.
    pub(crate) fn new(kind: &str, argv: impl FnOnce(&Path) -> Vec<String>) -> Instance {
        let dir = temp_dir(kind);
        let log = dir.join("server.log");
        let argv = argv(&dir);
        let supervisor = Mutex::new(Supervisor::spawn(&dir, &log, &argv));
        Instance {
            dir,
            log,
            supervisor,
        }
    }

    fn supervisor(&self) -> MutexGuard<'_, Supervisor> {
        // A panic while holding the lock leaves the supervisor usable.
        self.supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.supervisor().pid()
    }

    /// Starts the server and polls `ready` until it returns `Ok`, the server
    /// exits, or [`READY_TIMEOUT`] passes.
    pub(crate) fn launch(&self, ready: impl Fn() -> Result<(), String>) -> Result<(), StartError> {
        let pid = self.supervisor().start();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !alive(pid) {
                return Err(StartError::Exited {
                    log: log_tail(&self.log),
                });
            }
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    last,
                    log: log_tail(&self.log),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn stop(&self) {
        self.supervisor().stop();
    }

    pub(crate) fn pause(&self) {
        self.supervisor().pause();
    }

    pub(crate) fn resume(&self) {
        self.supervisor().resume();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.supervisor().shut_down();
    }
}
