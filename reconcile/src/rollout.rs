//! Rolling updates (`deploy.update_config`, `deploy.rollback_config`):
//! which replica of a service runs which config hash while the leader moves
//! it from one spec to another.
//!
//! Pure, like [`crate::schedule`]: no IO and no clock. The leader keeps one
//! [`ServiceRollout`] per rolled service whose config hash changed, feeds it
//! what the status records say about each replica ([`Observed`]), the
//! settings ([`Settings`]) and the current time, and
//! [`ServiceRollout::step`] returns when it must be called again
//! ([`Advance::recheck_at`]) — no polling. [`ServiceRollout::wanted`] is the
//! per-replica hash a node must run; a replica not yet advanced keeps the
//! hash it runs, so old replicas are never touched before their turn.
//!
//! Rules (`cfg` is `update_config` while updating, `rollback_config` — or
//! swarm's rollback defaults — while rolling back):
//!
//! 1. **Batches.** At most `parallelism` replicas (0: all) are in flight —
//!    advanced but not yet through `monitor` — at any time, cluster-wide.
//!    A replica is advanced only `delay` after the last replica finished
//!    (done or failed). Replicas are advanced in replica order.
//! 2. **Ready.** An advanced replica is ready when its status says it runs
//!    the target hash, is `running`, and is `healthy` (or has no check), or
//!    exited 0 (a one-shot container).
//!    It must stay ready for `monitor`; then it is done. Once done it is no
//!    longer the rollout's business (restart policy handles later crashes).
//! 3. **Failure.** An advanced replica that runs the target hash and is
//!    `failed`, `unhealthy`, or stopped other than with exit code 0, or
//!    that stops being ready during `monitor`, failed. So did one that is
//!    not ready [`Settings::ready_deadline`] after it was advanced (its
//!    check's worst case + `monitor` + [`READY_MARGIN`]): a replica that
//!    never becomes ready nor fails (an image that cannot be pulled) does
//!    not hold the rollout forever. When failed / replicas >
//!    `max_failure_ratio`, the `failure_action` applies: `pause` stops
//!    advancing (the rollout stays paused until a new deploy or a manual
//!    rollback), `continue` carries on, `rollback` starts a rollback.
//! 4. **Rollback** returns to [`ServiceRollout::from`], the last spec that
//!    was fully healthy, with `rollback_config`. Replicas that still run
//!    `from` are left alone (a healthy old replica is never killed); the
//!    others are moved back with the same rules. Failures count afresh:
//!    past the ratio, `pause` stops it ([`Phase::RollbackPaused`];
//!    `cntnr rollback` resumes it) and `continue` carries on (swarm allows
//!    no other action). A finished rollback leaves the service on `from`
//!    until the next deploy of a different spec.
//! 5. **Scale.** A replica that appears during a rollout runs the target at
//!    once ([`Step::Fresh`]; nothing to replace); one that disappears is
//!    dropped.
//! 6. **Order.** A replica is one container id (`<project>-<service>-<n>`)
//!    on one node, so a replica's old and new container cannot run side by
//!    side. `start-first` therefore uses **surge replicas**: up to
//!    `parallelism` (0: as many as replicas are left) extra replicas,
//!    numbered after the service's last replica, on nodes the caller found
//!    room on ([`Settings::surge`]), run the target first. Each is advanced
//!    and watched like a replica; once one is done (and still ready) an old
//!    replica is replaced stop-first while the surge holds its capacity: old
//!    replicas in flight never outnumber the ready surge replicas, so the
//!    ready count never drops below the replica count. When no old replica
//!    is left, the surge replicas are dropped (their containers removed).
//!    A surge replica that failed (also after `monitor`: it holds capacity
//!    until the end) counts as a failed replica and is replaced. If no surge replica can be placed at all (per-node limit,
//!    constraints, a fixed published port taken on every eligible node) the
//!    rollout runs `stop-first` and says why ([`ServiceRollout::fallback`]).
//!    A rollback drops the surge replicas of the update and starts its own
//!    if `rollback_config` says `start-first`.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use cntnr_model::records::{ContainerState, Health};
pub use cntnr_model::rollout::{Millis, Observed, Phase, ServiceRollout, Step, Surge};
use cntnr_model::{ConfigHash, FailureAction, NodeName, Replica, UpdateConfig, UpdateOrder};

