//! The store key layout (SPEC "Store layout"), all under `<prefix>/`:
//!
//! | key | value |
//! |---|---|
//! | `projects/<project>` | compose YAML |
//! | `config/<project>/<key…>` | a value for env sync |
//! | `nodes/<node>` | [`crate::records::NodeRecord`] |
//! | `leader` | the leader's node name |
//! | `schedule/<project>` | [`crate::records::ScheduleRecord`] |
//! | `status/<project>/<node>` | [`crate::records::StatusRecord`] |
//! | `elections/<project>/<service>` | [`crate::records::ElectionRecord`] |
//! | `envroll/<project>/<service>` | env sync's roll lock: the instance id of the replica being recreated (restart mode, one replica at a time cluster-wide; session-bound) |
//! | `services/<name>/<instance>` | [`crate::records::ServiceRecord`] (`<instance>` is `<node>/<container id>`) |
//!
//! [`StoreKey::render`] and [`StoreKey::parse`] are inverses; every segment
//! is a validated newtype, so a parsed key never carries `..`, an empty
//! segment or a stray `/`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{InstanceId, NameError, NodeName, ProjectName, RegisteredName, ServiceName};

/// A key that is not part of the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key does not start with `<prefix>/`.
    #[error("key {key:?} is not under prefix {prefix:?}")]
    OutsidePrefix {
        /// The key.
        key: String,
        /// The expected prefix.
        prefix: String,
    },
    /// The key is under the prefix but matches no entry of the layout.
    #[error("key {0:?} is not part of the cntnr store layout")]
    Unknown(String),
    /// A segment of the key is not a valid name.
    #[error("key {key:?}: {source}")]
    Name {
        /// The key.
        key: String,
        /// The invalid segment.
        source: NameError,
    },
    /// A prefix or config key that is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// `prefix` or `config key`.
        what: &'static str,
        /// The rejected input.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

fn check_segments(what: &'static str, s: &str) -> Result<(), KeyError> {
    let err = |reason| {
        Err(KeyError::Invalid {
            what,
            value: s.to_string(),
            reason,
        })
    };
    if s.is_empty() {
        return err("must not be empty");
    }
    if s.starts_with('/') || s.ends_with('/') {
        return err("must not start or end with `/`");
    }
    for seg in s.split('/') {
        if seg.is_empty() {
            return err("must not contain empty segments (`//`)");
        }
        if seg == "." || seg == ".." {
            return err("must not contain `.` or `..` segments");
        }
        if seg.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return err("must not contain whitespace or control characters");
        }
    }
    Ok(())
}

/// The store prefix every cntnr key lives under (default `cntnr`); one or
/// more `/`-separated segments, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix(String);

impl Prefix {
    /// Validates a prefix.
    pub fn new(s: impl Into<String>) -> Result<Self, KeyError> {
        let s = s.into();
        check_segments("prefix", &s)?;
        Ok(Prefix(s))
    }

    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<prefix>/projects/`: watch this for project changes.
    pub fn projects_dir(&self) -> String {
        format!("{}/projects/", self.0)
    }

    /// `<prefix>/config/<project>/`: every env-sync value of a project.
    pub fn config_dir(&self, project: &ProjectName) -> String {
        format!("{}/config/{project}/", self.0)
    }

    /// `<prefix>/nodes/`: every live node.
    pub fn nodes_dir(&self) -> String {
        format!("{}/nodes/", self.0)
    }

    /// `<prefix>/schedule/`: every project's schedule.
    pub fn schedule_dir(&self) -> String {
        format!("{}/schedule/", self.0)
    }

    /// `<prefix>/rebalance/`: operators' requests (`cntnr rebalance
    /// PROJECT` writes `rebalance/<project>`) that the leader place a
    /// project from scratch; the leader deletes a request once it has
    /// written the new schedule.
    pub fn rebalance_dir(&self) -> String {
        format!("{}/rebalance/", self.0)
    }

    /// `<prefix>/rollback/`: requests (`cntnr rollback PROJECT` writes
    /// `rollback/<project>`) that the leader roll a project back to its last
    /// fully healthy spec; the leader deletes a request once served.
    pub fn rollback_dir(&self) -> String {
        format!("{}/rollback/", self.0)
    }

