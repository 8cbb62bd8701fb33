//! The `cntnr.*` annotations that drive the agent (SPEC "Annotations that
//! drive the agent"), parsed and validated into [`AgentSettings`].
//!
//! Every `cntnr.` annotation must be one SPEC defines; a misspelled one is
//! an error with a suggestion (it would otherwise silently do nothing), and
//! the ones the agent sets itself on containers are reserved.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::keys::ConfigKey;
use crate::names::{RegisteredName, ServiceName};
use crate::units::parse_duration;

/// Where the value of a synced environment variable comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", content = "name", rename_all = "lowercase")]
pub enum EnvSource {
    /// `kv:<key>`: the value of `config/<project>/<key>`.
    Kv(ConfigKey),
    /// `service:<name>`: `addr:port,…` of the passing instances of a
    /// registered service, sorted.
    Service(RegisteredName),
    /// `leader:<service>`: the address of the elected replica of a service
    /// of this project.
    Leader(ServiceName),
}

/// `cntnr.env-on-change`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvOnChange {
    /// Recreate replicas one at a time, each waiting for the previous to be
    /// healthy (the default).
    #[default]
    Restart,
    /// Send this signal (canonical name) and write `/run/cntnr/env`.
    Signal(String),
    /// Do nothing.
    None,
}

/// `cntnr.env-missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvMissing {
    /// Do not start the container; status says which key (the default).
    #[default]
    Wait,
    /// Start with the variable empty.
    Empty,
    /// Report a failure.
    Fail,
}

/// `cntnr.check.http`: `/path` probes the service's first container port,
/// `PORT/path` a given port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    /// The container port to probe; `None` means the first port of
    /// `ports` (else `expose`).
    pub port: Option<u16>,
    /// The request path, starting with `/`.
    pub path: String,
}

/// Everything the `cntnr.*` annotations of a service say.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct AgentSettings {
    /// `cntnr.env.<VAR>`: synced variables.
    pub env: BTreeMap<String, EnvSource>,
    /// `cntnr.env-on-change`.
    pub env_on_change: EnvOnChange,
    /// `cntnr.env-missing`.
    pub env_missing: EnvMissing,
    /// `cntnr.election`.
    pub election: bool,
    /// `cntnr.service.name` (default `<project>-<service>`).
    pub service_name: Option<RegisteredName>,
    /// `cntnr.service.tags`.
    pub service_tags: Vec<String>,
    /// `cntnr.check.http`.
    pub check_http: Option<HttpCheck>,
    /// `cntnr.check.tcp`: a container port.
    pub check_tcp: Option<u16>,
    /// `cntnr.drain` (default 0s).
    pub drain: Duration,
    /// `cntnr.health.on-failure`: what an unhealthy container gets.
    pub health_on_failure: HealthOnFailure,
    /// `cntnr.reschedule-after`: how long the leader keeps a replica on a
    /// node that left `nodes/` before moving it elsewhere; `None` means
    /// [`DEFAULT_RESCHEDULE_AFTER`]. Use [`AgentSettings::reschedule_after`].
    pub reschedule_after: Option<Duration>,
    /// `cntnr.on-disconnect`: what a node that lost the store does with
    /// this service's containers.
    pub on_disconnect: OnDisconnect,
}

/// The grace period of `cntnr.reschedule-after` when it is not set.
pub const DEFAULT_RESCHEDULE_AFTER: Duration = Duration::from_secs(30);

impl AgentSettings {
    /// `cntnr.reschedule-after`, or its default (30 s).
    pub fn reschedule_after(&self) -> Duration {
        self.reschedule_after.unwrap_or(DEFAULT_RESCHEDULE_AFTER)
    }
}

/// `cntnr.on-disconnect`: `keep` (default: a node that loses the store
/// keeps the containers running) or `stop-after:<duration>` (it stops them
/// once it has been disconnected that long; for singletons that must never
/// run twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDisconnect {
    /// Keep running.
    #[default]
    Keep,
    /// Stop after this long disconnected.
    StopAfter(Duration),
}

