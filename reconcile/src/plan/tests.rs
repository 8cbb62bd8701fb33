//! Plan tables: (desired, observed) → actions, and the idempotence check
//! that applying them and planning again yields nothing to do.

use std::path::PathBuf;

use super::*;
use cntnr_model::{load_stored, ProjectName};

const T0: u64 = 1_700_000_000;

/// `secs` (may be negative) from an arbitrary fixed time.
fn at(secs: f64) -> SystemTime {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
    if secs < 0.0 {
        t0 - Duration::from_secs_f64(-secs)
    } else {
        t0 + Duration::from_secs_f64(secs)
    }
}

fn project(services: &str) -> Project {
    let text = format!("services:\n{services}");
    load_stored(&ProjectName::new("shop").unwrap(), "projects/shop", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn node() -> NodeName {
    NodeName::new("n1").unwrap()
}

/// `node`'s share of `project`, with `replicas` (`svc/r`) scheduled here.
fn desired(p: &Project, replicas: &[&str]) -> Desired {
    let mut services: BTreeMap<ServiceName, BTreeMap<Replica, NodeName>> = BTreeMap::new();
    for sr in replicas {
        let (s, r) = sr.split_once('/').unwrap();
        services
            .entry(ServiceName::new(s).unwrap())
            .or_default()
            .insert(r.parse().unwrap(), node());
    }
    // A replica on another node must not show up here.
    services
        .entry(p.services.keys().next().unwrap().clone())
        .or_default()
        .insert(99, NodeName::new("n2").unwrap());
    let rec = ScheduleRecord {
        fencing_token: 1,
        leader: node(),
        generation: 1,
        services,
        gone_since: BTreeMap::new(),
        rollouts: BTreeMap::new(),
        healthy_spec: None,
    };
    Desired::for_node(p, &rec, &node()).unwrap()
}

fn old_hash() -> ConfigHash {
    ConfigHash::parse(&format!("v1-{}", "0".repeat(64))).unwrap()
}

fn state(project: &str, service: &str, replica: u32, hash: &str, status: Status) -> ContainerState {
    let annotations = [
        (annotations::PROJECT, project),
        (annotations::SERVICE, service),
        (annotations::REPLICA, &replica.to_string()),
        (annotations::CONFIG_HASH, hash),
        (annotations::NODE, "n1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ContainerState {
        id: ContainerId::for_replica(project, service, replica).unwrap(),
        pid: if status == Status::Running { 42 } else { 0 },
        status,
        bundle: PathBuf::from("/b"),
        annotations,
    }
}

/// `svc/r status [old] [exit=N] [health=h] [project=p]`; the hash is the
/// project's current one unless `old`.
fn observed(p: &Project, spec: &str) -> Observed {
    let mut words = spec.split_whitespace();
    let (s, r) = words.next().unwrap().split_once('/').unwrap();
    let status = match words.next().unwrap() {
        "creating" => Status::Creating,
        "created" => Status::Created,
        "running" => Status::Running,
        "paused" => Status::Paused,
        "stopped" => Status::Stopped,
        other => panic!("status {other}"),
    };
    let mut hash = p
        .services
        .get(s)
        .map_or_else(old_hash, |spec| spec.config_hash());
    let mut project = "shop".to_string();
    let mut exit_code = None;
    let mut health = Health::None;
    for w in words {
        match w.split_once('=') {
            None if w == "old" => hash = old_hash(),
            Some(("exit", c)) => exit_code = Some(c.parse().unwrap()),
            Some(("project", v)) => project = v.to_string(),
            Some(("health", h)) => {
                health = match h {
                    "starting" => Health::Starting,
                    "healthy" => Health::Healthy,
                    "unhealthy" => Health::Unhealthy,
                    other => panic!("health {other}"),
                }
            }
            _ => panic!("word {w}"),
        }
    }
    Observed {
        exit_code,
        started_at: Some(at(-100.0)),
        finished_at: (status == Status::Stopped).then(|| at(0.0)),
        health,
        ..Observed::new(state(
            &project,
            s,
            r.parse().unwrap(),
            hash.as_str(),
            status,
        ))
    }
}

fn ctx_at(now: SystemTime, jitter: &dyn Jitter) -> Context<'_> {
    Context {
        now,
        backoff: Backoff::default(),
        jitter,
    }
}

fn render(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

/// Applies `actions` as the agent would, to a simulated runtime, ending
/// once every delayed restart has fired; returns the new state and time.
fn apply(
    d: &Desired,
    mut obs: Vec<Observed>,
    actions: &[Action],
    now: SystemTime,
) -> (Vec<Observed>, SystemTime) {
    let later = now
        + actions
            .iter()
            .filter_map(|a| match a {
                Action::Restart { after, .. } => Some(*after),
                _ => None,
            })
            .max()
            .unwrap_or_default();
    let fresh = |service: &ServiceName, replica: Replica, hash: &ConfigHash, when| {
        let mut o = Observed::new(state(
            d.project.as_str(),
            service.as_str(),
            replica,
            hash.as_str(),
            Status::Running,
        ));
        o.started_at = Some(when);
        if d.services[service].health_checked {
            o.health = Health::Starting;
        }
        o
    };
    for a in actions {
        let pos = obs.iter().position(|o| &o.state.id == a.id());
        match a {
            Action::Create {
                id,
                service,
                replica,
                config_hash,
            } => {
                assert!(pos.is_none(), "create of existing {id}");
                let mut o = fresh(service, *replica, config_hash, now);
                o.state.status = Status::Created;
                obs.push(o);
            }
            Action::Start { id } => {
                let o = &mut obs[pos.unwrap_or_else(|| panic!("start of missing {id}"))];
                assert_eq!(o.state.status, Status::Created, "start of {id}");
                o.state.status = Status::Running;
            }
            Action::Kill { id, .. } => {
                let o = &mut obs[pos.unwrap_or_else(|| panic!("kill of missing {id}"))];
                o.state.status = Status::Stopped;
                o.exit_code = None;
            }
            Action::Stop { id, .. } => {
                let o = &mut obs[pos.unwrap_or_else(|| panic!("stop of missing {id}"))];
                o.state.status = Status::Stopped;
                o.exit_code = Some(143);
            }
            Action::Remove { id } => {
                let i = pos.unwrap_or_else(|| panic!("remove of missing {id}"));
                assert_eq!(obs[i].state.status, Status::Stopped, "remove of live {id}");
                obs.remove(i);
            }
            Action::Recreate {
                id,
                service,
                replica,
                config_hash,
                ..
            } => {
                let i = pos.unwrap_or_else(|| panic!("recreate of missing {id}"));
                obs[i] = fresh(service, *replica, config_hash, now);
            }
            Action::Restart { id, after, backoff } => {
                let o = &mut obs[pos.unwrap_or_else(|| panic!("restart of missing {id}"))];
                o.state.status = Status::Running;
                o.started_at = Some(now + *after);
                o.finished_at = None;
                o.exit_code = None;
                o.restart.restarted(*backoff, now + *after);
            }
            Action::Nothing { .. } => {}
        }
    }
    (obs, later)
}

/// Plans, checks the actions, then checks idempotence.
fn check(name: &str, d: &Desired, obs: Vec<Observed>, want: &[&str]) {
    let now = at(0.0);
    let got = plan(d, &obs, &ctx_at(now, &NoJitter));
    assert_eq!(render(&got), want, "{name}");
    // A delayed restart changes the world when it fires (a dependent may
    // then be created): allow one more round for it, then demand a fixed
    // point.
    let delayed = got
        .iter()
        .any(|a| matches!(a, Action::Restart { after, .. } if !after.is_zero()));
    let (mut state, mut now, mut actions) = (obs, now, got);
    for _ in 0..=usize::from(delayed) {
        let (next, later) = apply(d, state, &actions, now);
        (state, now) = (next, later);
        actions = plan(d, &state, &ctx_at(now, &NoJitter));
    }
    assert!(
        actions.iter().all(Action::is_nothing),
        "{name}: not idempotent: {:?}",
        render(&actions)
    );
}

struct Case {
    name: &'static str,
    services: &'static str,
    here: &'static [&'static str],
    observed: &'static [&'static str],
    want: &'static [&'static str],
}

