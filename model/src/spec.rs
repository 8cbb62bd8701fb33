//! The normalized project: every short form resolved, every value typed.
//!
//! A [`Project`] is what the rest of cntnr works with. It is produced only by
//! the loader ([`crate::load_files`] and friends), which guarantees that every name, path,
//! port, duration and size in it has been validated.
//!
//! `Serialize` writes a project back as a compose file in long syntax
//! (durations as `1m30s`, memory in bytes, ports and volumes as mappings),
//! which the loader reads back to an equal project: that text is what
//! `cntnr validate` prints and what `cntnr deploy` stores.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::annotations::AgentSettings;
use crate::names::{ProjectName, ServiceName};
use crate::units::format_duration;

/// A compose project after interpolation, merging, validation and
/// normalization.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    /// The project name (`-p`, else top-level `name:`, else the directory of
    /// the first file, normalized).
    pub name: ProjectName,
    /// The services, by name.
    pub services: BTreeMap<ServiceName, ServiceSpec>,
    /// Networks declared at the top level, plus `default` when a service
    /// uses the default bridge network.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Named volumes declared at the top level.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Harmless problems (e.g. a variable referenced but not set, which
    /// became the empty string). Not part of the compose text.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Project {
    /// The service named `name`, if any.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name)
    }

    /// The name `service` registers under: its `cntnr.service.name`
    /// annotation, else `<project>-<service>`.
    pub fn registered_name(&self, service: &ServiceName) -> Option<crate::names::RegisteredName> {
        let spec = self.services.get(service)?;
        Some(
            spec.agent
                .service_name
                .clone()
                .unwrap_or_else(|| crate::names::RegisteredName::default_for(&self.name, service)),
        )
    }
}

/// One service: everything the runtime needs to create its containers and
/// everything the scheduler needs to place them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSpec {
    /// The image to run.
    pub image: ImageRef,
    /// Replaces the image's `Cmd`; `None` keeps the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's `Entrypoint`; `None` keeps the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The environment, with `env_file` contents inlined (explicit
    /// `environment` entries win over `env_file` ones).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Working directory inside the container (absolute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `user[:group]`, by name or id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The container's hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The container's NIS domain name (`domainname`): the UTS domain, and
    /// `hostname.domainname` in its /etc/hosts.
    pub domainname: Option<String>,
    /// Labels (metadata; used for registration, not applied to the container).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// OCI annotations; `cntnr.*` ones drive the agent (see
    /// [`ServiceSpec::agent`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Published ports, one entry per target port (ranges expanded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Ports exposed without publishing (ranges expanded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ExposedPort>,
    /// Mounts: binds, named/anonymous volumes and tmpfs (including the
    /// service's `tmpfs:` entries), in order, unique by target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    /// Read-only root filesystem.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Capabilities added, as `CAP_…` (or `ALL`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped, as `CAP_…` (or `ALL`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Privileged container (refused by the agent unless `--allow-privileged`).
    #[serde(skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// Resource limits by name (`nofile`, `nproc`, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Namespaced kernel parameters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Signal that stops the container, canonical (`SIGTERM`) or a number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub stop_grace_period: Option<Duration>,
    /// The container restart policy (`restart:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// The health check, with defaults filled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Services this one waits for, with the condition to wait for.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<ServiceName, Dependency>,
    /// `host`, `none`, or the default bridge networking.
    #[serde(skip_serializing_if = "NetworkMode::is_bridge")]
    pub network_mode: NetworkMode,
    /// Networks the service joins (with bridge networking; `default` when
    /// none is named).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// DNS servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// DNS search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// Extra `/etc/hosts` entries.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<ExtraHost>,
    /// Run an init process as PID 1.
    #[serde(skip_serializing_if = "is_false")]
    pub init: bool,
    /// When to pull the image.
    #[serde(skip_serializing_if = "PullPolicy::is_default")]
    pub pull_policy: PullPolicy,
    /// Placement, replicas, limits, restart and update policy.
    pub deploy: Deploy,
    /// The agent settings parsed from `cntnr.*` annotations (already in
    /// `annotations`, so not serialized again).
    #[serde(skip)]
    pub agent: AgentSettings,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

