//! Test helper for `tests/servers.rs`, not a tool: starts the shared etcd
//! and Consul servers (or, with a second argument `secure`, an etcd with
//! mutual TLS and a Consul with ACLs, leaked like statics so no destructor
//! runs), prints `etcd <pid> <dir>` and `consul <pid> <dir>`, then, as told
//! by its first argument, exits (`exit`) or sleeps until killed (`hang`).
//! The test then checks that no server and no directory is left.

use std::io::Write;
use std::time::Duration;

use cntnr_e2e::{Consul, Etcd};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let (etcd, consul): (&Etcd, &Consul) = match args.next().as_deref() {
        None => (cntnr_e2e::shared_etcd(), cntnr_e2e::shared_consul()),
        Some("secure") => (
            Box::leak(Box::new(Etcd::start_mtls())),
            Box::leak(Box::new(Consul::start_with_acl("harness-child-token"))),
        ),
        Some(other) => panic!("usage: cntnr-e2e-harness-child exit|hang [secure] (got {other:?})"),
    };
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
        other => panic!("usage: cntnr-e2e-harness-child exit|hang [secure] (got {other:?})"),
    }
}
