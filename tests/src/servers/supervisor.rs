//! The `sh` supervisor each server runs under.
//!
//! Rust has no global teardown: statics are never dropped and a test binary
//! can be killed with SIGKILL. So the cleanup lives in another process that
//! notices the test process is gone without any help from it: a `sh` whose
//! stdin is a pipe only the test process holds (std opens pipes with
//! O_CLOEXEC, so no other child inherits it). When the test process ends, in
//! any way, the kernel closes the write end, `read` sees EOF, and the
//! supervisor stops the server (SIGTERM, SIGKILL after 10 s) and removes the
//! server's temporary directory.
//!
//! While the test process lives, it drives the supervisor with one command a
//! line, each answered with one line: `start` (answers the server's pid),
//! `stop`, `pause`, `resume`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const SCRIPT: &str = r#"
dir=$1 log=$2
shift 2
pid=
# Ignore the terminal's and a job controller's signals: this process must
# live until its stdin closes, to clean up.
trap '' INT TERM HUP QUIT
alive() {
    [ -e "/proc/$1/status" ] || return 1
    while read -r key value _; do
        if [ "$key" = "State:" ]; then
            [ "$value" != Z ]
            return
        fi
    done <"/proc/$1/status"
    return 1
}
stop_server() {
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    i=0
    while alive "$pid"; do
        i=$((i + 1))
        [ "$i" -eq 200 ] && kill -KILL "$pid" 2>/dev/null
        sleep 0.05
    done
    wait "$pid" 2>/dev/null
    pid=
}
while read -r cmd; do
    case $cmd in
    start)
        stop_server
        (trap - INT TERM HUP QUIT; exec "$@") </dev/null >>"$log" 2>&1 &
        pid=$!
        echo "$pid"
        ;;
    stop)
        stop_server
        echo stopped
        ;;
    pause)
        [ -n "$pid" ] && kill -STOP "$pid"
        echo paused
        ;;
    resume)
        [ -n "$pid" ] && kill -CONT "$pid"
        echo resumed
        ;;
    *)
        echo "unknown command: $cmd"
        ;;
    esac
done
stop_server
rm -rf "$dir"
"#;

/// One server's supervisor and the directory it owns.
pub(crate) struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pid: Option<u32>,
}

impl Supervisor {
    /// Spawns the supervisor for `argv`; the server is not started yet.
    /// `dir` is removed when the supervisor ends; `log` gets the server's
    /// output.
    pub(crate) fn spawn(dir: &Path, log: &Path, argv: &[String]) -> Supervisor {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("cntnr-e2e-supervisor")
            .arg(dir)
            .arg(log)
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning /bin/sh for {}: {e}", argv[0]));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Supervisor {
            child,
            stdin,
            stdout,
            pid: None,
        }
    }

    fn command(&mut self, cmd: &str) -> String {
        let stdin = self.stdin.as_mut().expect("supervisor already shut down");
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("supervisor: writing {cmd:?}: {e}"));
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("supervisor: reading the answer to {cmd:?}: {e}"));
        assert!(!line.is_empty(), "supervisor exited while running {cmd:?}");
        line.trim_end().to_owned()
    }

    /// Starts the server; returns its pid.
    pub(crate) fn start(&mut self) -> u32 {
        let answer = self.command("start");
        let pid = answer
            .parse()
            .unwrap_or_else(|_| panic!("supervisor: expected a pid, got {answer:?}"));
        self.pid = Some(pid);
        pid
    }

    /// Stops the server gracefully (SIGKILL after 10 s) and waits for it.
    pub(crate) fn stop(&mut self) {
        self.command("stop");
        self.pid = None;
    }

    pub(crate) fn pause(&mut self) {
        self.command("pause");
    }

    pub(crate) fn resume(&mut self) {
        self.command("resume");
    }

    /// The running server's pid, if started.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Closes the supervisor's stdin, as the kernel does when the test
    /// process dies, and waits until it has stopped the server and removed
    /// the directory.
    pub(crate) fn shut_down(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.wait();
        }
        self.pid = None;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// True while `pid` is a live process (not a zombie).
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|s| !s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A fresh directory for one server, `$TMPDIR/cntnr-e2e-<kind>-<pid>-<n>`.
pub(crate) fn temp_dir(kind: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cntnr-e2e-{kind}-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

/// The last lines of a server's log, for panic messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    lines[start..].join("\n")
}