/// Added to a replica's readiness deadline on top of its check's worst
/// case and `monitor`: room for stopping the old container, pulling the
/// image and starting the new one.
pub const READY_MARGIN: Millis = 60_000;

/// The worst time a health check takes to call a new container healthy or
/// unhealthy: `start_period + (interval + timeout) × (retries + 1)`.
pub fn check_time(
    start_period: Duration,
    interval: Duration,
    timeout: Duration,
    retries: u32,
) -> Millis {
    let per = (interval + timeout).as_millis() as u64;
    (start_period.as_millis() as u64).saturating_add(per.saturating_mul(u64::from(retries) + 1))
}

/// What [`ServiceRollout::step`] needs besides the observations.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// `deploy.update_config`.
    pub update: &'a UpdateConfig,
    /// `deploy.rollback_config`, or swarm's rollback defaults.
    pub rollback: &'a UpdateConfig,
    /// Whether the service has a health check (else running is ready).
    pub has_check: bool,
    /// [`check_time`] of the service's check (0 without one).
    pub check_ms: Millis,
    /// For `start-first`: nodes that can take one more replica of the
    /// service each (the caller counts the surge replicas it already
    /// runs), in the order to use them; or why none can.
    pub surge: Result<Vec<NodeName>, String>,
}

impl Settings<'_> {
    /// The settings of the phase: `rollback` while rolling back.
    pub fn cfg(&self, phase: Phase) -> &UpdateConfig {
        match phase {
            Phase::RollingBack | Phase::RolledBack | Phase::RollbackPaused => self.rollback,
            _ => self.update,
        }
    }

    /// How long an advanced replica may take to be ready before it counts
    /// as failed: [`Settings::check_ms`] + `monitor` + [`READY_MARGIN`].
    pub fn ready_deadline(&self, cfg: &UpdateConfig) -> Millis {
        self.check_ms
            .saturating_add(cfg.monitor.as_millis() as u64)
            .saturating_add(READY_MARGIN)
    }
}

/// What one [`ServiceRollout::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// Replicas advanced in this step (surge replicas added included).
    pub advanced: Vec<Replica>,
    /// When the caller must step again at the latest (a `monitor`, `delay`
    /// or readiness deadline ends); status changes also call for a step.
    /// `None`: only a status change can move it.
    pub recheck_at: Option<Millis>,
    /// Set when this step gave up `start-first` (the reason), so the
    /// caller logs it once.
    pub fell_back: Option<String>,
}

impl Advance {
    /// Adds the readiness deadlines of the steps still waiting for a
    /// replica to be ready (including those advanced just now).
    fn with_deadlines(mut self, ro: &ServiceRollout, s: &Settings<'_>) -> Advance {
        let deadline = s.ready_deadline(s.cfg(ro.phase));
        let first = ro
            .replicas
            .values()
            .chain(ro.surge.values().map(|x| &x.step))
            .filter_map(|st| match st {
                Step::Updating { since } => Some(since.saturating_add(deadline)),
                _ => None,
            })
            .min();
        if let Some(t) = first {
            self.recheck_at = Some(self.recheck_at.map_or(t, |c| c.min(t)));
        }
        self
    }
}

/// Counts for `cntnr ps` and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Replicas on the target and through `monitor`.
    pub done: usize,
    /// Replicas in flight (surge replicas included).
    pub in_flight: usize,
    /// Replicas that failed (surge replicas included).
    pub failed: usize,
    /// All replicas (not counting surge replicas).
    pub total: usize,
    /// Surge replicas running or starting.
    pub surge: usize,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.phase, self.done, self.total)?;
        if self.in_flight > 0 {
            write!(f, ", {} in flight", self.in_flight)?;
        }
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        if self.surge > 0 {
            write!(f, ", {} surge", self.surge)?;
        }
        Ok(())
    }
}

