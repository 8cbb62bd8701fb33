//! The plan: what to do on this node to make one project's containers match
//! its share of the schedule.
//!
//! [`plan`] is a pure function of (desired replicas for this node, observed
//! containers, a [`Context`] with the time and a jitter source) that returns
//! one list of [`Action`]s. No IO, no clock, no randomness of its own: the
//! agent gathers the inputs (runc state + `cntnr.*` annotations, plus the
//! restart bookkeeping it holds in memory), applies the actions, and calls it
//! again on the next event or resync.
//!
//! Contract:
//! - **Total.** Every desired replica and every observed container of the
//!   project gets at least one action; one that needs nothing gets
//!   [`Action::Nothing`] with the reason ([`Idle`]), which is what status
//!   shows (waiting for a dependency, gave up restarting, …).
//! - **Ordered.** Actions run in list order, except that actions on
//!   *different* containers at the same [`Step::stage`] (see
//!   [`plan_stages`]) are independent and may run concurrently. Removals come
//!   first, dependents before their dependencies; then creates, starts and
//!   recreates, dependencies before dependents, so a `service_started`
//!   dependency is satisfied by the actions before it.
//! - **Idempotent.** Applying the actions and planning again on the
//!   resulting state yields only [`Action::Nothing`], unless the world moved
//!   on meanwhile (a container exited, a health check passed, time passed a
//!   backoff deadline).
//! - **Adoption.** Only the runtime's state is trusted: a running container
//!   whose `cntnr.config-hash` annotation equals the desired hash is left
//!   alone, so an agent restart with unchanged specs touches nothing.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use cntnr_model::records::{Health, ScheduleRecord};
use cntnr_model::{
    ConfigHash, DependencyCondition, NodeName, Project, ProjectName, Replica, RestartCondition,
    RestartPolicy, ServiceName, ServiceSpec,
};

use crate::runtime::{
    annotations, ContainerId, ContainerState, InvalidContainerId, Signal, Status,
};

mod restart;

pub use restart::{Backoff, Jitter, NoJitter, OperatorStop, RestartState, SeededJitter};

/// Compose's default `stop_grace_period`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// When a stopped container is brought back: `restart:` and
/// `deploy.restart_policy.condition` in one vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOn {
    /// Never (`restart: no`, `condition: none`, and the default).
    Never,
    /// After a non-zero (or unknown) exit code.
    OnFailure,
    /// After any exit, and after an operator stop once the agent has
    /// restarted (`restart: always`, `condition: any`).
    Always,
    /// After any exit, but never after an operator stop.
    UnlessStopped,
}

/// A service's restart policy, normalized from `restart:` or
/// `deploy.restart_policy` (which wins when both are given, as in compose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRule {
    /// When to restart.
    pub on: RestartOn,
    /// Give up after this many restarts (within `window` if set, else since
    /// the container was created). `on-failure:N` sets it to `N`; `0` and
    /// `None` mean never give up.
    pub max_attempts: Option<u32>,
    /// The window `max_attempts` counts in.
    pub window: Option<Duration>,
    /// The first backoff delay (`deploy.restart_policy.delay`); later ones
    /// double up to [`Backoff::max`]. `None` (or zero): [`Backoff::initial`].
    pub delay: Option<Duration>,
}

impl RestartRule {
    /// Never restart (compose's default).
    pub const NEVER: RestartRule = RestartRule {
        on: RestartOn::Never,
        max_attempts: None,
        window: None,
        delay: None,
    };

    /// The rule of `spec`.
    pub fn of(spec: &ServiceSpec) -> Self {
        if let Some(p) = spec.deploy.restart_policy {
            return RestartRule {
                on: match p.condition {
                    RestartCondition::None => RestartOn::Never,
                    RestartCondition::OnFailure => RestartOn::OnFailure,
                    RestartCondition::Any => RestartOn::Always,
                },
                max_attempts: p.max_attempts.filter(|n| *n > 0),
                window: p.window,
                delay: Some(p.delay),
            };
        }
        let (on, max_attempts) = match spec.restart {
            None | Some(RestartPolicy::No) => (RestartOn::Never, None),
            Some(RestartPolicy::Always) => (RestartOn::Always, None),
            Some(RestartPolicy::UnlessStopped) => (RestartOn::UnlessStopped, None),
            Some(RestartPolicy::OnFailure { max_retries }) => {
                (RestartOn::OnFailure, max_retries.filter(|n| *n > 0))
            }
        };
        RestartRule {
            on,
            max_attempts,
            ..RestartRule::NEVER
        }
    }
}