    /// `<prefix>/status/`: every project's status records.
    pub fn status_root(&self) -> String {
        format!("{}/status/", self.0)
    }

    /// `<prefix>/status/<project>/`: every node's status of a project.
    pub fn status_dir(&self, project: &ProjectName) -> String {
        format!("{}/status/{project}/", self.0)
    }

    /// `<prefix>/elections/<project>/`: every election of a project.
    pub fn elections_dir(&self, project: &ProjectName) -> String {
        format!("{}/elections/{project}/", self.0)
    }

    /// `<prefix>/services/<name>/`: every instance of a registered service.
    pub fn services_dir(&self, name: &RegisteredName) -> String {
        format!("{}/services/{name}/", self.0)
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix("cntnr".to_string())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Prefix {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Prefix::new(s)
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        p.0
    }
}

/// The `<key…>` of `config/<project>/<key…>`: one or more `/`-separated
/// segments, relative, with no empty, `.` or `..` segment, so it can never
/// reach outside the project's config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigKey(String);

impl ConfigKey {
    /// Validates a config key.
    pub fn new(s: impl Into<String>) -> Result<Self, KeyError> {
        let s = s.into();
        check_segments("config key", &s)?;
        Ok(ConfigKey(s))
    }

    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ConfigKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        ConfigKey::new(s)
    }
}

impl From<ConfigKey> for String {
    fn from(k: ConfigKey) -> String {
        k.0
    }
}

/// One key of the store layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKey {
    /// `projects/<project>`.
    Project(ProjectName),
    /// `config/<project>/<key…>`.
    Config(ProjectName, ConfigKey),
    /// `nodes/<node>`.
    Node(NodeName),
    /// `leader`.
    Leader,
    /// `schedule/<project>`.
    Schedule(ProjectName),
    /// `status/<project>/<node>`.
    Status(ProjectName, NodeName),
    /// `elections/<project>/<service>`.
    Election(ProjectName, ServiceName),
    /// `services/<name>/<node>/<container id>`.
    Service(RegisteredName, InstanceId),
    /// `envroll/<project>/<service>`: the lock an agent holds while it
    /// recreates a replica for changed env values (restart mode).
    EnvRoll(ProjectName, ServiceName),
}

impl StoreKey {
    /// The full key under `prefix`.
    pub fn render(&self, prefix: &Prefix) -> String {
        let rel = match self {
            StoreKey::Project(p) => format!("projects/{p}"),
            StoreKey::Config(p, k) => format!("config/{p}/{k}"),
            StoreKey::Node(n) => format!("nodes/{n}"),
            StoreKey::Leader => "leader".to_string(),
            StoreKey::Schedule(p) => format!("schedule/{p}"),
            StoreKey::Status(p, n) => format!("status/{p}/{n}"),
            StoreKey::Election(p, s) => format!("elections/{p}/{s}"),
            StoreKey::Service(name, inst) => format!("services/{name}/{inst}"),
            StoreKey::EnvRoll(p, s) => format!("envroll/{p}/{s}"),
        };
        format!("{prefix}/{rel}")
    }

