//! Test helper for `tests/servers.rs`, not a tool: starts the shared etcd
//! and Consul servers, prints `etcd <pid> <dir>` and `consul <pid> <dir>`,
//! then, as told by its one argument, exits (`exit`) or sleeps until killed
//! (`hang`). The test then checks that no server and no directory is left.

use std::io::Write;
use std::time::Duration;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let etcd = cntnr_e2e::shared_etcd();
    let consul = cntnr_e2e::shared_consul();
    let mut out = std::io::stdout().lock();
    for (name, pid, dir) in [
        ("etcd", etcd.pid(), etcd.data_dir()),
        ("consul", consul.pid(), consul.data_dir()),
    ] {
        let pid = pid.expect("a started server has a pid");
        writeln!(out, "{name} {pid} {}", dir.display()).expect("stdout");
    }
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    match mode.as_str() {
        "exit" => {}
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => panic!("usage: cntnr-e2e-harness-child exit|hang (got {other:?})"),
    }
}
