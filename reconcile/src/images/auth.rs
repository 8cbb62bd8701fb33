//! Registry credentials from the docker CLI's `config.json` (`auths` entries with
//! `auth` = base64 `user:password`, or `username`/`password`). Credential
//! helpers (`credsStore`, `credHelpers`) are not run.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub(super) fn default_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The credentials for `registry` (as in a reference: `docker.io`, `host:port`).
/// Anonymous when there are none or the file does not parse.
pub(super) fn lookup(config: Option<&Path>, registry: &str) -> RegistryAuth {
    let Some(path) = config else {
        return RegistryAuth::Anonymous;
    };
    let Ok(data) = std::fs::read(path) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(cfg) = serde_json::from_slice::<DockerConfig>(&data) else {
        return RegistryAuth::Anonymous;
    };
    let docker_hub = matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    );
    let entry = cfg.auths.iter().find(|(k, _)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        host == registry
            || (docker_hub
                && matches!(
                    host,
                    "index.docker.io" | "docker.io" | "registry-1.docker.io"
                ))
    });
    let Some((_, e)) = entry else {
        return RegistryAuth::Anonymous;
    };
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return RegistryAuth::Basic(u.clone(), p.clone());
    }
    if let Some(a) = &e.auth {
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a.trim()) {
            if let Ok(s) = String::from_utf8(raw) {
                if let Some((u, p)) = s.split_once(':') {
                    return RegistryAuth::Basic(u.to_string(), p.to_string());
                }
            }
        }
    }
    RegistryAuth::Anonymous
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_private_hosts_resolve_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"reg.example:5000":{{"username":"bob","password":"pw"}}}}}}"#),
        )
        .unwrap();
        assert!(
            matches!(lookup(Some(&p), "docker.io"), RegistryAuth::Basic(u, pw) if u == "alice" && pw == "s3cret")
        );
        assert!(
            matches!(lookup(Some(&p), "reg.example:5000"), RegistryAuth::Basic(u, _) if u == "bob")
        );
        assert!(matches!(
            lookup(Some(&p), "other.example"),
            RegistryAuth::Anonymous
        ));
    }
}
