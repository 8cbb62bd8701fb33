//! Realistic compose projects, each loaded and checked field by field
//! against what the normalized project must contain.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use cntnr_model::*;
use common::*;

fn sn(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_good_fixture_has_a_test() {
    let covered = [
        "cntnr-annotations",
        "command-forms",
        "deploy-blocks",
        "env-file",
        "healthchecks",
        "interpolation",
        "long-ports",
        "long-volumes",
        "minimal",
        "networking",
        "override-three",
        "override-two",
        "restart-pull",
        "security",
        "web-db-cache",
        "wordpress-classic",
        "x-fragments",
    ];
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture("good"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, covered, "add a test for every fixture");
    assert!(on_disk.len() >= 15);
}

#[test]
fn web_db_cache() {
    let p = load(&["good/web-db-cache/compose.yaml"], env(&[]));
    assert_eq!(p.name.as_str(), "shop");
    assert_eq!(
        p.services.keys().map(|s| s.as_str()).collect::<Vec<_>>(),
        ["cache", "db", "web"]
    );
    let web = svc(&p, "web");
    assert_eq!(web.image, ImageRef::Registry("nginx:1.25-alpine".into()));
    assert_eq!(web.ports.len(), 1);
    assert_eq!(web.ports[0].target, 80);
    assert_eq!(
        web.ports[0].published,
        Some(PortRange {
            start: 8080,
            end: 8080
        })
    );
    assert_eq!(
        web.depends_on[&sn("db")].condition,
        DependencyCondition::ServiceHealthy
    );
    assert_eq!(
        web.depends_on[&sn("cache")].condition,
        DependencyCondition::ServiceStarted
    );
    assert_eq!(web.environment["REDIS_URL"], "redis://cache:6379/0");
    assert_eq!(web.restart, Some(RestartPolicy::UnlessStopped));
    let db = svc(&p, "db");
    let hc = db.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        Some(HealthTest::Shell("pg_isready -U shop".into()))
    );
    assert_eq!(
        (hc.interval, hc.timeout, hc.retries),
        (Duration::from_secs(10), Duration::from_secs(5), 5)
    );
    assert_eq!(
        db.volumes,
        vec![Mount::Volume {
            source: Some("pgdata".into()),
            target: "/var/lib/postgresql/data".into(),
            read_only: false,
            volume: VolumeOptions::default()
        }]
    );
    let cache = svc(&p, "cache");
    assert_eq!(
        cache.command,
        Some(vec![
            "redis-server".into(),
            "--appendonly".into(),
            "yes".into()
        ])
    );
    assert_eq!(
        p.volumes.keys().collect::<Vec<_>>(),
        ["pgdata", "redisdata"]
    );
    assert_eq!(p.networks.keys().collect::<Vec<_>>(), ["default"]);
    assert!(web.networks.contains_key("default"));
}

#[test]
fn x_fragments_with_anchors_and_merge_keys() {
    let p = load(&["good/x-fragments/compose.yaml"], env(&[]));
    let api = svc(&p, "api");
    assert_eq!(api.restart, Some(RestartPolicy::Always));
    assert_eq!(
        api.environment,
        map(&[("TZ", "UTC"), ("LOG_LEVEL", "debug")])
    );
    assert_eq!(api.labels, map(&[("team", "platform")]));
    assert_eq!(api.deploy.resources.limits.memory, Some(256 << 20));
    assert_eq!(api.deploy.resources.limits.cpus, Some(0.5));
    assert_eq!(api.deploy.resources.limits.millicpus(), Some(500));
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(hc.interval, Duration::from_secs(15));
    assert_eq!(hc.timeout, Duration::from_secs(3));
    assert_eq!(
        hc.test,
        Some(HealthTest::Cmd(vec![
            "curl".into(),
            "-f".into(),
            "http://localhost/health".into()
        ]))
    );
    let worker = svc(&p, "worker");
    assert_eq!(
        worker.restart,
        Some(RestartPolicy::OnFailure {
            max_retries: Some(3)
        })
    );
    assert_eq!(worker.environment["LOG_LEVEL"], "info");
    assert_eq!(worker.deploy.resources.limits, Limits::default());
    // x- fragments themselves never become services or keys
    assert_eq!(p.services.len(), 2);
}

