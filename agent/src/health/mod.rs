//! Health checks run by the agent (issue 6): docker's state machine
//! ([`state`]), the probes — compose `healthcheck` through runc exec,
//! `cntnr.check.http` and `cntnr.check.tcp` straight from the agent
//! ([`probe`]) — and the per-container task that runs them on schedule
//! ([`checker`]).
//!
//! How the daemon uses it, per running container of a service:
//!
//! ```text
//! let Some(cfg) = HealthConfig::from_spec(spec) else {
//!     // no check: health `none`, registered passing at once
//! };
//! let address = if host_network { Ipv4Addr::LOCALHOST.into() } else { container_ip };
//! let probes = ContainerProbes::new(runtime.clone(), id.clone(), address, cfg.clone());
//! let checker = Checker::spawn(id, cfg.policy, probes, CheckerStart::FRESH, events_tx, &shutdown);
//! // status/ps/metrics: checker.current(); changes: events_rx; registry: registry_health(..)
//! ```

pub mod checker;
pub mod probe;
pub mod state;

pub use checker::{registry_health, Checker, CheckerStart, HealthEvent, HealthReport};
pub use probe::{ContainerProbes, HealthConfig, HttpProbe, Probe};
pub use state::{HealthPolicy, HealthState, ProbeResult};
