//! Reaching the store: the flags both binaries share (`--store`,
//! `--prefix`, `--state-dir`, TLS files, credentials), their defaults, and
//! turning them into a [`StoreUrl`] + [`ConnectOptions`].
//!
//! Credentials come only from the environment (`CONSUL_HTTP_TOKEN`,
//! `ETCD_PASSWORD`) or from files (`--consul-token-file`), never from a URL,
//! and are held as [`Secret`]s so no `Debug`/log line can print them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use cntnr_kv::{ConnectOptions, DynStore, Secret, StoreUrl};
use cntnr_model::Prefix;

/// TLS and credential flags (global in `cntnr`, plain in `cntnr-agent`).
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// CA bundle (PEM) for etcd+https:// and consul+https:// stores.
    #[arg(long = "ca", id = "connect_ca", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "cert", id = "connect_cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "key", id = "connect_key", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// File holding the Consul ACL token (wins over CONSUL_HTTP_TOKEN);
    /// re-read by the agent on SIGHUP.
    #[arg(
        long = "consul-token-file",
        id = "connect_consul_token_file",
        global = true,
        value_name = "FILE"
    )]
    pub consul_token_file: Option<PathBuf>,
    /// etcd user; the password comes from ETCD_PASSWORD.
    #[arg(
        long = "etcd-user",
        id = "connect_etcd_user",
        global = true,
        value_name = "USER"
    )]
    pub etcd_user: Option<String>,
}

/// Everything needed to open the store, resolved from flags, environment
/// and defaults.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Which store.
    pub url: StoreUrl,
    /// Key prefix.
    pub prefix: Prefix,
    /// TLS files and credentials.
    pub options: ConnectOptions,
}

/// The default state dir: `/var/lib/cntnr` as root, else
/// `$XDG_DATA_HOME/cntnr` or `~/.local/share/cntnr`.
pub fn default_state_dir() -> PathBuf {
    if rootless() {
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("cntnr");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return PathBuf::from(h).join(".local/share/cntnr");
        }
    }
    PathBuf::from("/var/lib/cntnr")
}

/// Whether this process runs without root.
pub fn rootless() -> bool {
    !rustix::process::geteuid().is_root()
}

/// Parses a `--prefix`.
pub fn parse_prefix(s: &str) -> Result<Prefix> {
    Prefix::new(s).map_err(|e| anyhow::anyhow!("--prefix: {e}"))
}

impl StoreConfig {
    /// Resolves the store from `--store` (or its default
    /// `dir://<state-dir>/store`), `--prefix` and the connect flags; reads
    /// the credential files and environment now.
    pub fn resolve(
        store: Option<&str>,
        prefix: &str,
        state_dir: Option<&Path>,
        conn: &ConnectArgs,
    ) -> Result<StoreConfig> {
        let prefix = parse_prefix(prefix)?;
        let url = match store {
            Some(s) => StoreUrl::parse(s)?,
            None => {
                let dir = state_dir
                    .map(Path::to_path_buf)
                    .unwrap_or_else(default_state_dir);
                let dir = std::path::absolute(&dir)
                    .with_context(|| format!("state dir {}", dir.display()))?;
                StoreUrl::Dir {
                    root: dir.join("store"),
                }
            }
        };
        let mut options = ConnectOptions {
            ca: conn.ca.clone(),
            cert: conn.cert.clone(),
            key: conn.key.clone(),
            registry_prefix: format!("{prefix}/services"),
            ..ConnectOptions::default()
        };
        if conn.cert.is_some() != conn.key.is_some() {
            bail!("--cert and --key go together");
        }
        read_credentials(conn, &mut options)?;
        Ok(StoreConfig {
            url,
            prefix,
            options,
        })
    }

    /// Re-reads the credential files and environment (SIGHUP). Returns true
    /// when anything changed.
    pub fn reload_credentials(&mut self, conn: &ConnectArgs) -> Result<bool> {
        let mut fresh = self.options.clone();
        read_credentials(conn, &mut fresh)?;
        let changed = fresh.consul_token != self.options.consul_token
            || fresh.etcd_user != self.options.etcd_user;
        self.options = fresh;
        Ok(changed)
    }

    /// Opens the store. `connect_timeout` bounds how long an unreachable
    /// server is waited for (`None`: forever, logging each wait).
    pub async fn connect(&self, connect_timeout: Option<Duration>) -> Result<DynStore> {
        let opts = ConnectOptions {
            connect_timeout,
            ..self.options.clone()
        };
        cntnr_kv::connect(&self.url, &opts)
            .await
            .with_context(|| format!("opening store {}", self.url))
    }

    /// `<prefix>/leader`.
    pub fn leader_key(&self) -> String {
        cntnr_model::StoreKey::Leader.render(&self.prefix)
    }
}

fn read_credentials(conn: &ConnectArgs, options: &mut ConnectOptions) -> Result<()> {
    options.consul_token = match &conn.consul_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --consul-token-file {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                bail!("--consul-token-file {} is empty", path.display());
            }
            Some(Secret::new(token))
        }
        None => std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .map(Secret::new),
    };
    options.etcd_user = match &conn.etcd_user {
        Some(user) => {
            let password = std::env::var("ETCD_PASSWORD").map_err(|_| {
                anyhow::anyhow!("--etcd-user {user} needs ETCD_PASSWORD in the environment")
            })?;
            Some((user.clone(), Secret::new(password)))
        }
        None => None,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_store_is_a_dir_under_the_state_dir() {
        let c = StoreConfig::resolve(
            None,
            "cntnr",
            Some(Path::new("/srv/state")),
            &ConnectArgs::default(),
        )
        .unwrap();
        assert_eq!(
            c.url,
            StoreUrl::Dir {
                root: "/srv/state/store".into()
            }
        );
        assert_eq!(c.options.registry_prefix, "cntnr/services");
        assert_eq!(c.leader_key(), "cntnr/leader");
    }

    #[test]
    fn explicit_store_prefix_and_errors() {
        let c = StoreConfig::resolve(
            Some("etcd://127.0.0.1:2379"),
            "team/a",
            None,
            &ConnectArgs::default(),
        )
        .unwrap();
        assert_eq!(c.prefix.as_str(), "team/a");
        assert_eq!(c.options.registry_prefix, "team/a/services");
        for (store, prefix) in [("redis://x:1", "cntnr"), ("etcd://h:1", "a/../b")] {
            let e = StoreConfig::resolve(Some(store), prefix, None, &ConnectArgs::default())
                .unwrap_err();
            assert!(!format!("{e:#}").contains('\n'), "{e:#}");
        }
    }

    #[test]
    fn token_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-token\n").unwrap();
        let conn = ConnectArgs {
            consul_token_file: Some(file.clone()),
            ..ConnectArgs::default()
        };
        let mut c =
            StoreConfig::resolve(Some("consul://127.0.0.1:8500"), "cntnr", None, &conn).unwrap();
        assert_eq!(
            c.options.consul_token.as_ref().map(Secret::expose),
            Some("s3cret-token")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.reload_credentials(&conn).unwrap());
        std::fs::write(&file, "other").unwrap();
        assert!(c.reload_credentials(&conn).unwrap());
        std::fs::write(&file, "").unwrap();
        assert!(c.reload_credentials(&conn).is_err());
    }
}