#[test]
fn long_syntax_ports() {
    let p = load(&["good/long-ports/compose.yaml"], env(&[]));
    let dns = svc(&p, "dns");
    let summary: Vec<(Option<IpAddr>, Option<String>, u16, Protocol)> = dns
        .ports
        .iter()
        .map(|m| {
            (
                m.host_ip,
                m.published.map(|r| r.to_string()),
                m.target,
                m.protocol,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some(ip("127.0.0.1")), Some("53".into()), 53, Protocol::Udp),
            (None, Some("5353".into()), 53, Protocol::Tcp),
            (Some(ip("::1")), Some("9153".into()), 9153, Protocol::Tcp),
            (None, Some("9000".into()), 9000, Protocol::Tcp),
            (None, Some("9001".into()), 9001, Protocol::Tcp),
            (None, Some("9002".into()), 9002, Protocol::Tcp),
            (Some(ip("127.0.0.1")), None, 8181, Protocol::Tcp),
            (None, None, 8080, Protocol::Tcp),
        ]
    );
    assert_eq!(dns.ports[0].mode, PortMode::Host);
    assert_eq!(dns.ports[1].name.as_deref(), Some("dns-tcp"));
    assert_eq!(dns.ports[1].app_protocol.as_deref(), Some("dns"));
    assert_eq!(
        dns.expose,
        vec![
            ExposedPort {
                port: 3000,
                protocol: Protocol::Tcp
            },
            ExposedPort {
                port: 3001,
                protocol: Protocol::Tcp
            },
            ExposedPort {
                port: 4000,
                protocol: Protocol::Udp
            },
        ]
    );
}

#[test]
fn long_syntax_volumes_binds_and_tmpfs() {
    let p = load(&["good/long-volumes/compose.yaml"], env(&[]));
    let dir = abs_fixture("good/long-volumes");
    let app = svc(&p, "app");
    assert!(app.read_only);
    assert_eq!(
        app.volumes,
        vec![
            Mount::Bind {
                source: dir.join("data"),
                target: "/srv/data".into(),
                read_only: true,
                bind: BindOptions {
                    propagation: None,
                    create_host_path: true
                },
            },
            Mount::Bind {
                source: dir.join("data"),
                target: "/srv/rw".into(),
                read_only: false,
                bind: BindOptions {
                    propagation: Some("rslave".into()),
                    create_host_path: false
                },
            },
            Mount::Volume {
                source: Some("cache".into()),
                target: "/cache".into(),
                read_only: false,
                volume: VolumeOptions {
                    nocopy: true,
                    subpath: Some("app".into())
                },
            },
            Mount::Tmpfs {
                target: "/tmp".into(),
                tmpfs: TmpfsOptions {
                    size: Some(64 << 20),
                    mode: Some(0o1777)
                }
            },
            Mount::Volume {
                source: None,
                target: "/anon".into(),
                read_only: false,
                volume: VolumeOptions::default()
            },
            Mount::Volume {
                source: Some("logs".into()),
                target: "/var/log/app".into(),
                read_only: false,
                volume: VolumeOptions::default(),
            },
            Mount::Tmpfs {
                target: "/run".into(),
                tmpfs: TmpfsOptions {
                    size: Some(16 << 20),
                    mode: Some(0o755)
                }
            },
        ]
    );
    assert_eq!(p.volumes["cache"].labels, map(&[("purpose", "cache")]));
    assert!(p.volumes["logs"].external);
    assert_eq!(p.volumes["logs"].name.as_deref(), Some("shared-logs"));
}

