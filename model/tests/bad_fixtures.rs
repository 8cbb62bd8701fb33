//! Broken compose files, each answered by the exact one-line errors a user
//! sees (`cntnr validate` prints these lines, prefixed with `error: `).

mod common;

use common::*;

/// `(fixture, expected lines)`; `{f}` stands for the fixture's path.
const CASES: &[(&str, &[&str])] = &[
    (
        "typo-key",
        &[
            r#"{f}: project "bad", service "web", key "imgae": unknown key `imgae`, did you mean `image`?"#,
            r#"{f}: project "bad", service "web", key "image": required: every service needs an image (build is not supported)"#,
        ],
    ),
    (
        "unsupported-build",
        &[
            r#"{f}: project "bad", service "web", key "build": `build` is a compose key that cntnr does not support (build the image elsewhere and use image: NAME or image: oci:PATH)"#,
        ],
    ),
    (
        "unsupported-top-level",
        &[
            r#"{f}: project "bad", key "secrets": `secrets` is a compose key that cntnr does not support (use cntnr.env.<VAR>: kv:<key> annotations or a bind mount)"#,
        ],
    ),
    (
        "depends-cycle",
        &[
            r#"{f}: project "bad", service "a", key "depends_on": depends_on cycle: a -> b -> c -> a"#,
        ],
    ),
    (
        "depends-unknown",
        &[
            r#"{f}: project "bad", service "web", key "depends_on.databse": depends on unknown service "databse""#,
        ],
    ),
    (
        "bad-port",
        &[
            r#"{f}: project "bad", service "web", key "ports[0]": invalid port "80800:80": invalid published port "80800": must be 1-65535"#,
        ],
    ),
    (
        "bad-duration",
        &[
            r#"{f}: project "bad", service "web", key "healthcheck.interval": invalid duration "10": missing unit (ns, us, ms, s, m, h), e.g. 10s"#,
        ],
    ),
    (
        "bad-memory",
        &[
            r#"{f}: project "bad", service "web", key "deploy.resources.limits.memory": invalid memory size "lots": expected a number with an optional unit b, k, m, g, t, p (e.g. 512m, 1g)"#,
        ],
    ),
    (
        "bad-cpus",
        &[
            r#"{f}: project "bad", service "web", key "deploy.resources.limits.cpus": invalid cpus "-1": must be greater than 0 and at most 1024"#,
        ],
    ),
    (
        "bind-dotdot",
        &[
            r#"{f}: project "bad", service "web", key "volumes[0]": bind source "../secrets" must not contain `..`"#,
        ],
    ),
    (
        "relative-target",
        &[
            r#"{f}: project "bad", service "web", key "volumes[0].target": target "data" must be an absolute path inside the container"#,
        ],
    ),
    (
        "bad-domainname",
        &[
            r#"{f}: project "bad", service "web", key "domainname": invalid domainname "-corp.example": use letters, digits, `-` and `.`"#,
        ],
    ),
    (
        "bad-env-name",
        &[
            r#"{f}: project "bad", service "web", key "environment.1FOO": invalid environment variable name "1FOO": must start with a letter or `_` and contain only letters, digits, `_`, `.`, `-`"#,
        ],
    ),
    (
        "bad-restart",
        &[
            r#"{f}: project "bad", service "web", key "restart": invalid restart policy "sometimes": must be no, always, on-failure[:N] or unless-stopped"#,
        ],
    ),
    (
        "bad-deploy",
        &[
            r#"{f}: project "bad", service "web", key "deploy.mode": invalid mode "everywhere": must be replicated or global"#,
            r#"{f}: project "bad", service "web", key "deploy.replicas": must be a whole number ≥ 0, not -1"#,
            r#"{f}: project "bad", service "web", key "deploy.update_config.order": invalid order "random": must be stop-first or start-first"#,
            r#"{f}: project "bad", service "web", key "deploy.update_config.max_failure_ratio": invalid ratio "2": must be a number from 0 to 1"#,
            r#"{f}: project "bad", service "web", key "deploy.rollback_config.speed": unknown key `speed`"#,
            r#"{f}: project "bad", service "web", key "deploy.rollback_config.failure_action": invalid failure_action "rollback": must be pause or continue"#,
        ],
    ),
    (
        "global-with-replicas",
        &[
            r#"{f}: project "bad", service "agent", key "deploy.replicas": cannot be set with mode: global (one replica runs on every eligible node)"#,
        ],
    ),
    (
        "bad-constraint",
        &[
            r#"{f}: project "bad", service "web", key "deploy.placement.constraints[0]": unsupported constraint attribute "node.role": cntnr supports node.hostname and node.labels.<name>"#,
        ],
    ),
    (
        "bad-service-name",
        &[
            r#"{f}: project "bad", service "Web": invalid service name "Web": must start with a lowercase letter or a digit (^[a-z0-9][a-z0-9_-]*$)"#,
        ],
    ),
    (
        "bad-project-name",
        &[
            r#"{f}: key "name": invalid project name "My App": must start with a lowercase letter or a digit (^[a-z0-9][a-z0-9_-]*$)"#,
        ],
    ),
    (
        "kv-escape",
        &[
            r#"{f}: project "bad", service "web", key "annotations.cntnr.env.SECRET": invalid config key "../other-project/secret": must not contain `.` or `..` segments"#,
        ],
    ),
    (
        "env-missing-value",
        &[
            r#"{f}: project "bad", service "web", key "annotations.cntnr.env-missing": invalid value "later": must be wait, empty or fail"#,
            r#"{f}: project "bad", service "web", key "annotations.cntnr.env-on-change": invalid value "reload": must be restart, signal:<SIGNAL> or none"#,
        ],
    ),
    (
        "leader-without-election",
        &[
            r#"{f}: project "bad", service "api", key "annotations.cntnr.env.PRIMARY": leader:db needs service "db" to set annotation cntnr.election: "true""#,
        ],
    ),
    (
        "required-var",
        &[
            r#"{f}: service "db", key "environment.POSTGRES_PASSWORD": required variable DB_PASSWORD is missing a value: set DB_PASSWORD in .env"#,
        ],
    ),
    (
        "invalid-yaml",
        &[r#"{f}: invalid YAML: duplicate mapping key: image at line 5, column 5"#],
    ),
    (
        "reset-tag",
        &[r#"{f}: invalid YAML: unsupported tag `!reset` at line 5, column 19"#],
    ),
    (
        "undeclared-volume",
        &[
            r#"{f}: project "bad", service "db", key "volumes[0]": named volume "pgdata" is not declared in the top-level volumes"#,
        ],
    ),
    (
        "no-services",
        &[r#"{f}: project "bad", key "services": no services defined"#],
    ),
    (
        "many-errors",
        &[
            r#"{f}: project "bad", service "web", key "image": invalid image "Nginx": invalid repository name component "Nginx": use lowercase letters, digits and . _ -"#,
            r#"{f}: project "bad", service "web", key "ports[0]": invalid port "http": invalid container port "http": not a number"#,
            r#"{f}: project "bad", service "web", key "cap_add[0]": invalid capability "NET_ADMN": not a Linux capability such as NET_ADMIN"#,
            r#"{f}: project "bad", service "web", key "ulimits.nofile": soft limit 2000 is above hard limit 1000"#,
            r#"{f}: project "bad", service "web", key "stop_signal": invalid signal "SIGNOPE": not a known signal name such as SIGTERM or SIGHUP"#,
            r#"{f}: project "bad", service "worker", key "working_dir": target "relative/dir" must be an absolute path inside the container"#,
            r#"{f}: project "bad", service "worker", key "extra_hosts.gw": host-gateway is not supported; give an IP address"#,
            r#"{f}: project "bad", service "web", key "networks.missing": network "missing" is not declared in the top-level networks"#,
        ],
    ),
];

#[test]
fn every_bad_fixture_gets_its_exact_errors() {
    let mut failures = Vec::new();
    for (name, expected) in CASES {
        let rel = format!("bad/{name}.yaml");
        let f = fixture(&rel).display().to_string();
        let want: Vec<String> = expected.iter().map(|l| l.replace("{f}", &f)).collect();
        match try_load(&[&rel], env(&[])) {
            Ok(_) => failures.push(format!("{name}: loaded, but should fail")),
            Err(e) => {
                let got = e.lines();
                if got != want {
                    failures.push(format!("{name}:\n  got:  {got:#?}\n  want: {want:#?}"));
                }
                for line in &got {
                    assert!(!line.contains('\n'), "{name}: multi-line error {line:?}");
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_bad_fixture_is_in_the_table() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture("bad"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".yaml")
                .to_string()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    assert!(listed.len() >= 15);
}

#[test]
fn errors_in_an_override_name_the_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("compose.yaml");
    let over = dir.path().join("compose.override.yaml");
    std::fs::write(
        &base,
        "name: p\nservices:\n  web:\n    image: nginx\n    ports: ['80:80']\n",
    )
    .unwrap();
    std::fs::write(&over, "services:\n  web:\n    restart: sometimes\n").unwrap();
    let err =
        cntnr_model::load_files(&[&base, &over], &cntnr_model::LoadOptions::default()).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert_eq!(
        err.diagnostics[0].file.as_deref(),
        Some(over.display().to_string().as_str())
    );
    assert_eq!(err.diagnostics[0].service.as_deref(), Some("web"));
    assert_eq!(err.diagnostics[0].key.as_deref(), Some("restart"));
}

#[test]
fn relative_paths_need_a_project_directory() {
    let src = cntnr_model::Source {
        name: "cntnr/projects/p".into(),
        text: "services:\n  web:\n    image: oci:./image\n    volumes: ['./data:/data']\n".into(),
    };
    let opts = cntnr_model::LoadOptions {
        project_name: Some("p".into()),
        ..Default::default()
    };
    let err = cntnr_model::load_sources(&[src], &opts).unwrap_err();
    assert_eq!(
        err.lines(),
        [
            r#"cntnr/projects/p: project "p", service "web", key "image": invalid image "oci:./image": a relative oci: path needs a project directory"#,
            r#"cntnr/projects/p: project "p", service "web", key "volumes[0]": bind source "./data" must be an absolute path (relative paths need a project directory)"#,
        ]
    );
}

#[test]
fn missing_files_are_reported_each() {
    let err = try_load(&["bad/nope-1.yaml", "bad/nope-2.yaml"], env(&[])).unwrap_err();
    assert_eq!(err.diagnostics.len(), 2);
    assert!(
        err.lines()[0].starts_with("tests/fixtures/bad/nope-1.yaml: cannot read file:"),
        "{}",
        err
    );
}
