//! `cntnr validate` driven as an operator would: the built binary, real
//! files, exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cntnr(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cntnr"))
        .args(args)
        .current_dir(dir)
        .env_remove("CNTNR_STORE")
        .env("GREETING", "hi")
        .output()
        .expect("run cntnr")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn valid_project_prints_the_normalized_project() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "name: shop\nservices:\n  web:\n    image: nginx:1.25\n    ports: ['8080:80']\n    environment: ['MODE=${MODE:-prod}']\n    deploy: {replicas: 3}\n",
    )
    .unwrap();
    let out = cntnr(&["validate", "-f", "compose.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("name: shop"), "{stdout}");
    assert!(stdout.contains("MODE: prod"), "{stdout}");
    assert!(stdout.contains("replicas: 3"), "{stdout}");
    assert!(stdout.contains("x-cntnr-config-hash: v1-"), "{stdout}");

    let out = cntnr(&["validate", "-f", "compose.yaml", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "shop");
    assert_eq!(v["services"]["web"]["ports"][0]["target"], 80);
    assert_eq!(v["services"]["web"]["ports"][0]["published"], "8080");
}

#[test]
fn invalid_project_prints_every_error_on_its_own_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yaml"),
        "name: shop\nservices:\n  web:\n    imgae: nginx\n    restart: sometimes\n  db:\n    image: postgres\n    depends_on: [web, cache]\n",
    )
    .unwrap();
    let out = cntnr(&["validate", "-f", "compose.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            r#"error: compose.yaml: project "shop", service "web", key "imgae": unknown key `imgae`, did you mean `image`?"#,
            r#"error: compose.yaml: project "shop", service "web", key "image": required: every service needs an image (build is not supported)"#,
            r#"error: compose.yaml: project "shop", service "web", key "restart": invalid restart policy "sometimes": must be no, always, on-failure[:N] or unless-stopped"#,
            r#"error: compose.yaml: project "shop", service "db", key "depends_on.cache": depends on unknown service "cache""#,
        ]
    );

    let out = cntnr(&["--json", "validate", "-f", "compose.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert_eq!(errors[0]["service"], "web");
    assert_eq!(errors[0]["key"], "imgae");
    assert_eq!(errors[0]["file"], "compose.yaml");
}

#[test]
fn project_name_comes_from_flag_then_name_then_directory() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("My_Shop.v2");
    std::fs::create_dir(&proj).unwrap();
    std::fs::write(
        proj.join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n",
    )
    .unwrap();
    let out = cntnr(
        &["validate", "-f", "My_Shop.v2/compose.yaml", "--json"],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "my_shopv2");
    let out = cntnr(
        &[
            "validate",
            "-p",
            "other",
            "-f",
            "My_Shop.v2/compose.yaml",
            "--json",
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "other");
    let out = cntnr(
        &[
            "validate",
            "-p",
            "Bad Name",
            "-f",
            "My_Shop.v2/compose.yaml",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("invalid project name \"Bad Name\""));
}

#[test]
fn several_files_merge_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "name: m\nservices:\n  web:\n    image: 'nginx:1'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "services:\n  web:\n    image: 'nginx:2'\n",
    )
    .unwrap();
    let out = cntnr(
        &["validate", "-f", "a.yaml", "-f", "b.yaml", "--json"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"]["web"]["image"], "nginx:2");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cntnr(&["validate"], dir.path()).status.code(), Some(2));
    assert_eq!(cntnr(&["frobnicate"], dir.path()).status.code(), Some(2));
}

#[test]
fn hello_example_validates() {
    let out = cntnr(
        &["validate", "-f", "examples/hello/compose.yaml", "--json"],
        &repo_root(),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "hello");
    assert_eq!(v["services"]["web"]["deploy"]["replicas"], 2);
    assert!(v["services"]["web"]["healthcheck"]["test"].is_array());
    let image = v["services"]["web"]["image"].as_str().unwrap();
    assert!(
        image.starts_with("oci:/") && image.ends_with("examples/hello/image:latest"),
        "{image}"
    );
    assert_eq!(
        v["services"]["greeter"]["environment"]["GREETING"], "hi",
        "process env feeds interpolation"
    );
}