#[test]
fn healthcheck_forms_and_defaults() {
    let p = load(&["good/healthchecks/compose.yaml"], env(&[]));
    let exec = svc(&p, "exec").healthcheck.clone().unwrap();
    assert_eq!(
        exec,
        Healthcheck {
            test: Some(HealthTest::Cmd(vec![
                "wget".into(),
                "-q".into(),
                "-O-".into(),
                "http://127.0.0.1:8080/".into()
            ])),
            interval: Duration::from_secs(90),
            timeout: Duration::from_millis(500),
            retries: 2,
            start_period: Duration::from_secs(40),
            start_interval: Duration::from_secs(1),
        }
    );
    let list = svc(&p, "shell-list").healthcheck.clone().unwrap();
    assert_eq!(
        list.test,
        Some(HealthTest::Shell("test -f /tmp/ready || exit 1".into()))
    );
    assert_eq!(
        (list.interval, list.timeout, list.retries),
        (Duration::from_secs(30), Duration::from_secs(30), 3)
    );
    assert_eq!(list.start_interval, Duration::from_secs(5));
    assert_eq!(
        svc(&p, "shell-string").healthcheck.as_ref().unwrap().test,
        Some(HealthTest::Shell("pidof httpd".into()))
    );
    assert_eq!(
        svc(&p, "none").healthcheck.as_ref().unwrap().test,
        Some(HealthTest::Disabled)
    );
    assert_eq!(
        svc(&p, "disabled").healthcheck.as_ref().unwrap().test,
        Some(HealthTest::Disabled)
    );
    let timings = svc(&p, "timings-only").healthcheck.clone().unwrap();
    assert_eq!(timings.test, None, "no test keeps the image's");
    assert_eq!(timings.interval, Duration::from_secs(2));
}

#[test]
fn deploy_blocks() {
    let p = load(&["good/deploy-blocks/compose.yaml"], env(&[]));
    let agent = svc(&p, "agent");
    assert_eq!(agent.deploy.mode, DeployMode::Global);
    assert_eq!(agent.network_mode, NetworkMode::Host);
    assert!(
        agent.networks.is_empty(),
        "host networking joins no network"
    );
    assert_eq!(
        agent.deploy.placement.constraints[0].to_string(),
        "node.labels.monitoring==true"
    );
    let api = svc(&p, "api");
    assert_eq!(api.deploy.mode, DeployMode::Replicated);
    assert_eq!(api.deploy.replicas, 6);
    let c = &api.deploy.placement.constraints;
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].attr.clone(), c[0].equal, c[0].value.as_str()),
        (ConstraintAttr::Hostname, false, "build-box")
    );
    assert_eq!(
        (c[1].attr.clone(), c[1].equal, c[1].value.as_str()),
        (ConstraintAttr::Label("zone".into()), true, "eu-west")
    );
    let labels = map(&[("zone", "eu-west")]);
    assert!(c.iter().all(|c| c.matches("node-1", &labels)));
    assert!(!c.iter().all(|c| c.matches("build-box", &labels)));
    assert_eq!(api.deploy.placement.max_replicas_per_node, Some(2));
    assert_eq!(
        api.deploy.resources.limits,
        Limits {
            cpus: Some(1.5),
            memory: Some(1 << 30),
            pids: Some(200)
        }
    );
    assert_eq!(
        api.deploy.restart_policy,
        Some(DeployRestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: Duration::from_secs(10),
            max_attempts: Some(3),
            window: Some(Duration::from_secs(120)),
        })
    );
    assert_eq!(
        api.deploy.update_config,
        Some(UpdateConfig {
            parallelism: 2,
            delay: Duration::from_secs(5),
            failure_action: FailureAction::Rollback,
            monitor: Duration::from_secs(30),
            max_failure_ratio: 0.25,
            order: UpdateOrder::StartFirst,
        })
    );
    assert_eq!(
        api.deploy.rollback_config,
        Some(UpdateConfig {
            parallelism: 0,
            failure_action: FailureAction::Continue,
            monitor: Duration::from_secs(10),
            ..UpdateConfig::default()
        })
    );
    assert_eq!(svc(&p, "batch").deploy.replicas, 0);
    assert_eq!(svc(&p, "batch").deploy.update_config, None);
    assert_eq!(svc(&p, "batch").deploy.rollback_config, None);
    // Swarm's rollback defaults when there is no rollback_config.
    assert_eq!(svc(&p, "batch").deploy.rollback(), UpdateConfig::default());
}

#[test]
fn env_file_is_inlined_with_dotenv_interpolation() {
    let p = load(
        &["good/env-file/compose.yaml"],
        env(&[("FROM_SHELL", "shell")]),
    );
    let app = svc(&p, "app");
    assert_eq!(
        app.image,
        ImageRef::Registry("example/app:3.2.1".into()),
        ".env feeds interpolation"
    );
    assert_eq!(
        app.environment,
        map(&[
            ("LOG_LEVEL", "warn"),
            ("REGION", "us-east-1"),
            ("GREETING", "hello from-dotenv"),
            ("APP_MODE", "production"),
            ("LITERAL", "$NOT_EXPANDED"),
            ("FROM_SHELL", "shell"),
        ])
    );
    // The caller's environment wins over .env.
    let p = load(&["good/env-file/compose.yaml"], env(&[("APP_TAG", "9.9")]));
    assert_eq!(
        svc(&p, "app").image,
        ImageRef::Registry("example/app:9.9".into())
    );
}

