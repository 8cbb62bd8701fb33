//! Support for the network path test: the workspace binaries it needs
//! (`cntnr-hook`, `cntnr-shim`), the example busybox image, and host
//! snapshots (links, iptables rules, host-local IPAM dirs) to prove that
//! nothing leaks. Copied in spirit from `hook/tests/support` (test code is
//! not shared across crates).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Host-wide state (iptables, links) is compared before/after: one such
/// test at a time on this host, across test processes too (an exclusive
/// flock held until the returned file is dropped).
pub fn serial() -> std::fs::File {
    let dir = Path::new("/run/lock");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join("cntnr-e2e-network.lock");
    let f =
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    f.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    f
}

pub fn is_root() -> bool {
    // /proc/self/status `Uid:` real effective saved fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The target profile dir this test binary was built into
/// (`target/<profile>/deps/<test>` → `target/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Paths of the workspace binaries this test runs.
pub struct Binaries {
    pub hook: PathBuf,
    pub shim: PathBuf,
}

/// Builds `cntnr-hook` and `cntnr-shim` (bins of other workspace crates, which
/// `cargo test -p cntnr-e2e` alone does not build) into this test's target
/// profile dir, and returns their paths. Cargo holds the build lock only
/// while compiling, so calling it from a running test is fine; when nothing
/// changed it only checks freshness. Panics with the cargo output on failure.
pub fn workspace_binaries() -> Binaries {
    static BUILT: std::sync::OnceLock<Binaries> = std::sync::OnceLock::new();
    let b = BUILT.get_or_init(|| {
        let dir = profile_dir();
        let profile = dir
            .file_name()
            .expect("profile name")
            .to_string_lossy()
            .into_owned();
        let target = dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(cntnr_e2e::workspace_root())
            .args(["build", "--bins", "-p", "cntnr-hook", "-p", "cntnr-reconcile"])
            .arg("--profile")
            .arg(if profile == "debug" { "dev" } else { &profile })
            .arg("--target-dir")
            .arg(&target)
            .output()
            .unwrap_or_else(|e| panic!("running {cargo:?} build: {e}"));
        assert!(
            out.status.success(),
            "building cntnr-hook and cntnr-shim failed (run `cargo build -p cntnr-hook -p cntnr-reconcile --bins`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = Binaries {
            hook: dir.join("cntnr-hook"),
            shim: dir.join("cntnr-shim"),
        };
        for p in [&b.hook, &b.shim] {
            assert!(p.is_file(), "{} missing after cargo build", p.display());
        }
        b
    });
    Binaries {
        hook: b.hook.clone(),
        shim: b.shim.clone(),
    }
}

/// Builds the example busybox image (examples/hello/build-image.sh: busybox
/// applets incl. `httpd` and `nc`, `/var/www/index.html` = [`INDEX`]) into
/// `out`; returns its `oci:` reference.
pub fn example_image(out: &Path) -> String {
    let script = cntnr_e2e::workspace_root().join("examples/hello/build-image.sh");
    let o = Command::new(&script)
        .arg(out)
        .output()
        .expect("run build-image.sh");
    assert!(
        o.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    format!("oci:{}:latest", out.display())
}

/// The example image's web page.
pub const INDEX: &str = "hello from cntnr\n";

pub use cntnr_e2e::host::{leaks, snapshot};

/// Entries of `dir` (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
