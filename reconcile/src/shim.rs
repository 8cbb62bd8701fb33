//! `cntnr-shim`: the small process that holds a detached container's stdio.
//!
//! Why a shim: runc's detached mode passes the container's stdio straight
//! through. A file fd would survive agent restarts but could never be
//! size-capped; a pipe to the agent would die with the agent. The shim is
//! spawned per container in its own session (so agent signals do not reach
//! it), runs `runc create` as its child, and
//! - copies the container's stdout+stderr from a pipe into
//!   `<state-dir>/logs/<id>.log`, rotating to `<id>.log.1` at the size cap;
//! - is the child subreaper of the container's init (runc's parent exits
//!   right after create, so init is re-parented to the shim), reaps it and
//!   writes its exit code to the exit file, where an agent started later finds it;
//! - exits when the container has exited and the pipe is drained.
//!
//! Protocol with the driver: one line on the shim's stdout once `runc
//! create` returned: `ok`, or `failed <code>`; runc's own error text is in
//! the runc `--log` file the driver passed.
//!
//! Usage: `cntnr-shim LOG MAX_BYTES EXIT_FILE PID_FILE -- RUNC ARGS…`

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The exit record the shim writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// Exit code, or 128+signal.
    pub code: i32,
}

/// Runs the shim with its command line (without `argv[0]`). Returns the process exit code.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stdout(), "failed shim: {e}");
            1
        }
    }
}

fn run(args: Vec<OsString>) -> io::Result<()> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: cntnr-shim LOG MAX_BYTES EXIT_FILE PID_FILE -- RUNC ARGS...",
        )
    };
    let mut it = args.into_iter();
    let log = PathBuf::from(it.next().ok_or_else(bad)?);
    let max: u64 = it
        .next()
        .ok_or_else(bad)?
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let exit_file = PathBuf::from(it.next().ok_or_else(bad)?);
    let pid_file = PathBuf::from(it.next().ok_or_else(bad)?);
    if it.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
        return Err(bad());
    }
    let runc = it.next().ok_or_else(bad)?;
    let runc_args: Vec<OsString> = it.collect();

    let _ = rustix::process::setsid();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let w2 = w.try_clone()?;
    let child = Command::new(&runc)
        .args(&runc_args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2))
        .spawn()?;
    let runc_pid = child.id() as i32;
    drop(child); // reaped below with wait(), like every other child
    let copier = std::thread::spawn(move || copy_capped(File::from(r), &log, max));

    let mut init: Option<i32> = None;
    let mut exited: HashMap<i32, i32> = HashMap::new();
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) => {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255);
                let pid = pid.as_raw_nonzero().get();
                if pid == runc_pid {
                    if code != 0 {
                        let _ = writeln!(io::stdout(), "failed {code}");
                        break;
                    }
                    init = fs::read_to_string(&pid_file)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    let _ = writeln!(io::stdout(), "ok");
                    if let Some(c) = init.and_then(|p| exited.remove(&p)) {
                        write_exit(&exit_file, c)?;
                    }
                } else if Some(pid) == init {
                    write_exit(&exit_file, code)?;
                } else {
                    exited.insert(pid, code);
                }
            }
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::CHILD) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = copier.join();
    Ok(())
}

fn write_exit(path: &Path, code: i32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        serde_json::to_vec(&ExitRecord { code }).expect("serialize"),
    )?;
    fs::rename(&tmp, path)
}

/// Copies `src` into `log`, rotating to `<log>.1` when `max` bytes are reached.
pub fn copy_capped(mut src: impl Read, log: &Path, max: u64) -> io::Result<()> {
    let open = || OpenOptions::new().create(true).append(true).open(log);
    let mut out = open()?;
    let mut size = out.metadata()?.len();
    let mut rotated = log.as_os_str().to_owned();
    rotated.push(".1");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if size >= max {
                fs::rename(log, &rotated)?;
                out = open()?;
                size = 0;
            }
            let room = (max - size).max(1) as usize;
            let take = chunk.len().min(room);
            out.write_all(&chunk[..take])?;
            size += take as u64;
            chunk = &chunk[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        copy_capped(&data[..], &log, 1000).unwrap();
        let cur = fs::read(&log).unwrap();
        let old = fs::read(dir.path().join("c.log.1")).unwrap();
        assert_eq!(old.len(), 1000);
        assert_eq!(cur.len(), 500);
        assert_eq!(cur, data[2000..]);
        assert_eq!(old, data[1000..2000]);
    }
}
