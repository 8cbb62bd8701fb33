//! KV → environment sync (issue 7, SPEC `cntnr.env.*`): the values of a
//! container's synced variables, resolved from what the project's watches
//! hold ([`Sources`], filled by [`watch::ProjectSync`]), rendered into
//! `/run/cntnr/env`, and what a change means for a running container
//! ([`on_change`], [`next_to_restart`]).
//!
//! Values are secrets: nothing here logs, formats or returns a value in an
//! error or a status line; only variable names and source names (`kv:KEY`,
//! `service:NAME`, `leader:SERVICE`) appear there. [`Resolved`]'s `Debug`
//! prints names only.
//!
//! The file in the container's bundle (`<bundle>/run/env`, mounted at
//! `/run/cntnr/env`) is also the record of what the container runs with:
//! it is written before the container is created (restart mode) or before
//! it is signalled, so comparing it with a fresh rendering says whether the
//! container is stale — no database beside the runtime.

pub mod engine;
pub mod roll;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;

use cntnr_model::{AgentSettings, ConfigKey, EnvMissing, EnvOnChange, EnvSource, ServiceName};

/// What the project's watches know: config values, passing instances of
/// registered services, and election winners. An absent entry means "not
/// set" (a config key), "no passing instance" (a service) or "nobody
/// elected" (a leader).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// `config/<project>/<key>` values, by key relative to the project.
    pub config: BTreeMap<String, Vec<u8>>,
    /// Registered service name → sorted `addr:port` of passing instances.
    pub services: BTreeMap<String, Vec<String>>,
    /// Service of this project → address of its elected replica.
    pub leaders: BTreeMap<String, String>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are secrets.
        f.debug_struct("Sources")
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("leaders", &self.leaders.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a project's synced variables need watched: one config prefix (if
/// any `kv:`), one service watch per referenced registered service, one
/// elections prefix (if any `leader:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Some `kv:` source.
    pub config: bool,
    /// Registered service names of `service:` sources.
    pub services: BTreeSet<String>,
    /// Some `leader:` source.
    pub leaders: bool,
}

impl Needs {
    /// The needs of every service of a project.
    pub fn of<'a>(settings: impl IntoIterator<Item = &'a AgentSettings>) -> Needs {
        let mut n = Needs::default();
        for s in settings {
            for src in s.env.values() {
                match src {
                    EnvSource::Kv(_) => n.config = true,
                    EnvSource::Service(name) => {
                        n.services.insert(name.as_str().to_string());
                    }
                    EnvSource::Leader(_) => n.leaders = true,
                }
            }
        }
        n
    }

    /// Nothing to watch.
    pub fn is_empty(&self) -> bool {
        !self.config && self.services.is_empty() && !self.leaders
    }
}

/// The source spelled as in the annotation (`kv:KEY`, …): safe to show.
pub fn source_name(src: &EnvSource) -> String {
    match src {
        EnvSource::Kv(k) => format!("kv:{k}"),
        EnvSource::Service(n) => format!("service:{n}"),
        EnvSource::Leader(s) => format!("leader:{s}"),
    }
}

/// The synced variables of one container, resolved.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    /// Variable → value (empty for a missing one in `empty` mode).
    pub values: BTreeMap<String, String>,
    /// Variables whose source has no value: `VAR (kv:KEY)`.
    pub missing: Vec<String>,
    /// Variables whose value cannot be passed (a NUL byte or a line break):
    /// `VAR (kv:KEY)`.
    pub unusable: Vec<String>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("vars", &self.values.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .field("unusable", &self.unusable)
            .finish()
    }
}

/// What to do with a container given its resolution and `cntnr.env-missing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Create/keep it with these values.
    Ready,
    /// `wait`: do not start it; status says `waiting for …` with these names.
    Wait(Vec<String>),
    /// `fail`, or an unusable value: report a failure naming these.
    Fail(Vec<String>),
}

impl Resolved {
    /// The container's fate under `missing` (an unusable value always fails).
    pub fn readiness(&self, missing: EnvMissing) -> Readiness {
        if !self.unusable.is_empty() {
            return Readiness::Fail(self.unusable.clone());
        }
        if self.missing.is_empty() {
            return Readiness::Ready;
        }
        match missing {
            EnvMissing::Wait => Readiness::Wait(self.missing.clone()),
            EnvMissing::Fail => Readiness::Fail(self.missing.clone()),
            EnvMissing::Empty => Readiness::Ready,
        }
    }