/// What the plan needs to know about one service of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// Its restart policy.
    pub restart: RestartRule,
    /// The services it depends on, with the condition each must meet before
    /// this service's containers are created or recreated.
    pub depends_on: BTreeMap<ServiceName, DependencyCondition>,
    /// Whether this service's containers report health (a `healthcheck`, or
    /// a `cntnr.check.*` probe). A freshly (re)created container of a
    /// checked service counts as [`Health::Starting`] for `service_healthy`
    /// dependents; otherwise the observed [`Observed::health`] decides
    /// (the agent's health checker), where [`Health::None`] (a service
    /// without checks) counts as healthy.
    pub health_checked: bool,
    /// Whether an unhealthy container is stopped so that its restart policy
    /// brings it back (`cntnr.health.on-failure: restart`, the default);
    /// `false` only reports it (`none`). Only acts when the policy restarts
    /// at all.
    pub restart_unhealthy: bool,
    /// Time between the stop signal and SIGKILL.
    pub stop_grace: Duration,
}

impl ServicePlan {
    /// The plan-relevant parts of `spec`.
    pub fn of(spec: &ServiceSpec) -> Self {
        let health_checked = spec
            .healthcheck
            .as_ref()
            .is_some_and(|h| !matches!(h.test, Some(cntnr_model::HealthTest::Disabled)))
            || spec.agent.check_http.is_some()
            || spec.agent.check_tcp.is_some();
        ServicePlan {
            restart: RestartRule::of(spec),
            depends_on: spec
                .depends_on
                .iter()
                .map(|(s, d)| (s.clone(), d.condition))
                .collect(),
            health_checked,
            restart_unhealthy: spec.agent.health_on_failure
                == cntnr_model::annotations::HealthOnFailure::Restart,
            stop_grace: spec.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE),
        }
    }
}

/// One replica this node should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredReplica {
    /// `<project>-<service>-<replica>`.
    pub id: ContainerId,
    /// Its service (a key of [`Desired::services`]).
    pub service: ServiceName,
    /// Its replica number.
    pub replica: Replica,
    /// The config hash its container must carry. Per replica, so that a
    /// rolling update can hold some replicas at the previous hash.
    pub config_hash: ConfigHash,
}

/// What is known about a dependency service that has no replica on this
/// node (e.g. from other nodes' `status/` records). Multi-node hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteState {
    /// All its replicas run.
    pub started: bool,
    /// All its replicas run and are healthy.
    pub healthy: bool,
    /// All its replicas exited with code 0.
    pub completed: bool,
}

/// The desired state of one project on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The project; observed containers of other projects are ignored.
    pub project: ProjectName,
    /// Every service of the project as last known, including ones with no
    /// replica here: dependency conditions, restart policy and stop grace
    /// come from here, and removal order from the dependency graph. Empty
    /// for a project that is gone from the store (its containers are then
    /// removed by replica number, highest first, with the default grace).
    pub services: BTreeMap<ServiceName, ServicePlan>,
    /// The replicas to run here. Observed containers of the project that are
    /// not listed are stopped and removed.
    pub replicas: Vec<DesiredReplica>,
    /// Dependencies with no replica on this node. A dependency that has no
    /// local replica and no entry here counts as satisfied: placement may
    /// put it anywhere, and waiting for something this node cannot see would
    /// block forever.
    pub remote: BTreeMap<ServiceName, RemoteState>,
}

