//! Container start latency, side by side, for a busybox image:
//! raw `runc create`+`start` of a prepared bundle; our full path (bundle
//! build + create + start); `podman run -d` of the same image when podman is
//! installed; and our path from a ~1 MB image versus a ~100 MB one.
//! `scripts/bench.sh` installs podman and configures it (runc, ulimits).
//!
//! `cargo bench -p cntnr-reconcile --bench runtime` (as root for overlayfs;
//! rootless it measures the copy fallback). `CNTNR_BENCH_ITERS` sets the
//! iteration count (default 10).

#[path = "../tests/support/mod.rs"]
mod support;

use cntnr_reconcile::bundle;
use cntnr_reconcile::runtime::{ContainerId, Runtime, Signal};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn stats(name: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let median = samples[samples.len() / 2].as_secs_f64() * 1e3;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e3;
    println!(
        "{name:<44} median {median:>8.1} ms   mean {mean:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms",
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
    median
}

fn runc(root: &std::path::Path, args: &[&str]) -> bool {
    Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn big_layer() -> Vec<u8> {
    // ~100 MB of incompressible bytes (xorshift), stored uncompressed.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..100 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    tar_bytes(&[Entry::File("big.bin".into(), data, 0o644)])
}

/// `podman run -d` of the same busybox image, copied from an OCI layout into
/// podman's storage with skopeo first (no registry), run with `--pull=never`.
fn podman(w: &World, iters: usize) {
    let quiet = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            })
            .unwrap_or_else(|e| (false, e.to_string()))
    };
    let layout = w.tmp.path().join("layout-podman");
    busybox_image(&layout);
    let image = format!(
        "localhost/cntnr-bench-busybox-{}:latest",
        std::process::id()
    );
    let (ok, err) = quiet(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:busybox", layout.display()),
        &format!("containers-storage:{image}"),
    ]));
    if !ok {
        println!(
            "podman: skopeo copy into containers-storage failed: {}",
            err.trim()
        );
        return;
    }
    let runtime = Command::new("podman")
        .args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut pod = Vec::new();
    for i in 0..=iters {
        let name = format!("cntnr-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let (ok, err) = quiet(Command::new("podman").args([
            "run",
            "-d",
            "--pull=never",
            "--name",
            &name,
            "--network",
            "none",
            &image,
            "sleep",
            "1000",
        ]));
        let took = t.elapsed();
        quiet(Command::new("podman").args(["rm", "-f", "-t", "0", &name]));
        if !ok {
            println!(
                "podman run -d failed: {} (rlimits? scripts/bench.sh sets default_ulimits in its containers.conf)",
                err.trim()
            );
            break;
        }
        if i > 0 {
            pod.push(took); // the first run warms podman's caches
        }
    }
    quiet(Command::new("podman").args(["rmi", "-f", &image]));
    if !pod.is_empty() {
        stats(&format!("podman run -d (runtime {runtime})"), &mut pod);
    }
}

fn main() {
    let iters: usize = std::env::var("CNTNR_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = World::new();
    let layout = w.tmp.path().join("layout");
    let mut lb = LayoutBuilder::new(&layout);
    lb.image(
        "big",
        &[busybox_layer(), big_layer()],
        Compression::None,
        default_config(),
    );
    let big = w
        .store
        .import(&format!("oci:{}:big", layout.display()))
        .unwrap();
    w.store.layer_dirs(&big).ok(); // unpack once, outside the measurement
    if !is_root() {
        println!("(rootless: the rootfs is a copy, so image size matters here)");
    }
    println!("{iters} iterations each, busybox `sleep 1000`\n");
    let root = w.runc_root();

    // Raw runc: one prepared bundle, create + start.
    let prepared = bundle::build(
        &w.bundles,
        &w.store,
        &w.image,
        &w.request("raw", &["sleep", "1000"]),
    )
    .unwrap();
    let mut raw = Vec::new();
    for i in 0..iters {
        let id = format!("raw-{i}");
        let t = Instant::now();
        assert!(
            runc(
                &root,
                &["create", "--bundle", prepared.path.to_str().unwrap(), &id]
            ),
            "runc create"
        );
        assert!(runc(&root, &["start", &id]));
        raw.push(t.elapsed());
        runc(&root, &["delete", "--force", &id]);
    }
    bundle::remove(&w.bundles, &prepared.id).unwrap();

    let ours = |image: &cntnr_reconcile::images::ImageRecord, service: &str| -> Vec<Duration> {
        let mut v = Vec::new();
        for i in 0..iters {
            let mut req = w.request(service, &["sleep", "1000"]);
            req.replica = i as u32 + 1;
            let t = Instant::now();
            let b = bundle::build(&w.bundles, &w.store, image, &req).unwrap();
            rt.block_on(w.runc.run(&b.id, &b.path)).unwrap();
            v.push(t.elapsed());
            rt.block_on(w.runc.stop(&b.id, Signal::KILL, Duration::from_secs(5)))
                .unwrap();
            bundle::remove(&w.bundles, &b.id).unwrap();
        }
        v
    };
    let mut small = ours(&w.image, "small");
    let mut large = ours(&big, "large");

    println!("{:-<110}", "");
    let raw_m = stats("raw runc create+start (prepared bundle)", &mut raw);
    let small_m = stats("cntnr: bundle build + create + start (~2 MB)", &mut small);
    let large_m = stats("cntnr: bundle build + create + start (~100 MB)", &mut large);
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => podman(&w, iters),
        _ => println!("podman not installed (scripts/bench.sh installs it)"),
    }
    println!("{:-<110}", "");
    println!("cntnr / raw runc: {:.2}x (goal <= 1.3x)", small_m / raw_m);
    println!(
        "100 MB / 2 MB image: {:.2}x (goal ~1.0x)",
        large_m / small_m
    );
    drop(ContainerId::new("unused"));
}
