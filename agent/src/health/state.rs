//! Docker's health state machine, pure: no clock and no IO. Time comes in as
//! "how long after the container started", so every rule is a table test.
//!
//! The rules, as moby's `daemon/health.go` defines them:
//! - A container with a check starts `starting`.
//! - A passing probe makes it `healthy` and resets the failing streak, from
//!   any state (so a success also ends the start period).
//! - A failing probe (non-zero exit, timeout, refused connection, …) that
//!   *started* within `start_period` while the container is still `starting`
//!   does not count. Any other failure increments the streak; at `retries`
//!   consecutive failures the container is `unhealthy`. A `healthy` container
//!   stays `healthy` until then.
//! - Probes run `interval` apart, measured from the end of the previous
//!   probe; while `starting` within the start period they run
//!   `start_interval` apart. The first probe comes one such delay after the
//!   checker starts (docker does not probe at once either).
//! - `retries: 0` means docker's default, 3.

use std::time::Duration;

use cntnr_model::records::Health;
use cntnr_model::Healthcheck;

/// The most output kept per probe, in bytes (docker's limit).
pub const MAX_OUTPUT: usize = 4096;

/// The timings of a container's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take; a probe that takes longer fails.
    pub timeout: Duration,
    /// Consecutive counted failures before `unhealthy` (≥ 1).
    pub retries: u32,
    /// Time after the container's start during which failures do not count.
    pub start_period: Duration,
    /// Time between probes during the start period.
    pub start_interval: Duration,
}

impl HealthPolicy {
    /// Timings for services that only have `cntnr.check.*` probes and no
    /// compose `healthcheck` block: compose's defaults (30 s apart) are too
    /// slow for a load balancer, so direct checks default to Consul-like
    /// timings: every 10 s, 5 s timeout, 3 retries.
    pub const DIRECT_DEFAULT: HealthPolicy = HealthPolicy {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        retries: 3,
        start_period: Duration::ZERO,
        start_interval: Healthcheck::DEFAULT_START_INTERVAL,
    };

    /// The timings of a compose `healthcheck` (defaults already filled in by
    /// the model); zero durations and zero retries fall back to docker's
    /// defaults, as docker does.
    pub fn from_healthcheck(h: &Healthcheck) -> Self {
        let or = |d: Duration, default: Duration| if d.is_zero() { default } else { d };
        HealthPolicy {
            interval: or(h.interval, Healthcheck::DEFAULT_INTERVAL),
            timeout: or(h.timeout, Healthcheck::DEFAULT_TIMEOUT),
            retries: if h.retries == 0 {
                Healthcheck::DEFAULT_RETRIES
            } else {
                h.retries
            },
            start_period: h.start_period,
            start_interval: or(h.start_interval, Healthcheck::DEFAULT_START_INTERVAL),
        }
    }
}

/// The outcome of one probe round (every configured probe of a container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// True when every probe passed.
    pub passed: bool,
    /// What the probes said (command output, HTTP status, error).
    pub output: String,
}

impl ProbeResult {
    /// A passing result.
    pub fn pass(output: impl Into<String>) -> Self {
        ProbeResult {
            passed: true,
            output: output.into(),
        }
    }

    /// A failing result.
    pub fn fail(output: impl Into<String>) -> Self {
        ProbeResult {
            passed: false,
            output: output.into(),
        }
    }
}

/// One container's health: its status, failing streak and last output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    policy: HealthPolicy,
    status: Health,
    failing_streak: u32,
    output: String,
}

impl HealthState {
    /// A freshly started container: `starting`, no streak, no output.
    pub fn new(policy: HealthPolicy) -> Self {
        Self::resume(policy, Health::Starting)
    }

