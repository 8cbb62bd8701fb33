//! examples/hello/build-image.sh builds a valid, reproducible OCI image
//! layout that the real tools read.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cntnr_e2e::workspace_root;

/// A directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cntnr-e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build(out: &Path) -> String {
    let script = workspace_root().join("examples/hello/build-image.sh");
    ok(
        "build-image.sh",
        Command::new(script)
            .arg(out)
            .output()
            .expect("run build-image.sh"),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).expect("read json")).expect("valid json")
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

#[test]
fn hello_image_is_reproducible_and_tagged_latest() {
    let scratch = Scratch::new("image-repro");
    let (a, b) = (scratch.0.join("a"), scratch.0.join("b"));
    build(&a);
    build(&b);
    for file in ["oci-layout", "index.json"] {
        assert_eq!(
            fs::read(a.join(file)).unwrap(),
            fs::read(b.join(file)).unwrap(),
            "{file} differs between two builds"
        );
    }
    let index = json(&a.join("index.json"));
    let manifest = &index["manifests"][0];
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest_digest = manifest["digest"].as_str().unwrap();
    let manifest = json(&blob(&a, manifest_digest));
    let config = json(&blob(&a, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["config"]["Entrypoint"][0], "/bin/busybox");
    assert!(config["config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH="));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    // skopeo reads it and agrees on the digest.
    let inspect = ok(
        "skopeo inspect",
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:latest", a.display()))
            .output()
            .expect("skopeo (scripts/install-deps.sh)"),
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], manifest_digest);
}

#[test]
fn hello_image_unpacks_with_busybox_and_web_root() {
    let scratch = Scratch::new("image-unpack");
    let layout = scratch.0.join("image");
    build(&layout);
    // umoci checks every digest and size, and the layer's diff_id, while
    // unpacking.
    let bundle = scratch.0.join("bundle");
    ok(
        "umoci unpack",
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle)
            .output()
            .expect("umoci (scripts/install-deps.sh)"),
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("var/www/index.html")).unwrap(),
        "hello from cntnr\n"
    );
    for applet in ["sh", "httpd", "wget", "nc", "sleep"] {
        assert_eq!(
            fs::read_link(rootfs.join("bin").join(applet)).unwrap(),
            Path::new("busybox"),
            "{applet}"
        );
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    // The static busybox runs in the unpacked root.
    let out = ok(
        "chroot busybox",
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/sh", "-c", "cat /var/www/index.html; id -un"])
            .output()
            .expect("chroot"),
    );
    assert_eq!(out, "hello from cntnr\nroot\n");
}
