//! Rolling-update records (issue 9): the per-service rollout state the
//! leader keeps inside `schedule/<project>` ([`crate::records::ScheduleRecord::rollouts`]).
//! The logic that moves it lives in `cntnr_reconcile::rollout`.

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::records::{ContainerState, Health};
use crate::{ConfigHash, NodeName, Replica};

/// Milliseconds since the Unix epoch (the caller's clock).
pub type Millis = u64;

/// Where the rollout of one service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Moving replicas from `from` to `to`.
    Updating,
    /// Stopped by `failure_action: pause`.
    Paused,
    /// Moving replicas back to `from`.
    RollingBack,
    /// Every replica was advanced to `to`.
    Completed,
    /// Every replica is back on `from`.
    RolledBack,
    /// A rollback stopped by `rollback_config.failure_action: pause`
    /// (`cntnr rollback` resumes it).
    RollbackPaused,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Updating => "updating",
            Phase::Paused => "paused",
            Phase::RollingBack => "rolling back",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled back",
            Phase::RollbackPaused => "rollback paused",
        })
    }
}

/// One replica's progress towards the rollout's target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// Not advanced yet: keeps running `hash`.
    Old {
        /// The hash it runs until advanced.
        hash: ConfigHash,
    },
    /// Advanced at `since`; waiting for the new container to be ready.
    Updating {
        /// When it was advanced.
        since: Millis,
    },
    /// Ready since `since`; watched until `since + monitor`.
    Monitoring {
        /// When it was first seen ready.
        since: Millis,
    },
    /// Stayed ready through `monitor` (or already ran the target: `at`
    /// is 0 then, so it does not hold back the next batch by `delay`).
    Done {
        /// When.
        at: Millis,
    },
    /// Failed while updating or monitoring.
    Failed {
        /// When.
        at: Millis,
        /// Why, for status.
        reason: String,
    },
    /// Appeared during the rollout: runs the target, not monitored.
    Fresh,
}

/// What the status records say about one replica's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The config hash it runs.
    pub hash: ConfigHash,
    /// Runtime state.
    pub state: ContainerState,
    /// Health.
    pub health: Health,
    /// Exit code of its last exit, if stopped and known (a one-shot
    /// container that exited 0 is ready).
    pub exit_code: Option<i32>,
}

/// The rollout of one service from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRollout {
    /// The last spec that was fully healthy (where a rollback goes).
    pub from: ConfigHash,
    /// The deployed spec.
    pub to: ConfigHash,
    /// Where it stands.
    pub phase: Phase,
    /// Per replica progress towards the target (`to`, or `from` while
    /// rolling back).
    pub replicas: BTreeMap<Replica, Step>,
    /// Why it paused or rolls back, for status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `order: start-first`: the extra replicas (numbered after the
    /// service's last) that run the target while old replicas are replaced,
    /// so capacity never drops; removed when the rollout ends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub surge: BTreeMap<Replica, Surge>,
    /// Why `start-first` could not get a surge replica and this rollout
    /// runs `stop-first` (shown in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A surge replica of a `start-first` rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Surge {
    /// The node that runs it.
    pub node: NodeName,
    /// The hash it runs (the target when it was added).
    pub hash: ConfigHash,
    /// Its progress (`Updating`, `Monitoring`, `Done`, `Failed`).
    pub step: Step,
    /// Since when a `Done` surge replica has not been seen at all (its
    /// node gone, or its status record missing while its agent restarts).
    /// Pinned to its node, it fails after the readiness deadline of that
    /// (and is replaced) instead of holding the rollout forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<Millis>,
}
