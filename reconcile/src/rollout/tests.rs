//! Table tests: each case is a rollout driven through rows of
//! (time, status observations, expectations).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cntnr_model::records::{ContainerState as S, Health as H};
use cntnr_model::{ConfigHash, FailureAction, NodeName, Replica, UpdateConfig, UpdateOrder};

use super::*;

fn h(c: char) -> ConfigHash {
    ConfigHash::parse(&format!("v1-{}", c.to_string().repeat(64))).unwrap()
}

fn letter(x: &ConfigHash) -> char {
    x.as_str().chars().last().unwrap().to_ascii_uppercase()
}

fn cfg(
    parallelism: u32,
    delay_ms: u64,
    monitor_ms: u64,
    action: FailureAction,
    ratio: f64,
) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay: Duration::from_millis(delay_ms),
        monitor: Duration::from_millis(monitor_ms),
        failure_action: action,
        max_failure_ratio: ratio,
        ..UpdateConfig::default()
    }
}

/// One row: at `now`, the status says `obs` (replica, hash letter, state,
/// health); afterwards the replicas run `wanted` (one letter per replica in
/// order), the phase is `phase`, `advanced` were advanced and the next
/// recheck is `recheck`.
struct Row {
    now: Millis,
    obs: &'static [(Replica, char, S, H)],
    advanced: &'static [Replica],
    wanted: &'static str,
    phase: Phase,
    recheck: Option<Millis>,
}

const fn row(
    now: Millis,
    obs: &'static [(Replica, char, S, H)],
    advanced: &'static [Replica],
    wanted: &'static str,
    phase: Phase,
    recheck: Option<Millis>,
) -> Row {
    Row {
        now,
        obs,
        advanced,
        wanted,
        phase,
        recheck,
    }
}

struct Case {
    name: &'static str,
    cfg: UpdateConfig,
    /// `rollback_config`; `None`: the same as `cfg`.
    rollback: Option<UpdateConfig>,
    /// [`Settings::check_ms`].
    check_ms: Millis,
    /// Nodes offered for surge replicas (empty: none, "no node in this
    /// test").
    surge: &'static [&'static str],
    has_check: bool,
    /// Replicas and the hash letter each runs at the start (all `A`: from).
    start: &'static str,
    /// Replica count while stepping (scale changes are their own test).
    rows: Vec<Row>,
}

use FailureAction::{Continue, Pause, Rollback};
use Phase::*;

const RUN_OK: H = H::Healthy;

/// Settings with no health check timings and no surge node.
fn settings<'a>(
    update: &'a UpdateConfig,
    rollback: &'a UpdateConfig,
    has_check: bool,
) -> Settings<'a> {
    Settings {
        update,
        rollback,
        has_check,
        check_ms: 0,
        surge: Err("no node in this test".into()),
    }
}

