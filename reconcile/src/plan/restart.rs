//! Restart policies: whether an exited container comes back, and when.
//!
//! The delay is a capped exponential backoff: `base · 2^level`, at most
//! [`Backoff::max`], shortened by up to [`Backoff::jitter`] of itself so that
//! many containers crashing together do not restart in lock-step. `level`
//! counts consecutive short runs ([`RestartState::backoff`]) and drops back
//! to 0 when the container ran for at least [`Backoff::stable`] before it
//! exited. The deadline counts from the exit ([`super::Observed::finished_at`]),
//! and the jitter is a pure function of (container, attempt), so re-planning
//! while a restart is pending gives the same deadline.

use std::time::{Duration, SystemTime};

use super::{Context, Idle, Observed, RestartOn, RestartRule};
use crate::runtime::ContainerId;

/// Backoff settings for restarts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay when the policy gives none (`restart:`), and the
    /// delay used when the policy's is zero, so a crash loop is never a busy
    /// loop. Default 1 s.
    pub initial: Duration,
    /// The cap (raised to the policy's own delay if that is larger).
    /// Default 60 s.
    pub max: Duration,
    /// A run at least this long resets the backoff. Default 10 s (docker's).
    pub stable: Duration,
    /// The fraction, 0 to 1, by which jitter may shorten a delay. Default 0.2.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(10),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The un-jittered delay at `level` for a policy whose first delay is
    /// `delay`.
    pub fn delay(&self, delay: Option<Duration>, level: u32) -> Duration {
        let base = delay.filter(|d| !d.is_zero()).unwrap_or(self.initial);
        let cap = self.max.max(base);
        base.saturating_mul(2u32.saturating_pow(level)).min(cap)
    }
}

/// A source of jitter, injected so that plans are deterministic in tests.
pub trait Jitter {
    /// A number in `[0, 1)` for restart number `attempt` of container `id`.
    /// Must be a pure function of its arguments: a pending restart's
    /// deadline is recomputed on every plan.
    fn fraction(&self, id: &ContainerId, attempt: u32) -> f64;
}

/// No jitter: every delay is exactly the backoff delay.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJitter;

impl Jitter for NoJitter {
    fn fraction(&self, _: &ContainerId, _: u32) -> f64 {
        0.0
    }
}

/// Jitter hashed from a seed (pick one at random per agent process), the
/// container id and the attempt.
#[derive(Debug, Clone, Copy)]
pub struct SeededJitter(pub u64);

impl Jitter for SeededJitter {
    fn fraction(&self, id: &ContainerId, attempt: u32) -> f64 {
        // FNV-1a over the id, then splitmix64's finalizer.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.as_str().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut z = self.0 ^ h ^ (u64::from(attempt) << 32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Who stopped a container by hand, as far as restart policies care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorStop {
    /// An operator stopped it while this agent process runs: no policy
    /// restarts it.
    ThisRun,
    /// The stop was recorded by an earlier agent process (the agent
    /// persists the mark, e.g. in status, and reads it back as this):
    /// `always` restarts it, as docker does after a daemon restart;
    /// `unless-stopped` still does not.
    EarlierRun,
}

/// The restart bookkeeping the agent holds per container. Plain data: it
/// starts empty when the container is (re)created or the agent starts, and
/// changes only through these methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartState {
    /// Restarts since the container was created (what status shows, and what
    /// `max_attempts` without a window counts).
    pub restarts: u32,
    /// When the latest restarts happened, oldest first, at most
    /// [`RestartState::KEEP_RECENT`] (what `max_attempts` within a window
    /// counts).
    pub recent: Vec<SystemTime>,
    /// The backoff level of the next restart, unless the run before it was
    /// stable.
    pub backoff: u32,
    /// Set when an operator stopped the container.
    pub operator_stop: Option<OperatorStop>,
}

impl RestartState {
    /// How many restart times [`RestartState::recent`] keeps.
    pub const KEEP_RECENT: usize = 64;

    /// Records a restart made for [`super::Action::Restart`] `{ backoff, .. }`
    /// at time `at`.
    pub fn restarted(&mut self, backoff: u32, at: SystemTime) {
        self.restarts = self.restarts.saturating_add(1);
        self.backoff = backoff.saturating_add(1);
        self.recent.push(at);
        if self.recent.len() > Self::KEEP_RECENT {
            self.recent.drain(..self.recent.len() - Self::KEEP_RECENT);
        }
        self.operator_stop = None;
    }
}

/// Whether and when the exited container `o` restarts under `rule`:
/// `Ok((delay from now, backoff level))`, or why not.
pub(super) fn decide(
    rule: &RestartRule,
    id: &ContainerId,
    o: &Observed,
    ctx: &Context<'_>,
) -> Result<(Duration, u32), Idle> {
    let code = o.exit_code;
    let state = &o.restart;
    if let Some(stop) = state.operator_stop {
        if !(rule.on == RestartOn::Always && stop == OperatorStop::EarlierRun) {
            return Err(Idle::OperatorStopped);
        }
    }
    match rule.on {
        RestartOn::Never => return Err(Idle::Exited { code }),
        // An unknown exit code counts as a failure.
        RestartOn::OnFailure if code == Some(0) => return Err(Idle::Exited { code }),
        _ => {}
    }
    if let Some(max) = rule.max_attempts {
        let used = match rule.window {
            Some(w) => state
                .recent
                .iter()
                .filter(|t| ctx.now.duration_since(**t).map_or(true, |age| age < w))
                .count(),
            None => state.restarts as usize,
        };
        if used >= max as usize {
            return Err(Idle::GaveUp {
                restarts: state.restarts,
                max_attempts: max,
                window: rule.window,
            });
        }
    }
    let finished = o.finished_at.unwrap_or(ctx.now);
    let ran = o
        .started_at
        .and_then(|s| finished.duration_since(s).ok())
        .unwrap_or(Duration::ZERO);
    let level = if ran >= ctx.backoff.stable {
        0
    } else {
        state.backoff
    };
    let full = ctx.backoff.delay(rule.delay, level);
    let frac = ctx
        .jitter
        .fraction(id, state.restarts.saturating_add(1))
        .clamp(0.0, 1.0);
    let cut = ctx.backoff.jitter.clamp(0.0, 1.0) * frac;
    let delay = full.mul_f64(1.0 - cut);
    let due = finished + delay;
    let after = due.duration_since(ctx.now).unwrap_or(Duration::ZERO);
    Ok((after, level))
}
