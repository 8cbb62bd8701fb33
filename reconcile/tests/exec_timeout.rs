//! `runc exec` timeouts against real runc: a timed-out exec leaves no process
//! behind, in the container or on the host.

mod support;

use cntnr_reconcile::runtime::{ExecRequest, Runtime, RuntimeError};
use std::time::{Duration, Instant};
use support::*;

fn exec(args: &[&str], timeout: Duration) -> ExecRequest {
    ExecRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        timeout,
    }
}

/// Host pids whose command line (NUL-separated argv) is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"])
        .flatten()
        .copied()
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// A sleep duration no other test (or process) on this host uses, so the
/// leak check below cannot be confused by them.
fn unique_seconds(salt: u32) -> String {
    (100_000 + (std::process::id() % 10_000) * 10 + salt).to_string()
}

async fn wait_gone(argv: &[&str], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_running(argv);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn exec_timeout_kills_the_hung_process_inside_the_container() {
    let w = World::new();
    let id = w.run(&w.request("hc", &["sleep", "600"])).await;
    let secs = unique_seconds(1);
    let script = format!("sleep {secs}");
    let hung = ["sleep", secs.as_str()];

    let started = Instant::now();
    let err = w
        .runc
        .exec(&id, &exec(&["sh", "-c", &script], Duration::from_secs(1)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
    assert!(took < Duration::from_secs(3), "timed out after {took:?}");
    // SIGKILL is delivered before exec returns; give the kernel a moment to
    // tear the process down before looking.
    let left = wait_gone(&hung, Duration::from_millis(500)).await;
    assert!(left.is_empty(), "leaked {hung:?}: pids {left:?}");

    // The container is unharmed and later execs work.
    let out = w
        .runc
        .exec(&id, &exec(&["echo", "ok"], Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[tokio::test]
async fn exec_timeout_kills_children_and_background_jobs_of_the_check() {
    let w = World::new();
    let id = w.run(&w.request("hc", &["sleep", "600"])).await;
    let bg = unique_seconds(2);
    let fg = unique_seconds(3);
    // sh forks (it cannot exec the last command: `wait` follows), the
    // background sleep is a grandchild of runc's child.
    let script = format!("sleep {bg} & sleep {fg}; wait");
    let err = w
        .runc
        .exec(&id, &exec(&["sh", "-c", &script], Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
    for argv in [["sleep", bg.as_str()], ["sleep", fg.as_str()]] {
        let left = wait_gone(&argv, Duration::from_millis(500)).await;
        assert!(left.is_empty(), "leaked {argv:?}: pids {left:?}");
    }
    let sh = ["sh", "-c", script.as_str()];
    assert!(
        wait_gone(&sh, Duration::from_millis(500)).await.is_empty(),
        "leaked the shell"
    );
}

#[tokio::test]
async fn exec_that_finishes_in_time_is_not_disturbed() {
    let w = World::new();
    let id = w.run(&w.request("hc", &["sleep", "600"])).await;
    let out = w
        .runc
        .exec(
            &id,
            &exec(
                &["sh", "-c", "sleep 0.2; echo done; exit 4"],
                Duration::from_secs(10),
            ),
        )
        .await
        .unwrap();
    assert_eq!((out.code, out.stdout.as_slice()), (4, &b"done\n"[..]));
    // No pid files are left behind in the state dir.
    let run_dir = w.tmp.path().join("state/run");
    let pid_files: Vec<_> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("exec"))
        .collect();
    assert!(pid_files.is_empty(), "{pid_files:?}");
}

#[tokio::test]
async fn exec_in_reuses_a_known_state_and_refuses_a_foreign_one() {
    let w = World::new();
    let id = w.run(&w.request("hc", &["sleep", "600"])).await;
    let state = w.runc.state(&id).await.unwrap().unwrap();
    for _ in 0..2 {
        let out = w
            .runc
            .exec_in(&state, &exec(&["echo", "hi"], Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!((out.code, out.stdout.as_slice()), (0, &b"hi\n"[..]));
    }
    // A hung exec through exec_in is killed like any other.
    let secs = unique_seconds(4);
    let err = w
        .runc
        .exec_in(&state, &exec(&["sleep", &secs], Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout { .. }), "{err}");
    let left = wait_gone(&["sleep", secs.as_str()], Duration::from_millis(500)).await;
    assert!(left.is_empty(), "leaked: {left:?}");

    let mut foreign = state.clone();
    foreign.annotations.clear();
    let err = w
        .runc
        .exec_in(&foreign, &exec(&["true"], Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Foreign(_)), "{err}");
}