/// The earliest readiness deadline of the steps waiting for a replica.
fn first_deadline(ro: &ServiceRollout, s: &Settings<'_>) -> Option<Millis> {
    let cfg = s.cfg(ro.phase);
    let d = s.check_ms + cfg.monitor.as_millis() as u64 + READY_MARGIN;
    ro.replicas
        .values()
        .chain(ro.surge.values().map(|x| &x.step))
        .filter_map(|st| match st {
            Step::Updating { since } => Some(since + d),
            _ => None,
        })
        .min()
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn run(case: &Case) -> ServiceRollout {
    let start: BTreeMap<Replica, Option<ConfigHash>> = case
        .start
        .chars()
        .enumerate()
        .map(|(i, c)| (i as Replica + 1, Some(h(c))))
        .collect();
    let set: BTreeSet<Replica> = start.keys().copied().collect();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let mut obs: BTreeMap<Replica, Observed> = BTreeMap::new();
    let rollback = case.rollback.clone().unwrap_or_else(|| case.cfg.clone());
    let mut s = settings(&case.cfg, &rollback, case.has_check);
    s.check_ms = case.check_ms;
    if !case.surge.is_empty() {
        s.surge = Ok(case
            .surge
            .iter()
            .map(|n| NodeName::new(*n).unwrap())
            .collect());
    }
    for (i, row) in case.rows.iter().enumerate() {
        for (r, c, state, health) in row.obs {
            obs.insert(
                *r,
                Observed {
                    hash: h(*c),
                    state: *state,
                    health: *health,
                    exit_code: None,
                },
            );
        }
        let before = ro.wanted();
        let adv = ro.step(&s, &set, &obs, row.now);
        let wanted: String = ro.wanted().values().map(letter).collect();
        let ctx = format!("case {:?}, row {i} (t={})", case.name, row.now);
        assert_eq!(adv.advanced, row.advanced, "{ctx}: advanced");
        assert_eq!(wanted, row.wanted, "{ctx}: wanted");
        assert_eq!(ro.phase, row.phase, "{ctx}: phase");
        // `recheck` lists monitor and delay ends; a replica waiting to be
        // ready adds its readiness deadline.
        assert_eq!(
            adv.recheck_at,
            min_opt(row.recheck, first_deadline(&ro, &s)),
            "{ctx}: recheck_at"
        );
        // start-first: an old replica is replaced only while old replicas
        // in flight do not outnumber the surge replicas through monitor,
        // so capacity never drops.
        let replaced = adv.advanced.iter().any(|r| set.contains(r));
        if replaced && s.cfg(ro.phase).order == UpdateOrder::StartFirst && ro.fallback.is_none() {
            let real = ro
                .replicas
                .values()
                .filter(|st| matches!(st, Step::Updating { .. } | Step::Monitoring { .. }))
                .count();
            let held = ro
                .surge
                .values()
                .filter(|x| matches!(x.step, Step::Done { .. }))
                .count();
            assert!(real <= held, "{ctx}: {real} replaced, {held} surge ready");
        }
        // Never more than `parallelism` replicas in flight.
        let par = match s.cfg(ro.phase).parallelism {
            0 => usize::MAX,
            n => n as usize,
        };
        assert!(
            ro.progress().in_flight <= par,
            "{ctx}: in flight {}",
            ro.progress().in_flight
        );
        // Only advanced replicas change the hash they must run.
        for (r, w) in ro.wanted() {
            if !adv.advanced.contains(&r) {
                assert_eq!(
                    before.get(&r),
                    Some(&w),
                    "{ctx}: replica {r} changed unadvanced"
                );
            }
        }
    }
    ro
}

#[test]
fn rollouts() {
    let cases = vec![
        Case {
            name: "parallelism 1 with a check: one at a time, each healthy through monitor",
            cfg: cfg(1, 0, 5000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aaa",
            rows: vec![
                row(0, &[], &[1], "BAA", Updating, None),
                // The node replaced it; the check has not passed yet.
                row(
                    100,
                    &[(1, 'b', S::Running, H::Starting)],
                    &[],
                    "BAA",
                    Updating,
                    None,
                ),
                row(
                    200,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BAA",
                    Updating,
                    Some(5200),
                ),
                row(5200, &[], &[2], "BBA", Updating, None),
                row(
                    5300,
                    &[(2, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBA",
                    Updating,
                    Some(10300),
                ),
                // Too early: still monitoring.
                row(9000, &[], &[], "BBA", Updating, Some(10300)),
                row(10300, &[], &[3], "BBB", Updating, None),
                row(
                    10400,
                    &[(3, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBB",
                    Updating,
                    Some(15400),
                ),
                row(15400, &[], &[], "BBB", Completed, None),
            ],
        },
        Case {
            name: "parallelism 2 advances two at once",
            cfg: cfg(2, 0, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aaa",
            rows: vec![
                row(0, &[], &[1, 2], "BBA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBA",
                    Updating,
                    Some(1010),
                ),
                // A slot frees when replica 1 is done.
                row(1010, &[], &[3], "BBB", Updating, None),
            ],
        },
        Case {
            name: "parallelism 0 advances all",
            cfg: cfg(0, 0, 0, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: false,
            start: "aaa",
            rows: vec![
                row(0, &[], &[1, 2, 3], "BBB", Updating, None),
                // No check: running is ready; monitor 0 is done at once.
                row(
                    10,
                    &[
                        (1, 'b', S::Running, H::None),
                        (2, 'b', S::Running, H::None),
                        (3, 'b', S::Running, H::None),
                    ],
                    &[],
                    "BBB",
                    Completed,
                    None,
                ),
            ],
        },
        Case {
            name: "delay holds the next batch back",
            cfg: cfg(1, 3000, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: false,
            start: "aa",
            rows: vec![
                // No batch finished yet: no delay for the first one.
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, H::None)],
                    &[],
                    "BA",
                    Updating,
                    Some(1010),
                ),
                row(1010, &[], &[], "BA", Updating, Some(4010)),
                row(4010, &[], &[2], "BB", Updating, None),
            ],
        },
        Case {
            name: "a replica already on the target is not touched",
            cfg: cfg(1, 0, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: false,
            start: "ba",
            rows: vec![row(0, &[], &[2], "BB", Updating, None)],
        },
        Case {
            name: "the old hash seen while updating is no progress",
            cfg: cfg(1, 0, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'a', S::Running, RUN_OK)],
                    &[],
                    "BA",
                    Updating,
                    None,
                ),
                row(
                    20,
                    &[(1, 'a', S::Stopped, H::None)],
                    &[],
                    "BA",
                    Updating,
                    None,
                ),
            ],
        },
        Case {
            name: "unhealthy new replica with pause: stops advancing",
            cfg: cfg(1, 0, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aaa",
            rows: vec![
                row(0, &[], &[1], "BAA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, H::Unhealthy)],
                    &[],
                    "BAA",
                    Paused,
                    None,
                ),
                row(
                    5000,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BAA",
                    Paused,
                    None,
                ),
            ],
        },
        Case {
            name: "unhealthy new replica with rollback: back at once, healthy old ones untouched",
            cfg: cfg(1, 0, 1000, Rollback, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aaa",
            rows: vec![
                row(0, &[], &[1], "BAA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, H::Starting)],
                    &[],
                    "BAA",
                    Updating,
                    None,
                ),
                row(
                    20,
                    &[(1, 'b', S::Running, H::Unhealthy)],
                    &[1],
                    "AAA",
                    RollingBack,
                    None,
                ),
                row(
                    30,
                    &[(1, 'a', S::Running, RUN_OK)],
                    &[],
                    "AAA",
                    RollingBack,
                    Some(1030),
                ),
                row(1030, &[], &[], "AAA", RolledBack, None),
            ],
        },
        Case {
            name: "failing within monitor counts as a failure",
            cfg: cfg(1, 0, 5000, Rollback, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BA",
                    Updating,
                    Some(5010),
                ),
                row(
                    2000,
                    &[(1, 'b', S::Stopped, RUN_OK)],
                    &[1],
                    "AA",
                    RollingBack,
                    None,
                ),
            ],
        },
        Case {
            name: "a crash while monitoring is a failure even if it restarts",
            cfg: cfg(1, 0, 5000, Pause, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BA",
                    Updating,
                    Some(5010),
                ),
                row(
                    2000,
                    &[(1, 'b', S::Running, H::Starting)],
                    &[],
                    "BA",
                    Paused,
                    None,
                ),
            ],
        },
        Case {
            name: "continue: failures within the ratio go on; past it, rollback",
            cfg: cfg(1, 0, 0, Rollback, 0.5),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: true,
            start: "aaaa",
            rows: vec![
                row(0, &[], &[1], "BAAA", Updating, None),
                // 1/4 failed <= 0.5: on to the next.
                row(
                    10,
                    &[(1, 'b', S::Failed, H::None)],
                    &[2],
                    "BBAA",
                    Updating,
                    None,
                ),
                // 2/4 <= 0.5.
                row(
                    20,
                    &[(2, 'b', S::Running, H::Unhealthy)],
                    &[3],
                    "BBBA",
                    Updating,
                    None,
                ),
                // 3/4 > 0.5: roll back; replica 4 still runs A and stays.
                row(
                    30,
                    &[(3, 'b', S::Stopped, H::None)],
                    &[1],
                    "ABBA",
                    RollingBack,
                    None,
                ),
                row(
                    40,
                    &[(1, 'a', S::Running, RUN_OK)],
                    &[2],
                    "AABA",
                    RollingBack,
                    None,
                ),
                // A failure while rolling back within its ratio (the same
                // config here) does not stop it.
                row(
                    50,
                    &[(2, 'a', S::Failed, H::None)],
                    &[3],
                    "AAAA",
                    RollingBack,
                    None,
                ),
                row(
                    60,
                    &[(3, 'a', S::Running, RUN_OK)],
                    &[],
                    "AAAA",
                    RolledBack,
                    None,
                ),
            ],
        },
        Case {
            name: "continue never stops",
            cfg: cfg(1, 0, 0, Continue, 0.0),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: false,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Failed, H::None)],
                    &[2],
                    "BB",
                    Updating,
                    None,
                ),
                row(
                    20,
                    &[(2, 'b', S::Running, H::None)],
                    &[],
                    "BB",
                    Completed,
                    None,
                ),
            ],
        },
    ];
    for case in &cases {
        run(case);
    }
}

