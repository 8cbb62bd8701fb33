//! Rootless: the same container run by an unprivileged user the test creates
//! (user namespace mapping the user to root, copied rootfs, no cgroup limits,
//! host network).

mod support;

use cntnr_reconcile::bundle::{self, BundleConfig};
use cntnr_reconcile::images::{ImageStore, StoreOptions};
use cntnr_reconcile::runc::{Runc, RuncConfig};
use cntnr_reconcile::runtime::{Runtime, Signal};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

struct TestUser(String);

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

fn chown_r(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_r(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn rootless_run_as_an_unprivileged_user() {
    if !is_root() {
        eprintln!("needs root to create the test user; the helper below is the rootless part");
        return;
    }
    let name = format!("cntnrrl{}", std::process::id());
    let out = Command::new("useradd")
        .args(["-M", "-s", "/usr/sbin/nologin", &name])
        .output()
        .expect("useradd");
    assert!(
        out.status.success(),
        "useradd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _user = TestUser(name.clone());
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, &name]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    let tmp = tempfile::tempdir().unwrap();
    busybox_image(&tmp.path().join("layout"));
    chown_r(tmp.path(), uid, gid);
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_rootless_container",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CNTNR_ROOTLESS_DIR", tmp.path())
        .env("HOME", tmp.path())
        .env("XDG_RUNTIME_DIR", tmp.path())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rootless helper failed:\n{all}");
    assert!(all.contains("ROOTLESS-OK"), "helper did not run:\n{all}");
}

/// Not a test of its own: the unprivileged half of
/// `rootless_run_as_an_unprivileged_user` (runs only with `CNTNR_ROOTLESS_DIR`).
#[tokio::test]
async fn helper_rootless_container() {
    let Some(dir) = std::env::var_os("CNTNR_ROOTLESS_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    assert!(!is_root());
    let state = dir.join("state");
    let store = ImageStore::open(&state, StoreOptions::default()).unwrap();
    let image = store
        .import(&format!("oci:{}:busybox", dir.join("layout").display()))
        .unwrap();
    let cfg = BundleConfig::new(&state, "node-rl");
    assert!(cfg.rootless, "euid != 0 means rootless");
    let mut rc = RuncConfig::new(dir.join("runc-root"), &state);
    rc.shim = PathBuf::from(env!("CARGO_BIN_EXE_cntnr-shim"));
    let runc = Runc::new(rc).unwrap();
    let req = cntnr_reconcile::bundle::ContainerRequest {
        project: "rl".into(),
        service: "web".into(),
        replica: 1,
        config_hash: "h".into(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo inside=$(id -u); touch /ok && echo writable; sleep 1000".into(),
        ]),
        limits: cntnr_reconcile::bundle::Limits {
            memory: Some(64 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let b = bundle::build(&cfg, &store, &image, &req).unwrap();
    assert!(
        b.spec.linux().as_ref().unwrap().resources().is_none(),
        "no cgroup limits rootless"
    );
    let run = runc.run(&b.id, &b.path).await;
    let cleanup = async {
        let _ = runc.stop(&b.id, Signal::KILL, Duration::from_secs(5)).await;
        bundle::remove(&cfg, &b.id).unwrap();
    };
    if let Err(e) = run {
        cleanup.await;
        panic!("rootless run: {e}");
    }
    let mut log = String::new();
    for _ in 0..200 {
        log = std::fs::read_to_string(runc.log_path(&b.id)).unwrap_or_default();
        if log.contains("writable") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let exec = runc
        .exec(
            &b.id,
            &cntnr_reconcile::runtime::ExecRequest {
                args: vec!["id".into(), "-u".into()],
                env: vec![],
                cwd: None,
                timeout: Duration::from_secs(10),
            },
        )
        .await;
    let exit = runc.stop(&b.id, Signal::TERM, Duration::from_secs(2)).await;
    cleanup.await;
    assert!(
        log.contains("inside=0") && log.contains("writable"),
        "log: {log}"
    );
    assert_eq!(exec.unwrap().stdout, b"0\n");
    assert!(exit.unwrap().is_some());
    assert!(!b.path.exists());
    println!("ROOTLESS-OK");
}