const THREE_TIERS: &str = "  db: {image: pg}\n  api: {image: api, depends_on: [db]}\n  web: {image: web, depends_on: {api: {condition: service_started}}, deploy: {replicas: 2}}\n";

#[test]
fn plan_tables() {
    let cases = [
        Case {
            name: "fresh deploy: dependencies first",
            services: THREE_TIERS,
            here: &["db/1", "api/1", "web/1", "web/2"],
            observed: &[],
            want: &[
                "create shop-db-1",
                "start shop-db-1",
                "create shop-api-1",
                "start shop-api-1",
                "create shop-web-1",
                "start shop-web-1",
                "create shop-web-2",
                "start shop-web-2",
            ],
        },
        Case {
            name: "everything up to date: nothing (agent restart adopts)",
            services: THREE_TIERS,
            here: &["db/1", "api/1", "web/1"],
            observed: &["db/1 running", "api/1 running", "web/1 running"],
            want: &[
                "nothing shop-db-1: up to date",
                "nothing shop-api-1: up to date",
                "nothing shop-web-1: up to date",
            ],
        },
        Case {
            name: "hash change on one service recreates only it",
            services: THREE_TIERS,
            here: &["db/1", "api/1", "web/1", "web/2"],
            observed: &["db/1 running", "api/1 running old", "web/1 running", "web/2 running"],
            want: &[
                "nothing shop-db-1: up to date",
                "recreate shop-api-1",
                "nothing shop-web-1: up to date",
                "nothing shop-web-2: up to date",
            ],
        },
        Case {
            name: "scale up",
            services: "  web: {image: web, deploy: {replicas: 3}}\n",
            here: &["web/1", "web/2", "web/3"],
            observed: &["web/1 running"],
            want: &[
                "nothing shop-web-1: up to date",
                "create shop-web-2",
                "start shop-web-2",
                "create shop-web-3",
                "start shop-web-3",
            ],
        },
        Case {
            name: "scale down removes the highest replicas first",
            services: "  web: {image: web, deploy: {replicas: 1}}\n",
            here: &["web/1"],
            observed: &["web/1 running", "web/2 running", "web/3 stopped exit=1"],
            want: &[
                "remove shop-web-3",
                "stop shop-web-2",
                "remove shop-web-2",
                "nothing shop-web-1: up to date",
            ],
        },
        Case {
            name: "replicas moved away: removal in reverse dependency order",
            services: THREE_TIERS,
            here: &[],
            observed: &["db/1 running", "api/1 running", "web/1 running", "web/2 paused"],
            want: &[
                "stop shop-web-2",
                "remove shop-web-2",
                "stop shop-web-1",
                "remove shop-web-1",
                "stop shop-api-1",
                "remove shop-api-1",
                "stop shop-db-1",
                "remove shop-db-1",
            ],
        },
        Case {
            name: "a service dropped from the project is removed first",
            services: "  db: {image: pg}\n",
            here: &["db/1"],
            observed: &["db/1 running", "cache/1 running"],
            want: &[
                "stop shop-cache-1",
                "remove shop-cache-1",
                "nothing shop-db-1: up to date",
            ],
        },
        Case {
            name: "containers of other projects are not this plan's business",
            services: "  db: {image: pg}\n",
            here: &["db/1"],
            observed: &["db/1 running", "db/1 running project=blog"],
            want: &["nothing shop-db-1: up to date"],
        },
        Case {
            name: "service_healthy on a checked service waits for its health",
            services: "  db: {image: pg, healthcheck: {test: [CMD, pg_isready]}}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &[],
            want: &[
                "create shop-db-1",
                "start shop-db-1",
                "nothing shop-web-1: create waits for db (service_healthy)",
            ],
        },
        Case {
            name: "service_healthy: still starting",
            services: "  db: {image: pg, healthcheck: {test: [CMD, pg_isready]}}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &["db/1 running health=starting"],
            want: &[
                "nothing shop-db-1: up to date",
                "nothing shop-web-1: create waits for db (service_healthy)",
            ],
        },
        Case {
            name: "service_healthy: healthy",
            services: "  db: {image: pg, healthcheck: {test: [CMD, pg_isready]}}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &["db/1 running health=healthy"],
            want: &[
                "nothing shop-db-1: up to date",
                "create shop-web-1",
                "start shop-web-1",
            ],
        },
        Case {
            name: "service_healthy without health information counts as started",
            services: "  db: {image: pg, healthcheck: {test: [CMD, pg_isready]}}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &["db/1 running"],
            want: &[
                "nothing shop-db-1: up to date",
                "create shop-web-1",
                "start shop-web-1",
            ],
        },
        Case {
            name: "service_healthy on an unchecked service is service_started",
            services: "  db: {image: pg}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &[],
            want: &[
                "create shop-db-1",
                "start shop-db-1",
                "create shop-web-1",
                "start shop-web-1",
            ],
        },
        Case {
            name: "a recreate waits for its dependency; the old container keeps running",
            services: "  db: {image: pg, healthcheck: {test: [CMD, pg_isready]}}\n  web: {image: web, depends_on: {db: {condition: service_healthy}}}\n",
            here: &["db/1", "web/1"],
            observed: &["db/1 running health=unhealthy", "web/1 running old"],
            want: &[
                "nothing shop-db-1: up to date",
                "nothing shop-web-1: recreate waits for db (service_healthy)",
            ],
        },
        Case {
            name: "completed_successfully: the job runs first",
            services: "  migrate: {image: m}\n  app: {image: a, depends_on: {migrate: {condition: service_completed_successfully}}}\n",
            here: &["migrate/1", "app/1"],
            observed: &[],
            want: &[
                "create shop-migrate-1",
                "start shop-migrate-1",
                "nothing shop-app-1: create waits for migrate (service_completed_successfully)",
            ],
        },
        Case {
            name: "completed_successfully: exit 0 releases the dependent",
            services: "  migrate: {image: m}\n  app: {image: a, depends_on: {migrate: {condition: service_completed_successfully}}}\n",
            here: &["migrate/1", "app/1"],
            observed: &["migrate/1 stopped exit=0"],
            want: &[
                "nothing shop-migrate-1: exited with code 0",
                "create shop-app-1",
                "start shop-app-1",
            ],
        },
        Case {
            name: "completed_successfully: a failed job holds the dependent",
            services: "  migrate: {image: m}\n  app: {image: a, depends_on: {migrate: {condition: service_completed_successfully}}}\n",
            here: &["migrate/1", "app/1"],
            observed: &["migrate/1 stopped exit=3"],
            want: &[
                "nothing shop-migrate-1: exited with code 3",
                "nothing shop-app-1: create waits for migrate (service_completed_successfully)",
            ],
        },
        Case {
            name: "a dependency recreated now satisfies service_started for later steps",
            services: THREE_TIERS,
            here: &["db/1", "api/1"],
            observed: &["db/1 running old"],
            want: &["recreate shop-db-1", "create shop-api-1", "start shop-api-1"],
        },
        Case {
            name: "a dependency that restarts later holds a create",
            services: "  db: {image: pg, restart: always}\n  api: {image: api, depends_on: [db]}\n",
            here: &["db/1", "api/1"],
            observed: &["db/1 stopped exit=1"],
            want: &[
                "restart shop-db-1 after 1s",
                "nothing shop-api-1: create waits for db (service_started)",
            ],
        },
        Case {
            name: "a dependency with no replica here counts as satisfied",
            services: THREE_TIERS,
            here: &["api/1"],
            observed: &[],
            want: &["create shop-api-1", "start shop-api-1"],
        },
        Case {
            name: "crash recovery: created is started, half-created is recreated",
            services: "  web: {image: web, deploy: {replicas: 2}}\n",
            here: &["web/1", "web/2"],
            observed: &["web/1 created", "web/2 creating"],
            want: &["start shop-web-1", "recreate shop-web-2"],
        },
        Case {
            name: "paused is left alone, a config change still recreates",
            services: "  web: {image: web, deploy: {replicas: 2}}\n",
            here: &["web/1", "web/2"],
            observed: &["web/1 paused", "web/2 paused old"],
            want: &["nothing shop-web-1: paused", "recreate shop-web-2"],
        },
        Case {
            name: "restart: no leaves an exited container",
            services: "  web: {image: web}\n",
            here: &["web/1"],
            observed: &["web/1 stopped exit=1"],
            want: &["nothing shop-web-1: exited with code 1"],
        },
        Case {
            name: "an exited container with a new config is recreated",
            services: "  web: {image: web}\n",
            here: &["web/1"],
            observed: &["web/1 stopped old exit=1"],
            want: &["recreate shop-web-1"],
        },
    ];
    for c in &cases {
        let p = project(c.services);
        let d = desired(&p, c.here);
        let obs = c.observed.iter().map(|s| observed(&p, s)).collect();
        check(c.name, &d, obs, c.want);
    }
}