    /// Picks up a container whose health is already known (an agent restart
    /// with the last reported status at hand), so a healthy container does
    /// not flap through `starting`. `None` is taken as `starting`.
    pub fn resume(policy: HealthPolicy, status: Health) -> Self {
        let status = if status == Health::None {
            Health::Starting
        } else {
            status
        };
        HealthState {
            policy: HealthPolicy {
                retries: policy.retries.max(1),
                ..policy
            },
            status,
            failing_streak: 0,
            output: String::new(),
        }
    }

    /// The timings.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// `starting`, `healthy` or `unhealthy`.
    pub fn status(&self) -> Health {
        self.status
    }

    /// Counted consecutive failures.
    pub fn failing_streak(&self) -> u32 {
        self.failing_streak
    }

    /// The last probe's output, trimmed and capped at [`MAX_OUTPUT`] bytes.
    pub fn output(&self) -> &str {
        &self.output
    }

    /// True while failures do not count: still `starting` and less than
    /// `start_period` after the container started.
    pub fn in_start_period(&self, since_start: Duration) -> bool {
        self.status == Health::Starting && since_start < self.policy.start_period
    }

    /// How long to wait before the next probe, `since_start` after the
    /// container started (now).
    pub fn next_delay(&self, since_start: Duration) -> Duration {
        if self.in_start_period(since_start) {
            self.policy.start_interval
        } else {
            self.policy.interval
        }
    }