#[test]
fn two_file_override() {
    let p = load(
        &[
            "good/override-two/compose.yaml",
            "good/override-two/compose.prod.yaml",
        ],
        env(&[]),
    );
    let web = svc(&p, "web");
    assert_eq!(web.image, ImageRef::Registry("example/web:1.1".into()));
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["serve", "--port", "80", "--prod"],
        "command replaces"
    );
    let published: Vec<u16> = web
        .ports
        .iter()
        .map(|m| m.published.unwrap().start)
        .collect();
    assert_eq!(published, [80, 443], "ports append, duplicates dropped");
    assert_eq!(
        web.environment,
        map(&[("MODE", "prod"), ("DEBUG", "1")]),
        "environment merges by key"
    );
    assert_eq!(web.labels, map(&[("tier", "edge"), ("env", "prod")]));
    assert_eq!(web.dns, vec![ip("1.1.1.1"), ip("8.8.8.8")]);
    assert_eq!(web.volumes.len(), 2, "volumes merge by target");
    assert_eq!(
        web.volumes[0],
        Mount::Bind {
            source: "/srv/web/src".into(),
            target: "/app/src".into(),
            read_only: true,
            bind: BindOptions {
                propagation: None,
                create_host_path: true
            },
        }
    );
    assert_eq!(web.deploy.replicas, 3);
    // The override alone is not a complete file, but merges fine; the base
    // alone is a different project.
    let base = load(&["good/override-two/compose.yaml"], env(&[]));
    assert_ne!(svc(&base, "web").config_hash(), web.config_hash());
}