/// The rollout logic on [`ServiceRollout`] (the record type lives in
/// `cntnr_model::rollout` so that it can travel in the schedule record).
pub trait Rollout: Sized {
    /// A rollout of `replicas`, each running the hash given, towards `to`.
    /// `from` is the last fully healthy spec. Replicas already on `to` are
    /// done at once; a replica with no known hash is treated as running
    /// `from`.
    fn start(
        from: ConfigHash,
        to: ConfigHash,
        replicas: &BTreeMap<Replica, Option<ConfigHash>>,
    ) -> Self;
    /// The hash advanced replicas run: `to`, or `from` while rolling back.
    fn target(&self) -> &ConfigHash;
    /// The last spec that was fully healthy: `to` once every replica went
    /// through `monitor` with no failure, else `from`.
    fn healthy(&self) -> &ConfigHash;
    /// The hash each replica must run now, surge replicas included.
    fn wanted(&self) -> BTreeMap<Replica, ConfigHash>;
    /// Whether the rollout has nothing left to do.
    fn finished(&self) -> bool;
    /// Counts for status.
    fn progress(&self) -> Progress;
    /// `cntnr rollback`: go back to `from` (or resume a paused rollback).
    /// Returns false (and changes nothing) when there is nothing to do.
    fn request_rollback(&mut self, reason: &str) -> bool;
    /// Brings the rollout up to date with the replicas that exist now
    /// (placement's replica numbers), what their status says (surge
    /// replicas included, by number) and `now`, and advances the next batch
    /// if allowed.
    fn step(
        &mut self,
        settings: &Settings<'_>,
        replicas: &BTreeSet<Replica>,
        observed: &BTreeMap<Replica, Observed>,
        now: Millis,
    ) -> Advance;
}

trait Internal {
    fn begin_rollback(&mut self, reason: String);
    fn finish(&mut self, adv: Advance, recheck: Option<Millis>) -> Advance;
    fn advance(&mut self, s: &Settings<'_>, now: Millis, skip_delay: bool, ready: usize)
        -> Advance;
    fn failures(&self) -> Vec<String>;
    fn old_left(&self) -> usize;
}

fn ready_of(o: Option<&Observed>, has_check: bool) -> bool {
    o.is_some_and(|o| match o.state {
        ContainerState::Running => {
            o.health == Health::Healthy || (!has_check && o.health == Health::None)
        }
        ContainerState::Stopped => o.exit_code == Some(0),
        _ => false,
    })
}

fn broken_of(o: Option<&Observed>) -> Option<String> {
    o.and_then(|o| match (o.state, o.health) {
        (ContainerState::Failed, _) => Some("failed".to_string()),
        (ContainerState::Stopped, _) if o.exit_code == Some(0) => None,
        (ContainerState::Stopped, _) => Some(match o.exit_code {
            Some(c) => format!("exited {c}"),
            None => "stopped".to_string(),
        }),
        (_, Health::Unhealthy) => Some("unhealthy".to_string()),
        _ => None,
    })
}

/// Moves one in-flight step on (rules 2 and 3); `at` collects rechecks.
fn observe(
    step: &mut Step,
    obs: Option<&Observed>,
    has_check: bool,
    monitor: Millis,
    deadline: Millis,
    now: Millis,
    at: &mut impl FnMut(Millis),
) {
    let ready = ready_of(obs, has_check);
    let broken = broken_of(obs);
    match step {
        Step::Updating { since } => {
            let since = *since;
            if let Some(why) = broken {
                *step = fail(now, &why);
            } else if ready {
                *step = Step::Monitoring { since: now };
                if monitor == 0 {
                    *step = Step::Done { at: now };
                } else {
                    at(now + monitor);
                }
            } else if now >= since.saturating_add(deadline) {
                *step = fail(
                    now,
                    &format!("not ready within {}s", deadline.div_ceil(1000)),
                );
            } else {
                at(since.saturating_add(deadline));
            }
        }
        Step::Monitoring { since } => {
            let since = *since;
            if !ready {
                let why = broken.unwrap_or_else(|| "not ready during monitor".into());
                *step = fail(now, &why);
            } else if now >= since + monitor {
                *step = Step::Done { at: now };
            } else {
                at(since + monitor);
            }
        }
        _ => {}
    }
}

impl Rollout for ServiceRollout {
    fn start(
        from: ConfigHash,
        to: ConfigHash,
        replicas: &BTreeMap<Replica, Option<ConfigHash>>,
    ) -> Self {
        let replicas = replicas
            .iter()
            .map(|(r, h)| {
                let hash = h.clone().unwrap_or_else(|| from.clone());
                let step = if hash == to {
                    Step::Done { at: 0 }
                } else {
                    Step::Old { hash }
                };
                (*r, step)
            })
            .collect();
        ServiceRollout {
            from,
            to,
            phase: Phase::Updating,
            replicas,
            reason: None,
            surge: BTreeMap::new(),
            fallback: None,
        }
    }

