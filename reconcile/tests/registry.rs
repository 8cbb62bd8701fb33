//! Pull from a real Debian `docker-registry` on loopback, fed by `skopeo copy`.

mod support;

use cntnr_reconcile::images::{ImageStore, StoreOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Registry {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let log = dir.join("registry.log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::fs::File::create(dir.join("registry.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("docker-registry installed");
    let reg = Registry { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "registry did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

fn skopeo_copy(src: &str, dst: &str) {
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", src, dst])
        .stdin(Stdio::null())
        .output()
        .expect("skopeo installed");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_loopback_registry_fetches_each_blob_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(tmp.path());
    let layout = tmp.path().join("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.image(
        "v1",
        &[busybox_layer(), tar_bytes(&[file("etc/motd", "pulled")])],
        Compression::Gzip,
        default_config(),
    );
    let name = format!("127.0.0.1:{}/test/busybox:v1", reg.port);
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{name}"),
    );

    let opts = StoreOptions {
        insecure_registries: vec![format!("127.0.0.1:{}", reg.port)],
        docker_config: None,
    };
    let state = tmp.path().join("state");
    // Two store handles (separate lock fds), as two processes would have.
    let s1 = ImageStore::open(&state, opts.clone()).unwrap();
    let s2 = ImageStore::open(&state, opts.clone()).unwrap();
    let (r1, r2) = tokio::join!(s1.pull(&name), s2.pull(&name));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1, r2);
    assert_eq!(r1.reference, name);
    assert_eq!(r1.layers.len(), 2);
    let dirs = s1.layer_dirs(&r1).unwrap_or_else(|_| Vec::new());
    if is_root() {
        assert_eq!(
            std::fs::read_to_string(dirs[1].join("etc/motd")).unwrap(),
            "pulled"
        );
    }
    // Each blob was fetched from the registry once, despite two concurrent pulls.
    let log = std::fs::read_to_string(&reg.log).unwrap()
        + &std::fs::read_to_string(tmp.path().join("registry.out")).unwrap();
    for l in &r1.layers {
        let gets = log
            .lines()
            .filter(|line| {
                line.contains("\"GET /v2/test/busybox/blobs/")
                    && line.contains(&l.digest.to_string())
            })
            .count();
        assert_eq!(gets, 1, "blob {} fetched {gets} times", l.digest);
    }
    // A digest reference resolves to the same image; a pull with everything present fetches nothing new.
    let by_digest = format!("127.0.0.1:{}/test/busybox@{}", reg.port, r1.manifest);
    let r3 = s1.pull(&by_digest).await.unwrap();
    assert_eq!(r3.config, r1.config);
    // Plain HTTP is only for listed hosts: without the insecure entry, the pull fails (TLS).
    let strict = ImageStore::open(&tmp.path().join("state2"), StoreOptions::default()).unwrap();
    assert!(strict.pull(&name).await.is_err());
    // A tampered blob in the store is refused and fetched again on the next pull.
    let blob = s1.blob_path(&r1.layers[1].digest);
    std::fs::write(&blob, b"tampered").unwrap();
    s1.pull(&name).await.unwrap();
    assert!(s1.has_valid_blob(&r1.layers[1].digest).unwrap());
}

#[test]
fn bare_names_default_to_docker_hub_library() {
    assert_eq!(
        ImageStore::canonical_reference("busybox").unwrap(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(
        ImageStore::canonical_reference("nginx:1.25").unwrap(),
        "docker.io/library/nginx:1.25"
    );
    assert_eq!(
        ImageStore::canonical_reference("ghcr.io/a/b:c").unwrap(),
        "ghcr.io/a/b:c"
    );
}
