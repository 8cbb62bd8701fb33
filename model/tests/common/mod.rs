//! Helpers shared by the model's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cntnr_model::{load_files, LoadError, LoadOptions, Project, ServiceName, ServiceSpec};

/// `tests/fixtures/<rel>` (cargo runs integration tests in the package root).
pub fn fixture(rel: &str) -> PathBuf {
    Path::new("tests/fixtures").join(rel)
}

/// The environment the fixtures are loaded with: fixed, never the process
/// environment, so tests do not depend on the machine.
pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Loads fixture files (relative to `tests/fixtures`) with `env`.
pub fn try_load(files: &[&str], env: BTreeMap<String, String>) -> Result<Project, LoadError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| fixture(f)).collect();
    load_files(
        &paths,
        &LoadOptions {
            env,
            ..LoadOptions::default()
        },
    )
}

/// Loads fixture files that must be valid.
pub fn load(files: &[&str], env: BTreeMap<String, String>) -> Project {
    match try_load(files, env) {
        Ok(p) => p,
        Err(e) => panic!("{files:?} should load:\n{e}"),
    }
}

/// The service `name` of `p`.
pub fn svc<'a>(p: &'a Project, name: &str) -> &'a ServiceSpec {
    p.services
        .get(&ServiceName::new(name).unwrap())
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The absolute directory of a fixture, as the loader resolves it.
pub fn abs_fixture(rel: &str) -> PathBuf {
    std::path::absolute(fixture(rel)).unwrap()
}

/// `(k, v)` pairs as a string map.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    env(pairs)
}
