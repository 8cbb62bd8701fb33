//! `runc start`.

use super::{is_not_exist, Runc};
use crate::runtime::{ContainerId, Result, RuntimeError};
use std::ffi::OsStr;

impl Runc {
    pub(super) async fn start_impl(&self, id: &ContainerId) -> Result<()> {
        // Created here from our bundle: ours, no need to ask runc (if it
        // was deleted meanwhile, `runc start` says so).
        if self.created_ours().remove(id) {
            return match self.start_unchecked(id).await {
                Err(e) if is_not_exist(&e) => Err(RuntimeError::NotFound(id.to_string())),
                r => r,
            };
        }
        if self.ours(id).await?.is_none() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        self.start_unchecked(id).await
    }

    /// `runc start` of a container known to be ours.
    pub(super) async fn start_unchecked(&self, id: &ContainerId) -> Result<()> {
        self.created_ours().remove(id);
        self.invoke(
            "start",
            id.as_str(),
            &[OsStr::new("start"), OsStr::new(id.as_str())],
        )
        .await?;
        Ok(())
    }
}
