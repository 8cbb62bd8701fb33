//! Prometheus metrics of the agent (`/metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels naming a store operation (`list`, `watch`, `put_bound`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation.
    pub op: String,
}

/// Labels naming a watched prefix (`projects`, `schedule`, `leader`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The prefix, relative to the store prefix.
    pub watch: String,
}

/// Labels naming a project state (`valid`, `invalid`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: String,
}

/// Labels naming a container action (`create`, `start`, `stop`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action.
    pub kind: String,
}

/// Labels of a reconcile pass's result (`ok`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The result.
    pub result: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    store_errors: Family<OpLabels, Counter>,
    watch_events: Family<WatchLabels, Counter>,
    watch_lag: Family<WatchLabels, Histogram>,
    projects: Family<StateLabels, Gauge>,
    leader: Gauge,
    sessions: Counter,
    reconcile_seconds: Family<ResultLabels, Histogram>,
    actions: Family<ActionLabels, Counter>,
    action_failures: Family<ActionLabels, Counter>,
    containers: Family<StateLabels, Gauge>,
    containers_health: Family<HealthLabels, Gauge>,
    health_to_registry: Histogram,
    health_probes: Gauge,
    schedule_fenced_out: Counter,
}

/// Labels naming a container health (`none`, `starting`, `healthy`,
/// `unhealthy`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// The health.
    pub health: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cntnr");
        let store_errors = Family::<OpLabels, Counter>::default();
        let watch_events = Family::<WatchLabels, Counter>::default();
        let watch_lag = Family::<WatchLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
        });
        let projects = Family::<StateLabels, Gauge>::default();
        let leader = Gauge::default();
        let sessions = Counter::default();
        registry.register(
            "store_errors",
            "Failed store operations, by operation",
            store_errors.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events received, by watched prefix",
            watch_events.clone(),
        );
        registry.register(
            "watch_lag_seconds",
            "Time from the watch stream delivering an event under projects/ or schedule/ to \
             the desired state having applied it and the affected project's reconcile being \
             triggered, by watched prefix. The stores give no write timestamps, so the time \
             between the write and its delivery by the store is not included",
            watch_lag.clone(),
        );
        registry.register(
            "projects",
            "Projects in the desired state, by state (valid, invalid)",
            projects.clone(),
        );
        registry.register("leader", "1 while this agent is the leader", leader.clone());
        registry.register(
            "sessions",
            "Store sessions created (more than one: the session was lost or credentials reloaded)",
            sessions.clone(),
        );
        let reconcile_seconds = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let actions = Family::<ActionLabels, Counter>::default();
        let action_failures = Family::<ActionLabels, Counter>::default();
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass of a project took, by result (ok, error)",
            reconcile_seconds.clone(),
        );
        registry.register(
            "actions",
            "Container actions applied, by kind (create, start, stop, remove, recreate, restart)",
            actions.clone(),
        );
        registry.register(
            "action_failures",
            "Container actions that failed, by kind",
            action_failures.clone(),
        );
        registry.register(
            "containers",
            "This node's containers, by state (pending, created, running, paused, stopped, failed)",
            containers.clone(),
        );
        let containers_health = Family::<HealthLabels, Gauge>::default();
        registry.register(
            "containers_health",
            "This node's running containers, by health (none: no check; starting, healthy, \
             unhealthy)",
            containers_health.clone(),
        );
        let health_to_registry = Histogram::new(exponential_buckets(0.000_25, 2.0, 14));
        registry.register(
            "health_to_registry_seconds",
            "Time from a health checker reporting a status change to the registry (Consul \
             check, or services/ record) having accepted the new status",
            health_to_registry.clone(),
        );
        let health_probes = Gauge::default();
        registry.register(
            "health_probes",
            "Health probe rounds run since the agent started (all containers; read at scrape)",
            health_probes.clone(),
        );
        let schedule_fenced_out = Counter::default();
        registry.register(
            "schedule_writes_fenced_out",
            "Schedule writes and clean-up deletes of this agent as leader that the store \
             rejected because its leadership had ended (a deposed or frozen leader's late write)",
            schedule_fenced_out.clone(),
        );
        Metrics {
            registry,
            schedule_fenced_out,
            health_probes,
            containers_health,
            health_to_registry,
            reconcile_seconds,
            actions,
            action_failures,
            containers,
            store_errors,
            watch_events,
            watch_lag,
            projects,
            leader,
            sessions,
        }
    }

    /// Counts a failed store operation.
    pub fn store_error(&self, op: &str) {
        self.store_errors
            .get_or_create(&OpLabels { op: op.to_string() })
            .inc();
    }

    /// Counts a watch event.
    pub fn watch_event(&self, watch: &str) {
        self.watch_events
            .get_or_create(&WatchLabels {
                watch: watch.to_string(),
            })
            .inc();
    }

    /// Records the lag of one applied watch event (see the help text of
    /// `cntnr_watch_lag_seconds`).
    pub fn watch_lag(&self, watch: &str, lag: std::time::Duration) {
        self.watch_lag
            .get_or_create(&WatchLabels {
                watch: watch.to_string(),
            })
            .observe(lag.as_secs_f64());
    }

    /// Sets the number of valid and invalid projects.
    pub fn set_projects(&self, valid: usize, invalid: usize) {
        for (state, n) in [("valid", valid), ("invalid", invalid)] {
            self.projects
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(n as i64);
        }
    }

    /// Sets whether this agent leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a created session.
    pub fn session_created(&self) {
        self.sessions.inc();
    }

    /// Records one reconcile pass.
    pub fn reconciled(&self, took: std::time::Duration, ok: bool) {
        self.reconcile_seconds
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts an applied action.
    pub fn action(&self, kind: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a failed action.
    pub fn action_failed(&self, kind: &str) {
        self.action_failures
            .get_or_create(&ActionLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Sets the container counts by state (states not given are 0).
    pub fn set_containers(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        for state in [
            "pending", "created", "running", "paused", "stopped", "failed",
        ] {
            self.containers
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(counts.get(state).copied().unwrap_or(0));
        }
    }

    /// Sets the running containers by health from `health:<h>` keys
    /// (healths not given are 0).
    pub fn set_health(&self, counts: &std::collections::BTreeMap<&'static str, i64>) {
        for h in ["none", "starting", "healthy", "unhealthy"] {
            let n = counts
                .iter()
                .find(|(k, _)| k.strip_prefix("health:") == Some(h))
                .map_or(0, |(_, n)| *n);
            self.containers_health
                .get_or_create(&HealthLabels {
                    health: h.to_string(),
                })
                .set(n);
        }
    }

    /// Counts a schedule write rejected as fenced out.
    pub fn schedule_fenced_out(&self) {
        self.schedule_fenced_out.inc();
    }

    /// Records how long a health change took to reach the registry.
    pub fn health_to_registry(&self, took: std::time::Duration) {
        self.health_to_registry.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        self.health_probes
            .set(i64::try_from(crate::health::checker::probes_total()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