/// An image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageRef {
    /// `name[:tag|@digest]` from a registry, as written (docker.io and
    /// `library/` defaults are applied when pulling).
    Registry(String),
    /// `oci:PATH[:TAG]`: an OCI image layout directory. A relative `PATH`
    /// is resolved against the project directory when the project is
    /// loaded, so `path` is always absolute.
    OciLayout {
        /// Absolute path of the layout directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`), if given.
        tag: Option<String>,
    },
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => f.write_str(r),
            ImageRef::OciLayout { path, tag: None } => write!(f, "oci:{}", path.display()),
            ImageRef::OciLayout { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
        }
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An inclusive range of host ports; `start == end` for a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (≥ `start`).
    pub end: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// How a published port is bound. cntnr binds published ports on the node
/// that runs the replica in both modes (there is no routing mesh); `ingress`
/// is accepted because it is compose's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// compose's default.
    #[default]
    Ingress,
    /// Bound on the host running the container.
    Host,
}

/// A container port, optionally published on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortMapping {
    /// Port inside the container.
    pub target: u16,
    /// Host port (or range to pick one from); `None` means an ephemeral
    /// host port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<PortRange>,
    /// Host address to bind; `None` means all addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// See [`PortMode`].
    #[serde(skip_serializing_if = "is_default_mode")]
    pub mode: PortMode,
    /// A name for the port (metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The application protocol (metadata, e.g. `http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

fn is_default_mode(m: &PortMode) -> bool {
    *m == PortMode::Ingress
}

/// An exposed (not published) port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExposedPort {
    /// The container port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
}

impl Serialize for ExposedPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}/{}", self.port, self.protocol))
    }
}

/// A mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    /// A host path (absolute, no `..`; refused by the agent outside
    /// `--allow-host-path` prefixes).
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Absolute container path.
        target: String,
        /// Mounted read-only.
        #[serde(skip_serializing_if = "is_false")]
        read_only: bool,
        /// Bind options.
        #[serde(skip_serializing_if = "BindOptions::is_default")]
        bind: BindOptions,
    },
    /// A named volume (declared at the top level) or, with no source, an
    /// anonymous volume.
    Volume {
        /// The volume name; `None` for an anonymous volume.
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// Absolute container path.
        target: String,
        /// Mounted read-only.
        #[serde(skip_serializing_if = "is_false")]
        read_only: bool,
        /// Volume options.
        #[serde(skip_serializing_if = "VolumeOptions::is_default")]
        volume: VolumeOptions,
    },
    /// A tmpfs.
    Tmpfs {
        /// Absolute container path.
        target: String,
        /// tmpfs options.
        #[serde(skip_serializing_if = "TmpfsOptions::is_default")]
        tmpfs: TmpfsOptions,
    },
}

impl Mount {
    /// The container path.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. }
            | Mount::Volume { target, .. }
            | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// Options of a bind mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BindOptions {
    /// Mount propagation (`rprivate`, `private`, `rshared`, `shared`,
    /// `rslave`, `slave`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// Create the host path if it is missing (compose's default for the
    /// short syntax).
    #[serde(skip_serializing_if = "is_false")]
    pub create_host_path: bool,
}

impl BindOptions {
    fn is_default(&self) -> bool {
        *self == BindOptions::default()
    }
}

/// Options of a volume mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VolumeOptions {
    /// Do not copy the image's content at the target into a new volume.
    #[serde(skip_serializing_if = "is_false")]
    pub nocopy: bool,
    /// Mount only this path inside the volume (relative, no `..`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
}

impl VolumeOptions {
    fn is_default(&self) -> bool {
        *self == VolumeOptions::default()
    }
}

/// Options of a tmpfs mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TmpfsOptions {
    /// Size limit in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// File mode of the mount's root.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_mode"
    )]
    pub mode: Option<u32>,
}

impl TmpfsOptions {
    fn is_default(&self) -> bool {
        *self == TmpfsOptions::default()
    }
}

fn ser_opt_mode<S: Serializer>(m: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(&format!("{m:o}")),
        None => s.serialize_none(),
    }
}

/// A resource limit; `-1` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ulimit {
    /// Soft limit.
    pub soft: i64,
    /// Hard limit (≥ soft unless unlimited).
    pub hard: i64,
}

