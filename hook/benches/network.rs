//! The time bridge networking (CNI through cntnr-hook) adds per container,
//! against `network_mode: host`, measured side by side in one run: real
//! runc, real plugins, busybox containers. Root only.
//!
//! `cargo bench -p cntnr-hook --bench network` (N with `CNTNR_BENCH_N`, default 20).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    (median, mean)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("network bench: needs root (runc, bridges, iptables); skipped");
        return;
    }
    let n: usize = std::env::var("CNTNR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut w = World::new("bench", 20);
    let p = w.project("b");
    let net = w.network(&p, "default");
    let req = w.request(vec![net], vec![]);
    let args = &["sleep", "3600"];

    // The first container on a network also creates its bridge and rules.
    let first = w.bundle(&format!("{p}-first-1"), args, Some(&req), &[]);
    let t = Instant::now();
    w.run(&first).expect("first bridge container");
    let first_up = t.elapsed();
    // It stays for the whole run, so the others measure the steady state.

    let (mut host_up, mut bridge_up, mut host_rm, mut bridge_rm) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        // Interleaved, so drift on a shared machine hits both the same.
        let h = w.bundle(&format!("{p}-host-{i}"), args, None, &[]);
        let b = w.bundle(&format!("{p}-bridge-{i}"), args, Some(&req), &[]);
        for (c, up, rm) in [
            (&h, &mut host_up, &mut host_rm),
            (&b, &mut bridge_up, &mut bridge_rm),
        ] {
            let t = Instant::now();
            w.run(c).expect("run");
            up.push(t.elapsed());
            let t = Instant::now();
            w.delete(&c.id).expect("delete");
            rm.push(t.elapsed());
        }
    }
    w.delete(&first.id).expect("delete first");

    let (hu, hu_mean) = stats(host_up);
    let (bu, bu_mean) = stats(bridge_up);
    let (hr, _) = stats(host_rm);
    let (br, _) = stats(bridge_rm);
    println!(
        "cntnr-hook network bench: {n} containers each, busybox, runc run -d / runc delete -f"
    );
    println!("                         median up   mean up   median delete");
    println!(
        "  network_mode: host     {:8.1} ms {:7.1} ms {:10.1} ms",
        ms(hu),
        ms(hu_mean),
        ms(hr)
    );
    println!(
        "  bridge (CNI hook)      {:8.1} ms {:7.1} ms {:10.1} ms",
        ms(bu),
        ms(bu_mean),
        ms(br)
    );
    println!(
        "  added by bridge        {:8.1} ms {:7.1} ms {:10.1} ms   (goal: < 30 ms per container up)",
        ms(bu.saturating_sub(hu)),
        ms(bu_mean.saturating_sub(hu_mean)),
        ms(br.saturating_sub(hr))
    );
    println!(
        "  first container on a new network (bridge + rules created): {:.1} ms up",
        ms(first_up)
    );
}
