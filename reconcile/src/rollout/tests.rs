//! Table tests: each case is a rollout driven through rows of
//! (time, status observations, expectations).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cntnr_model::records::{ContainerState as S, Health as H};
use cntnr_model::{ConfigHash, FailureAction, Replica, UpdateConfig};

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
    has_check: bool,
    /// Replicas and the hash letter each runs at the start (all `A`: from).
    start: &'static str,
    /// Replica count while stepping (scale changes are their own test).
    rows: Vec<Row>,
}

use FailureAction::{Continue, Pause, Rollback};
use Phase::*;

const RUN_OK: H = H::Healthy;

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
    let par = if case.cfg.parallelism == 0 {
        usize::MAX
    } else {
        case.cfg.parallelism as usize
    };
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
        let adv = ro.step(&case.cfg, case.has_check, &set, &obs, row.now);
        let wanted: String = ro.wanted().values().map(letter).collect();
        let ctx = format!("case {:?}, row {i} (t={})", case.name, row.now);
        assert_eq!(adv.advanced, row.advanced, "{ctx}: advanced");
        assert_eq!(wanted, row.wanted, "{ctx}: wanted");
        assert_eq!(ro.phase, row.phase, "{ctx}: phase");
        assert_eq!(adv.recheck_at, row.recheck, "{ctx}: recheck_at");
        // Never more than `parallelism` replicas in flight.
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
            has_check: false,
            start: "ba",
            rows: vec![row(0, &[], &[2], "BB", Updating, None)],
        },
        Case {
            name: "the old hash seen while updating is no progress",
            cfg: cfg(1, 0, 1000, Pause, 0.0),
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
                // A failure while rolling back does not stop it.
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
    ro.step(&cfg1, false, &set, &BTreeMap::new(), 0);
    ro.step(&cfg1, false, &set, &[(1, ob('b'))].into(), 1);
    ro.step(&cfg1, false, &set, &[(1, ob('b')), (2, ob('b'))].into(), 2);
    assert_eq!(ro.phase, Completed);
    // After a completed update, a manual rollback goes back to `from`, one
    // replica at a time.
    assert!(ro.request_rollback("cntnr rollback"));
    assert_eq!(ro.reason.as_deref(), Some("cntnr rollback"));
    let adv = ro.step(&cfg1, false, &set, &[(1, ob('b')), (2, ob('b'))].into(), 3);
    assert_eq!(adv.advanced, vec![1]);
    assert_eq!(ro.wanted(), [(1, h('a')), (2, h('b'))].into());
    assert!(!ro.request_rollback("again"), "already rolling back");
    ro.step(&cfg1, false, &set, &[(1, ob('a')), (2, ob('b'))].into(), 4);
    ro.step(&cfg1, false, &set, &[(1, ob('a')), (2, ob('a'))].into(), 5);
    assert_eq!(ro.phase, RolledBack);
    assert_eq!(ro.target(), &h('a'));
    // Nothing to roll back to.
    let mut same = ServiceRollout::start(h('a'), h('a'), &start);
    assert!(!same.request_rollback("x"));
    // A paused rollout can be rolled back by hand; untouched replicas stay.
    let mut paused = ServiceRollout::start(h('a'), h('b'), &start);
    paused.step(&cfg1, true, &set, &BTreeMap::new(), 0);
    let bad = Observed {
        hash: h('b'),
        state: S::Running,
        health: H::Unhealthy,
        exit_code: None,
    };
    paused.step(&cfg1, true, &set, &[(1, bad)].into(), 1);
    assert_eq!(paused.phase, Paused);
    assert!(paused.request_rollback("cntnr rollback"));
    let adv = paused.step(&cfg1, true, &set, &BTreeMap::new(), 2);
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
    ro.step(&cfg1, false, &[1, 2].into(), &BTreeMap::new(), 0);
    // Replica 3 appears and runs the target at once; replica 2 is gone.
    let adv = ro.step(&cfg1, false, &[1, 3].into(), &BTreeMap::new(), 10);
    assert!(adv.advanced.is_empty());
    assert_eq!(ro.wanted(), [(1, h('b')), (3, h('b'))].into());
    assert_eq!(ro.progress().to_string(), "updating 1/2, 1 in flight");
}

#[test]
fn record_round_trips() {
    let start: BTreeMap<Replica, Option<ConfigHash>> =
        [(1, Some(h('a'))), (2, Some(h('b')))].into();
    let mut ro = ServiceRollout::start(h('a'), h('b'), &start);
    ro.step(
        &cfg(1, 0, 1000, Pause, 0.0),
        false,
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
    ro.step(&c, false, &set, &BTreeMap::new(), 0);
    let adv = ro.step(&c, false, &set, &[(1, exited(0))].into(), 1);
    assert_eq!(adv.advanced, vec![2]);
    ro.step(&c, false, &set, &[(1, exited(0)), (2, exited(1))].into(), 2);
    assert_eq!(ro.phase, Paused);
    assert_eq!(
        ro.reason.as_deref(),
        Some("1 of 2 replicas failed to update (replica 2: exited 1)")
    );
}
