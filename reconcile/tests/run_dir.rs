//! `/run/cntnr` inside a real runc container: the bundle's run dir mounted
//! read-only, the hosts dir still at `/run/cntnr/net`, and a file replaced
//! by rename on the host seen at once by the container (issue 7: env sync
//! and leader files).

mod support;

use cntnr_reconcile::bundle;
use cntnr_reconcile::runtime::Runtime;
use std::time::{Duration, Instant};
use support::*;

fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn run_dir_is_read_only_and_renamed_files_are_seen() {
    let w = World::new();
    let script = r#"if touch /run/cntnr/x 2>/dev/null; then echo run=rw; else echo run=ro; fi;
        grep -c localhost /etc/hosts >/dev/null && echo hosts=ok;
        while true; do echo "env:$(cat /run/cntnr/env 2>/dev/null | tr '\n' ' ')"; sleep 0.1; done"#;
    let req = w.request("rundir", &["sh", "-c", script]);
    let b = bundle::build(&w.bundles, &w.store, &w.image, &req).unwrap();
    replace(&bundle::env_path(&b.path), "A=one\n");
    w.runc.run(&b.id, &b.path).await.unwrap();
    let wait_for = |want: &'static str| {
        let start = Instant::now();
        loop {
            let log = w.log(&b.id);
            if log.contains(want) {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{want:?} never seen; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let log = wait_for("env:A=one");
    assert!(log.contains("run=ro"), "{log}");
    assert!(log.contains("hosts=ok"), "{log}");
    replace(&bundle::env_path(&b.path), "A=two\n");
    wait_for("env:A=two");
    w.runc
        .kill(&b.id, cntnr_reconcile::runtime::Signal::KILL)
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), w.runc.wait_exit(&b.id)).await;
    w.runc.delete(&b.id, true).await.unwrap();
}
