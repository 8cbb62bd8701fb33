//! Checks that need more than one service at a time: `depends_on`
//! references and cycles, references to top-level volumes and networks,
//! and `leader:` annotations; plus the environment variable name rule used
//! everywhere.

use std::collections::{BTreeMap, BTreeSet};

use crate::annotations::EnvSource;
use crate::error::ErrorKind;
use crate::names::ServiceName;
use crate::normalize::Issue;
use crate::spec::{Mount, Project};

/// Environment variable names: a letter or `_`, then letters, digits, `_`,
/// `.` or `-` (dots and dashes appear in Java-style names; `=`, whitespace
/// and control characters never can).
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c == '_' || c == '.' || c == '-' || c.is_ascii_alphanumeric());
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid environment variable name {name:?}: must start with a letter or `_` and contain only letters, digits, `_`, `.`, `-`"
        ))
    }
}

fn issue(service: &ServiceName, key: String, kind: ErrorKind) -> Issue {
    Issue {
        service: Some(service.to_string()),
        key,
        kind,
    }
}

/// Runs the cross-service checks; returns warnings.
pub(crate) fn cross_check(project: &Project, issues: &mut Vec<Issue>) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, svc) in &project.services {
        for (dep, d) in &svc.depends_on {
            if !project.services.contains_key(dep) {
                if d.required {
                    issues.push(issue(
                        name,
                        format!("depends_on.{dep}"),
                        ErrorKind::Invalid(format!(
                            "depends on unknown service {:?}",
                            dep.as_str()
                        )),
                    ));
                } else {
                    warnings.push(format!(
                        "service {name:?}: optional dependency {:?} is not in the project",
                        dep.as_str()
                    ));
                }
            }
        }
        for (i, m) in svc.volumes.iter().enumerate() {
            if let Mount::Volume {
                source: Some(v), ..
            } = m
            {
                if !project.volumes.contains_key(v) {
                    issues.push(issue(
                        name,
                        format!("volumes[{i}]"),
                        ErrorKind::Invalid(format!(
                            "named volume {v:?} is not declared in the top-level volumes"
                        )),
                    ));
                }
            }
        }
        for net in svc.networks.keys() {
            if !project.networks.contains_key(net) {
                issues.push(issue(
                    name,
                    format!("networks.{net}"),
                    ErrorKind::Invalid(format!(
                        "network {net:?} is not declared in the top-level networks"
                    )),
                ));
            }
        }
        for (var, src) in &svc.agent.env {
            if let EnvSource::Leader(target) = src {
                let key = format!("annotations.cntnr.env.{var}");
                match project.services.get(target) {
                    None => issues.push(issue(
                        name,
                        key,
                        ErrorKind::Invalid(format!("leader:{target} names an unknown service")),
                    )),
                    Some(t) if !t.agent.election => issues.push(issue(
                        name,
                        key,
                        ErrorKind::Invalid(format!(
                            "leader:{target} needs service {:?} to set annotation cntnr.election: \"true\"",
                            target.as_str()
                        )),
                    )),
                    Some(_) => {}
                }
            }
        }
        if let Some(check) = &svc.agent.check_http {
            if check.port.is_none() && svc.ports.is_empty() && svc.expose.is_empty() {
                issues.push(issue(
                    name,
                    "annotations.cntnr.check.http".to_string(),
                    ErrorKind::Invalid(
                        "no port to probe: write PORT/path or declare ports or expose".to_string(),
                    ),
                ));
            }
        }
    }
    for cycle in dependency_cycles(project) {
        let first = cycle[0].clone();
        let text = cycle
            .iter()
            .map(ServiceName::as_str)
            .collect::<Vec<_>>()
            .join(" -> ");
        issues.push(issue(
            &first,
            "depends_on".to_string(),
            ErrorKind::DependencyCycle(text),
        ));
    }
    warnings
}

/// Every elementary `depends_on` cycle found by a depth-first search, each
/// reported once, starting at its smallest service name and ending where it
/// started (`a -> b -> a`).
pub fn dependency_cycles(project: &Project) -> Vec<Vec<ServiceName>> {
    let graph: BTreeMap<&ServiceName, Vec<&ServiceName>> = project
        .services
        .iter()
        .map(|(n, s)| {
            (
                n,
                s.depends_on
                    .keys()
                    .filter(|d| project.services.contains_key(*d))
                    .collect(),
            )
        })
        .collect();
    let mut found: BTreeSet<Vec<ServiceName>> = BTreeSet::new();
    let mut done: BTreeSet<&ServiceName> = BTreeSet::new();
    fn dfs<'a>(
        node: &'a ServiceName,
        graph: &BTreeMap<&'a ServiceName, Vec<&'a ServiceName>>,
        stack: &mut Vec<&'a ServiceName>,
        done: &mut BTreeSet<&'a ServiceName>,
        found: &mut BTreeSet<Vec<ServiceName>>,
    ) {
        if let Some(pos) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<ServiceName> = stack[pos..].iter().map(|n| (*n).clone()).collect();
            let min = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| (*n).clone())
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            found.insert(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            dfs(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node);
    }
    for node in graph.keys() {
        dfs(node, &graph, &mut Vec::new(), &mut done, &mut found);
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["A", "_x", "PATH_2", "spring.profiles.active", "my-var"] {
            assert!(check_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A=B", "A B", "-a", "é"] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
    }
}