#[test]
fn healthy_spec_is_the_last_fully_healthy() {
    let c = Case {
        name: "clean",
        cfg: cfg(0, 0, 0, Continue, 0.0),
        rollback: None,
        check_ms: 0,
        surge: &[],
        has_check: false,
        start: "aa",
        rows: vec![
            row(0, &[], &[1, 2], "BB", Updating, None),
            row(
                10,
                &[(1, 'b', S::Running, H::None), (2, 'b', S::Running, H::None)],
                &[],
                "BB",
                Completed,
                None,
            ),
        ],
    };
    assert_eq!(run(&c).healthy(), &h('b'));
    let c = Case {
        name: "completed with a failure",
        cfg: cfg(0, 0, 0, Continue, 0.0),
        rollback: None,
        check_ms: 0,
        surge: &[],
        has_check: false,
        start: "aa",
        rows: vec![
            row(0, &[], &[1, 2], "BB", Updating, None),
            row(
                10,
                &[(1, 'b', S::Running, H::None), (2, 'b', S::Failed, H::None)],
                &[],
                "BB",
                Completed,
                None,
            ),
        ],
    };
    assert_eq!(run(&c).healthy(), &h('a'));
    let c = Case {
        name: "in progress",
        cfg: cfg(1, 0, 0, Continue, 0.0),
        rollback: None,
        check_ms: 0,
        surge: &[],
        has_check: false,
        start: "aa",
        rows: vec![row(0, &[], &[1], "BA", Updating, None)],
    };
    assert_eq!(run(&c).healthy(), &h('a'));
}

