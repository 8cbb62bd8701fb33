//! Rolling updates (`deploy.update_config`): which replica of a service runs
//! which config hash while the leader moves it from one spec to another.
//!
//! Pure, like [`crate::schedule`]: no IO and no clock. The leader keeps one
//! [`ServiceRollout`] per service whose config hash changed, feeds it what
//! the status records say about each replica ([`Observed`]) and the current
//! time, and [`ServiceRollout::step`] returns when it must be called again
//! ([`Advance::recheck_at`]) — no polling. [`ServiceRollout::wanted`] is the
//! per-replica hash a node must run; a replica not yet advanced keeps the
//! hash it runs, so old replicas are never touched before their turn.
//!
//! Rules:
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
//!    that stops being ready during
//!    `monitor`, failed. When failed / replicas > `max_failure_ratio`, the
//!    `failure_action` applies: `pause` stops advancing (the rollout stays
//!    paused until a new deploy or a manual rollback), `continue` carries
//!    on, `rollback` starts a rollback.
//! 4. **Rollback** returns to [`ServiceRollout::from`], the last spec that
//!    was fully healthy. Replicas that still run `from` are left alone (a
//!    healthy old replica is never killed); the others are moved back with
//!    the same batches and `monitor`. Failures while rolling back are
//!    counted and shown but do not stop the rollback (swarm's
//!    `rollback_config` is not supported; `update_config` applies to both
//!    directions). A finished rollback leaves the service on `from` until
//!    the next deploy of a different spec.
//! 5. **Scale.** A replica that appears during a rollout runs the target at
//!    once ([`Step::Fresh`]; nothing to replace); one that disappears is
//!    dropped.
//! 6. **Order.** A replica is one container id (`<project>-<service>-<n>`)
//!    on one node, so the old and new container of a replica cannot run
//!    side by side: `start-first` is carried through but nodes honour it as
//!    `stop-first`.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cntnr_model::records::{ContainerState, Health};
pub use cntnr_model::rollout::{Millis, Observed, Phase, ServiceRollout, Step};
use cntnr_model::{ConfigHash, FailureAction, Replica, UpdateConfig};

/// What one [`ServiceRollout::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advance {
    /// Replicas advanced in this step.
    pub advanced: Vec<Replica>,
    /// When the caller must step again at the latest (a `monitor` or
    /// `delay` ends); status changes also call for a step. `None`: only a
    /// status change can move it.
    pub recheck_at: Option<Millis>,
}

/// Counts for `cntnr ps` and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Replicas on the target and through `monitor`.
    pub done: usize,
    /// Replicas in flight.
    pub in_flight: usize,
    /// Replicas that failed.
    pub failed: usize,
    /// All replicas.
    pub total: usize,
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
    /// The hash each replica must run now.
    fn wanted(&self) -> BTreeMap<Replica, ConfigHash>;
    /// Whether the rollout has nothing left to do.
    fn finished(&self) -> bool;
    /// Counts for status.
    fn progress(&self) -> Progress;
    /// `cntnr rollback`: go back to `from`. Returns false (and changes
    /// nothing) when there is nothing to go back to.
    fn request_rollback(&mut self, reason: &str) -> bool;
    /// Brings the rollout up to date with the replicas that exist now
    /// (placement's replica numbers), what their status says and `now`,
    /// and advances the next batch if allowed.
    fn step(
        &mut self,
        cfg: &UpdateConfig,
        has_check: bool,
        replicas: &BTreeSet<Replica>,
        observed: &BTreeMap<Replica, Observed>,
        now: Millis,
    ) -> Advance;
}

trait Internal {
    fn begin_rollback(&mut self, reason: String);
    fn finish(&mut self, adv: Advance, recheck: Option<Millis>) -> Advance;
    fn advance(&mut self, cfg: &UpdateConfig, now: Millis, skip_delay: bool) -> Advance;
    fn failures(&self) -> Vec<String>;
}