#[test]
fn stages_order_removals_then_creations() {
    let p = project(THREE_TIERS);
    let d = desired(&p, &["db/1", "api/1", "web/1"]);
    let obs = vec![observed(&p, "web/2 running")];
    let steps = plan_stages(&d, &obs, &ctx_at(at(0.0), &NoJitter));
    let got: Vec<(u32, String)> = steps
        .iter()
        .map(|s| (s.stage, s.action.to_string()))
        .collect();
    let want = [
        (0, "stop shop-web-2"),
        (0, "remove shop-web-2"),
        (3, "create shop-db-1"),
        (3, "start shop-db-1"),
        (4, "create shop-api-1"),
        (4, "start shop-api-1"),
        (5, "create shop-web-1"),
        (5, "start shop-web-1"),
    ];
    let want: Vec<(u32, String)> = want.iter().map(|(s, a)| (*s, a.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn a_project_gone_from_the_store_is_removed_entirely() {
    let p = project(THREE_TIERS);
    let d = Desired::removed(p.name.clone());
    let mut stopped = observed(&p, "db/1 running");
    stopped
        .state
        .annotations
        .insert(annotations::STOP_SIGNAL.into(), "SIGQUIT".into());
    let obs = vec![
        stopped,
        observed(&p, "web/1 running"),
        observed(&p, "web/2 stopped"),
    ];
    let got = plan(&d, &obs, &ctx_at(at(0.0), &NoJitter));
    assert_eq!(
        render(&got),
        [
            "stop shop-db-1",
            "remove shop-db-1",
            "remove shop-web-2",
            "stop shop-web-1",
            "remove shop-web-1"
        ]
    );
    assert_eq!(
        got[0],
        Action::Stop {
            id: ContainerId::new("shop-db-1").unwrap(),
            signal: Signal::parse("QUIT").unwrap(),
            grace: DEFAULT_STOP_GRACE,
        }
    );
    // The grace recorded on the container at create is honoured.
    let mut graced = obs.clone();
    graced[0]
        .state
        .annotations
        .insert(annotations::STOP_GRACE.into(), "1500".into());
    let got = plan(&d, &graced, &ctx_at(at(0.0), &NoJitter));
    assert_eq!(
        got[0],
        Action::Stop {
            id: ContainerId::new("shop-db-1").unwrap(),
            signal: Signal::parse("QUIT").unwrap(),
            grace: Duration::from_millis(1500),
        }
    );
    check(
        "project removed",
        &d,
        obs,
        &render(&got).iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn recreate_and_stop_carry_signal_and_grace() {
    let p = project("  web: {image: web, stop_grace_period: 30s}\n");
    let d = desired(&p, &["web/1"]);
    let mut o = observed(&p, "web/1 running old");
    o.state
        .annotations
        .insert(annotations::STOP_SIGNAL.into(), "SIGINT".into());
    let got = plan(&d, &[o], &ctx_at(at(0.0), &NoJitter));
    assert!(
        matches!(
            &got[..],
            [Action::Recreate { signal, grace, config_hash, replica: 1, .. }]
                if *signal == Signal::parse("INT").unwrap()
                    && *grace == Duration::from_secs(30)
                    && *config_hash == p.services["web"].config_hash()
        ),
        "{got:?}"
    );
}

// ---- restart policies -------------------------------------------------------

/// One exited replica of a service with `policy` (compose keys of the
/// service), after `ran` seconds, with `state`; planned at `now` seconds
/// after its exit.
fn restart_plan(
    policy: &str,
    exit: i32,
    ran: f64,
    state: RestartState,
    now: f64,
    jitter: &dyn Jitter,
) -> Action {
    let p = project(&format!("  web: {{image: web, {policy}}}\n"));
    let d = desired(&p, &["web/1"]);
    let mut o = observed(&p, &format!("web/1 stopped exit={exit}"));
    o.started_at = Some(at(-ran));
    o.finished_at = Some(at(0.0));
    o.restart = state;
    let mut got = plan(&d, &[o], &ctx_at(at(now), jitter));
    assert_eq!(got.len(), 1);
    got.remove(0)
}

fn restart_after(a: &Action) -> Option<Duration> {
    match a {
        Action::Restart { after, .. } => Some(*after),
        _ => None,
    }
}

#[test]
fn crash_loop_backs_off_exponentially_up_to_the_cap() {
    let mut state = RestartState::default();
    let mut delays = Vec::new();
    for _ in 0..10 {
        let a = restart_plan("restart: always", 1, 0.5, state.clone(), 0.0, &NoJitter);
        let Action::Restart { after, backoff, .. } = a else {
            panic!("{a}")
        };
        delays.push(after.as_secs());
        state.restarted(backoff, at(after.as_secs_f64()));
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    assert_eq!(state.restarts, 10);
}

#[test]
fn backoff_resets_after_a_stable_run() {
    let state = RestartState {
        restarts: 7,
        backoff: 7,
        ..RestartState::default()
    };
    let short = restart_plan("restart: always", 1, 9.0, state.clone(), 0.0, &NoJitter);
    assert_eq!(restart_after(&short), Some(Duration::from_secs(60)));
    let stable = restart_plan("restart: always", 1, 10.0, state, 0.0, &NoJitter);
    assert!(
        matches!(stable, Action::Restart { after, backoff: 0, .. } if after == Duration::from_secs(1)),
        "{stable}"
    );
}

#[test]
fn a_pending_restart_keeps_its_deadline_when_planned_again() {
    let state = RestartState {
        backoff: 2,
        ..RestartState::default()
    };
    let a = restart_plan("restart: always", 1, 0.0, state.clone(), 1.5, &NoJitter);
    assert_eq!(restart_after(&a), Some(Duration::from_millis(2500)));
    let late = restart_plan("restart: always", 1, 0.0, state, 9.0, &NoJitter);
    assert_eq!(restart_after(&late), Some(Duration::ZERO));
}

struct Fixed(f64);
impl Jitter for Fixed {
    fn fraction(&self, _: &ContainerId, _: u32) -> f64 {
        self.0
    }
}

#[test]
fn jitter_is_injected_and_only_shortens() {
    let state = RestartState {
        backoff: 3,
        ..RestartState::default()
    };
    let a = restart_plan("restart: always", 1, 0.0, state.clone(), 0.0, &Fixed(0.5));
    // 8 s less half of the 20 % jitter.
    assert_eq!(restart_after(&a), Some(Duration::from_millis(7200)));
    let id = ContainerId::new("shop-web-1").unwrap();
    let j = SeededJitter(42);
    for attempt in 0..100 {
        let f = j.fraction(&id, attempt);
        assert!((0.0..1.0).contains(&f), "{f}");
        assert_eq!(f, j.fraction(&id, attempt));
    }
    assert_ne!(j.fraction(&id, 1), j.fraction(&id, 2));
    assert_ne!(j.fraction(&id, 1), SeededJitter(43).fraction(&id, 1));
}

#[test]
fn on_failure_stops_after_max_attempts_and_says_so() {
    let used = |n| RestartState {
        restarts: n,
        ..RestartState::default()
    };
    let a = restart_plan("restart: 'on-failure:3'", 1, 0.0, used(2), 0.0, &NoJitter);
    assert!(restart_after(&a).is_some(), "{a}");
    let a = restart_plan("restart: 'on-failure:3'", 1, 0.0, used(3), 0.0, &NoJitter);
    assert_eq!(
        a.to_string(),
        "nothing shop-web-1: not restarted: max_attempts 3 reached (3 restarts)"
    );
    let a = restart_plan("restart: on-failure", 0, 0.0, used(0), 0.0, &NoJitter);
    assert_eq!(a.to_string(), "nothing shop-web-1: exited with code 0");
    let a = restart_plan("restart: on-failure", 1, 0.0, used(50), 0.0, &NoJitter);
    assert!(restart_after(&a).is_some(), "no limit: {a}");
}

#[test]
fn deploy_restart_policy_counts_attempts_in_its_window() {
    let policy = "deploy: {restart_policy: {condition: on-failure, delay: 5s, max_attempts: 2, window: 60s}}";
    let with = |times: &[f64]| RestartState {
        restarts: 5,
        recent: times.iter().map(|t| at(*t)).collect(),
        ..RestartState::default()
    };
    let a = restart_plan(policy, 1, 0.0, with(&[-90.0, -10.0]), 0.0, &NoJitter);
    assert_eq!(restart_after(&a), Some(Duration::from_secs(5)), "{a}");
    let a = restart_plan(policy, 1, 0.0, with(&[-20.0, -10.0]), 0.0, &NoJitter);
    assert_eq!(
        a.to_string(),
        "nothing shop-web-1: not restarted: max_attempts 2 reached within 60s (5 restarts)"
    );
    let a = restart_plan(policy, 0, 0.0, with(&[]), 0.0, &NoJitter);
    assert!(
        matches!(
            a,
            Action::Nothing {
                why: Idle::Exited { code: Some(0) },
                ..
            }
        ),
        "{a}"
    );
    // `condition: any` restarts after success too; `none` never.
    let any = "deploy: {restart_policy: {condition: any}}";
    let a = restart_plan(any, 0, 0.0, with(&[]), 0.0, &NoJitter);
    assert_eq!(restart_after(&a), Some(Duration::from_secs(5)), "{a}");
    let none = "restart: always, deploy: {restart_policy: {condition: none}}";
    let a = restart_plan(none, 1, 0.0, with(&[]), 0.0, &NoJitter);
    assert!(
        matches!(
            a,
            Action::Nothing {
                why: Idle::Exited { .. },
                ..
            }
        ),
        "{a}"
    );
}

#[test]
fn operator_stop_always_versus_unless_stopped() {
    let cases = [
        ("restart: always", None, true),
        ("restart: unless-stopped", None, true),
        ("restart: always", Some(OperatorStop::ThisRun), false),
        (
            "restart: unless-stopped",
            Some(OperatorStop::ThisRun),
            false,
        ),
        ("restart: always", Some(OperatorStop::EarlierRun), true),
        (
            "restart: unless-stopped",
            Some(OperatorStop::EarlierRun),
            false,
        ),
        ("restart: on-failure", Some(OperatorStop::EarlierRun), false),
    ];
    for (policy, stop, restarts) in cases {
        let state = RestartState {
            operator_stop: stop,
            ..RestartState::default()
        };
        let a = restart_plan(policy, 143, 0.0, state, 0.0, &NoJitter);
        assert_eq!(
            restart_after(&a).is_some(),
            restarts,
            "{policy} {stop:?}: {a}"
        );
        if !restarts {
            assert_eq!(a.to_string(), "nothing shop-web-1: stopped by an operator");
        }
    }
}

#[test]
fn restarted_bookkeeping() {
    let mut s = RestartState {
        operator_stop: Some(OperatorStop::EarlierRun),
        ..RestartState::default()
    };
    for i in 0..100 {
        s.restarted(i, at(f64::from(i)));
    }
    assert_eq!((s.restarts, s.backoff, s.operator_stop), (100, 100, None));
    assert_eq!(s.recent.len(), RestartState::KEEP_RECENT);
    assert_eq!(s.recent.last(), Some(&at(99.0)));
}

#[test]
fn for_node_takes_only_this_nodes_replicas_of_existing_services() {
    let p = project(THREE_TIERS);
    let mut rec = ScheduleRecord {
        fencing_token: 1,
        leader: node(),
        generation: 1,
        services: BTreeMap::new(),
        gone_since: BTreeMap::new(),
        rollouts: BTreeMap::new(),
        healthy_spec: None,
    };
    let n2 = NodeName::new("n2").unwrap();
    rec.services.insert(
        ServiceName::new("web").unwrap(),
        [(1, node()), (2, n2)].into(),
    );
    rec.services
        .insert(ServiceName::new("gone").unwrap(), [(1, node())].into());
    let d = Desired::for_node(&p, &rec, &node()).unwrap();
    let ids: Vec<&str> = d.replicas.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["shop-web-1"]);
    assert_eq!(d.services.len(), 3);
    assert_eq!(
        d.services["web"].depends_on,
        [(
            ServiceName::new("api").unwrap(),
            DependencyCondition::ServiceStarted
        )]
        .into()
    );
}

#[test]
fn remote_dependency_state_is_a_hook() {
    let p = project(THREE_TIERS);
    let mut d = desired(&p, &["api/1"]);
    let db = ServiceName::new("db").unwrap();
    d.remote.insert(db.clone(), RemoteState::default());
    let got = plan(&d, &[], &ctx_at(at(0.0), &NoJitter));
    assert_eq!(
        render(&got),
        ["nothing shop-api-1: create waits for db (service_started)"]
    );
    d.remote.insert(
        db,
        RemoteState {
            started: true,
            ..RemoteState::default()
        },
    );
    let got = plan(&d, &[], &ctx_at(at(0.0), &NoJitter));
    assert_eq!(render(&got), ["create shop-api-1", "start shop-api-1"]);
}

#[test]
fn an_unhealthy_container_is_stopped_only_when_its_policy_restarts_it() {
    let table = [
        ("restart: always", "  web: {image: web, restart: always, healthcheck: {test: [CMD, ok]}}\n", "kill shop-web-1"),
        ("on-failure", "  web: {image: web, restart: on-failure, healthcheck: {test: [CMD, ok]}}\n", "kill shop-web-1"),
        ("restart: no", "  web: {image: web, healthcheck: {test: [CMD, ok]}}\n", "nothing shop-web-1: up to date"),
        (
            "cntnr.health.on-failure: none",
            "  web: {image: web, restart: always, healthcheck: {test: [CMD, ok]}, annotations: {cntnr.health.on-failure: none}}\n",
            "nothing shop-web-1: up to date",
        ),
    ];
    for (name, services, want) in table {
        let p = project(services);
        let d = desired(&p, &["web/1"]);
        let obs = vec![observed(&p, "web/1 running health=unhealthy")];
        let got = plan(&d, &obs, &ctx_at(at(0.0), &NoJitter));
        assert_eq!(render(&got), [want], "{name}");
        // Healthy or starting: never stopped.
        for h in ["healthy", "starting"] {
            let obs = vec![observed(&p, &format!("web/1 running health={h}"))];
            let got = plan(&d, &obs, &ctx_at(at(0.0), &NoJitter));
            assert_eq!(
                render(&got),
                ["nothing shop-web-1: up to date"],
                "{name} {h}"
            );
        }
    }
    // After the stop, the policy restarts it (the agent records the exit
    // of an unhealthy container as a failure: no exit code).
    let p = project("  web: {image: web, restart: on-failure, healthcheck: {test: [CMD, ok]}}\n");
    let d = desired(&p, &["web/1"]);
    let mut o = observed(&p, "web/1 stopped");
    o.exit_code = None;
    let got = plan(&d, &[o], &ctx_at(at(0.0), &NoJitter));
    assert!(
        matches!(got.as_slice(), [Action::Restart { .. }]),
        "{got:?}"
    );
}
