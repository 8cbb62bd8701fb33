//! One task per checked container: runs its probe round on the docker
//! schedule ([`HealthState::next_delay`]), feeds the results through the
//! state machine, publishes the current [`HealthReport`] (readable at any
//! time) and sends a [`HealthEvent`] on the shared channel whenever the
//! status changes — and only then.
//!
//! All timing is `tokio::time`, so tests run it with paused time. The task
//! ends when its token (a child of the one passed in) is cancelled, when the
//! [`Checker`] is stopped or dropped; a probe in flight is dropped with it,
//! which kills an exec'd check's processes (see the runtime's `exec`).

use std::time::Duration;

use cntnr_model::records::Health;
use cntnr_reconcile::runtime::ContainerId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::Probe;
use super::state::{HealthPolicy, HealthState, ProbeResult};

/// How long past the policy's timeout a probe round may run before the
/// checker gives up on it. Each probe enforces the timeout itself (an exec's
/// includes killing the check in the container, which takes a moment); this
/// only guards against a probe that would not.
pub const PROBE_GRACE: Duration = Duration::from_secs(10);

/// Probe rounds run by every checker of this process (for `/metrics`).
static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Probe rounds run by every checker of this process since it started.
pub fn probes_total() -> u64 {
    PROBES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A container's health as the rest of the agent sees it (status records,
/// `cntnr ps`, `/metrics`, registration, `depends_on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: Health,
    /// Counted consecutive failures.
    pub failing_streak: u32,
    /// The last probe's output (trimmed, at most 4 KiB); empty before the
    /// first probe.
    pub output: String,
    /// Probe rounds completed.
    pub probes: u64,
}

impl HealthReport {
    fn of(state: &HealthState, probes: u64) -> Self {
        HealthReport {
            status: state.status(),
            failing_streak: state.failing_streak(),
            output: state.output().to_string(),
            probes,
        }
    }
}

/// The registry's view of a container health: only `healthy` (or no check
/// at all) is passing. `starting` is critical, so an instance receives
/// traffic only after its first passing check.
pub fn registry_health(status: Health) -> cntnr_kv::Health {
    match status {
        Health::Healthy | Health::None => cntnr_kv::Health::Passing,
        Health::Starting | Health::Unhealthy => cntnr_kv::Health::Critical,
    }
}

/// A status change of one container, sent on the checkers' shared channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The container.
    pub container: ContainerId,
    /// Its health after the change.
    pub report: HealthReport,
}

/// Where a checker starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerStart {
    /// How long the container has been running (0 for one just started; its
    /// age from the runtime after an agent restart), for the start period.
    pub age: Duration,
    /// The status last reported for it (after an agent restart), so a
    /// healthy container does not flap through `starting`; `Health::None` or
    /// `Starting` for a fresh start.
    pub resume: Health,
}

impl CheckerStart {
    /// A container that has just started.
    pub const FRESH: CheckerStart = CheckerStart {
        age: Duration::ZERO,
        resume: Health::Starting,
    };
}