#[test]
fn manual_rollback() {
    let cfg1 = cfg(1, 0, 0, Pause, 0.0);
    let set: BTreeSet<Replica> = [1, 2].into();
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (2, Some(h('a')))].into();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let ob = |c: char| Observed {
        hash: h(c),
        state: S::Running,
        health: H::None,
        exit_code: None,
    };
    ro.step(&settings(&cfg1, &cfg1, false), &set, &BTreeMap::new(), 0);
    ro.step(
        &settings(&cfg1, &cfg1, false),
        &set,
        &[(1, ob('b'))].into(),
        1,
    );
    ro.step(
        &settings(&cfg1, &cfg1, false),
        &set,
        &[(1, ob('b')), (2, ob('b'))].into(),
        2,
    );
    assert_eq!(ro.phase, Completed);
    // After a completed update, a manual rollback goes back to `from`, one
    // replica at a time.
    assert!(ro.request_rollback("cntnr rollback"));
    assert_eq!(ro.reason.as_deref(), Some("cntnr rollback"));
    let adv = ro.step(
        &settings(&cfg1, &cfg1, false),
        &set,
        &[(1, ob('b')), (2, ob('b'))].into(),
        3,
    );
    assert_eq!(adv.advanced, vec![1]);
    assert_eq!(ro.wanted(), [(1, h('a')), (2, h('b'))].into());
    assert!(!ro.request_rollback("again"), "already rolling back");
    ro.step(
        &settings(&cfg1, &cfg1, false),
        &set,
        &[(1, ob('a')), (2, ob('b'))].into(),
        4,
    );
    ro.step(
        &settings(&cfg1, &cfg1, false),
        &set,
        &[(1, ob('a')), (2, ob('a'))].into(),
        5,
    );
    assert_eq!(ro.phase, RolledBack);
    assert_eq!(ro.target(), &h('a'));
    // Nothing to roll back to.
    let mut same = ServiceRollout::start(h('a'), h('a'), &start);
    assert!(!same.request_rollback("x"));
    // A paused rollout can be rolled back by hand; untouched replicas stay.
    let mut paused = ServiceRollout::start(h('a'), h('b'), &start);
    paused.step(&settings(&cfg1, &cfg1, true), &set, &BTreeMap::new(), 0);
    let bad = Observed {
        hash: h('b'),
        state: S::Running,
        health: H::Unhealthy,
        exit_code: None,
    };
    paused.step(&settings(&cfg1, &cfg1, true), &set, &[(1, bad)].into(), 1);
    assert_eq!(paused.phase, Paused);
    assert!(paused.request_rollback("cntnr rollback"));
    let adv = paused.step(&settings(&cfg1, &cfg1, true), &set, &BTreeMap::new(), 2);
    assert_eq!(adv.advanced, vec![1]);
    assert_eq!(paused.wanted(), [(1, h('a')), (2, h('a'))].into());
}

