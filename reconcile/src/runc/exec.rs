//! `runc exec` with captured output and a timeout that leaves nothing behind.
//!
//! Without a tty, `runc exec` is the parent of the process it starts (runc's
//! nsexec clones it with `CLONE_PARENT`) and waits for it. Killing runc alone
//! orphans that process into the container, where the container's init
//! adopts it and it runs until the container stops: a health check that hangs
//! every interval would pile up processes. So when the timeout expires, or
//! the exec future is dropped, the process runc started and every descendant
//! of it are stopped (SIGSTOP, so none can fork while the tree is listed) and
//! then SIGKILLed, and only then is runc itself killed.
//!
//! The process is found through runc's `--pid-file`, and, for the moment
//! before runc writes that file, as runc's own child. Either way it must be in
//! the container's pid namespace, so nothing outside the container is ever
//! signalled, even if a pid was reused.

use super::Runc;
use crate::runtime::{
    ContainerId, ContainerState, ExecOutput, ExecRequest, Result, RuntimeError, Status,
};
use rustix::process::{kill_process, Pid, Signal};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a timed-out exec waits for runc to report the process it started
/// (runc writes the pid file only once the process runs) before giving up on
/// finding it and killing runc alone.
const FIND_PROCESS_FOR: Duration = Duration::from_secs(2);

/// How long runc gets to exit on its own once its child is dead.
const RUNC_EXIT_GRACE: Duration = Duration::from_secs(1);

impl Runc {
    pub(super) async fn exec_impl(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
    ) -> Result<ExecOutput> {
        let Some(state) = self.ours(id).await? else {
            return Err(RuntimeError::NotFound(id.to_string()));
        };
        self.exec_with_state(&state, req).await
    }

