//! Names validated once, at the edge, into newtypes.
//!
//! Inner code takes these types and never re-checks a raw string. Each type
//! deserializes through its validating constructor, so a record read from the
//! store cannot smuggle in an invalid name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    /// Which kind of name (`project name`, `service name`, …).
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Maximum length of project and service names (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

fn check_compose_name(what: &'static str, s: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            what,
            value: s.to_string(),
            reason,
        })
    };
    if s.is_empty() {
        return err("must not be empty");
    }
    if s.len() > MAX_NAME_LEN {
        return err("must be at most 63 characters");
    }
    let mut chars = s.chars();
    let first = chars.next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return err("must start with a lowercase letter or a digit (^[a-z0-9][a-z0-9_-]*$)");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return err(
            "may contain only lowercase letters, digits, `_` and `-` (^[a-z0-9][a-z0-9_-]*$)",
        );
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(&s)?;
                Ok($name(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(
    /// A compose project name: `^[a-z0-9][a-z0-9_-]*$`, at most 63 characters.
    ProjectName,
    |s| check_compose_name("project name", s)
);

string_newtype!(
    /// A service name inside a project: `^[a-z0-9][a-z0-9_-]*$`, at most 63
    /// characters (it becomes part of container ids and DNS names).
    ServiceName,
    |s| check_compose_name("service name", s)
);

string_newtype!(
    /// A node (host) name: `^[A-Za-z0-9][A-Za-z0-9._-]*$`, at most 253
    /// characters; never contains `/`, so it is one store key segment.
    NodeName,
    |s| {
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok_first || !ok_rest || s.len() > 253 {
            return Err(NameError {
                what: "node name",
                value: s.to_string(),
                reason: "must match ^[A-Za-z0-9][A-Za-z0-9._-]*$ and be at most 253 characters",
            });
        }
        Ok(())
    }
);

string_newtype!(
    /// The name a service is registered under (Consul service name, or the
    /// `services/<name>` key segment): `^[A-Za-z0-9][A-Za-z0-9._-]*$`, at most
    /// 127 characters (room for the default `<project>-<service>`).
    RegisteredName,
    |s| {
        let ok_first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok_first || !ok_rest || s.len() > 2 * MAX_NAME_LEN + 1 {
            return Err(NameError {
                what: "registered service name",
                value: s.to_string(),
                reason: "must match ^[A-Za-z0-9][A-Za-z0-9._-]*$ and be at most 127 characters",
            });
        }
        Ok(())
    }
);

impl RegisteredName {
    /// The default registration name of a service: `<project>-<service>`.
    pub fn default_for(project: &ProjectName, service: &ServiceName) -> Self {
        // Both parts are valid compose names (≤ 63 chars of [a-z0-9_-],
        // starting alphanumeric), so the join always satisfies the rule.
        RegisteredName(format!("{project}-{service}"))
    }
}

/// Normalizes an arbitrary string (usually a directory name) into a project
/// name the way compose does: lowercase, characters outside `[a-z0-9_-]`
/// dropped, leading `_`/`-` trimmed. Returns `None` if nothing valid is left.
pub fn normalize_project_name(raw: &str) -> Option<ProjectName> {
    let lowered: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let trimmed = lowered.trim_start_matches(['_', '-']);
    let capped: String = trimmed.chars().take(MAX_NAME_LEN).collect();
    ProjectName::new(capped).ok()
}

/// A replica number; replicas count from 1.
pub type Replica = u32;

/// A runc container id: `<project>-<service>-<replica>`.
///
/// Built from its parts with [`ContainerId::new`]; parsing a string back only
/// checks the shape (`-<replica>` at the end and allowed characters), because
/// project and service names may themselves contain `-`. The parts are carried
/// in the container's annotations, which are the source of truth.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    /// The id of replica `replica` (≥ 1) of `service` in `project`.
    pub fn new(project: &ProjectName, service: &ServiceName, replica: Replica) -> Self {
        ContainerId(format!("{project}-{service}-{replica}"))
    }

    /// Checks the shape of a container id read back from runc or the store.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = |reason| NameError {
            what: "container id",
            value: s.to_string(),
            reason,
        };
        let (head, replica) = s
            .rsplit_once('-')
            .ok_or_else(|| err("must be <project>-<service>-<replica>"))?;
        let n: u32 = replica
            .parse()
            .map_err(|_| err("must end in -<replica number>"))?;
        if n == 0 || replica.starts_with('0') {
            return Err(err("replica numbers start at 1, without leading zeros"));
        }
        if !head.contains('-') {
            return Err(err("must be <project>-<service>-<replica>"));
        }
        check_compose_name("container id", head).map_err(|e| NameError {
            value: s.to_string(),
            ..e
        })?;
        Ok(ContainerId(s.to_string()))
    }

    /// The replica number at the end of the id.
    pub fn replica(&self) -> Replica {
        self.0
            .rsplit_once('-')
            .and_then(|(_, r)| r.parse().ok())
            .unwrap_or(0)
    }

    /// Whether this id belongs to `service` of `project`.
    pub fn is_of(&self, project: &ProjectName, service: &ServiceName) -> bool {
        self.0
            .rsplit_once('-')
            .is_some_and(|(head, _)| head == format!("{project}-{service}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ContainerId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        ContainerId::parse(&s)
    }
}

impl From<ContainerId> for String {
    fn from(c: ContainerId) -> String {
        c.0
    }
}

/// A registered instance: `<node>/<container id>` (SPEC: Consul instance id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId {
    /// The node running the container.
    pub node: NodeName,
    /// The container.
    pub container: ContainerId,
}

impl InstanceId {
    /// Parses `<node>/<container id>`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (node, container) = s.split_once('/').ok_or_else(|| NameError {
            what: "instance id",
            value: s.to_string(),
            reason: "must be <node>/<container id>",
        })?;
        Ok(InstanceId {
            node: NodeName::new(node)?,
            container: ContainerId::parse(container)?,
        })
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.container)
    }
}

impl TryFrom<String> for InstanceId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        InstanceId::parse(&s)
    }
}

impl From<InstanceId> for String {
    fn from(i: InstanceId) -> String {
        i.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose_rules() {
        for ok in ["shop", "a", "0app", "my_app-2", &"a".repeat(63)] {
            assert!(ProjectName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Shop", "-a", "_a", "a.b", "a b", "é", &"a".repeat(64)] {
            assert!(ProjectName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn directory_names_normalize_like_compose() {
        assert_eq!(normalize_project_name("My.App").unwrap().as_str(), "myapp");
        assert_eq!(normalize_project_name("__x-Y").unwrap().as_str(), "x-y");
        assert!(normalize_project_name("...").is_none());
    }

    #[test]
    fn container_ids_round_trip() {
        let p = ProjectName::new("shop").unwrap();
        let s = ServiceName::new("web-api").unwrap();
        let id = ContainerId::new(&p, &s, 3);
        assert_eq!(id.as_str(), "shop-web-api-3");
        assert_eq!(id.replica(), 3);
        assert!(id.is_of(&p, &s));
        assert_eq!(ContainerId::parse("shop-web-api-3").unwrap(), id);
        for bad in [
            "shop-3",
            "shop-web-0",
            "shop-web-x",
            "shop-web-01",
            "Shop-web-1",
            "shop/web-1",
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_ids_parse() {
        let i = InstanceId::parse("node1/shop-web-1").unwrap();
        assert_eq!(i.node.as_str(), "node1");
        assert_eq!(i.to_string(), "node1/shop-web-1");
        assert!(InstanceId::parse("node1").is_err());
    }
}