#[test]
fn scaling_during_a_rollout() {
    let cfg1 = cfg(1, 0, 1000, Pause, 0.0);
    let start: BTreeMap<Replica, Option<ConfigHash>> = [(1, Some(h('a'))), (2, None)].into();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    // No known hash: treated as running `from`.
    assert_eq!(ro.wanted(), [(1, h('a')), (2, h('a'))].into());
    ro.step(
        &settings(&cfg1, &cfg1, false),
        &[1, 2].into(),
        &BTreeMap::new(),
        0,
    );
    // Replica 3 appears and runs the target at once; replica 2 is gone.
    let adv = ro.step(
        &settings(&cfg1, &cfg1, false),
        &[1, 3].into(),
        &BTreeMap::new(),
        10,
    );
    assert!(adv.advanced.is_empty());
    assert_eq!(ro.wanted(), [(1, h('b')), (3, h('b'))].into());
    assert_eq!(ro.progress().to_string(), "updating 1/2, 1 in flight");
}

#[test]
fn record_round_trips() {
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (2, Some(h('b')))].into();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let c = cfg(1, 0, 1000, Pause, 0.0);
    ro.step(
        &settings(&c, &c, false),
        &[1, 2].into(),
        &BTreeMap::new(),
        7,
    );
    let text = serde_json::to_string(&ro).unwrap();
    let back: ServiceRollout = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ro);
}

#[test]
fn a_one_shot_replica_that_exits_0_is_ready_and_one_that_exits_1_failed() {
    let c = cfg(1, 0, 0, Pause, 0.0);
    let set: BTreeSet<Replica> = [1, 2].into();
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (2, Some(h('a')))].into();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let exited = |code| Observed {
        hash: h('b'),
        state: S::Stopped,
        health: H::None,
        exit_code: Some(code),
    };
    ro.step(&settings(&c, &c, false), &set, &BTreeMap::new(), 0);
    let adv = ro.step(&settings(&c, &c, false), &set, &[(1, exited(0))].into(), 1);
    assert_eq!(adv.advanced, vec![2]);
    ro.step(
        &settings(&c, &c, false),
        &set,
        &[(1, exited(0)), (2, exited(1))].into(),
        2,
    );
    assert_eq!(ro.phase, Paused);
    assert_eq!(
        ro.reason.as_deref(),
        Some("1 of 2 replicas failed to update (replica 2: exited 1)")
    );
}

fn start_first(parallelism: u32, monitor_ms: u64, action: FailureAction) -> UpdateConfig {
    UpdateConfig {
        order: UpdateOrder::StartFirst,
        ..cfg(parallelism, 0, monitor_ms, action, 0.0)
    }
}