impl Desired {
    /// `node`'s share of `project` per `schedule`. Only call this once the
    /// project's schedule is known: an empty desired set removes every
    /// container of the project. Replicas the schedule lists for services the
    /// project no longer has are left out (so removed).
    ///
    /// Fails only if a container id would be invalid for runc (over 128
    /// characters).
    pub fn for_node(
        project: &Project,
        schedule: &ScheduleRecord,
        node: &NodeName,
    ) -> Result<Self, InvalidContainerId> {
        let mut replicas = Vec::new();
        for (service, replica) in schedule.replicas_on(node) {
            let Some(spec) = project.services.get(&service) else {
                continue;
            };
            // A rolling update may hold this replica at another hash.
            let held = schedule
                .rollouts
                .get(&service)
                .and_then(|r| crate::rollout::Rollout::wanted(r).remove(&replica));
            replicas.push(DesiredReplica {
                id: ContainerId::for_replica(project.name.as_str(), service.as_str(), replica)?,
                config_hash: held.unwrap_or_else(|| spec.config_hash()),
                service,
                replica,
            });
        }
        Ok(Desired {
            project: project.name.clone(),
            services: project
                .services
                .iter()
                .map(|(s, spec)| (s.clone(), ServicePlan::of(spec)))
                .collect(),
            replicas,
            remote: BTreeMap::new(),
        })
    }

    /// A project that is gone from the store: every container is removed.
    pub fn removed(project: ProjectName) -> Self {
        Desired {
            project,
            services: BTreeMap::new(),
            replicas: Vec::new(),
            remote: BTreeMap::new(),
        }
    }
}

/// One container as observed: the runtime's state plus what the agent
/// learned and holds about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// runc's state and annotations (the source of truth for identity and
    /// config hash).
    pub state: ContainerState,
    /// Exit code of the last exit, if it exited and the code is known.
    pub exit_code: Option<i32>,
    /// When the container last started.
    pub started_at: Option<SystemTime>,
    /// When the agent learned of its last exit. Backoff deadlines count from
    /// here; `None` counts from now, which pushes a pending restart back on
    /// every re-plan, so the agent should record it.
    pub finished_at: Option<SystemTime>,
    /// Health hook: the latest health result ([`Health::None`] until health
    /// checks report).
    pub health: Health,
    /// Restart bookkeeping held by the agent (reset when it restarts).
    pub restart: RestartState,
}

impl Observed {
    /// `state` with nothing else known.
    pub fn new(state: ContainerState) -> Self {
        Observed {
            state,
            exit_code: None,
            started_at: None,
            finished_at: None,
            health: Health::None,
            restart: RestartState::default(),
        }
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.state.annotations.get(key).map(String::as_str)
    }

    fn stop_signal(&self) -> Signal {
        self.annotation(annotations::STOP_SIGNAL)
            .and_then(Signal::parse)
            .unwrap_or(Signal::TERM)
    }

    /// The grace recorded at create, else compose's default.
    fn stop_grace(&self) -> Duration {
        self.annotation(annotations::STOP_GRACE)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(DEFAULT_STOP_GRACE, Duration::from_millis)
    }
}

/// Inputs that are not state: the time and the backoff knobs.
pub struct Context<'a> {
    /// Now.
    pub now: SystemTime,
    /// Backoff settings.
    pub backoff: Backoff,
    /// Where jitter comes from ([`SeededJitter`] in the agent, a fixed one in
    /// tests).
    pub jitter: &'a dyn Jitter,
}

/// Why a container needs nothing now. `Display` is the one line status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idle {
    /// Running with the desired config.
    UpToDate,
    /// Paused (by an operator); left alone.
    Paused,
    /// Exited and its restart policy says stay so (`no`, or `on-failure`
    /// after exit code 0).
    Exited {
        /// The exit code, if known.
        code: Option<i32>,
    },
    /// Stopped by an operator, and the policy does not override that.
    OperatorStopped,
    /// The restart policy's `max_attempts` is used up.
    GaveUp {
        /// Restarts so far.
        restarts: u32,
        /// The limit.
        max_attempts: u32,
        /// The window the limit counts in, if any (restarts resume once
        /// older attempts leave it).
        window: Option<Duration>,
    },
    /// Its creation (or recreation, when `recreate`) waits for a
    /// dependency; an existing container keeps running meanwhile.
    Waiting {
        /// The dependency.
        dependency: ServiceName,
        /// Its condition.
        condition: DependencyCondition,
        /// A recreation (config change) is what waits.
        recreate: bool,
    },
}

