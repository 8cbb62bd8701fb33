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

/// Serializes user management: useradd/usermod/userdel lock /etc/passwd and
/// /etc/subuid and fail, rather than wait, when another holds the lock.
static USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A user the test created, with its subordinate ranges; removed on drop
/// (ranges first, then the user), and any line of it left in /etc/subuid or
/// /etc/subgid is dropped too.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    /// `(start, count)` added to /etc/subuid and /etc/subgid.
    subids: Option<(u32, u32)>,
}

impl TestUser {
    fn create(name: &str, subids: bool) -> Self {
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        // No automatic subordinate ranges (login.defs may allocate them).
        run(Command::new("useradd").args([
            "-M",
            "-s",
            "/usr/sbin/nologin",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            name,
        ]));
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        let mut user = TestUser {
            name: name.to_string(),
            uid: id("-u"),
            gid: id("-g"),
            subids: None,
        };
        if subids {
            let (start, count) = (free_subid_start(), 65536);
            let range = format!("{start}-{}", start + count - 1);
            user.subids = Some((start, count));
            run(Command::new("usermod").args([
                "--add-subuids",
                &range,
                "--add-subgids",
                &range,
                name,
            ]));
        }
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((start, count)) = self.subids {
            let range = format!("{start}-{}", start + count - 1);
            let _ = Command::new("usermod")
                .args(["--del-subuids", &range, "--del-subgids", &range, &self.name])
                .output();
        }
        let _ = Command::new("userdel").arg(&self.name).output();
        let prefix = format!("{}:", self.name);
        for file in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                if text.lines().any(|l| l.starts_with(&prefix)) {
                    let kept: String = text
                        .lines()
                        .filter(|l| !l.starts_with(&prefix))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let _ = std::fs::write(file, kept);
                }
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A start above every range in /etc/subuid and /etc/subgid.
fn free_subid_start() -> u32 {
    let mut end = 100_000u64;
    for file in ["/etc/subuid", "/etc/subgid"] {
        for l in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let f: Vec<&str> = l.split(':').collect();
            if let [_, s, c] = f[..] {
                if let (Ok(s), Ok(c)) = (s.parse::<u64>(), c.parse::<u64>()) {
                    end = end.max(s + c);
                }
            }
        }
    }
    u32::try_from(end.next_multiple_of(65536)).expect("subordinate ids exhausted")
}

/// Force-deletes every container left under a runc root (as root), even if
/// the unprivileged helper panicked before its own cleanup.
struct RuncRootGuard(PathBuf);

impl Drop for RuncRootGuard {
    fn drop(&mut self) {
        let ids = Command::new("runc")
            .arg("--root")
            .arg(&self.0)
            .args(["list", "-q"])
            .output();
        if let Ok(out) = ids {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&self.0)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
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

/// Runs `helper_rootless_container` as `user` (no supplementary groups),
/// with `env` added; returns its output.
fn run_helper_as(user: &TestUser, env: &[(&str, String)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    busybox_image(&tmp.path().join("layout"));
    chown_r(tmp.path(), user.uid, user.gid);
    let _containers = RuncRootGuard(tmp.path().join("runc-root"));
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
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
        .envs(env.iter().map(|(k, v)| (k, v)))
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
    all
}

#[test]
fn rootless_run_as_an_unprivileged_user() {
    if !is_root() {
        eprintln!("needs root to create the test user; the helper below is the rootless part");
        return;
    }
    let user = TestUser::create(&format!("cntnrrl{}", std::process::id()), false);
    // Without subordinate ranges only root is mapped.
    run_helper_as(&user, &[("CNTNR_ROOTLESS_SUBIDS", "0".into())]);
}

#[test]
fn rootless_with_subuid_range_runs_a_non_root_user() {
    if !is_root() {
        eprintln!("needs root to create the test user and its subuid range");
        return;
    }
    for helper in ["newuidmap", "newgidmap"] {
        assert!(
            Path::new("/usr/bin").join(helper).exists(),
            "Debian uidmap is a test dependency"
        );
    }
    let user = TestUser::create(&format!("cntnrsu{}", std::process::id()), true);
    let (start, _) = user.subids.unwrap();
    // Container uid 1000 is the 1000th id of the range (container 1 = start).
    let host = start + 999;
    run_helper_as(
        &user,
        &[
            ("CNTNR_ROOTLESS_SUBIDS", "1".into()),
            ("CNTNR_ROOTLESS_USER", "1000:1000".into()),
            ("CNTNR_ROOTLESS_HOST_IDS", format!("{host}:{host}")),
            ("CNTNR_ROOTLESS_INIT", "1".into()),
            // `app` is also in group `extra` (2000) in the image's /etc/group.
            ("CNTNR_ROOTLESS_GROUPS", "1000 2000".into()),
        ],
    );
}

/// Not a test of its own: the unprivileged half of the tests above (runs only
/// with `CNTNR_ROOTLESS_DIR`). `CNTNR_ROOTLESS_USER` is the container's
/// `user:` (default root), `CNTNR_ROOTLESS_SUBIDS` `1` if the user has
/// subordinate ranges (so runc runs in a user namespace of the driver's,
/// else the spec maps only root), `CNTNR_ROOTLESS_HOST_IDS` the host `uid:gid` the
/// container's process must have (default: ours), `CNTNR_ROOTLESS_INIT`
/// asks for `init: true`, `CNTNR_ROOTLESS_GROUPS` is the `id -G` expected.
#[tokio::test]
async fn helper_rootless_container() {
    let Some(dir) = std::env::var_os("CNTNR_ROOTLESS_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    assert!(!is_root());
    let user = std::env::var("CNTNR_ROOTLESS_USER").ok();
    let (want_uid, want_gid) = match &user {
        Some(u) => {
            let (a, b) = u.split_once(':').unwrap();
            (a.to_string(), b.to_string())
        }
        None => ("0".into(), "0".into()),
    };
    let subids = std::env::var("CNTNR_ROOTLESS_SUBIDS").unwrap() == "1";
    let host_ids = std::env::var("CNTNR_ROOTLESS_HOST_IDS").unwrap_or_else(|_| {
        format!(
            "{}:{}",
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw()
        )
    });
    let init = std::env::var_os("CNTNR_ROOTLESS_INIT").is_some();
    let groups = std::env::var("CNTNR_ROOTLESS_GROUPS").unwrap_or_else(|_| want_gid.clone());
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
        user: user.clone(),
        init,
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo inside=$(id -u):$(id -g) groups=$(id -G); mkdir -p /tmp/d/e && touch /tmp/d/e/f && echo writable; sleep 1000".into(),
        ]),
        limits: cntnr_reconcile::bundle::Limits {
            memory: Some(64 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    if !subids {
        // Only root is mapped: another user is refused up front, with the fix.
        let other = cntnr_reconcile::bundle::ContainerRequest {
            user: Some("app".into()),
            ..req.clone()
        };
        let err = bundle::build(&cfg, &store, &image, &other).unwrap_err();
        assert!(err.to_string().contains("/etc/subuid"), "{err}");
    }
    let b = bundle::build(&cfg, &store, &image, &req).unwrap();
    let linux = b.spec.linux().as_ref().unwrap();
    assert!(linux.resources().is_none(), "no cgroup limits rootless");
    let own_userns = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    if subids {
        // runc runs as root of a user namespace the driver makes.
        assert!(runc.config().userns.is_some());
        assert!(!own_userns && linux.uid_mappings().is_none());
    } else {
        assert!(runc.config().userns.is_none());
        assert!(own_userns);
        assert_eq!(linux.uid_mappings().as_ref().unwrap().len(), 1);
        assert_eq!(linux.gid_mappings().as_ref().unwrap().len(), 1);
    }
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
    // The host's view of the container's init: which real ids it runs as.
    let host_view = match runc.state(&b.id).await {
        Ok(Some(st)) => std::fs::read_to_string(format!("/proc/{}/status", st.pid))
            .ok()
            .map(|status| {
                let field = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .and_then(|v| v.split_whitespace().next())
                        .unwrap_or_default()
                        .to_string()
                };
                format!("{}:{}", field("Uid:"), field("Gid:"))
            }),
        _ => None,
    };
    let exec = runc
        .exec(
            &b.id,
            &cntnr_reconcile::runtime::ExecRequest {
                args: vec!["id".into()],
                env: vec![],
                cwd: None,
                timeout: Duration::from_secs(10),
            },
        )
        .await;
    let pid1 = runc
        .exec(
            &b.id,
            &cntnr_reconcile::runtime::ExecRequest {
                args: vec!["cat".into(), "/proc/1/comm".into()],
                env: vec![],
                cwd: None,
                timeout: Duration::from_secs(10),
            },
        )
        .await;
    let exit = runc.stop(&b.id, Signal::TERM, Duration::from_secs(2)).await;
    cleanup.await;
    let inside = format!("inside={want_uid}:{want_gid} groups={groups}\n");
    assert!(
        log.contains(&inside) && log.contains("writable"),
        "want {inside}, log: {log}"
    );
    let id_out = String::from_utf8(exec.unwrap().stdout).unwrap();
    assert!(
        id_out.starts_with(&format!("uid={want_uid}("))
            && id_out.contains(&format!(" gid={want_gid}(")),
        "id in the container: {id_out}"
    );
    assert_eq!(host_view.as_deref(), Some(host_ids.as_str()), "host ids");
    let pid1 = String::from_utf8(pid1.unwrap().stdout).unwrap();
    assert_eq!(
        pid1 == "docker-init\n",
        init,
        "PID 1 is {pid1:?} (init: {init})"
    );
    assert!(exit.unwrap().is_some());
    assert!(!b.path.exists());
    println!("ROOTLESS-OK {id_out}");
}