#[test]
fn start_first_uses_surge_replicas() {
    // `wanted` lists the replicas then the surge replicas (4, 5, …).
    let cases =
        vec![
        Case {
            name: "a surge replica first, then each old replica while it holds capacity",
            cfg: start_first(1, 1000, Pause),
            rollback: None,
            check_ms: 0,
            surge: &["n1"],
            has_check: true,
            start: "aaa",
            rows: vec![
                row(0, &[], &[4], "AAAB", Updating, None),
                row(
                    10,
                    &[(4, 'b', S::Running, RUN_OK)],
                    &[],
                    "AAAB",
                    Updating,
                    Some(1010),
                ),
                // The surge replica is through monitor: replica 1 goes.
                row(1010, &[], &[1], "BAAB", Updating, None),
                row(
                    1020,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BAAB",
                    Updating,
                    Some(2020),
                ),
                row(2020, &[], &[2], "BBAB", Updating, None),
                row(
                    2030,
                    &[(2, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBAB",
                    Updating,
                    Some(3030),
                ),
                row(3030, &[], &[3], "BBBB", Updating, None),
                row(
                    3040,
                    &[(3, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBBB",
                    Updating,
                    Some(4040),
                ),
                // Nothing left to replace: the surge replica goes.
                row(4040, &[], &[], "BBB", Completed, None),
            ],
        },
        Case {
            name: "a surge replica that stops being ready holds the old replicas back",
            cfg: start_first(1, 1000, Pause),
            rollback: None,
            check_ms: 0,
            surge: &["n1"],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[3], "AAB", Updating, None),
                row(
                    10,
                    &[(3, 'b', S::Running, RUN_OK)],
                    &[],
                    "AAB",
                    Updating,
                    Some(1010),
                ),
                row(1010, &[], &[1], "BAB", Updating, None),
                row(
                    1020,
                    &[(1, 'b', S::Running, RUN_OK), (3, 'b', S::Running, H::Starting)],
                    &[],
                    "BAB",
                    Updating,
                    Some(2020),
                ),
                // Replica 1 is done but the surge is not ready: wait.
                row(2020, &[], &[], "BAB", Updating, None),
                row(
                    2030,
                    &[(3, 'b', S::Running, RUN_OK)],
                    &[2],
                    "BBB",
                    Updating,
                    None,
                ),
                row(
                    2040,
                    &[(2, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBB",
                    Updating,
                    Some(3040),
                ),
                row(3040, &[], &[], "BB", Completed, None),
            ],
        },
        Case {
            name: "a surge replica that breaks after monitor failed and is replaced",
            cfg: start_first(1, 1000, Continue),
            rollback: None,
            check_ms: 0,
            surge: &["n1"],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[3], "AAB", Updating, None),
                row(
                    10,
                    &[(3, 'b', S::Running, RUN_OK)],
                    &[],
                    "AAB",
                    Updating,
                    Some(1010),
                ),
                row(1010, &[], &[1], "BAB", Updating, None),
                // The surge container dies: it failed and runs nowhere.
                row(
                    1020,
                    &[(3, 'b', S::Failed, H::None)],
                    &[],
                    "BA",
                    Updating,
                    None,
                ),
                row(
                    1030,
                    &[(1, 'b', S::Running, RUN_OK)],
                    &[],
                    "BA",
                    Updating,
                    Some(2030),
                ),
                // Replica 1 is done: a new surge replica (4) before 2 goes.
                row(2030, &[], &[4], "BAB", Updating, None),
                row(
                    2040,
                    &[(4, 'b', S::Running, RUN_OK)],
                    &[],
                    "BAB",
                    Updating,
                    Some(3040),
                ),
                row(3040, &[], &[2], "BBB", Updating, None),
                row(
                    3050,
                    &[(2, 'b', S::Running, RUN_OK)],
                    &[],
                    "BBB",
                    Updating,
                    Some(4050),
                ),
                row(4050, &[], &[], "BB", Completed, None),
            ],
        },
        Case {
            name: "parallelism 2: two surge replicas, then two old replicas at once",
            cfg: start_first(2, 0, Pause),
            rollback: None,
            check_ms: 0,
            surge: &["n1", "n2"],
            has_check: false,
            start: "aaa",
            rows: vec![
                row(0, &[], &[4, 5], "AAABB", Updating, None),
                // Only one is ready: one old replica may go.
                row(
                    10,
                    &[(4, 'b', S::Running, H::None)],
                    &[1],
                    "BAABB",
                    Updating,
                    None,
                ),
                row(
                    20,
                    &[(1, 'b', S::Running, H::None), (5, 'b', S::Running, H::None)],
                    &[2, 3],
                    "BBBBB",
                    Updating,
                    None,
                ),
                row(
                    30,
                    &[(2, 'b', S::Running, H::None), (3, 'b', S::Running, H::None)],
                    &[],
                    "BBB",
                    Completed,
                    None,
                ),
            ],
        },
        Case {
            name: "a failing surge replica is a failure; rollback drops it, old replicas untouched",
            cfg: start_first(1, 1000, Rollback),
            rollback: None,
            check_ms: 0,
            surge: &["n1"],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[3], "AAB", Updating, None),
                row(
                    10,
                    &[(3, 'b', S::Running, H::Unhealthy)],
                    &[],
                    "AA",
                    RolledBack,
                    None,
                ),
            ],
        },
        Case {
            name: "no room for a surge replica: stop-first",
            cfg: start_first(1, 0, Pause),
            rollback: None,
            check_ms: 0,
            surge: &[],
            has_check: false,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    10,
                    &[(1, 'b', S::Running, H::None)],
                    &[2],
                    "BB",
                    Updating,
                    None,
                ),
            ],
        },
    ];
    for case in &cases {
        let ro = run(case);
        if case.surge.is_empty() {
            assert_eq!(
                ro.fallback.as_deref(),
                Some("start-first needs a surge replica: no node in this test; running stop-first"),
                "{}",
                case.name
            );
            assert!(ro.surge.is_empty());
        } else {
            assert_eq!(ro.fallback, None, "{}", case.name);
        }
    }
}