impl fmt::Display for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Idle::UpToDate => f.write_str("up to date"),
            Idle::Paused => f.write_str("paused"),
            Idle::Exited { code: Some(c) } => write!(f, "exited with code {c}"),
            Idle::Exited { code: None } => f.write_str("exited"),
            Idle::OperatorStopped => f.write_str("stopped by an operator"),
            Idle::GaveUp {
                restarts,
                max_attempts,
                window,
            } => {
                write!(f, "not restarted: max_attempts {max_attempts} reached")?;
                if let Some(w) = window {
                    write!(f, " within {w:?}")?;
                }
                write!(f, " ({restarts} restarts)")
            }
            Idle::Waiting {
                dependency,
                condition,
                recreate,
            } => {
                let what = if *recreate { "recreate" } else { "create" };
                let cond = match condition {
                    DependencyCondition::ServiceStarted => "service_started",
                    DependencyCondition::ServiceHealthy => "service_healthy",
                    DependencyCondition::ServiceCompletedSuccessfully => {
                        "service_completed_successfully"
                    }
                };
                write!(f, "{what} waits for {dependency} ({cond})")
            }
        }
    }
}

/// One step. The agent applies them in order (see the module docs); each is
/// idempotent on the runtime (creating an existing container, removing a
/// missing one are no-ops or handled by the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build the bundle for this replica's spec and `runc create` it
    /// (annotated with `config_hash`); a [`Action::Start`] follows.
    Create {
        /// Container.
        id: ContainerId,
        /// Service.
        service: ServiceName,
        /// Replica.
        replica: Replica,
        /// The config hash to build and annotate.
        config_hash: ConfigHash,
    },
    /// Start a created container.
    Start {
        /// Container.
        id: ContainerId,
    },
    /// Send `signal`, wait up to `grace`, then SIGKILL. A
    /// [`Action::Remove`] follows.
    Stop {
        /// Container.
        id: ContainerId,
        /// Its stop signal (`cntnr.stop-signal` annotation, else SIGTERM).
        signal: Signal,
        /// Grace before SIGKILL.
        grace: Duration,
    },
    /// An unhealthy container whose restart policy brings it back (see
    /// [`ServicePlan::restart_unhealthy`]): send `signal`, wait up to
    /// `grace`, then SIGKILL, and keep the container, so that the next plan
    /// restarts it through the policy and its backoff. The agent records
    /// the exit as a failure whatever its code.
    Kill {
        /// Container.
        id: ContainerId,
        /// Its stop signal.
        signal: Signal,
        /// Grace before SIGKILL.
        grace: Duration,
    },
    /// Delete the container and its bundle. It is stopped, or was left
    /// half-created by a crash, so the delete may have to be forced.
    Remove {
        /// Container.
        id: ContainerId,
    },
    /// The container's config hash differs from the desired one (or it was
    /// left half-created): stop it (`signal`, `grace`), remove it, then
    /// create and start it from the desired spec. Resets its restart
    /// bookkeeping.
    Recreate {
        /// Container.
        id: ContainerId,
        /// Service.
        service: ServiceName,
        /// Replica.
        replica: Replica,
        /// The desired config hash.
        config_hash: ConfigHash,
        /// The old container's stop signal.
        signal: Signal,
        /// Grace before SIGKILL.
        grace: Duration,
    },
    /// Its restart policy brings an exited container back: after `after`
    /// (zero: now), run it again (`Runtime::run` redoes a stopped container
    /// from its bundle), then record the restart with
    /// [`RestartState::restarted`]`(backoff, when)`. Planning again before
    /// the deadline yields the same deadline (a smaller `after`), so the
    /// agent keeps one timer per container and replaces it.
    Restart {
        /// Container.
        id: ContainerId,
        /// Delay from now.
        after: Duration,
        /// The backoff level this delay was computed at (0 after a stable
        /// run).
        backoff: u32,
    },
    /// Nothing to do, and why.
    Nothing {
        /// Container.
        id: ContainerId,
        /// Why.
        why: Idle,
    },
}