/// `restart:` (compose's container restart policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart.
    Always,
    /// Restart on a non-zero exit, at most `max_retries` times if given.
    OnFailure {
        /// Retry cap.
        max_retries: Option<u32>,
    },
    /// Always restart unless an operator stopped it.
    UnlessStopped,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure { max_retries: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure {
                max_retries: Some(n),
            } => write!(f, "on-failure:{n}"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl Serialize for RestartPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `NONE` or `disable: true`: the image's check is disabled.
    Disabled,
    /// `CMD`: exec these arguments.
    Cmd(Vec<String>),
    /// `CMD-SHELL` (or a plain string): run with `/bin/sh -c`.
    Shell(String),
}

impl Serialize for HealthTest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<&str> = match self {
            HealthTest::Disabled => vec!["NONE"],
            HealthTest::Cmd(args) => std::iter::once("CMD")
                .chain(args.iter().map(String::as_str))
                .collect(),
            HealthTest::Shell(cmd) => vec!["CMD-SHELL", cmd],
        };
        v.serialize(s)
    }
}

/// A health check with compose's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// The test; `None` keeps the image's test with these timings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<HealthTest>,
    /// Time between checks (default 30s).
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Time a check may take (default 30s).
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Consecutive failures before unhealthy (default 3).
    pub retries: u32,
    /// Initialization time during which failures do not count (default 0s).
    #[serde(serialize_with = "ser_duration")]
    pub start_period: Duration,
    /// Time between checks during the start period (default 5s).
    #[serde(serialize_with = "ser_duration")]
    pub start_interval: Duration,
}

impl Healthcheck {
    /// Compose's default timings.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Compose's default timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Compose's default retries.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// Compose's default start interval.
    pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
}

/// What `depends_on` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    /// The dependency's containers are running (the default).
    #[default]
    ServiceStarted,
    /// The dependency's containers are healthy.
    ServiceHealthy,
    /// The dependency ran to completion with exit code 0.
    ServiceCompletedSuccessfully,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dependency {
    /// What to wait for.
    pub condition: DependencyCondition,
    /// Restart this service when the dependency is updated.
    pub restart: bool,
    /// When false, a missing dependency is only a warning.
    pub required: bool,
}

/// `network_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The default: the project's bridge networks through CNI.
    #[default]
    Bridge,
    /// The host's network namespace (refused unless `--allow-host-network`).
    Host,
    /// Only a loopback interface.
    None,
}

impl NetworkMode {
    fn is_bridge(&self) -> bool {
        *self == NetworkMode::Bridge
    }
}

/// A service's attachment to one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceNetwork {
    /// Extra DNS names of the service on this network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// An `/etc/hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExtraHost {
    /// The host name.
    pub host: String,
    /// Its address.
    pub ip: IpAddr,
}

impl Serialize for ExtraHost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}={}", self.host, self.ip))
    }
}

/// `pull_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull when the image is not in the local store (the default;
    /// `if_not_present` is the same).
    #[default]
    Missing,
    /// Pull every time a container is created.
    Always,
    /// Never pull; fail if the image is missing.
    Never,
}

impl PullPolicy {
    fn is_default(&self) -> bool {
        *self == PullPolicy::Missing
    }
}

/// `deploy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// `deploy.replicas` replicas spread over eligible nodes.
    #[default]
    Replicated,
    /// One replica on every eligible node.
    Global,
}

/// `deploy`. Serialized without `replicas` in global mode (compose
/// rejects that combination).
#[derive(Debug, Clone, PartialEq)]
pub struct Deploy {
    /// Replicated or global.
    pub mode: DeployMode,
    /// Number of replicas (replicated mode; default 1; 0 is allowed and
    /// stops the service).
    pub replicas: u32,
    /// Where replicas may run.
    pub placement: Placement,
    /// Resource limits.
    pub resources: Resources,
    /// Swarm-style restart policy, if given.
    pub restart_policy: Option<DeployRestartPolicy>,
    /// How updates roll out. `None` when the compose file has no
    /// `update_config` key: such a service is updated all at once; with the
    /// key (even one equal to swarm's defaults), replica by replica.
    pub update_config: Option<UpdateConfig>,
    /// How a rollback rolls out (`deploy.rollback_config`); `None`: swarm's
    /// rollback defaults ([`UpdateConfig::default`], the same values).
    pub rollback_config: Option<UpdateConfig>,
}

impl Deploy {
    /// The rollback settings in effect: `rollback_config`, else swarm's
    /// rollback defaults.
    pub fn rollback(&self) -> UpdateConfig {
        self.rollback_config.clone().unwrap_or_default()
    }
}