/// Handle of a running checker task. Dropping it stops the task.
#[derive(Debug)]
pub struct Checker {
    container: ContainerId,
    current: watch::Receiver<HealthReport>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Checker {
    /// Starts checking `container` with `probe` on `policy`'s schedule.
    /// Status changes go to `events`; the task stops when `cancel` (or the
    /// returned handle) is cancelled. Must be called within a tokio runtime.
    pub fn spawn<P: Probe>(
        container: ContainerId,
        policy: HealthPolicy,
        probe: P,
        start: CheckerStart,
        events: mpsc::Sender<HealthEvent>,
        cancel: &CancellationToken,
    ) -> Checker {
        let state = HealthState::resume(policy, start.resume);
        let (tx, current) = watch::channel(HealthReport::of(&state, 0));
        let cancel = cancel.child_token();
        let task = tokio::spawn(run(
            container.clone(),
            state,
            probe,
            start.age,
            tx,
            events,
            cancel.clone(),
        ));
        Checker {
            container,
            current,
            cancel,
            task: Some(task),
        }
    }

    /// The container.
    pub fn container(&self) -> &ContainerId {
        &self.container
    }

    /// The current health.
    pub fn current(&self) -> HealthReport {
        self.current.borrow().clone()
    }

    /// A receiver that sees every update of the report (each probe round).
    pub fn subscribe(&self) -> watch::Receiver<HealthReport> {
        self.current.clone()
    }

    /// Stops the task and waits for it to end (a probe in flight is dropped,
    /// killing an exec'd check).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run<P: Probe>(
    container: ContainerId,
    mut state: HealthState,
    probe: P,
    age: Duration,
    current: watch::Sender<HealthReport>,
    events: mpsc::Sender<HealthEvent>,
    cancel: CancellationToken,
) {
    let spawned = Instant::now();
    let since_start = || age + spawned.elapsed();
    let limit = state.policy().timeout + PROBE_GRACE;
    let mut probes = 0u64;
    loop {
        let delay = state.next_delay(since_start());
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let started_after = since_start();
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(limit, probe.probe()) => r.unwrap_or_else(|_| {
                ProbeResult::fail(format!(
                    "health check did not finish within {}",
                    cntnr_model::units::format_duration(limit)
                ))
            }),
        };
        probes += 1;
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let changed = state.observe(started_after, &result);
        let report = HealthReport::of(&state, probes);
        current.send_replace(report.clone());
        if changed.is_some() {
            let event = HealthEvent {
                container: container.clone(),
                report,
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                // A closed channel only means nobody listens for changes;
                // the current report stays available.
                _ = events.send(event) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use Health::{Healthy, Starting, Unhealthy};

    /// Scripted probe rounds: each takes `took` and returns `passed`; the
    /// last one repeats. Records when each round started.
    struct Script {
        rounds: Mutex<VecDeque<(bool, Duration)>>,
        started: Mutex<Vec<Duration>>,
        epoch: Instant,
    }

    impl Script {
        fn new(rounds: &[(bool, u64)]) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Script {
                rounds: Mutex::new(
                    rounds
                        .iter()
                        .map(|&(p, ms)| (p, Duration::from_millis(ms)))
                        .collect(),
                ),
                started: Mutex::new(Vec::new()),
                epoch: Instant::now(),
            })
        }
    }

    impl Probe for std::sync::Arc<Script> {
        async fn probe(&self) -> ProbeResult {
            self.started.lock().unwrap().push(self.epoch.elapsed());
            let (passed, took) = {
                let mut r = self.rounds.lock().unwrap();
                if r.len() > 1 {
                    r.pop_front().unwrap()
                } else {
                    r[0]
                }
            };
            tokio::time::sleep(took).await;
            ProbeResult {
                passed,
                output: if passed { "ok" } else { "down" }.into(),
            }
        }
    }

    fn policy(interval: u64, retries: u32, start_period: u64, start_interval: u64) -> HealthPolicy {
        HealthPolicy {
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_secs(start_period),
            start_interval: Duration::from_secs(start_interval),
        }
    }

    fn id() -> ContainerId {
        ContainerId::new("p-web-1").unwrap()
    }

    /// Collects events until `n` arrived, with the (paused) time of each.
    async fn events(rx: &mut mpsc::Receiver<HealthEvent>, n: usize) -> Vec<(u64, Health)> {
        let epoch = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            let e = rx.recv().await.expect("checker alive");
            out.push((epoch.elapsed().as_secs(), e.report.status));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn events_only_on_change_at_the_docker_times() {
        // pass, pass, fail, fail, fail, pass …; probes take 0 s; every 10 s.
        let script = Script::new(&[
            (true, 0),
            (true, 0),
            (false, 0),
            (false, 0),
            (false, 0),
            (true, 0),
        ]);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let c = Checker::spawn(
            id(),
            policy(10, 3, 0, 1),
            script.clone(),
            CheckerStart::FRESH,
            tx,
            &cancel,
        );
        assert_eq!(c.current().status, Starting);
        let got = events(&mut rx, 3).await;
        assert_eq!(got, vec![(10, Healthy), (50, Unhealthy), (60, Healthy)]);
        let report = c.current();
        assert_eq!(
            (report.probes, report.failing_streak, report.output.as_str()),
            (6, 0, "ok")
        );
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn start_period_probes_at_start_interval_and_ignores_failures() {
        // Failing during a 5 s start period (probes every 1 s), then passing.
        let script = Script::new(&[(false, 0), (false, 0), (false, 0), (true, 0)]);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let c = Checker::spawn(
            id(),
            policy(10, 1, 5, 1),
            script.clone(),
            CheckerStart::FRESH,
            tx,
            &cancel,
        );
        let got = events(&mut rx, 1).await;
        assert_eq!(
            got,
            vec![(4, Healthy)],
            "three early failures did not count"
        );
        // After the success the normal interval applies.
        tokio::time::sleep(Duration::from_secs(25)).await;
        let started: Vec<u64> = script
            .started
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(started, vec![1, 2, 3, 4, 14, 24]);
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn interval_is_measured_from_the_end_of_the_previous_probe() {
        let script = Script::new(&[(true, 3000)]);
        let (tx, _rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let c = Checker::spawn(
            id(),
            policy(10, 3, 0, 1),
            script.clone(),
            CheckerStart::FRESH,
            tx,
            &cancel,
        );
        tokio::time::sleep(Duration::from_secs(40)).await;
        let started: Vec<u64> = script
            .started
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(started, vec![10, 23, 36]);
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_returns_fails_after_timeout_plus_grace() {
        let script = Script::new(&[(true, 1_000_000_000)]);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let c = Checker::spawn(
            id(),
            policy(10, 1, 0, 1),
            script,
            CheckerStart::FRESH,
            tx,
            &cancel,
        );
        let got = events(&mut rx, 1).await;
        // First probe at 10 s, given up at 10 + 1 (timeout) + 10 (grace).
        assert_eq!(got, vec![(21, Unhealthy)]);
        assert!(
            c.current().output.contains("did not finish within 11s"),
            "{:?}",
            c.current()
        );
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn resumed_healthy_container_does_not_flap_and_old_start_period_is_over() {
        // Agent restart: the container has run for an hour and was healthy.
        // One failure (retries 2) must not produce any event.
        let script = Script::new(&[(false, 0), (true, 0)]);
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let start = CheckerStart {
            age: Duration::from_secs(3600),
            resume: Healthy,
        };
        let c = Checker::spawn(
            id(),
            policy(10, 2, 60, 1),
            script.clone(),
            start,
            tx,
            &cancel,
        );
        assert_eq!(c.current().status, Healthy);
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(rx.try_recv().is_err(), "no status change");
        let started: Vec<u64> = script
            .started
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(started, vec![10, 20, 30], "interval, not start_interval");
        assert_eq!(c.current().status, Healthy);
        c.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_the_parent_token_stops_a_checker_mid_probe() {
        let script = Script::new(&[(true, 1_000_000)]);
        let (tx, _rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let mut c = Checker::spawn(
            id(),
            policy(1, 3, 0, 1),
            script.clone(),
            CheckerStart::FRESH,
            tx,
            &cancel,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(script.started.lock().unwrap().len(), 1, "probe in flight");
        cancel.cancel();
        let task = c.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("task ends promptly")
            .unwrap();
    }

    #[test]
    fn only_healthy_or_unchecked_is_passing_in_the_registry() {
        use cntnr_kv::Health as R;
        let table = [
            (Health::None, R::Passing),
            (Healthy, R::Passing),
            (Starting, R::Critical),
            (Unhealthy, R::Critical),
        ];
        for (h, want) in table {
            assert_eq!(registry_health(h), want, "{h:?}");
        }
    }
}