impl Action {
    /// The container acted on.
    pub fn id(&self) -> &ContainerId {
        match self {
            Action::Create { id, .. }
            | Action::Start { id }
            | Action::Stop { id, .. }
            | Action::Kill { id, .. }
            | Action::Remove { id }
            | Action::Recreate { id, .. }
            | Action::Restart { id, .. }
            | Action::Nothing { id, .. } => id,
        }
    }

    /// Whether this action changes nothing.
    pub fn is_nothing(&self) -> bool {
        matches!(self, Action::Nothing { .. })
    }

    /// The short kind (`create`, `start`, …) for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
            Action::Kill { .. } => "kill",
            Action::Remove { .. } => "remove",
            Action::Recreate { .. } => "recreate",
            Action::Restart { .. } => "restart",
            Action::Nothing { .. } => "nothing",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())?;
        match self {
            Action::Restart { after, .. } => write!(f, " after {after:?}"),
            Action::Nothing { why, .. } => write!(f, ": {why}"),
            _ => Ok(()),
        }
    }
}

/// A planned action with its stage: actions on different containers with
/// the same stage are independent and may run concurrently; stages run in
/// increasing order, and a container's own actions in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The stage.
    pub stage: u32,
    /// The action.
    pub action: Action,
}

/// The actions that bring `observed` to `desired` (see the module docs for
/// the contract), in execution order. [`plan_stages`] gives the same list
/// with the stages that say what may run concurrently.
pub fn plan(desired: &Desired, observed: &[Observed], ctx: &Context<'_>) -> Vec<Action> {
    plan_stages(desired, observed, ctx)
        .into_iter()
        .map(|s| s.action)
        .collect()
}

/// [`plan`] with stages: removals by reverse dependency depth (dependents
/// first), then (re)creations by dependency depth (dependencies first).
/// `Nothing` and delayed restarts are at the stage of their service.
pub fn plan_stages(desired: &Desired, observed: &[Observed], ctx: &Context<'_>) -> Vec<Step> {
    let mine: BTreeMap<&ContainerId, &Observed> = observed
        .iter()
        .filter(|o| o.annotation(annotations::PROJECT) == Some(desired.project.as_str()))
        .map(|o| (&o.state.id, o))
        .collect();
    let depth = depths(&desired.services);
    let max_depth = depth.values().copied().max().unwrap_or(0);
    let mut steps = Vec::new();

    // 1. Removals: containers of the project that are not desired, dependents
    //    first; a service gone from the spec goes with the first stage.
    let wanted: BTreeSet<&ContainerId> = desired.replicas.iter().map(|d| &d.id).collect();
    let mut doomed: Vec<(u32, &Observed)> = mine
        .values()
        .filter(|o| !wanted.contains(&o.state.id))
        .map(|o| {
            let d = o
                .annotation(annotations::SERVICE)
                .and_then(|s| depth.get(s))
                .copied()
                .unwrap_or(max_depth);
            (max_depth - d, *o)
        })
        .collect();
    doomed.sort_by(|(sa, a), (sb, b)| {
        let replica = |o: &Observed| {
            o.annotation(annotations::REPLICA)
                .and_then(|r| r.parse::<u32>().ok())
                .unwrap_or(0)
        };
        sa.cmp(sb)
            .then_with(|| {
                a.annotation(annotations::SERVICE)
                    .cmp(&b.annotation(annotations::SERVICE))
            })
            .then_with(|| replica(b).cmp(&replica(a)))
            .then_with(|| a.state.id.cmp(&b.state.id))
    });
    let removal_stages = if doomed.is_empty() { 0 } else { max_depth + 1 };
    for (stage, o) in doomed {
        let id = o.state.id.clone();
        if !matches!(o.state.status, Status::Stopped | Status::Creating) {
            // The service's grace; for a service (or project) gone from
            // the store, the one recorded on the container.
            let grace = o
                .annotation(annotations::SERVICE)
                .and_then(|s| desired.services.get(s))
                .map_or_else(|| o.stop_grace(), |s| s.stop_grace);
            steps.push(Step {
                stage,
                action: Action::Stop {
                    id: id.clone(),
                    signal: o.stop_signal(),
                    grace,
                },
            });
        }
        steps.push(Step {
            stage,
            action: Action::Remove { id },
        });
    }

    // 2. Desired replicas, dependencies first, so each service sees what its
    //    dependencies will be once the actions before it have run.
    let mut replicas: Vec<&DesiredReplica> = desired.replicas.iter().collect();
    replicas.sort_by_key(|d| {
        (
            depth.get(&d.service).copied().unwrap_or(0),
            &d.service,
            d.replica,
        )
    });
    let mut outlook: BTreeMap<&ServiceName, Vec<Outlook>> = BTreeMap::new();
    for d in replicas {
        let svc = desired.services.get(&d.service);
        let stage = removal_stages + depth.get(&d.service).copied().unwrap_or(0);
        let obs = mine.get(&d.id).copied();
        let (actions, out) = replica_actions(d, svc, obs, desired, &outlook, ctx);
        outlook.entry(&d.service).or_default().push(out);
        steps.extend(actions.into_iter().map(|action| Step { stage, action }));
    }
    steps
}