impl Serialize for Deploy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("mode", &self.mode)?;
        if self.mode == DeployMode::Replicated {
            m.serialize_entry("replicas", &self.replicas)?;
        }
        if !self.placement.is_default() {
            m.serialize_entry("placement", &self.placement)?;
        }
        if !self.resources.is_default() {
            m.serialize_entry("resources", &self.resources)?;
        }
        if let Some(r) = &self.restart_policy {
            m.serialize_entry("restart_policy", r)?;
        }
        if let Some(u) = &self.update_config {
            m.serialize_entry("update_config", u)?;
        }
        if let Some(r) = &self.rollback_config {
            m.serialize_entry("rollback_config", r)?;
        }
        m.end()
    }
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            mode: DeployMode::Replicated,
            replicas: 1,
            placement: Placement::default(),
            resources: Resources::default(),
            restart_policy: None,
            update_config: None,
            rollback_config: None,
        }
    }
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// All must hold on a node for a replica to run there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// At most this many replicas of the service on one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

impl Placement {
    fn is_default(&self) -> bool {
        *self == Placement::default()
    }
}

/// What a placement constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConstraintAttr {
    /// `node.hostname` (the node name).
    Hostname,
    /// `node.labels.<key>` (from `--node-label`).
    Label(String),
}

/// A placement constraint: `node.hostname==x`, `node.labels.k!=v`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Constraint {
    /// The node attribute.
    pub attr: ConstraintAttr,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// The value compared with.
    pub value: String,
}

impl Constraint {
    /// Whether a node with this name and these labels satisfies the
    /// constraint. A missing label is unequal to every value.
    pub fn matches(&self, hostname: &str, labels: &BTreeMap<String, String>) -> bool {
        let actual = match &self.attr {
            ConstraintAttr::Hostname => Some(hostname),
            ConstraintAttr::Label(k) => labels.get(k).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attr = match &self.attr {
            ConstraintAttr::Hostname => "node.hostname".to_string(),
            ConstraintAttr::Label(k) => format!("node.labels.{k}"),
        };
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{attr}{op}{}", self.value)
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    /// Hard limits.
    #[serde(skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
}

impl Resources {
    fn is_default(&self) -> bool {
        *self == Resources::default()
    }
}

/// `deploy.resources.limits`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    /// CPUs (fractional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Maximum number of processes (`-1` unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
    }

    /// The cpu limit in millicpus (`0.5` → 500), as cgroup quotas want it.
    pub fn millicpus(&self) -> Option<u64> {
        self.cpus.map(|c| (c * 1000.0).round() as u64)
    }
}

/// `deploy.restart_policy.condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never restart.
    None,
    /// Restart on a non-zero exit.
    OnFailure,
    /// Always restart.
    Any,
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeployRestartPolicy {
    /// When to restart (default `any`).
    pub condition: RestartCondition,
    /// Wait between restarts (default 5s).
    #[serde(serialize_with = "ser_duration")]
    pub delay: Duration,
    /// Give up after this many restarts within `window` (default: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The window `max_attempts` counts in (default: unbounded).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub window: Option<Duration>,
}

/// `deploy.update_config.failure_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop rolling out (the default).
    #[default]
    Pause,
    /// Carry on with the next batch.
    Continue,
    /// Go back to the previous configuration.
    Rollback,
}

/// `deploy.update_config.order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old replica, then start the new one (the default).
    #[default]
    StopFirst,
    /// Start the new replica, then stop the old one.
    StartFirst,
}

/// `deploy.update_config` (or `deploy.rollback_config`), with swarm's
/// defaults (the same for updates and rollbacks: parallelism 1, delay 0s,
/// `pause`, monitor 5s, ratio 0, `stop-first`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateConfig {
    /// Replicas updated at once (default 1; 0 means all at once).
    pub parallelism: u32,
    /// Wait between batches (default 0s).
    #[serde(serialize_with = "ser_duration")]
    pub delay: Duration,
    /// What to do when an update fails (default `pause`).
    pub failure_action: FailureAction,
    /// How long to watch a new replica for failure (default 5s).
    #[serde(serialize_with = "ser_duration")]
    pub monitor: Duration,
    /// Tolerated fraction of failed updates, 0 to 1 (default 0).
    pub max_failure_ratio: f64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::ZERO,
            failure_action: FailureAction::Pause,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    /// Name on the host (default `<project>_<key>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Created outside cntnr; never created or removed by it.
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A top-level named volume (a directory under the agent's state dir).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    /// Name on the host (default `<project>_<key>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Created outside cntnr; never created or removed by it.
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}
