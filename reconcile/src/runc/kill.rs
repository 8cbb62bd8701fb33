//! `runc kill`.

use super::Runc;
use crate::runtime::{ContainerId, Result, RuntimeError, Signal};
use std::ffi::OsStr;

impl Runc {
    pub(super) async fn kill_impl(&self, id: &ContainerId, signal: Signal) -> Result<()> {
        let Some(state) = self.ours(id).await? else {
            return Err(RuntimeError::NotFound(id.to_string()));
        };
        let sig = signal.number().to_string();
        self.invoke_in(
            Some(&state),
            "kill",
            id.as_str(),
            &[
                OsStr::new("kill"),
                OsStr::new(id.as_str()),
                OsStr::new(&sig),
            ],
        )
        .await?;
        Ok(())
    }
}
