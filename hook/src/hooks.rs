//! The OCI `hooks` entries the bundle builder adds to a bridge-networked
//! container's `config.json`.

use oci_spec::runtime::{Hook, HookBuilder, Hooks, HooksBuilder};
use std::path::PathBuf;

/// Where the agent installs the hook binary by default.
pub const DEFAULT_HOOK_BINARY: &str = "/usr/local/libexec/cntnr/cntnr-hook";
/// Default hard timeout of one hook run, seconds (runc kills the hook then;
/// the hook's own budget ends a second earlier, see the binary's docs).
pub const DEFAULT_TIMEOUT_SECS: i64 = 30;
/// Env var carrying the timeout to the hook, so it can budget ADD and rollback.
pub const TIMEOUT_ENV: &str = "CNTNR_HOOK_TIMEOUT";
/// Env var naming a failpoint (tests only): `after-<plugin type>` kills the
/// hook with SIGKILL right after that plugin's ADD succeeded.
pub const FAILPOINT_ENV: &str = "CNTNR_HOOK_FAILPOINT";

/// How to call the hook.
#[derive(Clone, Debug)]
pub struct HookOptions {
    /// Absolute path of `cntnr-hook`.
    pub binary: PathBuf,
    /// Hard timeout per run, seconds (> 2).
    pub timeout_secs: i64,
    /// Extra `KEY=value` env (e.g. a failpoint in tests). `PATH` is always set:
    /// runc gives a hook only the env listed here, and plugins run `iptables`.
    pub env: Vec<String>,
}

impl Default for HookOptions {
    fn default() -> Self {
        Self {
            binary: DEFAULT_HOOK_BINARY.into(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            env: Vec::new(),
        }
    }
}

/// `createRuntime: [cntnr-hook create]`, `poststop: [cntnr-hook delete]`,
/// each with the timeout. The container must also carry the request
/// annotation ([`crate::NetRequest::to_annotation`]) and a new network
/// namespace (no path: runc creates it).
pub fn oci_hooks(opts: &HookOptions) -> Result<Hooks, oci_spec::OciSpecError> {
    let hook = |verb: &str| -> Result<Hook, oci_spec::OciSpecError> {
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("{TIMEOUT_ENV}={}", opts.timeout_secs),
        ];
        env.extend(opts.env.iter().cloned());
        HookBuilder::default()
            .path(opts.binary.clone())
            .args(vec!["cntnr-hook".to_string(), verb.to_string()])
            .env(env)
            .timeout(opts.timeout_secs)
            .build()
    };
    HooksBuilder::default()
        .create_runtime(vec![hook("create")?])
        .poststop(vec![hook("delete")?])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_call_create_and_delete_with_timeout() {
        let h = oci_hooks(&HookOptions {
            binary: "/x/cntnr-hook".into(),
            timeout_secs: 12,
            env: vec!["A=b".into()],
        })
        .unwrap();
        let v = serde_json::to_value(&h).unwrap();
        let c = &v["createRuntime"][0];
        assert_eq!(c["path"], "/x/cntnr-hook");
        assert_eq!(c["args"], serde_json::json!(["cntnr-hook", "create"]));
        assert_eq!(c["timeout"], 12);
        assert!(c["env"].as_array().unwrap().contains(&"A=b".into()));
        assert!(c["env"]
            .as_array()
            .unwrap()
            .contains(&"CNTNR_HOOK_TIMEOUT=12".into()));
        assert_eq!(v["poststop"][0]["args"][1], "delete");
        assert!(v.get("prestart").is_none());
    }
}
