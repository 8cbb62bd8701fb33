//! `cntnr rollback PROJECT`: asks the leader to roll back every rolling
//! update of the project in progress, paused, or finished with failures,
//! to the last fully healthy revision (`healthy_spec` of
//! `schedule/<project>`). Writes `rollback/<project>` (value: the request
//! time); the leader consumes the key. Replicas that still run the healthy
//! revision are never touched; the others go back as `rollback_config` (or
//! swarm's rollback defaults) says. A paused rollback resumes.

use anyhow::{bail, Result};
use clap::Args;
use cntnr_model::records::ScheduleRecord;
use cntnr_model::StoreKey;

use super::Ctx;

/// Arguments of `cntnr rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The project to roll back.
    pub project: String,
}

/// Runs `rollback`. A project that is not deployed, or that has no rolling
/// update to undo, is a user error.
pub async fn run(ctx: &Ctx, args: &RollbackArgs) -> Result<()> {
    let project = super::deployed_project(ctx, &args.project).await?;
    let skey = ctx.key(&StoreKey::Schedule(project.clone()));
    let rec: Option<ScheduleRecord> = ctx
        .store
        .get(&skey)
        .await?
        .and_then(|e| serde_json::from_slice(&e.value).ok());
    let undoable = rec.as_ref().is_some_and(|r| {
        r.rollouts.values().any(|ro| {
            ro.from != ro.to
                && !matches!(
                    ro.phase,
                    cntnr_model::rollout::Phase::RollingBack
                        | cntnr_model::rollout::Phase::RolledBack
                )
        })
    });
    if !undoable {
        bail!("project {project}: no rolling update to roll back (key {skey})");
    }
    let what = format!("roll back project {project}");
    super::request_leader(ctx, ctx.config.prefix.rollback_dir(), &project, &what).await
}