    /// The exec itself, in the container `state` describes (already known
    /// to be ours).
    pub(super) async fn exec_with_state(
        &self,
        state: &ContainerState,
        req: &ExecRequest,
    ) -> Result<ExecOutput> {
        let id = &state.id;
        // runc itself refuses a stopped container; checking first also
        // guarantees the init pid the guard below relies on.
        if !matches!(
            state.status,
            Status::Created | Status::Running | Status::Paused
        ) || state.pid <= 0
        {
            return Err(RuntimeError::Runc {
                verb: "exec",
                id: id.to_string(),
                code: None,
                stderr: format!("container is {:?}, not running", state.status),
            });
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let pid_file = self.run_file(
            id,
            &format!(
                "exec-{}-{}.pid",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let mut c = self.command_in(Some(state));
        c.arg("exec").arg("--pid-file").arg(&pid_file);
        for e in &req.env {
            c.arg("--env").arg(e);
        }
        if let Some(cwd) = &req.cwd {
            c.arg("--cwd").arg(cwd);
        }
        c.arg(id.as_str()).args(&req.args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| RuntimeError::Io {
            what: "spawning runc",
            id: id.to_string(),
            source,
        })?;
        // From here on, whatever happens to this future (timeout, drop,
        // error), the guard makes sure no exec'd process outlives it.
        let mut guard = ExecGuard {
            runc_pid: child.id(),
            pid_file,
            container_init: state.pid,
            armed: true,
        };
        let (mut out_pipe, mut err_pipe) = (
            child.stdout.take().expect("stdout is piped"),
            child.stderr.take().expect("stderr is piped"),
        );
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let finished = tokio::time::timeout(req.timeout, async {
            let (o, e, status) = tokio::join!(
                out_pipe.read_to_end(&mut stdout),
                err_pipe.read_to_end(&mut stderr),
                child.wait()
            );
            o.and(e).and(status)
        })
        .await;
        match finished {
            Ok(Ok(status)) => {
                // runc reaped its child before exiting: nothing left to kill.
                guard.armed = false;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255);
                Ok(ExecOutput {
                    code,
                    stdout,
                    stderr,
                })
            }
            Ok(Err(source)) => Err(RuntimeError::Io {
                what: "waiting for runc exec",
                id: id.to_string(),
                source,
            }),
            Err(_) => {
                guard.kill_when_found(&mut child).await;
                // runc exits once its child is dead; kill it if it does not.
                if tokio::time::timeout(RUNC_EXIT_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                }
                Err(RuntimeError::Timeout {
                    verb: "exec",
                    id: id.to_string(),
                    after: req.timeout,
                })
            }
        }
    }
}

/// Kills the process a `runc exec` started, with its descendants, unless
/// disarmed; removes the pid file. Runs on drop, so a cancelled exec cleans
/// up too (runc itself is then killed by `kill_on_drop`).
struct ExecGuard {
    /// runc's pid (`None` once tokio has reaped it).
    runc_pid: Option<u32>,
    /// runc's `--pid-file`.
    pid_file: PathBuf,
    /// Host pid of the container's init: names the container's pid namespace.
    container_init: i32,
    /// False once runc exited normally (it waits for its child).
    armed: bool,
}

impl ExecGuard {
    /// Kills the exec'd tree, waiting up to [`FIND_PROCESS_FOR`] for it to
    /// appear if runc has not started it yet. Returns when it is killed, when
    /// runc exited (then the process is gone too), or when the time is up.
    async fn kill_when_found(&mut self, runc: &mut tokio::process::Child) {
        let deadline = tokio::time::Instant::now() + FIND_PROCESS_FOR;
        loop {
            if self.kill_tree() {
                self.armed = false;
                return;
            }
            if matches!(runc.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One attempt: finds the exec'd process(es) and SIGKILLs them with all
    /// their descendants. True if something was found (and killed).
    fn kill_tree(&self) -> bool {
        let Some(ns) = pid_namespace(self.container_init) else {
            // The container's init is gone: the kernel kills every process
            // of its pid namespace.
            return true;
        };
        let table = process_table();
        let mut roots: BTreeSet<i32> = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .into_iter()
            .collect();
        if let Some(runc) = self.runc_pid.and_then(|p| i32::try_from(p).ok()) {
            roots.extend(table.iter().filter(|(_, pp)| **pp == runc).map(|(p, _)| *p));
        }
        roots.retain(|p| {
            *p > 0 && *p != self.container_init && pid_namespace(*p) == Some(ns.clone())
        });
        if roots.is_empty() {
            return false;
        }
        // Freeze the tree, growing it until no stopped member has a child
        // outside it, then kill everything in it.
        let mut tree: BTreeSet<i32> = BTreeSet::new();
        let mut frontier: Vec<i32> = roots.into_iter().collect();
        while !frontier.is_empty() {
            for p in &frontier {
                signal(*p, Signal::STOP);
                tree.insert(*p);
            }
            frontier = process_table()
                .iter()
                .filter(|(p, pp)| tree.contains(pp) && !tree.contains(p))
                .map(|(p, _)| *p)
                .collect();
        }
        for p in &tree {
            signal(*p, Signal::KILL);
        }
        true
    }
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill_tree();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Sends `sig`; a process that is already gone is fine.
fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

/// The pid namespace of `pid` (the `/proc/<pid>/ns/pid` link), if it lives.
fn pid_namespace(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every process on the host: pid → parent pid, from `/proc/<pid>/stat`.
fn process_table() -> BTreeMap<i32, i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect()
}

/// The parent pid from a `/proc/<pid>/stat` line: `pid (comm) state ppid …`,
/// where `comm` may itself contain spaces and parentheses.
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_read_past_a_hostile_comm() {
        assert_eq!(parent_of("42 (sleep) S 7 42 1 0"), Some(7));
        assert_eq!(parent_of("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn this_process_is_in_the_table_with_its_parent() {
        let me = std::process::id() as i32;
        let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
        assert_eq!(process_table().get(&me).copied(), parent);
    }
}
