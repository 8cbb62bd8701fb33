//! `runc delete`, idempotent.

use super::{is_not_exist, Runc};
use crate::runtime::{ContainerId, Result};
use std::ffi::OsStr;

impl Runc {
    pub(super) async fn delete_impl(&self, id: &ContainerId, force: bool) -> Result<()> {
        self.created_ours().remove(id);
        let Some(state) = self.ours(id).await? else {
            return Ok(());
        };
        let mut args = vec![OsStr::new("delete")];
        if force {
            args.push(OsStr::new("--force"));
        }
        args.push(OsStr::new(id.as_str()));
        match self
            .invoke_in(Some(&state), "delete", id.as_str(), &args)
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_exist(&e) => {}
            Err(e) => return Err(e),
        }
        for ext in ["pid", "shim", "runc.log"] {
            let _ = std::fs::remove_file(self.run_file(id, ext));
        }
        Ok(())
    }
}