    fn target(&self) -> &ConfigHash {
        match self.phase {
            Phase::RollingBack | Phase::RolledBack | Phase::RollbackPaused => &self.from,
            _ => &self.to,
        }
    }

    /// A new deploy starts its rollout from it.
    fn healthy(&self) -> &ConfigHash {
        let clean = self
            .replicas
            .values()
            .all(|s| matches!(s, Step::Done { .. } | Step::Fresh))
            && !self
                .surge
                .values()
                .any(|s| matches!(s.step, Step::Failed { .. }));
        if self.phase == Phase::Completed && clean {
            &self.to
        } else {
            &self.from
        }
    }

    fn wanted(&self) -> BTreeMap<Replica, ConfigHash> {
        let mut w: BTreeMap<Replica, ConfigHash> = self
            .replicas
            .iter()
            .map(|(r, s)| {
                let h = match s {
                    Step::Old { hash } => hash.clone(),
                    _ => self.target().clone(),
                };
                (*r, h)
            })
            .collect();
        for (r, s) in &self.surge {
            if !matches!(s.step, Step::Failed { .. }) {
                w.entry(*r).or_insert_with(|| s.hash.clone());
            }
        }
        w
    }

    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Completed | Phase::RolledBack)
    }

    fn progress(&self) -> Progress {
        let mut p = Progress {
            phase: self.phase,
            done: 0,
            in_flight: 0,
            failed: 0,
            total: self.replicas.len(),
            surge: 0,
        };
        for s in self.replicas.values() {
            match s {
                Step::Done { .. } | Step::Fresh => p.done += 1,
                Step::Updating { .. } | Step::Monitoring { .. } => p.in_flight += 1,
                Step::Failed { .. } => p.failed += 1,
                Step::Old { .. } => {}
            }
        }
        for s in self.surge.values() {
            match s.step {
                Step::Updating { .. } | Step::Monitoring { .. } => {
                    p.in_flight += 1;
                    p.surge += 1;
                }
                Step::Failed { .. } => p.failed += 1,
                _ => p.surge += 1,
            }
        }
        p
    }

    /// Nothing to do when `from == to`, or already rolling or rolled back.
    /// A paused rollback resumes (its failed replicas are tried again).
    fn request_rollback(&mut self, reason: &str) -> bool {
        if self.phase == Phase::RollbackPaused {
            let to = self.to.clone();
            for step in self.replicas.values_mut() {
                if matches!(step, Step::Failed { .. }) {
                    *step = Step::Old { hash: to.clone() };
                }
            }
            self.surge
                .retain(|_, s| !matches!(s.step, Step::Failed { .. }));
            self.phase = Phase::RollingBack;
            self.reason = Some(reason.to_string());
            return true;
        }
        if self.from == self.to || matches!(self.phase, Phase::RollingBack | Phase::RolledBack) {
            return false;
        }
        self.begin_rollback(reason.to_string());
        true
    }

    fn step(
        &mut self,
        s: &Settings<'_>,
        replicas: &BTreeSet<Replica>,
        observed: &BTreeMap<Replica, Observed>,
        now: Millis,
    ) -> Advance {
        // Scale. A surge number placement now uses is a replica.
        self.replicas.retain(|r, _| replicas.contains(r));
        for r in replicas {
            self.replicas.entry(*r).or_insert(Step::Fresh);
        }
        self.surge.retain(|r, _| !replicas.contains(r));
        let cfg = s.cfg(self.phase).clone();
        let monitor = cfg.monitor.as_millis() as u64;
        let deadline = s.ready_deadline(&cfg);
        let target = self.target().clone();
        let mut recheck: Option<Millis> = None;
        let mut at = |t: Millis| recheck = Some(recheck.map_or(t, |c: Millis| c.min(t)));

        // Observe the replicas in flight.
        for (r, step) in self.replicas.iter_mut() {
            let obs = observed.get(r).filter(|o| o.hash == target);
            observe(step, obs, s.has_check, monitor, deadline, now, &mut at);
        }
        for (r, surge) in self.surge.iter_mut() {
            let obs = observed.get(r).filter(|o| o.hash == surge.hash);
            // A surge replica holds capacity until the rollout ends: one
            // that breaks after `monitor` failed too (and is replaced).
            if let (Step::Done { .. }, Some(why)) = (&surge.step, broken_of(obs)) {
                surge.step = fail(now, &why);
                continue;
            }
            if matches!(surge.step, Step::Done { .. }) {
                if obs.is_some() {
                    surge.missing_since = None;
                } else {
                    let since = *surge.missing_since.get_or_insert(now);
                    if now >= since.saturating_add(deadline) {
                        let secs = deadline.div_ceil(1000);
                        surge.step = fail(now, &format!("not seen for {secs}s"));
                        continue;
                    }
                    at(since.saturating_add(deadline));
                }
            }
            observe(
                &mut surge.step,
                obs,
                s.has_check,
                monitor,
                deadline,
                now,
                &mut at,
            );
        }

        // Failure policy.
        let p = self.progress();
        let over = p.failed > 0 && p.failed as f64 / p.total.max(1) as f64 > cfg.max_failure_ratio;
        if over && matches!(self.phase, Phase::Updating | Phase::RollingBack) {
            let verb = if self.phase == Phase::Updating {
                "update"
            } else {
                "roll back"
            };
            let reason = format!(
                "{} of {} replicas failed to {verb} ({})",
                p.failed,
                p.total,
                self.failures().join(", ")
            );
            match (self.phase, cfg.failure_action) {
                (_, FailureAction::Continue) => {}
                (Phase::Updating, FailureAction::Rollback) => {
                    self.begin_rollback(reason);
                    // A rollback starts at once, with no delay.
                    let adv = self.advance(s, now, true, 0);
                    return self.finish(adv, recheck).with_deadlines(self, s);
                }
                (Phase::Updating, FailureAction::Pause) => {
                    self.phase = Phase::Paused;
                    self.reason = Some(reason);
                }
                // rollback_config allows only pause and continue.
                _ => {
                    self.phase = Phase::RollbackPaused;
                    self.reason = Some(reason);
                }
            }
        }
        // Surge replicas through `monitor` and still ready hold capacity.
        let ready = self
            .surge
            .iter()
            .filter(|(r, x)| {
                matches!(x.step, Step::Done { .. })
                    && ready_of(observed.get(r).filter(|o| o.hash == x.hash), s.has_check)
            })
            .count();
        let adv = self.advance(s, now, false, ready);
        self.finish(adv, recheck).with_deadlines(self, s)
    }
}