    /// Parses a full key under `prefix`.
    pub fn parse(prefix: &Prefix, key: &str) -> Result<StoreKey, KeyError> {
        let rel = key
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| KeyError::OutsidePrefix {
                key: key.to_string(),
                prefix: prefix.to_string(),
            })?;
        let name_err = |source| KeyError::Name {
            key: key.to_string(),
            source,
        };
        let unknown = || KeyError::Unknown(key.to_string());
        let (kind, rest) = rel.split_once('/').unwrap_or((rel, ""));
        let two = || rest.split_once('/').ok_or_else(unknown);
        let one = || {
            if rest.is_empty() || rest.contains('/') {
                Err(unknown())
            } else {
                Ok(rest)
            }
        };
        match kind {
            "leader" if rest.is_empty() && !rel.ends_with('/') => Ok(StoreKey::Leader),
            "projects" => Ok(StoreKey::Project(
                ProjectName::new(one()?).map_err(name_err)?,
            )),
            "schedule" => Ok(StoreKey::Schedule(
                ProjectName::new(one()?).map_err(name_err)?,
            )),
            "nodes" => Ok(StoreKey::Node(NodeName::new(one()?).map_err(name_err)?)),
            "config" => {
                let (p, k) = two()?;
                Ok(StoreKey::Config(
                    ProjectName::new(p).map_err(name_err)?,
                    ConfigKey::new(k)?,
                ))
            }
            "status" => {
                let (p, n) = two()?;
                if n.contains('/') {
                    return Err(unknown());
                }
                Ok(StoreKey::Status(
                    ProjectName::new(p).map_err(name_err)?,
                    NodeName::new(n).map_err(name_err)?,
                ))
            }
            "elections" | "envroll" => {
                let (p, s) = two()?;
                if s.contains('/') {
                    return Err(unknown());
                }
                let (p, s) = (
                    ProjectName::new(p).map_err(name_err)?,
                    ServiceName::new(s).map_err(name_err)?,
                );
                Ok(if kind == "elections" {
                    StoreKey::Election(p, s)
                } else {
                    StoreKey::EnvRoll(p, s)
                })
            }
            "services" => {
                let (name, inst) = two()?;
                Ok(StoreKey::Service(
                    RegisteredName::new(name).map_err(name_err)?,
                    InstanceId::parse(inst).map_err(name_err)?,
                ))
            }
            _ => Err(unknown()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Prefix {
        Prefix::default()
    }

    #[test]
    fn every_key_round_trips() {
        let project = ProjectName::new("shop").unwrap();
        let node = NodeName::new("node-1.lan").unwrap();
        let keys = vec![
            (StoreKey::Project(project.clone()), "cntnr/projects/shop"),
            (
                StoreKey::Config(project.clone(), ConfigKey::new("db/password").unwrap()),
                "cntnr/config/shop/db/password",
            ),
            (StoreKey::Node(node.clone()), "cntnr/nodes/node-1.lan"),
            (StoreKey::Leader, "cntnr/leader"),
            (StoreKey::Schedule(project.clone()), "cntnr/schedule/shop"),
            (
                StoreKey::Status(project.clone(), node.clone()),
                "cntnr/status/shop/node-1.lan",
            ),
            (
                StoreKey::Election(project.clone(), ServiceName::new("db").unwrap()),
                "cntnr/elections/shop/db",
            ),
            (
                StoreKey::EnvRoll(project.clone(), ServiceName::new("web").unwrap()),
                "cntnr/envroll/shop/web",
            ),
            (
                StoreKey::Service(
                    RegisteredName::new("shop-web").unwrap(),
                    InstanceId::parse("node-1.lan/shop-web-2").unwrap(),
                ),
                "cntnr/services/shop-web/node-1.lan/shop-web-2",
            ),
        ];
        for (key, text) in keys {
            assert_eq!(key.render(&p()), text);
            assert_eq!(StoreKey::parse(&p(), text).unwrap(), key, "{text}");
        }
    }

    #[test]
    fn nested_prefixes_work() {
        let prefix = Prefix::new("org/cntnr").unwrap();
        let k = StoreKey::parse(&prefix, "org/cntnr/leader").unwrap();
        assert_eq!(k, StoreKey::Leader);
        assert_eq!(
            prefix.config_dir(&ProjectName::new("a").unwrap()),
            "org/cntnr/config/a/"
        );
    }

    #[test]
    fn bad_keys_are_rejected() {
        for bad in [
            "other/projects/shop",
            "cntnr/projects/Shop",
            "cntnr/projects/shop/extra",
            "cntnr/projects/",
            "cntnr/config/shop/../secret",
            "cntnr/config/shop//x",
            "cntnr/config/shop",
            "cntnr/leader/x",
            "cntnr/status/shop",
            "cntnr/envroll/shop",
            "cntnr/envroll/shop/web/x",
            "cntnr/services/shop-web/node-1",
            "cntnr/bogus/x",
            "cntnrx/leader",
        ] {
            assert!(StoreKey::parse(&p(), bad).is_err(), "{bad}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a b"] {
            assert!(Prefix::new(bad).is_err(), "{bad}");
        }
        assert!(ConfigKey::new("/abs").is_err());
        assert!(ConfigKey::new("a/./b").is_err());
    }
}
