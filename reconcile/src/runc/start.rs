//! `runc start`.

use super::Runc;
use crate::runtime::{ContainerId, Result, RuntimeError};
use std::ffi::OsStr;

impl Runc {
    pub(super) async fn start_impl(&self, id: &ContainerId) -> Result<()> {
        if self.ours(id).await?.is_none() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        self.start_unchecked(id).await
    }

    /// `runc start` of a container known to be ours.
    pub(super) async fn start_unchecked(&self, id: &ContainerId) -> Result<()> {
        self.invoke(
            "start",
            id.as_str(),
            &[OsStr::new("start"), OsStr::new(id.as_str())],
        )
        .await?;
        Ok(())
    }
}
