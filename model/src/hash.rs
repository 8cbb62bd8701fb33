//! The config hash of a service: a stable, versioned digest of exactly the
//! fields that shape a running container, so the agent recreates a
//! container when, and only when, one of them changes.
//!
//! Format: `v1-<64 hex digits of SHA-256>` over the canonical JSON of
//! [`HashInput`] (fixed field order, maps sorted by key). The version
//! prefix changes whenever the set of fields or their encoding changes, so
//! an agent can tell "the spec changed" from "the hash scheme changed".
//!
//! Covered (they are baked into the OCI bundle or the network setup):
//! image, command, entrypoint, environment (with `env_file` inlined),
//! working_dir, user, hostname, ports, mounts (volumes and tmpfs),
//! read_only, cap_add, cap_drop, privileged, ulimits, sysctls, init,
//! network_mode, networks (with aliases), dns, dns_search, extra_hosts,
//! resource limits (cpus, memory, pids), non-`cntnr.*` annotations (they
//! are written into `config.json`), and the `cntnr.*` annotations that
//! change what the agent injects into the container (`cntnr.env.*`,
//! `cntnr.env-on-change`, `cntnr.election`).
//!
//! Not covered (the agent applies them without recreating containers, or
//! they are metadata): `deploy.replicas`, `deploy.mode`, placement,
//! `update_config`, `rollback_config`, `restart`, `deploy.restart_policy`, `healthcheck` (the
//! agent runs checks itself), `depends_on`, `labels`, `expose`,
//! `stop_signal`, `stop_grace_period`, `pull_policy`, registration and
//! check annotations (`cntnr.service.*`, `cntnr.check.*`, `cntnr.drain`,
//! `cntnr.env-missing`). Key order, comments, anchors and short-versus-long
//! syntax never change the hash, because it is computed from the
//! normalized [`ServiceSpec`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{
    ExtraHost, Limits, Mount, NetworkMode, PortMapping, ServiceNetwork, ServiceSpec, Ulimit,
};

/// The current hash scheme.
pub const HASH_VERSION: &str = "v1";

/// A config hash, `v1-<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigHash(String);

impl TryFrom<String> for ConfigHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ConfigHash::parse(&s)
            .ok_or_else(|| format!("invalid config hash {s:?}: expected v<N>-<64 hex digits>"))
    }
}

impl From<ConfigHash> for String {
    fn from(h: ConfigHash) -> String {
        h.0
    }
}

impl ConfigHash {
    /// The hash as text (what goes into the `cntnr.config-hash` annotation).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a hash read back from an annotation or a record; `None` if it
    /// is not `v<N>-<64 hex>`.
    pub fn parse(s: &str) -> Option<ConfigHash> {
        let (v, hex) = s.split_once('-')?;
        let ok = v.len() >= 2
            && v.starts_with('v')
            && v[1..].chars().all(|c| c.is_ascii_digit())
            && hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        ok.then(|| ConfigHash(s.to_string()))
    }
}

impl fmt::Display for ConfigHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the hash covers; its canonical JSON is what is digested.
#[derive(Debug, Serialize)]
pub struct HashInput<'a> {
    image: String,
    command: &'a Option<Vec<String>>,
    entrypoint: &'a Option<Vec<String>>,
    environment: &'a BTreeMap<String, String>,
    working_dir: &'a Option<String>,
    user: &'a Option<String>,
    hostname: &'a Option<String>,
    /// Left out when unset, so hashes from before it existed stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    domainname: &'a Option<String>,
    ports: &'a [PortMapping],
    mounts: &'a [Mount],
    read_only: bool,
    cap_add: &'a [String],
    cap_drop: &'a [String],
    privileged: bool,
    ulimits: &'a BTreeMap<String, Ulimit>,
    sysctls: &'a BTreeMap<String, String>,
    init: bool,
    network_mode: NetworkMode,
    networks: &'a BTreeMap<String, ServiceNetwork>,
    dns: &'a [IpAddr],
    dns_search: &'a [String],
    extra_hosts: &'a [ExtraHost],
    limits: &'a Limits,
    annotations: BTreeMap<&'a str, &'a str>,
}

/// `cntnr.*` annotations that change the container itself.
fn annotation_in_hash(key: &str) -> bool {
    !key.starts_with("cntnr.")
        || key.starts_with("cntnr.env.")
        || key == "cntnr.env-on-change"
        || key == "cntnr.election"
}

impl<'a> HashInput<'a> {
    /// The hashed view of a service.
    pub fn of(s: &'a ServiceSpec) -> Self {
        HashInput {
            image: s.image.to_string(),
            command: &s.command,
            entrypoint: &s.entrypoint,
            environment: &s.environment,
            working_dir: &s.working_dir,
            user: &s.user,
            hostname: &s.hostname,
            domainname: &s.domainname,
            ports: &s.ports,
            mounts: &s.volumes,
            read_only: s.read_only,
            cap_add: &s.cap_add,
            cap_drop: &s.cap_drop,
            privileged: s.privileged,
            ulimits: &s.ulimits,
            sysctls: &s.sysctls,
            init: s.init,
            network_mode: s.network_mode,
            networks: &s.networks,
            dns: &s.dns,
            dns_search: &s.dns_search,
            extra_hosts: &s.extra_hosts,
            limits: &s.deploy.resources.limits,
            annotations: s
                .annotations
                .iter()
                .filter(|(k, _)| annotation_in_hash(k))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        }
    }
}

/// The config hash of a service. Pure and deterministic: equal specs give
/// equal hashes on every machine and every run.
pub fn config_hash(spec: &ServiceSpec) -> ConfigHash {
    // Serializing plain data to JSON cannot fail (no non-string map keys,
    // no failing Serialize impls); fall back to Debug text to stay total.
    let bytes = serde_json::to_vec(&HashInput::of(spec))
        .unwrap_or_else(|_| format!("{:?}", HashInput::of(spec)).into_bytes());
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    ConfigHash(format!("{HASH_VERSION}-{hex}"))
}

impl ServiceSpec {
    /// See [`config_hash`].
    pub fn config_hash(&self) -> ConfigHash {
        config_hash(self)
    }
}