/// What a replica will look like once this plan's actions have run, as its
/// dependents see it.
#[derive(Debug, Clone, Copy)]
enum Outlook {
    /// Running (or paused); `health` as far as known.
    Running { health: Health },
    /// Exited, and staying so for now.
    Exited { code: Option<i32> },
    /// Not running yet (absent, waiting, restarting later).
    NotYet,
}

fn replica_actions(
    d: &DesiredReplica,
    svc: Option<&ServicePlan>,
    obs: Option<&Observed>,
    desired: &Desired,
    outlook: &BTreeMap<&ServiceName, Vec<Outlook>>,
    ctx: &Context<'_>,
) -> (Vec<Action>, Outlook) {
    let nothing = |why| Action::Nothing {
        id: d.id.clone(),
        why,
    };
    let fresh = Outlook::Running {
        health: if svc.is_some_and(|s| s.health_checked) {
            Health::Starting
        } else {
            Health::None
        },
    };
    let build = |old: Option<&Observed>| {
        if let Some((dependency, condition)) = unmet_dependency(svc, desired, outlook) {
            let why = Idle::Waiting {
                dependency,
                condition,
                recreate: old.is_some(),
            };
            // An old container keeps running while its recreation waits.
            let out = old.map_or(Outlook::NotYet, current_outlook);
            return (vec![nothing(why)], out);
        }
        let actions = match old {
            None => vec![
                Action::Create {
                    id: d.id.clone(),
                    service: d.service.clone(),
                    replica: d.replica,
                    config_hash: d.config_hash.clone(),
                },
                Action::Start { id: d.id.clone() },
            ],
            Some(o) => vec![Action::Recreate {
                id: d.id.clone(),
                service: d.service.clone(),
                replica: d.replica,
                config_hash: d.config_hash.clone(),
                signal: o.stop_signal(),
                grace: svc.map_or(DEFAULT_STOP_GRACE, |s| s.stop_grace),
            }],
        };
        (actions, fresh)
    };
    let Some(o) = obs else {
        return build(None);
    };
    let same = o.annotation(annotations::CONFIG_HASH) == Some(d.config_hash.as_str());
    match (same, o.state.status) {
        // A config change, or a create an agent crash left half-done.
        (false, _) | (_, Status::Creating) => build(Some(o)),
        // Unhealthy, and its policy restarts it: kill it (the agent counts
        // the exit as a failure); the next plan restarts it with backoff.
        (true, Status::Running)
            if o.health == Health::Unhealthy
                && svc.is_some_and(|s| s.restart_unhealthy && s.restart.on != RestartOn::Never) =>
        {
            let stop = Action::Kill {
                id: d.id.clone(),
                signal: o.stop_signal(),
                grace: svc.map_or(DEFAULT_STOP_GRACE, |s| s.stop_grace),
            };
            (vec![stop], Outlook::NotYet)
        }
        (true, Status::Running) => (vec![nothing(Idle::UpToDate)], current_outlook(o)),
        (true, Status::Paused) => (vec![nothing(Idle::Paused)], current_outlook(o)),
        // Left between create and start (an agent crash): finish the job.
        (true, Status::Created) => (vec![Action::Start { id: d.id.clone() }], fresh),
        (true, Status::Stopped) => {
            let rule = svc.map_or(RestartRule::NEVER, |s| s.restart);
            match restart::decide(&rule, &d.id, o, ctx) {
                Ok((after, backoff)) => {
                    let out = if after.is_zero() {
                        fresh
                    } else {
                        Outlook::NotYet
                    };
                    let restart = Action::Restart {
                        id: d.id.clone(),
                        after,
                        backoff,
                    };
                    (vec![restart], out)
                }
                Err(why) => (vec![nothing(why)], current_outlook(o)),
            }
        }
    }
}