impl Internal for ServiceRollout {
    fn begin_rollback(&mut self, reason: String) {
        let to = self.to.clone();
        for step in self.replicas.values_mut() {
            *step = match step {
                Step::Old { hash } if *hash == self.from => Step::Done { at: 0 },
                Step::Old { hash } => Step::Old { hash: hash.clone() },
                _ => Step::Old { hash: to.clone() },
            };
        }
        // The update's surge replicas run `to`: the rollback has its own.
        self.surge.clear();
        self.fallback = None;
        self.phase = Phase::RollingBack;
        self.reason = Some(reason);
    }

    fn old_left(&self) -> usize {
        let target = self.target();
        self.replicas
            .values()
            .filter(|s| matches!(s, Step::Old { hash } if hash != target))
            .count()
    }

    fn finish(&mut self, mut adv: Advance, recheck: Option<Millis>) -> Advance {
        adv.recheck_at = match (adv.recheck_at, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let real_in_flight = self
            .replicas
            .values()
            .any(|s| matches!(s, Step::Updating { .. } | Step::Monitoring { .. }));
        let left = self.old_left() > 0 || real_in_flight;
        if !left && matches!(self.phase, Phase::Updating | Phase::RollingBack) {
            // Nothing left to replace: the surge replicas go (a failed
            // one stays listed, for `healthy` and status, but runs nothing).
            self.surge
                .retain(|_, s| matches!(s.step, Step::Failed { .. }));
            self.phase = match self.phase {
                Phase::Updating => Phase::Completed,
                _ => Phase::RolledBack,
            };
        }
        adv
    }

    fn advance(
        &mut self,
        s: &Settings<'_>,
        now: Millis,
        skip_delay: bool,
        ready: usize,
    ) -> Advance {
        let mut adv = Advance::default();
        if !matches!(self.phase, Phase::Updating | Phase::RollingBack) {
            return adv;
        }
        let cfg = s.cfg(self.phase).clone();
        let target = self.target().clone();
        // Old replicas that already run the target need no container change.
        for st in self.replicas.values_mut() {
            if matches!(st, Step::Old { hash } if *hash == target) {
                *st = Step::Done { at: 0 };
            }
        }
        let old: Vec<Replica> = self
            .replicas
            .iter()
            .filter_map(|(r, st)| match st {
                Step::Old { hash } if *hash != target => Some(*r),
                _ => None,
            })
            .collect();
        if old.is_empty() {
            return adv;
        }
        let in_flight = self.progress().in_flight;
        let par = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            cfg.parallelism as usize
        };
        let mut slots = par.saturating_sub(in_flight);
        if slots == 0 {
            return adv;
        }
        let last = self
            .replicas
            .values()
            .chain(self.surge.values().map(|s| &s.step))
            .filter_map(|st| match st {
                Step::Done { at } | Step::Failed { at, .. } => Some(*at),
                _ => None,
            })
            .max();
        let delay = cfg.delay.as_millis() as u64;
        if let (false, Some(last)) = (skip_delay, last) {
            if delay > 0 && now < last + delay {
                adv.recheck_at = Some(last + delay);
                return adv;
            }
        }
        let start_first = cfg.order == UpdateOrder::StartFirst && self.fallback.is_none();
        if start_first {
            // Surge replicas first: as many as may be in flight, at most
            // one per old replica left.
            let live = self
                .surge
                .values()
                .filter(|x| !matches!(x.step, Step::Failed { .. }))
                .count();
            let want = par.min(old.len()).saturating_sub(live);
            let offered: Vec<NodeName> = match &s.surge {
                Ok(nodes) => nodes.clone(),
                Err(_) => Vec::new(),
            };
            if want > 0 && offered.is_empty() && live == 0 {
                let why = match &s.surge {
                    Err(e) => e.clone(),
                    Ok(_) => "no node can take a surge replica".to_string(),
                };
                let why = format!("start-first needs a surge replica: {why}; running stop-first");
                self.fallback = Some(why.clone());
                adv.fell_back = Some(why);
            } else {
                let first = self
                    .replicas
                    .keys()
                    .chain(self.surge.keys())
                    .max()
                    .copied()
                    .unwrap_or(0)
                    + 1;
                let nodes = offered.into_iter().take(want.min(slots));
                for (number, node) in (first..).zip(nodes) {
                    self.surge.insert(
                        number,
                        Surge {
                            node,
                            hash: target.clone(),
                            step: Step::Updating { since: now },
                            missing_since: None,
                        },
                    );
                    adv.advanced.push(number);
                    slots -= 1;
                }
                // Old replicas in flight never outnumber ready surges.
                let real_in_flight = self
                    .replicas
                    .values()
                    .filter(|st| matches!(st, Step::Updating { .. } | Step::Monitoring { .. }))
                    .count();
                slots = slots.min(ready.saturating_sub(real_in_flight));
            }
        }
        for r in old.into_iter().take(slots) {
            self.replicas.insert(r, Step::Updating { since: now });
            adv.advanced.push(r);
        }
        adv
    }

    fn failures(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|(r, st)| (r, st, ""))
            .chain(self.surge.iter().map(|(r, x)| (r, &x.step, "surge ")))
            .filter_map(|(r, st, kind)| match st {
                Step::Failed { reason, .. } => Some(format!("{kind}replica {r}: {reason}")),
                _ => None,
            })
            .collect()
    }
}

fn fail(now: Millis, why: &str) -> Step {
    Step::Failed {
        at: now,
        reason: why.to_string(),
    }
}

#[cfg(test)]
#[path = "rollout/tests.rs"]
mod tests;
