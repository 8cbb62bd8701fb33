//! The `cntnr-hook` command line: `cntnr-hook create|delete|check`, OCI
//! state on stdin (the `cntnr-hook` binary, and `cntnr-agent` when runc
//! calls it under that name). See the crate docs.
//!
//! Time budget, from `CNTNR_HOOK_TIMEOUT` (seconds, default 30; the OCI
//! hook `timeout` is the same value, after which runc kills the hook):
//! ADD's plugins get 60% of (timeout - 1.2 s), the rollback of a failed ADD
//! the remaining 40%, and a watchdog exits the process one second before
//! runc would kill it. A killed hook (runc's
//! timeout, the failpoint) leaves the pin behind: the poststop DEL runc runs
//! next, or the next create of the same id, cleans up.

use crate::{check, create, delete, OciState, FAILPOINT_ENV, TIMEOUT_ENV};
use std::ffi::OsString;
use std::io::Read;
use std::time::{Duration, Instant};

/// Runs the hook with its command line (without `argv[0]`): `create`,
/// `delete` or `check`. Returns the process exit code (a watchdog may end
/// the process earlier with 124, see the module docs).
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let start = Instant::now();
    let verb = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !matches!(verb.as_str(), "create" | "delete" | "check") {
        eprintln!("usage: cntnr-hook create|delete|check  (OCI state JSON on stdin)");
        return 2;
    }
    let timeout = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| *t >= 3)
        .unwrap_or(crate::hooks::DEFAULT_TIMEOUT_SECS as u64);
    let total = Duration::from_secs(timeout);
    let hard = total - Duration::from_secs(1);
    std::thread::spawn(move || {
        std::thread::sleep(hard.saturating_sub(start.elapsed()));
        eprintln!("cntnr-hook: hard timeout of {timeout}s reached, giving up");
        std::process::exit(124);
    });
    match run(&verb, start, total) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cntnr-hook {verb}: {e}");
            1
        }
    }
}

fn run(verb: &str, start: Instant, total: Duration) -> Result<(), String> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading the OCI state from stdin: {e}"))?;
    let state = OciState::parse(&input).map_err(|e| e.to_string())?;
    let Some(req) = state.request().map_err(|e| e.to_string())? else {
        // No request: nothing to wire (e.g. the hook left on a host-network container).
        return Ok(());
    };
    if !rustix::process::geteuid().is_root() {
        return Err(
            "needs root: rootless agents run containers on the host network, without CNI".into(),
        );
    }
    // The watchdog fires at total - 1 s; rollback must end before it, and
    // gets 40% of what is left after ADD's share.
    let end = start + total - Duration::from_millis(1200);
    let add_deadline = start + (total - Duration::from_millis(1200)) * 3 / 5;
    let failpoint = std::env::var(FAILPOINT_ENV).ok();
    let r = match verb {
        "create" => {
            create::create(&state, &req, add_deadline, end, failpoint.as_deref()).map(|_| ())
        }
        "delete" => delete::delete(&state, &req, end),
        _ => check::check(&state, &req, end),
    };
    r.map_err(|e| format!("container {}: {e}", state.id))
}