fn current_outlook(o: &Observed) -> Outlook {
    match o.state.status {
        Status::Running | Status::Paused => Outlook::Running { health: o.health },
        Status::Stopped => Outlook::Exited { code: o.exit_code },
        Status::Created | Status::Creating => Outlook::NotYet,
    }
}

/// The first dependency of `svc` whose condition will not hold once the
/// actions planned so far have run.
fn unmet_dependency(
    svc: Option<&ServicePlan>,
    desired: &Desired,
    outlook: &BTreeMap<&ServiceName, Vec<Outlook>>,
) -> Option<(ServiceName, DependencyCondition)> {
    let svc = svc?;
    svc.depends_on
        .iter()
        .find(|(dep, cond)| {
            let met = match outlook.get(dep) {
                Some(reps) => reps.iter().all(|o| meets(*o, **cond)),
                None => desired.remote.get(*dep).is_none_or(|r| match cond {
                    DependencyCondition::ServiceStarted => r.started,
                    DependencyCondition::ServiceHealthy => r.healthy,
                    DependencyCondition::ServiceCompletedSuccessfully => r.completed,
                }),
            };
            !met
        })
        .map(|(dep, cond)| (dep.clone(), *cond))
}

fn meets(o: Outlook, cond: DependencyCondition) -> bool {
    match (cond, o) {
        (DependencyCondition::ServiceStarted, Outlook::Running { .. }) => true,
        (DependencyCondition::ServiceHealthy, Outlook::Running { health }) => {
            matches!(health, Health::Healthy | Health::None)
        }
        (DependencyCondition::ServiceCompletedSuccessfully, Outlook::Exited { code }) => {
            code == Some(0)
        }
        _ => false,
    }
}

/// Dependency depth of each service: 0 without dependencies, else one more
/// than its deepest dependency (a cycle, which validation rejects, is cut).
fn depths(services: &BTreeMap<ServiceName, ServicePlan>) -> BTreeMap<ServiceName, u32> {
    fn visit<'a>(
        s: &'a ServiceName,
        services: &'a BTreeMap<ServiceName, ServicePlan>,
        done: &mut BTreeMap<ServiceName, u32>,
        path: &mut BTreeSet<&'a ServiceName>,
    ) -> u32 {
        if let Some(d) = done.get(s) {
            return *d;
        }
        if !path.insert(s) {
            return 0;
        }
        let d = services.get(s).map_or(0, |p| {
            p.depends_on
                .keys()
                .filter(|dep| services.contains_key(*dep))
                .map(|dep| visit(dep, services, done, path) + 1)
                .max()
                .unwrap_or(0)
        });
        path.remove(s);
        done.insert(s.clone(), d);
        d
    }
    let mut done = BTreeMap::new();
    for s in services.keys() {
        visit(s, services, &mut done, &mut BTreeSet::new());
    }
    done
}

#[cfg(test)]
mod tests;