    /// Applies the result of a probe that started `started_after` the
    /// container. Returns the new status if it changed.
    pub fn observe(&mut self, started_after: Duration, result: &ProbeResult) -> Option<Health> {
        let before = self.status;
        self.output = cap_output(&result.output);
        if result.passed {
            self.failing_streak = 0;
            self.status = Health::Healthy;
        } else if !self.in_start_period(started_after) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= self.policy.retries {
                self.status = Health::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Trims `s` and cuts it to at most [`MAX_OUTPUT`] bytes on a character
/// boundary.
pub fn cap_output(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_OUTPUT {
        return s.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Healthy, Starting, Unhealthy};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy(retries: u32, start_period: u64) -> HealthPolicy {
        HealthPolicy {
            interval: S(10),
            timeout: S(2),
            retries,
            start_period: S(start_period),
            start_interval: S(1),
        }
    }

    /// (probe start time, passed?, status after, streak after)
    type Step = (u64, bool, Health, u32);

    fn run(name: &str, p: HealthPolicy, initial: Health, steps: &[Step]) {
        let mut h = HealthState::resume(p, initial);
        let mut status = h.status();
        for (i, &(t, passed, want, streak)) in steps.iter().enumerate() {
            let r = if passed {
                ProbeResult::pass("ok")
            } else {
                ProbeResult::fail("boom")
            };
            let changed = h.observe(S(t), &r);
            assert_eq!(
                (h.status(), h.failing_streak()),
                (want, streak),
                "{name}: step {i} (t={t}s, passed={passed})"
            );
            assert_eq!(
                changed,
                (want != status).then_some(want),
                "{name}: step {i} reports a change only when the status changes"
            );
            status = want;
        }
    }

    #[test]
    fn docker_state_machine_table() {
        let cases: &[(&str, HealthPolicy, Health, &[Step])] = &[
            (
                "first pass makes it healthy",
                policy(3, 0),
                Starting,
                &[(10, true, Healthy, 0)],
            ),
            (
                "unhealthy after exactly `retries` consecutive failures",
                policy(3, 0),
                Starting,
                &[
                    (10, false, Starting, 1),
                    (20, false, Starting, 2),
                    (30, false, Unhealthy, 3),
                    (40, false, Unhealthy, 4),
                ],
            ),
            (
                "a pass resets the streak; healthy survives retries-1 failures",
                policy(3, 0),
                Starting,
                &[
                    (10, true, Healthy, 0),
                    (20, false, Healthy, 1),
                    (30, false, Healthy, 2),
                    (40, true, Healthy, 0),
                    (50, false, Healthy, 1),
                    (60, false, Healthy, 2),
                    (70, false, Unhealthy, 3),
                ],
            ),
            (
                "one pass brings an unhealthy container back",
                policy(2, 0),
                Starting,
                &[
                    (10, false, Starting, 1),
                    (20, false, Unhealthy, 2),
                    (30, true, Healthy, 0),
                ],
            ),
            (
                "failures that start within the start period do not count",
                policy(2, 30),
                Starting,
                &[
                    (1, false, Starting, 0),
                    (2, false, Starting, 0),
                    (29, false, Starting, 0),
                    (30, false, Starting, 1),
                    (40, false, Unhealthy, 2),
                ],
            ),
            (
                "a success ends the start period: later failures count",
                policy(2, 30),
                Starting,
                &[
                    (1, false, Starting, 0),
                    (2, true, Healthy, 0),
                    (3, false, Healthy, 1),
                    (4, false, Unhealthy, 2),
                ],
            ),
            (
                "retries 1: the first counted failure is unhealthy",
                policy(1, 0),
                Starting,
                &[(10, false, Unhealthy, 1)],
            ),
            (
                "retries 0 is taken as at least one (from_healthcheck maps 0 to docker's 3)",
                policy(0, 0),
                Starting,
                &[(10, false, Unhealthy, 1)],
            ),
            (
                "resumed healthy (agent restart) does not go through starting",
                policy(3, 30),
                Healthy,
                &[(5, false, Healthy, 1), (15, true, Healthy, 0)],
            ),
            (
                "resumed unhealthy stays unhealthy until a pass",
                policy(3, 0),
                Unhealthy,
                &[(10, false, Unhealthy, 1), (20, true, Healthy, 0)],
            ),
        ];
        for (name, p, initial, steps) in cases {
            run(name, *p, *initial, steps);
        }
    }

    #[test]
    fn probe_interval_table() {
        // (start_period, status, since_start) → delay
        let cases: &[(u64, Health, u64, u64)] = &[
            (0, Starting, 0, 10),   // no start period: interval from the start
            (30, Starting, 0, 1),   // start period: start_interval
            (30, Starting, 29, 1),  // still in it
            (30, Starting, 30, 10), // over
            (30, Healthy, 5, 10),   // a success ended it
            (30, Unhealthy, 5, 10), // only `starting` uses start_interval
        ];
        for &(sp, status, t, want) in cases {
            let h = HealthState::resume(policy(3, sp), status);
            assert_eq!(
                h.next_delay(S(t)),
                S(want),
                "start_period={sp}s status={status:?} t={t}s"
            );
        }
    }

    #[test]
    fn from_healthcheck_applies_docker_defaults_for_zero_values() {
        let h = Healthcheck {
            test: None,
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            retries: 0,
            start_period: S(7),
            start_interval: Duration::ZERO,
        };
        assert_eq!(
            HealthPolicy::from_healthcheck(&h),
            HealthPolicy {
                interval: S(30),
                timeout: S(30),
                retries: 3,
                start_period: S(7),
                start_interval: S(5),
            }
        );
        let h = Healthcheck {
            interval: S(2),
            timeout: S(1),
            retries: 5,
            start_interval: S(1),
            ..h
        };
        let p = HealthPolicy::from_healthcheck(&h);
        assert_eq!((p.interval, p.timeout, p.retries), (S(2), S(1), 5));
    }

    #[test]
    fn output_is_trimmed_capped_and_kept_from_the_last_probe() {
        let mut h = HealthState::new(policy(3, 0));
        h.observe(S(1), &ProbeResult::fail("  refused\n"));
        assert_eq!(h.output(), "refused");
        let long = "é".repeat(MAX_OUTPUT); // 2 bytes each
        h.observe(S(2), &ProbeResult::pass(long));
        assert!(h.output().len() <= MAX_OUTPUT && h.output().len() >= MAX_OUTPUT - 1);
        assert!(h.output().chars().all(|c| c == 'é'));
        h.observe(S(3), &ProbeResult::pass(""));
        assert_eq!(h.output(), "");
    }
}