#[test]
fn the_fallback_is_reported_once_and_surge_numbers_follow_the_last_replica() {
    let c = start_first(1, 0, Pause);
    let mut s = settings(&c, &c, false);
    s.surge = Err("max_replicas_per_node 1 reached on all 2 eligible nodes".into());
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (7, Some(h('a')))].into();
    let set: BTreeSet<Replica> = start.keys().copied().collect();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let adv = ro.step(&s, &set, &BTreeMap::new(), 0);
    assert_eq!(
        adv.fell_back.as_deref(),
        Some("start-first needs a surge replica: max_replicas_per_node 1 reached on all 2 eligible nodes; running stop-first")
    );
    let adv = ro.step(&s, &set, &BTreeMap::new(), 1);
    assert_eq!(adv.fell_back, None, "reported once");
    // With room, the surge replica is numbered after the last replica (7).
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    s.surge = Ok(vec![NodeName::new("n2").unwrap()]);
    let adv = ro.step(&s, &set, &BTreeMap::new(), 0);
    assert_eq!(adv.advanced, vec![8]);
    assert_eq!(ro.surge[&8].node.as_str(), "n2");
    assert_eq!(
        ro.progress().to_string(),
        "updating 0/2, 1 in flight, 1 surge"
    );
}

#[test]
fn a_replica_not_ready_by_its_deadline_fails() {
    // Check 5s worst case + monitor 1s + the margin.
    let deadline = 5000 + 1000 + READY_MARGIN;
    assert_eq!(
        check_time(
            Duration::from_secs(2),
            Duration::from_millis(500),
            Duration::from_millis(250),
            3
        ),
        2000 + 750 * 4
    );
    let cases = [
        Case {
            name: "pause: a replica stuck starting fails at the deadline",
            cfg: cfg(1, 0, 1000, Pause, 0.0),
            rollback: None,
            check_ms: 5000,
            surge: &[],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    100,
                    &[(1, 'b', S::Running, H::Starting)],
                    &[],
                    "BA",
                    Updating,
                    None,
                ),
                row(deadline - 1, &[], &[], "BA", Updating, None),
                row(deadline, &[], &[], "BA", Paused, None),
            ],
        },
        Case {
            name: "continue: a replica never seen on the new hash (image never pulled) fails and the next goes",
            cfg: cfg(1, 0, 1000, Continue, 0.0),
            rollback: None,
            check_ms: 5000,
            surge: &[],
            has_check: true,
            start: "aa",
            rows: vec![
                row(0, &[], &[1], "BA", Updating, None),
                row(
                    100,
                    &[(1, 'a', S::Stopped, H::None)],
                    &[],
                    "BA",
                    Updating,
                    None,
                ),
                row(deadline, &[], &[2], "BB", Updating, None),
            ],
        },
    ];
    let ro = run(&cases[0]);
    assert_eq!(
        ro.reason.as_deref(),
        Some("1 of 2 replicas failed to update (replica 1: not ready within 66s)")
    );
    run(&cases[1]);
}

