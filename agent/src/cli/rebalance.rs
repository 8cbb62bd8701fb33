//! `cntnr rebalance PROJECT`: asks the leader to place the project from
//! scratch, as if it were new (placement is otherwise sticky: a node that
//! joins takes only new replicas). Writes `rebalance/<project>` (value: the
//! request time); the leader consumes the key: it computes the schedule
//! with no previous one, writes it fenced, then deletes the request.
//! Replicas that change node are stopped where they ran and created where
//! they go.

use anyhow::Result;
use clap::Args;

use super::Ctx;

/// Arguments of `cntnr rebalance`.
#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// The project to place again from scratch.
    pub project: String,
}

/// Runs `rebalance`. A project that is not deployed is a user error.
pub async fn run(ctx: &Ctx, args: &RebalanceArgs) -> Result<()> {
    let project = super::deployed_project(ctx, &args.project).await?;
    let what = format!("place project {project} from scratch");
    super::request_leader(ctx, ctx.config.prefix.rebalance_dir(), &project, &what).await
}