#[test]
fn three_file_override() {
    let p = load(
        &[
            "good/override-three/compose.yaml",
            "good/override-three/compose.staging.yaml",
            "good/override-three/compose.local.yaml",
        ],
        env(&[]),
    );
    let api = svc(&p, "api");
    assert_eq!(api.environment, map(&[("A", "local"), ("B", "staging")]));
    assert_eq!(api.cap_add, ["CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]);
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(
        hc.test,
        Some(HealthTest::Cmd(vec![
            "/bin/check".into(),
            "--staging".into()
        ])),
        "test replaces"
    );
    assert_eq!(
        (hc.interval, hc.retries),
        (Duration::from_secs(30), 10),
        "other fields merge"
    );
    let worker = svc(&p, "worker");
    assert_eq!(
        worker.depends_on[&sn("api")].condition,
        DependencyCondition::ServiceHealthy
    );
    assert_eq!(worker.entrypoint.as_deref().unwrap(), ["/bin/sh", "-c"]);
}

#[test]
fn interpolation_in_a_project() {
    let p = load(
        &["good/interpolation/compose.yaml"],
        env(&[("TAG", "1.0"), ("PLAIN", "p"), ("EMPTY", "")]),
    );
    assert_eq!(p.name.as_str(), "interp");
    let app = svc(&p, "app");
    assert_eq!(
        app.image,
        ImageRef::Registry("docker.io/example/app:1.0".into())
    );
    assert_eq!(
        app.environment,
        map(&[
            ("PLAIN", "p"),
            ("BRACED", "p"),
            ("DEFAULTED", "fallback"),
            ("EMPTY_DEFAULT", ""),
            ("EMPTY_COLON_DEFAULT", "used"),
            ("NESTED", "p"),
            ("ALT", "set"),
            ("ALT_MISSING", ""),
            ("ESCAPED", "$HOME and ${PLAIN}"),
            ("NOT_A_VAR", "cost $5"),
        ])
    );
    assert_eq!(
        app.labels,
        map(&[("${PLAIN}", "keys are not interpolated")])
    );
    assert_eq!(app.command.as_deref().unwrap(), ["echo", "p", "$PLAIN"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let p = load(
        &["good/interpolation/compose.yaml"],
        env(&[("TAG", "1.0"), ("PROJECT", "other")]),
    );
    assert_eq!(p.name.as_str(), "other");
    assert_eq!(
        p.warnings,
        ["variable PLAIN is not set, substituting an empty string"]
    );
}

#[test]
fn command_forms() {
    let p = load(&["good/command-forms/compose.yaml"], env(&[]));
    let shell = svc(&p, "shell");
    assert_eq!(
        shell.command.as_deref().unwrap(),
        ["sh", "-c", "echo \"hello world\" && sleep 1"]
    );
    assert_eq!(shell.entrypoint.as_deref().unwrap(), ["/sbin/tini", "--"]);
    assert_eq!(shell.working_dir.as_deref(), Some("/srv"));
    assert_eq!(shell.user.as_deref(), Some("1000:1000"));
    assert_eq!(shell.hostname.as_deref(), Some("shell-box"));
    assert!(shell.init);
    assert_eq!(shell.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(shell.stop_grace_period, Some(Duration::from_secs(60)));
    let exec = svc(&p, "exec");
    assert_eq!(
        exec.command.as_deref().unwrap(),
        ["printf", "%s\n", "a b", ""]
    );
    assert_eq!(
        exec.entrypoint,
        Some(vec![]),
        "an empty entrypoint clears the image's"
    );
}

#[test]
fn networking() {
    let p = load(&["good/networking/compose.yaml"], env(&[]));
    let proxy = svc(&p, "proxy");
    assert_eq!(proxy.networks.keys().collect::<Vec<_>>(), ["back", "front"]);
    assert_eq!(proxy.networks["front"].aliases, ["edge", "lb"]);
    assert_eq!(proxy.dns, vec![ip("9.9.9.9")]);
    assert_eq!(proxy.dns_search, ["svc.example.com"]);
    let hosts: Vec<(String, IpAddr)> = proxy
        .extra_hosts
        .iter()
        .map(|h| (h.host.clone(), h.ip))
        .collect();
    assert_eq!(
        hosts,
        vec![
            ("db.local".into(), ip("10.0.0.6")),
            ("registry.local".into(), ip("10.0.0.5")),
            ("v6.local".into(), ip("::1")),
        ]
    );
    assert_eq!(svc(&p, "app").networks.keys().collect::<Vec<_>>(), ["back"]);
    assert_eq!(svc(&p, "app").extra_hosts[0].ip, ip("10.0.0.7"));
    assert_eq!(svc(&p, "sniffer").network_mode, NetworkMode::Host);
    assert_eq!(p.networks["back"].name.as_deref(), Some("shared-backend"));
    assert_eq!(p.networks["front"].labels, map(&[("exposure", "public")]));
    assert!(
        !p.networks.contains_key("default"),
        "nobody uses the default network"
    );
}

#[test]
fn security_settings() {
    let p = load(&["good/security/compose.yaml"], env(&[]));
    let vpn = svc(&p, "vpn");
    assert_eq!(vpn.cap_add, ["CAP_NET_ADMIN", "CAP_SYS_MODULE"]);
    assert_eq!(vpn.cap_drop, ["ALL"]);
    assert!(!vpn.privileged);
    assert!(vpn.read_only);
    assert_eq!(
        vpn.ulimits["nofile"],
        Ulimit {
            soft: 20000,
            hard: 40000
        }
    );
    assert_eq!(
        vpn.ulimits["nproc"],
        Ulimit {
            soft: 512,
            hard: 512
        }
    );
    assert_eq!(vpn.ulimits["core"], Ulimit { soft: -1, hard: -1 });
    assert_eq!(
        vpn.sysctls,
        map(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.disable_ipv6", "0")
        ])
    );
    let tool = svc(&p, "tool");
    assert!(tool.privileged);
    assert_eq!(tool.sysctls, map(&[("net.core.somaxconn", "1024")]));
}

#[test]
fn cntnr_annotations_drive_the_agent() {
    let p = load(&["good/cntnr-annotations/compose.yaml"], env(&[]));
    let db = svc(&p, "db");
    assert!(db.agent.election);
    assert_eq!(db.agent.check_tcp, Some(5432));
    let api = svc(&p, "api");
    let a = &api.agent;
    assert_eq!(
        a.env["DATABASE_PASSWORD"],
        EnvSource::Kv(ConfigKey::new("db/password").unwrap())
    );
    assert_eq!(a.env["PRIMARY_DB"], EnvSource::Leader(sn("db")));
    assert_eq!(
        a.env["PEERS"],
        EnvSource::Service(RegisteredName::new("synced-api").unwrap())
    );
    assert_eq!(a.env_on_change, EnvOnChange::Signal("SIGHUP".into()));
    assert_eq!(a.env_missing, EnvMissing::Fail);
    assert_eq!(a.service_name, Some(RegisteredName::new("api").unwrap()));
    assert_eq!(a.service_tags, ["http", "v2"]);
    assert_eq!(
        a.check_http,
        Some(HttpCheck {
            port: None,
            path: "/healthz".into()
        })
    );
    assert_eq!(a.drain, Duration::from_secs(10));
    assert_eq!(
        api.annotations["org.opencontainers.image.vendor"],
        "example"
    );
    assert!(!svc(&p, "db").agent.env_on_change.eq(&EnvOnChange::None));
}

#[test]
fn wordpress_classic_with_version_key() {
    let p = load(&["good/wordpress-classic/compose.yaml"], env(&[]));
    assert_eq!(
        p.name.as_str(),
        "wordpress-classic",
        "named after the directory"
    );
    let db = svc(&p, "db");
    assert_eq!(db.environment.len(), 4);
    assert_eq!(db.environment["MYSQL_DATABASE"], "wordpress");
    assert_eq!(db.restart, Some(RestartPolicy::Always));
    let wp = svc(&p, "wordpress");
    assert_eq!(
        wp.depends_on[&sn("db")].condition,
        DependencyCondition::ServiceStarted
    );
    assert!(wp.depends_on[&sn("db")].required);
    assert_eq!(wp.environment["WORDPRESS_DB_HOST"], "db:3306");
    assert_eq!(wp.ports[0].published.unwrap().start, 8000);
}

#[test]
fn restart_and_pull_policies() {
    let p = load(&["good/restart-pull/compose.yaml"], env(&[]));
    assert_eq!(svc(&p, "never").restart, Some(RestartPolicy::No));
    assert_eq!(svc(&p, "never").pull_policy, PullPolicy::Never);
    assert_eq!(
        svc(&p, "plain-no").restart,
        Some(RestartPolicy::No),
        "`no` unquoted is the string no"
    );
    assert_eq!(
        svc(&p, "capped").restart,
        Some(RestartPolicy::OnFailure {
            max_retries: Some(5)
        })
    );
    assert_eq!(svc(&p, "capped").pull_policy, PullPolicy::Always);
    assert_eq!(
        svc(&p, "compat").restart,
        Some(RestartPolicy::OnFailure { max_retries: None })
    );
    assert_eq!(svc(&p, "compat").pull_policy, PullPolicy::Missing);
}

#[test]
fn minimal_project_gets_defaults() {
    let p = load(&["good/minimal/compose.yaml"], env(&[]));
    assert_eq!(p.name.as_str(), "minimal");
    let s = svc(&p, "hello");
    assert_eq!(s.deploy, Deploy::default());
    assert_eq!(s.deploy.replicas, 1);
    assert_eq!(s.network_mode, NetworkMode::Bridge);
    assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["default"]);
    assert_eq!(s.pull_policy, PullPolicy::Missing);
    assert!(
        s.command.is_none()
            && s.entrypoint.is_none()
            && s.healthcheck.is_none()
            && s.restart.is_none()
    );
}

#[test]
fn hello_example_validates() {
    let p = load_files(
        &["../examples/hello/compose.yaml"],
        &LoadOptions {
            env: env(&[]),
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.name.as_str(), "hello");
    let web = svc(&p, "web");
    assert_eq!(web.deploy.replicas, 2);
    assert!(web.healthcheck.is_some());
    match &web.image {
        ImageRef::OciLayout { path, tag } => {
            assert!(path.is_absolute());
            assert!(path.ends_with("examples/hello/image"), "{}", path.display());
            assert_eq!(tag.as_deref(), Some("latest"));
        }
        other => panic!("expected an oci: image, got {other}"),
    }
    assert!(p.services.len() >= 2);
}
