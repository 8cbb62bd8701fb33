//! The `Runtime` seam: what the agent needs from a container runtime. One
//! implementation, [`crate::runc::Runc`], drives the `runc` binary; the pure
//! planner is tested against in-memory fakes of this trait.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Annotation keys every cntnr container carries (SPEC "Naming and identity").
pub mod annotations {
    /// Project name.
    pub const PROJECT: &str = "cntnr.project";
    /// Service name.
    pub const SERVICE: &str = "cntnr.service";
    /// Replica number, from 1.
    pub const REPLICA: &str = "cntnr.replica";
    /// Config hash of the service spec the container was built from.
    pub const CONFIG_HASH: &str = "cntnr.config-hash";
    /// Node that created it.
    pub const NODE: &str = "cntnr.node";
    /// The stop signal (`SIGTERM` unless the service says otherwise).
    pub const STOP_SIGNAL: &str = "cntnr.stop-signal";
    /// The service's `stop_grace_period` in milliseconds, when it sets one:
    /// a container of a project gone from the store is stopped with it.
    pub const STOP_GRACE: &str = "cntnr.stop-grace";
}

/// A runc container id, validated once (`[A-Za-z0-9][A-Za-z0-9_.-]*`, ≤ 128 chars).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(String);

/// The id is not usable as a runc container id.
#[derive(Debug, thiserror::Error)]
#[error("invalid container id {0:?}")]
pub struct InvalidContainerId(pub String);

impl ContainerId {
    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidContainerId> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidContainerId(s))
        }
    }

    /// `<project>-<service>-<replica>` (SPEC).
    pub fn for_replica(
        project: &str,
        service: &str,
        replica: u32,
    ) -> Result<Self, InvalidContainerId> {
        Self::new(format!("{project}-{service}-{replica}"))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// runc's view of a container's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `runc create` has not finished (or died half-way).
    Creating,
    /// Created, user process not started.
    Created,
    /// Running.
    Running,
    /// Paused (frozen).
    Paused,
    /// The init process exited.
    Stopped,
}

impl Status {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Status::Creating,
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            "stopped" => Status::Stopped,
            _ => return None,
        })
    }
}

/// A container as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// Id.
    pub id: ContainerId,
    /// Init pid on the host (0 when stopped).
    pub pid: i32,
    /// Lifecycle status.
    pub status: Status,
    /// Bundle dir.
    pub bundle: PathBuf,
    /// The `config.json` annotations.
    pub annotations: BTreeMap<String, String>,
}

impl ContainerState {
    /// True when the container carries cntnr's annotations.
    pub fn is_ours(&self) -> bool {
        self.annotations.contains_key(annotations::PROJECT)
    }
}

/// A signal, validated: 1..=64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(i32);

impl Signal {
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);
    /// SIGTERM.
    pub const TERM: Signal = Signal(15);

    /// Parses `SIGTERM`, `TERM`, `term` or `15`.
    pub fn parse(s: &str) -> Option<Signal> {
        if let Ok(n) = s.parse::<i32>() {
            return (1..=64).contains(&n).then_some(Signal(n));
        }
        let up = s.to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        const NAMES: [(&str, i32); 31] = [
            ("HUP", 1),
            ("INT", 2),
            ("QUIT", 3),
            ("ILL", 4),
            ("TRAP", 5),
            ("ABRT", 6),
            ("IOT", 6),
            ("BUS", 7),
            ("FPE", 8),
            ("KILL", 9),
            ("USR1", 10),
            ("SEGV", 11),
            ("USR2", 12),
            ("PIPE", 13),
            ("ALRM", 14),
            ("TERM", 15),
            ("STKFLT", 16),
            ("CHLD", 17),
            ("CONT", 18),
            ("STOP", 19),
            ("TSTP", 20),
            ("TTIN", 21),
            ("TTOU", 22),
            ("URG", 23),
            ("XCPU", 24),
            ("XFSZ", 25),
            ("VTALRM", 26),
            ("PROF", 27),
            ("WINCH", 28),
            ("IO", 29),
            ("PWR", 30),
        ];
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| Signal(*v))
    }

    /// The number.
    pub fn number(self) -> i32 {
        self.0
    }
}

/// How a container's init exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; `128 + signal` when killed by a signal (docker's convention).
    /// `None` when it cannot be known (the container was not started under our shim).
    pub code: Option<i32>,
}

/// A command to run in a running container.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// argv.
    pub args: Vec<String>,
    /// Extra `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory, else the container's.
    pub cwd: Option<String>,
    /// Hard limit; on expiry the process started in the container and all
    /// its descendants are SIGKILLed (none outlives the call, also when the
    /// future is dropped) and [`RuntimeError::Timeout`] is returned.
    pub timeout: Duration,
}