impl Rollout for ServiceRollout {
    /// A rollout of `replicas`, each running the hash given, towards `to`.
    /// `from` is the last fully healthy spec. Replicas already on `to` are
    /// done at once; a replica with no known hash is treated as running
    /// `from`.
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
        }
    }

    /// The hash advanced replicas run: `to`, or `from` while rolling back.
    fn target(&self) -> &ConfigHash {
        match self.phase {
            Phase::RollingBack | Phase::RolledBack => &self.from,
            _ => &self.to,
        }
    }

    /// The last spec that was fully healthy: `to` once every replica went
    /// through `monitor` with no failure, else `from`. A new deploy starts
    /// its rollout from it.
    fn healthy(&self) -> &ConfigHash {
        let clean = self
            .replicas
            .values()
            .all(|s| matches!(s, Step::Done { .. } | Step::Fresh));
        if self.phase == Phase::Completed && clean {
            &self.to
        } else {
            &self.from
        }
    }

    /// The hash each replica must run now.
    fn wanted(&self) -> BTreeMap<Replica, ConfigHash> {
        self.replicas
            .iter()
            .map(|(r, s)| {
                let h = match s {
                    Step::Old { hash } => hash.clone(),
                    _ => self.target().clone(),
                };
                (*r, h)
            })
            .collect()
    }

    /// Whether the rollout has nothing left to do.
    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Completed | Phase::RolledBack)
    }

    /// Counts for status.
    fn progress(&self) -> Progress {
        let mut p = Progress {
            phase: self.phase,
            done: 0,
            in_flight: 0,
            failed: 0,
            total: self.replicas.len(),
        };
        for s in self.replicas.values() {
            match s {
                Step::Done { .. } | Step::Fresh => p.done += 1,
                Step::Updating { .. } | Step::Monitoring { .. } => p.in_flight += 1,
                Step::Failed { .. } => p.failed += 1,
                Step::Old { .. } => {}
            }
        }
        p
    }

    /// `cntnr rollback`: go back to `from`. Returns false (and changes
    /// nothing) when there is nothing to go back to (`from == to`, or
    /// already rolling or rolled back).
    fn request_rollback(&mut self, reason: &str) -> bool {
        if self.from == self.to || matches!(self.phase, Phase::RollingBack | Phase::RolledBack) {
            return false;
        }
        self.begin_rollback(reason.to_string());
        true
    }

    /// Brings the rollout up to date with the replicas that exist now
    /// (`replicas`: placement's replica numbers), what their status says,
    /// and `now`, and advances the next batch if allowed.
    fn step(
        &mut self,
        cfg: &UpdateConfig,
        has_check: bool,
        replicas: &BTreeSet<Replica>,
        observed: &BTreeMap<Replica, Observed>,
        now: Millis,
    ) -> Advance {
        // Scale.
        self.replicas.retain(|r, _| replicas.contains(r));
        for r in replicas {
            self.replicas.entry(*r).or_insert(Step::Fresh);
        }
        let monitor = cfg.monitor.as_millis() as u64;
        let target = self.target().clone();
        let mut recheck: Option<Millis> = None;
        let mut at = |t: Millis| recheck = Some(recheck.map_or(t, |c: Millis| c.min(t)));

        // Observe the replicas in flight.
        for (r, step) in self.replicas.iter_mut() {
            let obs = observed.get(r).filter(|o| o.hash == target);
            let ready = obs.is_some_and(|o| match o.state {
                ContainerState::Running => {
                    o.health == Health::Healthy || (!has_check && o.health == Health::None)
                }
                ContainerState::Stopped => o.exit_code == Some(0),
                _ => false,
            });
            let broken = obs.and_then(|o| match (o.state, o.health) {
                (ContainerState::Failed, _) => Some("failed".to_string()),
                (ContainerState::Stopped, _) if o.exit_code == Some(0) => None,
                (ContainerState::Stopped, _) => Some(match o.exit_code {
                    Some(c) => format!("exited {c}"),
                    None => "stopped".to_string(),
                }),
                (_, Health::Unhealthy) => Some("unhealthy".to_string()),
                _ => None,
            });
            match step {
                Step::Updating { .. } => {
                    if let Some(why) = broken {
                        *step = fail(now, &why);
                    } else if ready {
                        *step = Step::Monitoring { since: now };
                        if monitor == 0 {
                            *step = Step::Done { at: now };
                        } else {
                            at(now + monitor);
                        }
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

        // Failure policy (updating only).
        let p = self.progress();
        if self.phase == Phase::Updating
            && p.failed > 0
            && p.failed as f64 / p.total.max(1) as f64 > cfg.max_failure_ratio
        {
            let reason = format!(
                "{} of {} replicas failed to update ({})",
                p.failed,
                p.total,
                self.failures().join(", ")
            );
            match cfg.failure_action {
                FailureAction::Pause => {
                    self.phase = Phase::Paused;
                    self.reason = Some(reason);
                }
                FailureAction::Rollback => {
                    self.begin_rollback(reason);
                    // A rollback starts at once, with no delay.
                    let adv = self.advance(cfg, now, true);
                    return self.finish(adv, recheck);
                }
                FailureAction::Continue => {}
            }
        }
        let adv = self.advance(cfg, now, false);
        self.finish(adv, recheck)
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
        self.phase = Phase::RollingBack;
        self.reason = Some(reason);
    }

    fn finish(&mut self, mut adv: Advance, recheck: Option<Millis>) -> Advance {
        adv.recheck_at = match (adv.recheck_at, recheck) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let p = self.progress();
        let left = self
            .replicas
            .values()
            .any(|s| matches!(s, Step::Old { .. }))
            || p.in_flight > 0;
        if !left {
            match self.phase {
                Phase::Updating => self.phase = Phase::Completed,
                Phase::RollingBack => self.phase = Phase::RolledBack,
                _ => {}
            }
        }
        adv
    }

    fn advance(&mut self, cfg: &UpdateConfig, now: Millis, skip_delay: bool) -> Advance {
        let mut adv = Advance::default();
        if !matches!(self.phase, Phase::Updating | Phase::RollingBack) {
            return adv;
        }
        let in_flight = self.progress().in_flight;
        let slots = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            (cfg.parallelism as usize).saturating_sub(in_flight)
        };
        if slots == 0 {
            return adv;
        }
        let target = self.target().clone();
        let old: Vec<Replica> = self
            .replicas
            .iter()
            .filter_map(|(r, s)| match s {
                Step::Old { hash } if *hash != target => Some(*r),
                _ => None,
            })
            .collect();
        // Old replicas that already run the target need no container change.
        for s in self.replicas.values_mut() {
            if matches!(s, Step::Old { hash } if *hash == target) {
                *s = Step::Done { at: 0 };
            }
        }
        if old.is_empty() {
            return adv;
        }
        let last = self
            .replicas
            .values()
            .filter_map(|s| match s {
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
        for r in old.into_iter().take(slots) {
            self.replicas.insert(r, Step::Updating { since: now });
            adv.advanced.push(r);
        }
        adv
    }

    fn failures(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter_map(|(r, s)| match s {
                Step::Failed { reason, .. } => Some(format!("replica {r}: {reason}")),
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