/// `cntnr.health.on-failure`: `restart` (default: an unhealthy container is
/// restarted per its restart policy, as if it had failed) or `none` (health
/// is only reported and registered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthOnFailure {
    /// Restart per the restart policy.
    #[default]
    Restart,
    /// Only report it.
    None,
}

/// Annotations the agent writes on every container; a compose file may not
/// set them.
pub const RESERVED: &[&str] = &[
    "cntnr.project",
    "cntnr.service",
    "cntnr.replica",
    "cntnr.config-hash",
    "cntnr.node",
];

const KNOWN: &[&str] = &[
    "cntnr.env-on-change",
    "cntnr.env-missing",
    "cntnr.election",
    "cntnr.service.name",
    "cntnr.service.tags",
    "cntnr.check.http",
    "cntnr.check.tcp",
    "cntnr.drain",
    "cntnr.health.on-failure",
    "cntnr.reschedule-after",
    "cntnr.on-disconnect",
];

fn parse_port(v: &str) -> Option<u16> {
    v.parse::<u16>().ok().filter(|p| *p > 0)
}

/// Parses the `cntnr.*` annotations of a service. Errors are
/// `(annotation key, message)`, one per bad annotation.
pub fn parse_agent_settings(
    annotations: &BTreeMap<String, String>,
) -> (AgentSettings, Vec<(String, String)>) {
    let mut s = AgentSettings::default();
    let mut errors = Vec::new();
    for (key, value) in annotations {
        let Some(_) = key.strip_prefix("cntnr.") else {
            continue;
        };
        let mut err = |msg: String| errors.push((key.clone(), msg));
        if let Some(var) = key.strip_prefix("cntnr.env.") {
            if let Err(e) = crate::validate::check_env_name(var) {
                err(e);
                continue;
            }
            let source = if let Some(k) = value.strip_prefix("kv:") {
                match ConfigKey::new(k) {
                    // Stricter than a `..` segment: no key that even looks
                    // like a way out of config/<project>/.
                    Ok(_) if k.contains("..") => Err(format!(
                        "invalid config key {k:?}: must not contain `..` (a project reads only its own config/<project>/ keys)"
                    )),
                    r => r.map(EnvSource::Kv).map_err(|e| e.to_string()),
                }
            } else if let Some(n) = value.strip_prefix("service:") {
                RegisteredName::new(n)
                    .map(EnvSource::Service)
                    .map_err(|e| e.to_string())
            } else if let Some(n) = value.strip_prefix("leader:") {
                ServiceName::new(n)
                    .map(EnvSource::Leader)
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "invalid value {value:?}: must be kv:<key>, service:<name> or leader:<service>"
                ))
            };
            match source {
                Ok(src) => {
                    s.env.insert(var.to_string(), src);
                }
                Err(e) => err(e),
            }
            continue;
        }
        match key.as_str() {
            "cntnr.env-on-change" => match value.as_str() {
                "restart" => s.env_on_change = EnvOnChange::Restart,
                "none" => s.env_on_change = EnvOnChange::None,
                v => match v
                    .strip_prefix("signal:")
                    .map(crate::linux::normalize_signal)
                {
                    Some(Ok(sig)) => s.env_on_change = EnvOnChange::Signal(sig),
                    Some(Err(e)) => err(e),
                    None => err(format!(
                        "invalid value {v:?}: must be restart, signal:<SIGNAL> or none"
                    )),
                },
            },
            "cntnr.env-missing" => match value.as_str() {
                "wait" => s.env_missing = EnvMissing::Wait,
                "empty" => s.env_missing = EnvMissing::Empty,
                "fail" => s.env_missing = EnvMissing::Fail,
                v => err(format!("invalid value {v:?}: must be wait, empty or fail")),
            },
            "cntnr.election" => match value.as_str() {
                "true" => s.election = true,
                "false" => s.election = false,
                v => err(format!("invalid value {v:?}: must be true or false")),
            },
            "cntnr.service.name" => match RegisteredName::new(value.as_str()) {
                Ok(n) => s.service_name = Some(n),
                Err(e) => err(e.to_string()),
            },
            "cntnr.service.tags" => {
                let tags: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect();
                if let Some(bad) = tags.iter().find(|t| t.chars().any(char::is_whitespace)) {
                    err(format!(
                        "invalid tag {bad:?}: tags must not contain whitespace"
                    ));
                } else {
                    s.service_tags = tags;
                }
            }
            "cntnr.check.http" => {
                let parsed = match value.find('/') {
                    Some(0) => Some(HttpCheck {
                        port: None,
                        path: value.clone(),
                    }),
                    Some(i) => parse_port(&value[..i]).map(|p| HttpCheck {
                        port: Some(p),
                        path: value[i..].to_string(),
                    }),
                    None => None,
                };
                match parsed {
                    Some(c) if !c.path.chars().any(char::is_whitespace) => s.check_http = Some(c),
                    _ => err(format!(
                        "invalid value {value:?}: must be /path or PORT/path (e.g. /healthz or 8080/healthz)"
                    )),
                }
            }
            "cntnr.check.tcp" => match parse_port(value) {
                Some(p) => s.check_tcp = Some(p),
                None => err(format!("invalid value {value:?}: must be a port 1-65535")),
            },
            "cntnr.drain" => match parse_duration(value) {
                Ok(d) => s.drain = d,
                Err(e) => err(e),
            },
            "cntnr.health.on-failure" => match value.as_str() {
                "restart" => s.health_on_failure = HealthOnFailure::Restart,
                "none" => s.health_on_failure = HealthOnFailure::None,
                v => err(format!("invalid value {v:?}: must be restart or none")),
            },
            "cntnr.reschedule-after" => match parse_duration(value) {
                Ok(d) => s.reschedule_after = Some(d),
                Err(e) => err(e),
            },
            "cntnr.on-disconnect" => match value.as_str() {
                "keep" => s.on_disconnect = OnDisconnect::Keep,
                v => match v.strip_prefix("stop-after:").map(parse_duration) {
                    Some(Ok(d)) if !d.is_zero() => s.on_disconnect = OnDisconnect::StopAfter(d),
                    Some(Ok(_)) => err(format!(
                        "invalid value {v:?}: the duration of stop-after must be more than 0s"
                    )),
                    Some(Err(e)) => err(e),
                    None => err(format!(
                        "invalid value {v:?}: must be keep or stop-after:<duration> (e.g. stop-after:30s)"
                    )),
                },
            },
            k if RESERVED.contains(&k) => {
                err("reserved: the agent sets this annotation on every container".to_string())
            }
            k => {
                let mut candidates: Vec<&str> = KNOWN.to_vec();
                candidates.push("cntnr.env.<VAR>");
                let hint = crate::schema::suggest(k, &candidates)
                    .map(|c| format!(", did you mean `{c}`?"))
                    .unwrap_or_default();
                err(format!("unknown cntnr annotation{hint}"));
            }
        }
    }
    (s, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (AgentSettings, Vec<(String, String)>) {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_agent_settings(&m)
    }

    #[test]
    fn every_annotation_parses() {
        let (s, errs) = parse(&[
            ("cntnr.env.DB_URL", "kv:db/url"),
            ("cntnr.env.PEERS", "service:shop-api"),
            ("cntnr.env.PRIMARY", "leader:db"),
            ("cntnr.env-on-change", "signal:hup"),
            ("cntnr.env-missing", "empty"),
            ("cntnr.election", "true"),
            ("cntnr.service.name", "api"),
            ("cntnr.service.tags", "a, b,,c"),
            ("cntnr.check.http", "8080/healthz"),
            ("cntnr.check.tcp", "5432"),
            ("cntnr.drain", "5s"),
            ("cntnr.health.on-failure", "none"),
            ("cntnr.reschedule-after", "1m30s"),
            ("cntnr.on-disconnect", "stop-after:5s"),
            ("org.example.other", "kept"),
        ]);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            s.env["DB_URL"],
            EnvSource::Kv(ConfigKey::new("db/url").unwrap())
        );
        assert_eq!(
            s.env["PRIMARY"],
            EnvSource::Leader(ServiceName::new("db").unwrap())
        );
        assert_eq!(s.env_on_change, EnvOnChange::Signal("SIGHUP".into()));
        assert_eq!(s.env_missing, EnvMissing::Empty);
        assert!(s.election);
        assert_eq!(s.service_tags, vec!["a", "b", "c"]);
        assert_eq!(
            s.check_http,
            Some(HttpCheck {
                port: Some(8080),
                path: "/healthz".into()
            })
        );
        assert_eq!(s.check_tcp, Some(5432));
        assert_eq!(s.drain, Duration::from_secs(5));
        assert_eq!(s.health_on_failure, HealthOnFailure::None);
        assert_eq!(s.reschedule_after(), Duration::from_secs(90));
        assert_eq!(
            s.on_disconnect,
            OnDisconnect::StopAfter(Duration::from_secs(5))
        );
        assert_eq!(
            AgentSettings::default().health_on_failure,
            HealthOnFailure::Restart
        );
        assert_eq!(
            AgentSettings::default().reschedule_after(),
            Duration::from_secs(30)
        );
        assert_eq!(AgentSettings::default().on_disconnect, OnDisconnect::Keep);
        let (s, errs) = parse(&[
            ("cntnr.reschedule-after", "0s"),
            ("cntnr.on-disconnect", "keep"),
        ]);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.reschedule_after(), Duration::ZERO);
        let (_, errs) = parse(&[("cntnr.health.on-failure", "ignore")]);
        assert_eq!(
            errs,
            vec![(
                "cntnr.health.on-failure".to_string(),
                "invalid value \"ignore\": must be restart or none".to_string()
            )]
        );
    }

    #[test]
    fn bad_annotations_are_errors() {
        let (_, errs) = parse(&[
            ("cntnr.env.DB", "kv:../secret"),
            ("cntnr.env.X", "kv:/etc/passwd"),
            ("cntnr.env.Z", "kv:a..b"),
            ("cntnr.env.Y", "file:/x"),
            ("cntnr.env.1BAD", "kv:a"),
            ("cntnr.env-on-change", "signal:SIGNOPE"),
            ("cntnr.env-missing", "later"),
            ("cntnr.election", "yes"),
            ("cntnr.drain", "5"),
            ("cntnr.check.tcp", "0"),
            ("cntnr.check.http", "healthz"),
            ("cntnr.project", "x"),
            ("cntnr.elektion", "true"),
            ("cntnr.reschedule-after", "soon"),
            ("cntnr.on-disconnect", "stop"),
            ("cntnr.on-disconnect-", "stop-after:0s"),
        ]);
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(errs.len(), 16, "{errs:?}");
        assert!(keys.contains(&"cntnr.reschedule-after"));
        let od = errs
            .iter()
            .find(|(k, _)| k == "cntnr.on-disconnect")
            .unwrap();
        assert_eq!(
            od.1,
            "invalid value \"stop\": must be keep or stop-after:<duration> (e.g. stop-after:30s)"
        );
        let typo = errs
            .iter()
            .find(|(k, _)| k == "cntnr.on-disconnect-")
            .unwrap();
        assert!(
            typo.1.contains("did you mean `cntnr.on-disconnect`"),
            "{typo:?}"
        );
        let (_, zero) = parse(&[("cntnr.on-disconnect", "stop-after:0s")]);
        assert!(zero[0].1.contains("more than 0s"), "{zero:?}");
        assert!(keys.contains(&"cntnr.env.DB"));
        assert!(keys.contains(&"cntnr.env.Z"));
        let typo = errs.iter().find(|(k, _)| k == "cntnr.elektion").unwrap();
        assert!(typo.1.contains("did you mean `cntnr.election`"), "{typo:?}");
        let reserved = errs.iter().find(|(k, _)| k == "cntnr.project").unwrap();
        assert!(reserved.1.contains("reserved"));
    }
}