#[test]
fn rollbacks_use_rollback_config() {
    let up = cfg(1, 0, 0, Pause, 0.0);
    let rb = cfg(2, 0, 3000, Pause, 0.0);
    let s = settings(&up, &rb, false);
    let set: BTreeSet<Replica> = [1, 2, 3].into();
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        set.iter().map(|r| (*r, Some(h('a')))).collect();
    let run_ = |c: char| Observed {
        hash: h(c),
        state: S::Running,
        health: H::None,
        exit_code: None,
    };
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let mut obs: BTreeMap<Replica, Observed> = BTreeMap::new();
    // The update: one at a time (update_config).
    for (t, r) in [(0, None), (1, Some(1)), (2, Some(2)), (3, Some(3))] {
        if let Some(r) = r {
            obs.insert(r, run_('b'));
        }
        let adv = ro.step(&s, &set, &obs, t);
        assert!(adv.advanced.len() <= 1);
    }
    assert_eq!(ro.phase, Completed);
    assert!(ro.request_rollback("cntnr rollback"));
    // rollback_config: two at once, monitored 3s.
    let adv = ro.step(&s, &set, &obs, 10);
    assert_eq!(adv.advanced, vec![1, 2]);
    obs.insert(1, run_('a'));
    obs.insert(2, run_('a'));
    let adv = ro.step(&s, &set, &obs, 20);
    assert_eq!(adv.recheck_at, Some(3020));
    let adv = ro.step(&s, &set, &obs, 3020);
    assert_eq!(adv.advanced, vec![3]);
    // A failure past rollback_config's ratio pauses the rollback.
    obs.insert(
        3,
        Observed {
            state: S::Failed,
            ..run_('a')
        },
    );
    ro.step(&s, &set, &obs, 3030);
    assert_eq!(ro.phase, RollbackPaused);
    assert_eq!(
        ro.reason.as_deref(),
        Some("1 of 3 replicas failed to roll back (replica 3: failed)")
    );
    assert_eq!(ro.target(), &h('a'));
    assert_eq!(ro.wanted(), set.iter().map(|r| (*r, h('a'))).collect());
    assert_eq!(
        ro.step(&s, &set, &obs, 4000).advanced,
        Vec::<Replica>::new()
    );
    // `cntnr rollback` resumes it: the failed replica is tried again.
    assert!(ro.request_rollback("again"));
    assert_eq!(ro.phase, RollingBack);
    assert_eq!(ro.step(&s, &set, &obs, 4010).advanced, vec![3]);
    obs.insert(3, run_('a'));
    ro.step(&s, &set, &obs, 4020);
    ro.step(&s, &set, &obs, 7020);
    assert_eq!(ro.phase, RolledBack);

    // rollback_config start-first: the rollback gets its own surge
    // replica on `from`; the update's surge replica is dropped.
    let up = start_first(1, 0, Pause);
    let rb = start_first(1, 0, Pause);
    let mut s = settings(&up, &rb, false);
    s.surge = Ok(vec![NodeName::new("n1").unwrap()]);
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    let mut obs: BTreeMap<Replica, Observed> = BTreeMap::new();
    assert_eq!(ro.step(&s, &set, &obs, 0).advanced, vec![4]);
    obs.insert(4, run_('b'));
    assert_eq!(ro.step(&s, &set, &obs, 1).advanced, vec![1]);
    assert!(ro.request_rollback("cntnr rollback"));
    let adv = ro.step(&s, &set, &obs, 2);
    assert_eq!(adv.advanced, vec![4]);
    assert_eq!(ro.surge[&4].hash, h('a'));
    assert_eq!(
        ro.wanted(),
        [(1, h('b')), (2, h('a')), (3, h('a')), (4, h('a'))].into()
    );
}

#[test]
fn a_surge_replica_not_seen_past_its_deadline_fails_and_one_back_in_time_goes_on() {
    let cfg = start_first(1, 0, Pause);
    let mut s = settings(&cfg, &cfg, true);
    s.surge = Ok(vec![NodeName::new("n1").unwrap()]);
    let deadline = s.check_ms + READY_MARGIN;
    let set: BTreeSet<Replica> = [1, 2].into();
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (2, Some(h('a')))].into();
    let ok = |c| Observed {
        hash: h(c),
        state: S::Running,
        health: RUN_OK,
        exit_code: None,
    };
    let old: BTreeMap<Replica, Observed> = [(1, ok('a')), (2, ok('a'))].into();
    let with_surge = {
        let mut o = old.clone();
        o.insert(3, ok('b'));
        o
    };
    for back in [false, true] {
        let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
        assert_eq!(ro.step(&s, &set, &old, 0).advanced, vec![3]);
        // The surge replica is ready (monitor 0): replica 1 goes.
        assert_eq!(ro.step(&s, &set, &with_surge, 10).advanced, vec![1]);
        // Its node is gone: no status for it. It holds on until the deadline.
        let adv = ro.step(&s, &set, &old, 20);
        assert_eq!(ro.surge[&3].missing_since, Some(20));
        assert!(matches!(ro.surge[&3].step, Step::Done { .. }));
        assert!(
            adv.recheck_at.is_some_and(|t| t <= 20 + deadline),
            "{adv:?}"
        );
        if back {
            // Seen again in time: it goes on.
            ro.step(&s, &set, &with_surge, 30);
            assert_eq!(ro.surge[&3].missing_since, None);
            assert!(matches!(ro.surge[&3].step, Step::Done { .. }));
            assert_eq!(ro.phase, Updating);
        } else {
            ro.step(&s, &set, &old, 20 + deadline);
            assert!(
                matches!(&ro.surge[&3].step, Step::Failed { reason, .. } if reason.starts_with("not seen for")),
                "{:?}",
                ro.surge[&3]
            );
            // A failure past max_failure_ratio 0: the update pauses.
            assert_eq!(ro.phase, Paused);
        }
    }
}
