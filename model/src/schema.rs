//! Which compose keys cntnr supports, which compose keys it knows but does
//! not support, and typo suggestions for everything else.

use crate::error::ErrorKind;

/// The keys allowed in one mapping of a compose file.
#[derive(Debug)]
pub struct KeySet {
    /// Keys cntnr implements.
    pub supported: &'static [&'static str],
    /// Compose keys cntnr does not implement, with a hint where there is an
    /// alternative.
    pub unsupported: &'static [(&'static str, Option<&'static str>)],
}

impl KeySet {
    /// `None` when `key` is supported (or an `x-` extension); otherwise the
    /// error to report.
    pub fn check(&self, key: &str) -> Option<ErrorKind> {
        if self.supported.contains(&key) || key.starts_with("x-") {
            return None;
        }
        if let Some((_, hint)) = self.unsupported.iter().find(|(k, _)| *k == key) {
            return Some(ErrorKind::UnsupportedKey {
                key: key.to_string(),
                hint: *hint,
            });
        }
        Some(ErrorKind::UnknownKey {
            key: key.to_string(),
            suggestion: suggest(key, self.supported),
        })
    }
}

/// The candidate nearest to `key`, if it is close enough to be a typo
/// (Damerau-Levenshtein distance at most 2, or at most a third of the
/// length for long keys).
pub fn suggest(key: &str, candidates: &[&str]) -> Option<String> {
    let limit = (key.len() / 3).max(2);
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(key, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Top level of a compose file.
pub const TOP: KeySet = KeySet {
    supported: &["services", "networks", "volumes", "name", "version"],
    unsupported: &[
        (
            "secrets",
            Some("use cntnr.env.<VAR>: kv:<key> annotations or a bind mount"),
        ),
        ("configs", Some("use a bind mount")),
        ("include", Some("pass the files with -f")),
        ("models", None),
    ],
};

/// `services.<name>`.
pub const SERVICE: KeySet = KeySet {
    supported: &[
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "working_dir",
        "user",
        "hostname",
        "domainname",
        "labels",
        "annotations",
        "ports",
        "expose",
        "volumes",
        "tmpfs",
        "read_only",
        "cap_add",
        "cap_drop",
        "privileged",
        "ulimits",
        "sysctls",
        "stop_signal",
        "stop_grace_period",
        "restart",
        "healthcheck",
        "depends_on",
        "network_mode",
        "networks",
        "dns",
        "dns_search",
        "extra_hosts",
        "init",
        "pull_policy",
        "deploy",
    ],
    unsupported: &[
        (
            "build",
            Some("build the image elsewhere and use image: NAME or image: oci:PATH"),
        ),
        (
            "container_name",
            Some("container ids are <project>-<service>-<replica>"),
        ),
        ("scale", Some("use deploy.replicas")),
        ("mem_limit", Some("use deploy.resources.limits.memory")),
        ("cpus", Some("use deploy.resources.limits.cpus")),
        ("pids_limit", Some("use deploy.resources.limits.pids")),
        ("profiles", None),
        (
            "links",
            Some("services reach each other by name on their networks"),
        ),
        ("external_links", None),
        ("devices", None),
        ("device_cgroup_rules", None),
        (
            "secrets",
            Some("use cntnr.env.<VAR>: kv:<key> annotations or a bind mount"),
        ),
        ("configs", Some("use a bind mount")),
        (
            "extends",
            Some("use x- fragments with anchors and merge keys"),
        ),
        ("logging", None),
        ("attach", None),
        ("blkio_config", None),
        ("cpu_count", None),
        ("cpu_percent", None),
        ("cpu_shares", None),
        ("cpu_period", None),
        ("cpu_quota", None),
        ("cpu_rt_runtime", None),
        ("cpu_rt_period", None),
        ("cpuset", None),
        ("cgroup", None),
        ("cgroup_parent", None),
        ("credential_spec", None),
        ("develop", None),
        ("dns_opt", None),
        ("driver_opts", None),
        ("gpus", None),
        ("group_add", None),
        ("ipc", None),
        ("isolation", None),
        ("label_file", None),
        ("mac_address", None),
        ("mem_reservation", None),
        ("mem_swappiness", None),
        ("memswap_limit", None),
        ("oom_kill_disable", None),
        ("oom_score_adj", None),
        ("pid", None),
        ("platform", None),
        ("post_start", None),
        ("pre_stop", None),
        ("provider", None),
        ("pull_refresh_after", None),
        ("runtime", None),
        ("security_opt", None),
        ("shm_size", Some("mount a tmpfs at /dev/shm")),
        ("stdin_open", None),
        ("storage_opt", None),
        ("tty", None),
        ("use_api_socket", None),
        ("userns_mode", None),
        ("uts", None),
        ("volumes_from", None),
        ("models", None),
    ],
};

/// `services.<name>.deploy`.
pub const DEPLOY: KeySet = KeySet {
    supported: &[
        "mode",
        "replicas",
        "placement",
        "resources",
        "restart_policy",
        "update_config",
        "rollback_config",
    ],
    unsupported: &[
        ("endpoint_mode", None),
        ("labels", Some("use service labels")),
    ],
};

/// `deploy.placement`.
pub const PLACEMENT: KeySet = KeySet {
    supported: &["constraints", "max_replicas_per_node"],
    unsupported: &[("preferences", None)],
};

/// `deploy.resources`.
pub const RESOURCES: KeySet = KeySet {
    supported: &["limits"],
    unsupported: &[("reservations", None)],
};

/// `deploy.resources.limits`.
pub const LIMITS: KeySet = KeySet {
    supported: &["cpus", "memory", "pids"],
    unsupported: &[("devices", None)],
};

/// `deploy.restart_policy`.
pub const RESTART_POLICY: KeySet = KeySet {
    supported: &["condition", "delay", "max_attempts", "window"],
    unsupported: &[],
};

/// `deploy.update_config`.
pub const UPDATE_CONFIG: KeySet = KeySet {
    supported: &[
        "parallelism",
        "delay",
        "failure_action",
        "monitor",
        "max_failure_ratio",
        "order",
    ],
    unsupported: &[],
};

/// `deploy.rollback_config` (the same keys as `update_config`).
pub const ROLLBACK_CONFIG: KeySet = UPDATE_CONFIG;

/// `services.<name>.healthcheck`.
pub const HEALTHCHECK: KeySet = KeySet {
    supported: &[
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
        "disable",
    ],
    unsupported: &[],
};

/// One `depends_on` entry in long form.
pub const DEPENDS_ON: KeySet = KeySet {
    supported: &["condition", "restart", "required"],
    unsupported: &[],
};

/// One entry of a service's `networks` mapping.
pub const SERVICE_NETWORK: KeySet = KeySet {
    supported: &["aliases"],
    unsupported: &[
        ("ipv4_address", None),
        ("ipv6_address", None),
        ("link_local_ips", None),
        ("mac_address", None),
        ("priority", None),
        ("gw_priority", None),
        ("driver_opts", None),
        ("interface_name", None),
    ],
};

/// A long-syntax `volumes` entry.
pub const MOUNT: KeySet = KeySet {
    supported: &[
        "type",
        "source",
        "target",
        "read_only",
        "bind",
        "volume",
        "tmpfs",
        "consistency",
    ],
    unsupported: &[("image", None)],
};

/// `bind:` of a long-syntax bind mount.
pub const MOUNT_BIND: KeySet = KeySet {
    supported: &["propagation", "create_host_path"],
    unsupported: &[("selinux", None), ("recursive", None)],
};

/// `volume:` of a long-syntax volume mount.
pub const MOUNT_VOLUME: KeySet = KeySet {
    supported: &["nocopy", "subpath"],
    unsupported: &[],
};

/// `tmpfs:` of a long-syntax tmpfs mount.
pub const MOUNT_TMPFS: KeySet = KeySet {
    supported: &["size", "mode"],
    unsupported: &[],
};

/// A `ulimits` entry in soft/hard form.
pub const ULIMIT: KeySet = KeySet {
    supported: &["soft", "hard"],
    unsupported: &[],
};

/// A top-level network.
pub const NETWORK: KeySet = KeySet {
    supported: &["name", "external", "labels", "driver"],
    unsupported: &[
        ("driver_opts", None),
        ("attachable", None),
        ("enable_ipv6", None),
        ("enable_ipv4", None),
        ("ipam", None),
        ("internal", None),
    ],
};

/// A top-level volume.
pub const VOLUME: KeySet = KeySet {
    supported: &["name", "external", "labels", "driver"],
    unsupported: &[("driver_opts", None)],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_suggestions_and_known_keys_say_unsupported() {
        assert_eq!(
            SERVICE.check("imgae").map(|e| e.to_string()).as_deref(),
            Some("unknown key `imgae`, did you mean `image`?")
        );
        assert_eq!(
            SERVICE
                .check("enviroment")
                .map(|e| e.to_string())
                .as_deref(),
            Some("unknown key `enviroment`, did you mean `environment`?")
        );
        assert_eq!(
            SERVICE
                .check("frobnicate")
                .map(|e| e.to_string())
                .as_deref(),
            Some("unknown key `frobnicate`")
        );
        assert_eq!(
            SERVICE.check("build").map(|e| e.to_string()).as_deref(),
            Some("`build` is a compose key that cntnr does not support (build the image elsewhere and use image: NAME or image: oci:PATH)")
        );
        assert!(SERVICE.check("x-anything").is_none());
        assert!(SERVICE.check("image").is_none());
    }
}