/// What an exec produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code of the command (128+signal if killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

/// Runtime errors. Every runc failure carries the container id and runc's stderr.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// runc exited non-zero.
    #[error("runc {verb} {id}: exit {code:?}: {stderr}")]
    Runc {
        /// Verb.
        verb: &'static str,
        /// Container id.
        id: String,
        /// Exit code.
        code: Option<i32>,
        /// runc's stderr (or its log's error lines).
        stderr: String,
    },
    /// A runc call or an exec took too long and was killed.
    #[error("runc {verb} {id}: timed out after {after:?}")]
    Timeout {
        /// Verb.
        verb: &'static str,
        /// Container id.
        id: String,
        /// The limit.
        after: Duration,
    },
    /// The container exists but is not ours (no cntnr annotations): never touched.
    #[error("container {0} is not managed by cntnr; refusing to touch it")]
    Foreign(String),
    /// No such container.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// IO around the runtime (spawning runc, the shim, state files).
    #[error("{what} for {id}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Container id.
        id: String,
        /// Cause.
        source: std::io::Error,
    },
    /// runc printed something we could not parse.
    #[error("runc {verb} {id}: unexpected output: {detail}")]
    Parse {
        /// Verb.
        verb: &'static str,
        /// Container id.
        id: String,
        /// What was wrong.
        detail: String,
    },
}

impl RuntimeError {
    /// Worth retrying with backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RuntimeError::Timeout { .. } | RuntimeError::Io { .. })
    }
}

/// Result of runtime operations.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A container runtime. Every method is idempotent where that makes sense
/// (delete of a missing container succeeds; `run` completes or redoes a
/// half-done create), bounded in time, and refuses containers without cntnr's
/// annotations.
pub trait Runtime: Send + Sync {
    /// Creates (does not start) container `id` from `bundle`. Its stdout/stderr
    /// go to size-capped log files that outlive the agent.
    fn create(
        &self,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Starts a created container.
    fn start(&self, id: &ContainerId) -> impl Future<Output = Result<()>> + Send;
    /// Brings `id` to running from whatever state a crash left it in: creates
    /// and starts it, starts a created one, recreates a stopped or half-created one.
    fn run(
        &self,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The container's state; `None` if it does not exist.
    fn state(
        &self,
        id: &ContainerId,
    ) -> impl Future<Output = Result<Option<ContainerState>>> + Send;
    /// Our containers (with cntnr annotations) under our runtime root.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerState>>> + Send;
    /// Sends `signal` to the container's init.
    fn kill(&self, id: &ContainerId, signal: Signal) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the container (`force`: even if running). Missing is success.
    fn delete(&self, id: &ContainerId, force: bool) -> impl Future<Output = Result<()>> + Send;
    /// Runs a command in the running container, capturing its output.
    fn exec(
        &self,
        id: &ContainerId,
        req: &ExecRequest,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;
    /// [`Runtime::exec`] in a container whose state the caller already
    /// holds (from [`Runtime::state`] or [`Runtime::list`]), skipping the
    /// state lookup: for repeated execs such as health checks, where that
    /// lookup would cost a quarter of the exec again. Refuses a state
    /// without cntnr's annotations. If the container was replaced since the
    /// state was read, the exec fails or runs in the new container; re-read
    /// the state after an error.
    fn exec_in(
        &self,
        state: &ContainerState,
        req: &ExecRequest,
    ) -> impl Future<Output = Result<ExecOutput>> + Send {
        self.exec(&state.id, req)
    }
    /// Resolves when the container's init has exited (event-driven, also for
    /// containers started before an agent restart).
    fn wait_exit(&self, id: &ContainerId) -> impl Future<Output = Result<ExitStatus>> + Send;
    /// Stop signal, up to `grace`, then SIGKILL, then delete. Idempotent.
    fn stop(
        &self,
        id: &ContainerId,
        signal: Signal,
        grace: Duration,
    ) -> impl Future<Output = Result<Option<ExitStatus>>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_validated() {
        assert!(ContainerId::for_replica("shop", "web", 1).is_ok());
        for bad in ["", "-x", "a/b", "../x", "a b"] {
            assert!(ContainerId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(Signal::parse("SIGTERM"), Some(Signal::TERM));
        assert_eq!(Signal::parse("usr1").map(Signal::number), Some(10));
        assert_eq!(Signal::parse("9"), Some(Signal::KILL));
        assert_eq!(Signal::parse("SIGNOPE"), None);
        assert_eq!(Signal::parse("0"), None);
    }
}