    /// The one-line status text for a waiting or failed container (names
    /// only), e.g. `missing config: DB_URL (kv:db/url)`.
    pub fn status_line(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing env source: {}", self.missing.join(", ")));
        }
        if !self.unusable.is_empty() {
            parts.push(format!(
                "env value contains a NUL byte or a line break: {}",
                self.unusable.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Resolves a service's synced variables from `sources`. Missing values
/// resolve to empty strings (used only in `empty` mode; otherwise
/// [`Resolved::readiness`] holds the container back).
pub fn resolve(settings: &AgentSettings, sources: &Sources) -> Resolved {
    let mut r = Resolved::default();
    for (var, src) in &settings.env {
        let value: Option<Vec<u8>> = match src {
            EnvSource::Kv(k) => sources.config.get(k.as_str()).cloned(),
            EnvSource::Service(n) => sources
                .services
                .get(n.as_str())
                .filter(|l| !l.is_empty())
                .map(|l| l.join(",").into_bytes()),
            EnvSource::Leader(s) => sources
                .leaders
                .get(s.as_str())
                .map(|a| a.clone().into_bytes()),
        };
        let label = || format!("{var} ({})", source_name(src));
        let value = match value {
            Some(v) if v.contains(&0) || v.contains(&b'\n') || v.contains(&b'\r') => {
                r.unusable.push(label());
                String::new()
            }
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                r.missing.push(label());
                String::new()
            }
        };
        r.values.insert(var.clone(), value);
    }
    r
}

/// `/run/cntnr/env`: `KEY=VALUE` lines, sorted by key.
pub fn render_env_file(values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in values {
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// Replaces `path` atomically: a temp file in the same directory, fsynced,
/// renamed over it. Readers (the container, through its read-only mount of
/// the directory) see the old or the new file, never half of one. Errors
/// name the path only.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// What to do with a running container whose env file holds `current`
/// (None: no file, e.g. created before env sync) now that the rendering is
/// `fresh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvAction {
    /// Up to date (or `none` mode).
    Nothing,
    /// `restart`: recreate it (one replica at a time: [`next_to_restart`]);
    /// the new bundle gets the fresh file before the container starts.
    Recreate,
    /// `signal:SIG`: write the file, then send this signal.
    WriteAndSignal(String),
}

/// The action for `mode` when the rendering changed.
pub fn on_change(mode: &EnvOnChange, current: Option<&str>, fresh: &str) -> EnvAction {
    if current == Some(fresh) {
        return EnvAction::Nothing;
    }
    match mode {
        EnvOnChange::Restart => EnvAction::Recreate,
        EnvOnChange::Signal(sig) => EnvAction::WriteAndSignal(sig.clone()),
        EnvOnChange::None => EnvAction::Nothing,
    }
}

/// One replica of a service, as seen by a rolling env restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaEnvState {
    /// Replica number.
    pub replica: u32,
    /// Its env file differs from the fresh rendering.
    pub stale: bool,
    /// Running and healthy (or running without a health check).
    pub ready: bool,
}

/// `restart` mode, one at a time: the lowest stale replica, but only while
/// every replica is ready — a replica recreated earlier must be healthy
/// again before the next goes, so a service never loses all replicas to a
/// config change. A service with one replica restarts it when stale.
pub fn next_to_restart(replicas: &[ReplicaEnvState]) -> Option<u32> {
    if replicas.iter().any(|r| !r.ready) {
        return None;
    }
    replicas.iter().filter(|r| r.stale).map(|r| r.replica).min()
}

/// The `leader:` services a project's containers read (for validation and
/// for the elections watch).
pub fn leader_targets<'a>(
    settings: impl IntoIterator<Item = &'a AgentSettings>,
) -> BTreeSet<ServiceName> {
    settings
        .into_iter()
        .flat_map(|s| s.env.values())
        .filter_map(|src| match src {
            EnvSource::Leader(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The config key of a full store key under `config_dir`
/// (`<prefix>/config/<project>/`), if it is a valid one.
pub fn config_key_of(config_dir: &str, full: &str) -> Option<String> {
    let rel = full.strip_prefix(config_dir)?;
    ConfigKey::new(rel).ok().map(|k| k.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntnr_model::annotations::parse_agent_settings;

    fn settings(pairs: &[(&str, &str)]) -> AgentSettings {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (s, errs) = parse_agent_settings(&m);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config
            .insert("db/url".into(), b"postgres://u:hunter2@db".to_vec());
        s.services.insert(
            "shop-api".into(),
            vec!["10.0.0.1:80".into(), "10.0.0.2:80".into()],
        );
        s.leaders.insert("db".into(), "10.0.0.9".into());
        s
    }

    #[test]
    fn resolves_every_source_kind() {
        let s = settings(&[
            ("cntnr.env.DB", "kv:db/url"),
            ("cntnr.env.API", "service:shop-api"),
            ("cntnr.env.PRIMARY", "leader:db"),
        ]);
        let r = resolve(&s, &sources());
        assert!(r.missing.is_empty() && r.unusable.is_empty());
        assert_eq!(r.values["DB"], "postgres://u:hunter2@db");
        assert_eq!(r.values["API"], "10.0.0.1:80,10.0.0.2:80");
        assert_eq!(r.values["PRIMARY"], "10.0.0.9");
        assert_eq!(r.readiness(EnvMissing::Wait), Readiness::Ready);
        assert_eq!(
            render_env_file(&r.values),
            "API=10.0.0.1:80,10.0.0.2:80\nDB=postgres://u:hunter2@db\nPRIMARY=10.0.0.9\n"
        );
        assert_eq!(
            Needs::of([&s]),
            Needs {
                config: true,
                services: ["shop-api".to_string()].into(),
                leaders: true
            }
        );
        assert_eq!(leader_targets([&s]).len(), 1);
    }

    #[test]
    fn missing_sources_per_mode_and_names_only() {
        let s = settings(&[
            ("cntnr.env.DB", "kv:db/url"),
            ("cntnr.env.TOKEN", "kv:token"),
            ("cntnr.env.API", "service:other-api"),
        ]);
        let mut src = sources();
        src.services.insert("other-api".into(), vec![]);
        let r = resolve(&s, &src);
        let missing = vec![
            "API (service:other-api)".to_string(),
            "TOKEN (kv:token)".to_string(),
        ];
        assert_eq!(r.missing, missing);
        assert_eq!(
            r.readiness(EnvMissing::Wait),
            Readiness::Wait(missing.clone())
        );
        assert_eq!(r.readiness(EnvMissing::Fail), Readiness::Fail(missing));
        assert_eq!(r.readiness(EnvMissing::Empty), Readiness::Ready);
        assert_eq!(r.values["TOKEN"], "");
        let line = r.status_line().unwrap();
        assert_eq!(
            line,
            "missing env source: API (service:other-api), TOKEN (kv:token)"
        );
        // Secrets never in Debug output or status.
        for text in [format!("{r:?}"), format!("{src:?}"), line] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn values_that_cannot_be_passed_fail_without_showing_them() {
        let s = settings(&[("cntnr.env.DB", "kv:db/url")]);
        let mut src = Sources::default();
        src.config
            .insert("db/url".into(), b"line1\nsecret".to_vec());
        let r = resolve(&s, &src);
        assert_eq!(
            r.readiness(EnvMissing::Empty),
            Readiness::Fail(vec!["DB (kv:db/url)".into()])
        );
        assert!(!r.status_line().unwrap().contains("secret"));
    }

    #[test]
    fn change_modes() {
        let sig = EnvOnChange::Signal("SIGHUP".into());
        assert_eq!(
            on_change(&EnvOnChange::Restart, Some("A=1\n"), "A=1\n"),
            EnvAction::Nothing
        );
        assert_eq!(
            on_change(&EnvOnChange::Restart, Some("A=1\n"), "A=2\n"),
            EnvAction::Recreate
        );
        assert_eq!(
            on_change(&EnvOnChange::Restart, None, "A=2\n"),
            EnvAction::Recreate
        );
        assert_eq!(
            on_change(&sig, Some("A=1\n"), "A=2\n"),
            EnvAction::WriteAndSignal("SIGHUP".into())
        );
        assert_eq!(on_change(&sig, Some("A=2\n"), "A=2\n"), EnvAction::Nothing);
        assert_eq!(
            on_change(&EnvOnChange::None, Some("A=1\n"), "A=2\n"),
            EnvAction::Nothing
        );
    }

    #[test]
    fn rolling_restart_one_at_a_time() {
        let r = |replica, stale, ready| ReplicaEnvState {
            replica,
            stale,
            ready,
        };
        assert_eq!(
            next_to_restart(&[r(1, true, true), r(2, true, true)]),
            Some(1)
        );
        // Replica 1 was recreated and is not healthy yet: 2 waits.
        assert_eq!(
            next_to_restart(&[r(1, false, false), r(2, true, true)]),
            None
        );
        assert_eq!(
            next_to_restart(&[r(1, false, true), r(2, true, true)]),
            Some(2)
        );
        assert_eq!(
            next_to_restart(&[r(1, false, true), r(2, false, true)]),
            None
        );
        assert_eq!(next_to_restart(&[r(1, true, true)]), Some(1));
    }

    #[test]
    fn env_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        write_atomic(&p, b"A=1\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        write_atomic(&p, b"A=2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "A=2\n");
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_ne!(ino, ino2, "a new inode, renamed over the old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );
    }

    #[test]
    fn config_keys_of_full_keys() {
        let dir = "cntnr/config/shop/";
        assert_eq!(
            config_key_of(dir, "cntnr/config/shop/db/url").as_deref(),
            Some("db/url")
        );
        assert_eq!(config_key_of(dir, "cntnr/config/shopx/a"), None);
        assert_eq!(config_key_of(dir, "cntnr/config/shop/a//b"), None);
    }
}
