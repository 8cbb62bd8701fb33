//! From a merged, interpolated tree to typed [`ServiceSpec`]s: every short
//! form resolved, every value parsed, every key checked against
//! [`crate::schema`]. Problems are collected, never returned early, so one
//! run reports all of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::annotations::parse_agent_settings;
use crate::error::ErrorKind;
use crate::linux::{normalize_capability, normalize_signal, ULIMITS};
use crate::merge::{extra_hosts_to_map, list_to_map, names_to_map};
use crate::names::ServiceName;
use crate::schema::{self, KeySet};
use crate::spec::*;
use crate::units::{parse_cpus, parse_duration, parse_memory, parse_octal_mode};
use crate::validate::check_env_name;

/// A problem found while normalizing, before the loader attaches file and
/// project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The service, for problems inside `services.<name>`.
    pub service: Option<String>,
    /// Key path inside the service (or from the top level).
    pub key: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What normalization may read besides the tree.
#[derive(Debug)]
pub struct Context<'a> {
    /// The interpolation environment: also the source of `environment`
    /// entries written without a value and of `~` in bind sources.
    pub env: &'a BTreeMap<String, String>,
    /// The project directory: relative bind sources, `env_file` paths and
    /// `oci:` image paths resolve against it. Without it they are errors.
    pub project_dir: Option<&'a Path>,
}

/// Collects issues for one service (or the top level when `service` is
/// `None`).
pub(crate) struct Sink<'a> {
    service: Option<String>,
    issues: &'a mut Vec<Issue>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(service: Option<String>, issues: &'a mut Vec<Issue>) -> Self {
        Sink { service, issues }
    }

    pub(crate) fn push(&mut self, key: impl Into<String>, kind: ErrorKind) {
        self.issues.push(Issue {
            service: self.service.clone(),
            key: key.into(),
            kind,
        });
    }

    pub(crate) fn invalid(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.push(key, ErrorKind::Invalid(msg.into()));
    }

    /// Reports unknown/unsupported keys of mapping `m` at `path`.
    fn check_keys(&mut self, path: &str, m: &Map<String, Value>, set: &KeySet) {
        for k in m.keys() {
            if let Some(kind) = set.check(k) {
                self.push(join(path, k), kind);
            }
        }
    }

    fn map<'v>(&mut self, key: &str, v: &'v Value) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                self.invalid(key, format!("must be a mapping, not {}", kind_of(v)));
                None
            }
        }
    }

    fn string(&mut self, key: &str, v: &Value) -> Option<String> {
        match scalar(v) {
            Some(s) => Some(s),
            None => {
                self.invalid(key, format!("must be a string, not {}", kind_of(v)));
                None
            }
        }
    }

    fn bool(&mut self, key: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "True" || s == "TRUE" => Some(true),
            Value::String(s) if s == "false" || s == "False" || s == "FALSE" => Some(false),
            _ => {
                self.invalid(key, format!("must be true or false, not {}", show(v)));
                None
            }
        }
    }

    fn u32(&mut self, key: &str, v: &Value) -> Option<u32> {
        match scalar(v).and_then(|s| s.trim().parse::<u32>().ok()) {
            Some(n) => Some(n),
            None => {
                self.invalid(key, format!("must be a whole number ≥ 0, not {}", show(v)));
                None
            }
        }
    }

    fn i64(&mut self, key: &str, v: &Value) -> Option<i64> {
        match scalar(v).and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(n) => Some(n),
            None => {
                self.invalid(key, format!("must be a whole number, not {}", show(v)));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, v: &Value) -> Option<std::time::Duration> {
        let s = self.string(key, v)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.invalid(key, e);
                None
            }
        }
    }

    /// A string or a list of strings.
    fn strings(&mut self, key: &str, v: &Value) -> Vec<String> {
        match v {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.string(&format!("{key}[{i}]"), item))
                .collect(),
            other => self.string(key, other).into_iter().collect(),
        }
    }

    /// `command`/`entrypoint`: a list, or a string split like a shell.
    fn command(&mut self, key: &str, v: &Value) -> Option<Vec<String>> {
        match v {
            Value::Null => None,
            Value::String(s) => match crate::shellwords::split(s) {
                Ok(words) => Some(words),
                Err(e) => {
                    self.invalid(key, e);
                    None
                }
            },
            Value::Array(_) => Some(self.strings(key, v)),
            other => {
                self.invalid(
                    key,
                    format!("must be a string or a list, not {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// A mapping or a `KEY=VALUE` list; values may be null.
    fn pairs(&mut self, key: &str, v: &Value) -> BTreeMap<String, Option<String>> {
        let Some(m) = list_to_map(v, '=') else {
            self.invalid(key, "must be a mapping or a list of KEY=VALUE strings");
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, val) in m {
            let value = match &val {
                Value::Null => None,
                other => match scalar(other) {
                    Some(s) => Some(s),
                    None => {
                        self.invalid(
                            join(key, &k),
                            format!("must be a string, not {}", kind_of(other)),
                        );
                        continue;
                    }
                },
            };
            out.insert(k, value);
        }
        out
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// A scalar as text: strings as is, numbers and booleans spelled out.
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) | Value::Object(_) => kind_of(v).to_string(),
        other => other.to_string(),
    }
}

/// Joins `rel` under `base` lexically: `.` components dropped, `..`
/// components pop (callers that forbid `..` check before).
pub fn join_lexically(base: &Path, rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn has_parent_dir(p: &str) -> bool {
    Path::new(p).components().any(|c| c == Component::ParentDir)
}

/// Resolves a bind-mount source: `~` from `HOME`, relative paths against
/// the project directory. Errors on `..` anywhere and on relative paths
/// without a project directory.
pub fn resolve_bind_source(source: &str, ctx: &Context<'_>) -> Result<PathBuf, String> {
    if has_parent_dir(source) {
        return Err(format!("bind source {source:?} must not contain `..`"));
    }
    let expanded = if source == "~" || source.starts_with("~/") {
        let home = ctx
            .env
            .get("HOME")
            .ok_or_else(|| format!("bind source {source:?} uses `~` but HOME is not set"))?;
        format!("{home}{}", &source[1..])
    } else {
        source.to_string()
    };
    let path = Path::new(&expanded);
    if path.is_absolute() {
        return Ok(join_lexically(Path::new("/"), path));
    }
    match ctx.project_dir {
        Some(dir) => Ok(join_lexically(dir, path)),
        None => Err(format!(
            "bind source {source:?} must be an absolute path (relative paths need a project directory)"
        )),
    }
}

fn check_abs_target(sink: &mut Sink<'_>, key: &str, target: &str) -> bool {
    if !target.starts_with('/') {
        sink.invalid(
            key,
            format!("target {target:?} must be an absolute path inside the container"),
        );
        return false;
    }
    if has_parent_dir(target) {
        sink.invalid(key, format!("target {target:?} must not contain `..`"));
        return false;
    }
    true
}

/// Parses an image reference; relative `oci:` paths resolve against the
/// project directory.
pub fn parse_image(s: &str, ctx: &Context<'_>) -> Result<ImageRef, String> {
    if let Some(rest) = s.strip_prefix("oci:") {
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(format!(
                "invalid image {s:?}: oci: needs a path to an OCI image layout"
            ));
        }
        if let Some(t) = tag {
            check_tag(t).map_err(|e| format!("invalid image {s:?}: {e}"))?;
        }
        let p = Path::new(path);
        let path = if p.is_absolute() {
            join_lexically(Path::new("/"), p)
        } else {
            match ctx.project_dir {
                Some(dir) => join_lexically(dir, p),
                None => {
                    return Err(format!(
                        "invalid image {s:?}: a relative oci: path needs a project directory"
                    ))
                }
            }
        };
        return Ok(ImageRef::OciLayout {
            path,
            tag: tag.map(str::to_string),
        });
    }
    check_registry_ref(s).map_err(|e| format!("invalid image {s:?}: {e}"))?;
    Ok(ImageRef::Registry(s.to_string()))
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {t:?}"))
    }
}

/// `[host[:port]/]path[:tag][@algo:hex]` with lowercase path components.
fn check_registry_ref(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".to_string());
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '+' | '.' | '_' | '-')
                })
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("invalid digest {d:?}"));
        }
    }
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let mut comps: Vec<&str> = name.split('/').collect();
    if comps.len() > 1 {
        let first = comps[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let host_ok = first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !host_ok {
                return Err(format!("invalid registry host {first:?}"));
            }
            comps.remove(0);
        }
    }
    for c in comps {
        let ok = !c.is_empty()
            && c.chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .last()
                .is_some_and(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            });
        if !ok {
            return Err(format!(
                "invalid repository name component {c:?}: use lowercase letters, digits and . _ -"
            ));
        }
    }
    Ok(())
}

/// Normalizes `services.<name>`. Returns the spec even when issues were
/// found (the loader discards it then).
pub fn service(
    name: &ServiceName,
    v: &Value,
    ctx: &Context<'_>,
    issues: &mut Vec<Issue>,
) -> ServiceSpec {
    let mut sink = Sink::new(Some(name.to_string()), issues);
    let empty = Map::new();
    let m = match v {
        Value::Object(m) => m,
        Value::Null => {
            sink.invalid("", "a service needs at least `image`");
            &empty
        }
        other => {
            sink.invalid(
                "",
                format!("a service must be a mapping, not {}", kind_of(other)),
            );
            &empty
        }
    };
    sink.check_keys("", m, &schema::SERVICE);

    let image = match m.get("image") {
        None | Some(Value::Null) => {
            if v.is_object() {
                sink.invalid(
                    "image",
                    "required: every service needs an image (build is not supported)",
                );
            }
            ImageRef::Registry(String::new())
        }
        Some(iv) => match sink.string("image", iv).map(|s| parse_image(&s, ctx)) {
            Some(Ok(img)) => img,
            Some(Err(e)) => {
                sink.invalid("image", e);
                ImageRef::Registry(String::new())
            }
            None => ImageRef::Registry(String::new()),
        },
    };
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());

    let command = get("command").and_then(|v| sink.command("command", v));
    let entrypoint = get("entrypoint").and_then(|v| sink.command("entrypoint", v));

    // env_file first, environment over it.
    let mut environment = BTreeMap::new();
    if let Some(v) = get("env_file") {
        environment.extend(env_files(&mut sink, v, ctx));
    }
    if let Some(v) = get("environment") {
        for (k, val) in sink.pairs("environment", v) {
            if let Err(e) = check_env_name(&k) {
                sink.invalid(format!("environment.{k}"), e);
                continue;
            }
            match val.or_else(|| ctx.env.get(&k).cloned()) {
                Some(val) => {
                    environment.insert(k, val);
                }
                None => {
                    // `- VAR` with VAR unset: compose leaves it out.
                    environment.remove(&k);
                }
            }
        }
    }

    let working_dir = get("working_dir").and_then(|v| sink.string("working_dir", v));
    if let Some(wd) = &working_dir {
        check_abs_target(&mut sink, "working_dir", wd);
    }
    let user = get("user").and_then(|v| sink.string("user", v));
    let dns_name = |sink: &mut Sink<'_>, key: &str| -> Option<String> {
        let h = get(key).and_then(|v| sink.string(key, v))?;
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ok {
            sink.invalid(
                key,
                format!("invalid {key} {h:?}: use letters, digits, `-` and `.`"),
            );
        }
        Some(h)
    };
    let hostname = dns_name(&mut sink, "hostname");
    let domainname = dns_name(&mut sink, "domainname");
    let text_map = |sink: &mut Sink<'_>, key: &str| -> BTreeMap<String, String> {
        match get(key) {
            Some(v) => sink
                .pairs(key, v)
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            None => BTreeMap::new(),
        }
    };
    let labels = text_map(&mut sink, "labels");
    let annotations = text_map(&mut sink, "annotations");
    let (agent, agent_errors) = parse_agent_settings(&annotations);
    for (k, e) in agent_errors {
        sink.invalid(format!("annotations.{k}"), e);
    }
    let sysctls = text_map(&mut sink, "sysctls");
    for k in sysctls.keys() {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        {
            sink.invalid(format!("sysctls.{k}"), format!("invalid sysctl name {k:?}"));
        }
    }

    let mut ports = Vec::new();
    if let Some(v) = get("ports") {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match crate::ports::parse_entry(item) {
                        Ok(p) => {
                            for m in p {
                                if !ports.contains(&m) {
                                    ports.push(m);
                                }
                            }
                        }
                        Err((sub, e)) => {
                            let key = if sub.is_empty() {
                                format!("ports[{i}]")
                            } else {
                                format!("ports[{i}].{sub}")
                            };
                            sink.invalid(key, e);
                        }
                    }
                }
            }
            _ => sink.invalid("ports", "must be a list"),
        }
    }
    let mut expose = Vec::new();
    if let Some(v) = get("expose") {
        let items = match v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for (i, item) in items.iter().enumerate() {
            match crate::ports::parse_expose(item) {
                Ok(e) => {
                    for port in e {
                        if !expose.contains(&port) {
                            expose.push(port);
                        }
                    }
                }
                Err(e) => sink.invalid(format!("expose[{i}]"), e),
            }
        }
    }

    let mut volumes = Vec::new();
    if let Some(v) = get("volumes") {
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(mnt) = mount(&mut sink, &format!("volumes[{i}]"), item, ctx) {
                        volumes.push(mnt);
                    }
                }
            }
            _ => sink.invalid("volumes", "must be a list"),
        }
    }
    if let Some(v) = get("tmpfs") {
        for (i, entry) in sink.strings("tmpfs", v).into_iter().enumerate() {
            if let Some(mnt) = tmpfs_short(&mut sink, &format!("tmpfs[{i}]"), &entry) {
                volumes.push(mnt);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for mnt in &volumes {
        if !seen.insert(mnt.target().to_string()) {
            sink.invalid(
                "volumes",
                format!("duplicate mount target {:?}", mnt.target()),
            );
        }
    }

    let flag =
        |sink: &mut Sink<'_>, key: &str| get(key).and_then(|v| sink.bool(key, v)).unwrap_or(false);
    let read_only = flag(&mut sink, "read_only");
    let privileged = flag(&mut sink, "privileged");
    let init = flag(&mut sink, "init");

    let caps = |sink: &mut Sink<'_>, key: &str| -> Vec<String> {
        let Some(v) = get(key) else { return Vec::new() };
        let mut out: Vec<String> = Vec::new();
        for (i, c) in sink.strings(key, v).into_iter().enumerate() {
            match normalize_capability(&c) {
                Ok(c) if !out.contains(&c) => out.push(c),
                Ok(_) => {}
                Err(e) => sink.invalid(format!("{key}[{i}]"), e),
            }
        }
        out
    };
    let cap_add = caps(&mut sink, "cap_add");
    let cap_drop = caps(&mut sink, "cap_drop");

    let mut ulimits = BTreeMap::new();
    if let Some(v) = get("ulimits") {
        if let Some(um) = sink.map("ulimits", v) {
            for (name, lv) in um {
                let key = format!("ulimits.{name}");
                if !ULIMITS.contains(&name.as_str()) {
                    let suggestion = schema::suggest(name, ULIMITS);
                    sink.push(
                        key,
                        ErrorKind::UnknownKey {
                            key: name.clone(),
                            suggestion,
                        },
                    );
                    continue;
                }
                let limit = match lv {
                    Value::Object(sh) => {
                        sink.check_keys(&key, sh, &schema::ULIMIT);
                        let soft = sh
                            .get("soft")
                            .and_then(|v| sink.i64(&format!("{key}.soft"), v));
                        let hard = sh
                            .get("hard")
                            .and_then(|v| sink.i64(&format!("{key}.hard"), v));
                        match (soft, hard) {
                            (Some(soft), Some(hard)) => Some(Ulimit { soft, hard }),
                            _ => {
                                if !sh.contains_key("soft") || !sh.contains_key("hard") {
                                    sink.invalid(&key, "needs both soft and hard");
                                }
                                None
                            }
                        }
                    }
                    other => sink.i64(&key, other).map(|n| Ulimit { soft: n, hard: n }),
                };
                if let Some(l) = limit {
                    if l.soft < -1 || l.hard < -1 {
                        sink.invalid(&key, "limits must be ≥ 0 (or -1 for unlimited)");
                    } else if l.hard != -1 && (l.soft == -1 || l.soft > l.hard) {
                        sink.invalid(
                            &key,
                            format!("soft limit {} is above hard limit {}", l.soft, l.hard),
                        );
                    } else {
                        ulimits.insert(name.clone(), l);
                    }
                }
            }
        }
    }

    let stop_signal = get("stop_signal")
        .and_then(|v| sink.string("stop_signal", v))
        .and_then(|s| {
            normalize_signal(&s)
                .map_err(|e| sink.invalid("stop_signal", e))
                .ok()
        });
    let stop_grace_period =
        get("stop_grace_period").and_then(|v| sink.duration("stop_grace_period", v));
    let restart = get("restart")
        .and_then(|v| sink.string("restart", v))
        .and_then(|s| {
            parse_restart(&s)
                .map_err(|e| sink.invalid("restart", e))
                .ok()
        });
    let healthcheck = get("healthcheck").and_then(|v| healthcheck(&mut sink, v));

    let mut depends_on = BTreeMap::new();
    if let Some(v) = get("depends_on") {
        match names_to_map(v) {
            Some(dm) => {
                for (dep, dv) in dm {
                    let key = format!("depends_on.{dep}");
                    let dep_name = match ServiceName::new(dep.as_str()) {
                        Ok(n) => n,
                        Err(e) => {
                            sink.invalid(&key, e.to_string());
                            continue;
                        }
                    };
                    let mut d = Dependency {
                        condition: DependencyCondition::ServiceStarted,
                        restart: false,
                        required: true,
                    };
                    if let Some(dm) = dv.as_object() {
                        sink.check_keys(&key, dm, &schema::DEPENDS_ON);
                        if let Some(c) = dm
                            .get("condition")
                            .and_then(|c| sink.string(&format!("{key}.condition"), c))
                        {
                            d.condition = match c.as_str() {
                                "service_started" => DependencyCondition::ServiceStarted,
                                "service_healthy" => DependencyCondition::ServiceHealthy,
                                "service_completed_successfully" => {
                                    DependencyCondition::ServiceCompletedSuccessfully
                                }
                                other => {
                                    sink.invalid(
                                        format!("{key}.condition"),
                                        format!("invalid condition {other:?}: must be service_started, service_healthy or service_completed_successfully"),
                                    );
                                    d.condition
                                }
                            };
                        }
                        if let Some(b) = dm
                            .get("restart")
                            .and_then(|b| sink.bool(&format!("{key}.restart"), b))
                        {
                            d.restart = b;
                        }
                        if let Some(b) = dm
                            .get("required")
                            .and_then(|b| sink.bool(&format!("{key}.required"), b))
                        {
                            d.required = b;
                        }
                    } else if !dv.is_null() {
                        sink.invalid(&key, "must be a mapping with condition/restart/required");
                    }
                    depends_on.insert(dep_name, d);
                }
            }
            None => sink.invalid("depends_on", "must be a list of service names or a mapping"),
        }
    }

    let network_mode = match get("network_mode").and_then(|v| sink.string("network_mode", v)) {
        None => NetworkMode::Bridge,
        Some(s) => match s.as_str() {
            "bridge" | "default" => NetworkMode::Bridge,
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            other => {
                sink.invalid(
                    "network_mode",
                    format!("unsupported network_mode {other:?}: cntnr supports host, none and the default bridge"),
                );
                NetworkMode::Bridge
            }
        },
    };
    let mut networks = BTreeMap::new();
    if let Some(v) = get("networks") {
        match names_to_map(v) {
            Some(nm) => {
                for (net, nv) in nm {
                    let key = format!("networks.{net}");
                    let mut sn = ServiceNetwork::default();
                    if let Some(o) = nv.as_object() {
                        sink.check_keys(&key, o, &schema::SERVICE_NETWORK);
                        if let Some(a) = o.get("aliases") {
                            sn.aliases = sink.strings(&format!("{key}.aliases"), a);
                        }
                    } else if !nv.is_null() {
                        sink.invalid(&key, "must be a mapping (aliases) or empty");
                    }
                    networks.insert(net, sn);
                }
            }
            None => sink.invalid("networks", "must be a list of network names or a mapping"),
        }
    }
    if network_mode != NetworkMode::Bridge && !networks.is_empty() {
        sink.invalid(
            "networks",
            "cannot be combined with network_mode host or none",
        );
    }
    if network_mode == NetworkMode::Bridge && networks.is_empty() {
        networks.insert("default".to_string(), ServiceNetwork::default());
    }

    let mut dns = Vec::new();
    if let Some(v) = get("dns") {
        for (i, s) in sink.strings("dns", v).into_iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(ip) if !dns.contains(&ip) => dns.push(ip),
                Ok(_) => {}
                Err(_) => sink.invalid(
                    format!("dns[{i}]"),
                    format!("invalid DNS server {s:?}: must be an IP address"),
                ),
            }
        }
    }
    let mut dns_search = Vec::new();
    if let Some(v) = get("dns_search") {
        for (i, s) in sink.strings("dns_search", v).into_iter().enumerate() {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                sink.invalid(
                    format!("dns_search[{i}]"),
                    format!("invalid search domain {s:?}"),
                );
            } else if !dns_search.contains(&s) {
                dns_search.push(s);
            }
        }
    }
    let mut extra_hosts = Vec::new();
    if let Some(v) = get("extra_hosts") {
        match extra_hosts_to_map(v) {
            Some(hm) => {
                for (host, ipv) in hm {
                    let key = format!("extra_hosts.{host}");
                    let ips: Vec<String> = match &ipv {
                        Value::Array(_) => sink.strings(&key, &ipv),
                        other => sink.string(&key, other).into_iter().collect(),
                    };
                    for ip in ips {
                        match ip
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<IpAddr>()
                        {
                            Ok(ip) => extra_hosts.push(ExtraHost {
                                host: host.clone(),
                                ip,
                            }),
                            Err(_) if ip == "host-gateway" => sink
                                .invalid(&key, "host-gateway is not supported; give an IP address"),
                            Err(_) => sink.invalid(&key, format!("invalid IP address {ip:?}")),
                        }
                    }
                }
            }
            None => sink.invalid(
                "extra_hosts",
                "must be a list of host=ip / host:ip strings or a mapping",
            ),
        }
    }

    let pull_policy = match get("pull_policy").and_then(|v| sink.string("pull_policy", v)) {
        None => PullPolicy::Missing,
        Some(s) => match s.as_str() {
            "missing" | "if_not_present" => PullPolicy::Missing,
            "always" => PullPolicy::Always,
            "never" => PullPolicy::Never,
            other => {
                sink.invalid("pull_policy", format!("invalid pull_policy {other:?}: cntnr supports always, never, missing (if_not_present)"));
                PullPolicy::Missing
            }
        },
    };
    let deploy = get("deploy")
        .map(|v| deploy(&mut sink, v))
        .unwrap_or_default();

    ServiceSpec {
        image,
        command,
        entrypoint,
        environment,
        working_dir,
        user,
        hostname,
        domainname,
        labels,
        annotations,
        ports,
        expose,
        volumes,
        read_only,
        cap_add,
        cap_drop,
        privileged,
        ulimits,
        sysctls,
        stop_signal,
        stop_grace_period,
        restart,
        healthcheck,
        depends_on,
        network_mode,
        networks,
        dns,
        dns_search,
        extra_hosts,
        init,
        pull_policy,
        deploy,
        agent,
    }
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    match s {
        "no" | "\"no\"" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
        other => match other.strip_prefix("on-failure:").map(|n| n.parse::<u32>()) {
            Some(Ok(n)) => Ok(RestartPolicy::OnFailure { max_retries: Some(n) }),
            _ => Err(format!(
                "invalid restart policy {other:?}: must be no, always, on-failure[:N] or unless-stopped"
            )),
        },
    }
}

fn env_files(sink: &mut Sink<'_>, v: &Value, ctx: &Context<'_>) -> BTreeMap<String, String> {
    let entries: Vec<Value> = match v {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let mut out = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("env_file[{i}]");
        let (path, required) = match entry {
            Value::Object(m) => {
                for k in m.keys() {
                    if !matches!(k.as_str(), "path" | "required" | "format") {
                        let suggestion = schema::suggest(k, &["path", "required", "format"]);
                        sink.push(
                            format!("{key}.{k}"),
                            ErrorKind::UnknownKey {
                                key: k.clone(),
                                suggestion,
                            },
                        );
                    }
                }
                if let Some(f) = m.get("format").and_then(Value::as_str) {
                    if f != "raw" && !f.is_empty() {
                        sink.invalid(
                            format!("{key}.format"),
                            format!("unsupported env_file format {f:?}"),
                        );
                    }
                }
                let Some(p) = m
                    .get("path")
                    .and_then(|p| sink.string(&format!("{key}.path"), p))
                else {
                    if !m.contains_key("path") {
                        sink.invalid(&key, "needs `path`");
                    }
                    continue;
                };
                let required = m
                    .get("required")
                    .and_then(|r| sink.bool(&format!("{key}.required"), r))
                    .unwrap_or(true);
                (p, required)
            }
            other => match sink.string(&key, other) {
                Some(p) => (p, true),
                None => continue,
            },
        };
        let full = if Path::new(&path).is_absolute() {
            PathBuf::from(&path)
        } else if let Some(dir) = ctx.project_dir {
            join_lexically(dir, Path::new(&path))
        } else {
            sink.invalid(
                &key,
                format!("env_file {path:?}: a relative path needs a project directory"),
            );
            continue;
        };
        match std::fs::read_to_string(&full) {
            Ok(text) => match crate::envfile::parse_dotenv(&text, ctx.env) {
                Ok(vars) => out.extend(vars),
                Err(e) => sink.invalid(&key, format!("env_file {}: {e}", full.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => sink.invalid(
                &key,
                format!("cannot read env_file {}: {e}", full.display()),
            ),
        }
    }
    out
}

fn healthcheck(sink: &mut Sink<'_>, v: &Value) -> Option<Healthcheck> {
    let m = sink.map("healthcheck", v)?;
    sink.check_keys("healthcheck", m, &schema::HEALTHCHECK);
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());
    let disabled = get("disable")
        .and_then(|v| sink.bool("healthcheck.disable", v))
        .unwrap_or(false);
    let test = if disabled {
        Some(HealthTest::Disabled)
    } else {
        match get("test") {
            None => None,
            Some(Value::String(s)) => Some(HealthTest::Shell(s.clone())),
            Some(Value::Array(items)) => {
                let words = sink.strings("healthcheck.test", &Value::Array(items.clone()));
                match words.first().map(String::as_str) {
                    Some("NONE") => Some(HealthTest::Disabled),
                    Some("CMD") if words.len() > 1 => Some(HealthTest::Cmd(words[1..].to_vec())),
                    Some("CMD-SHELL") if words.len() == 2 => {
                        Some(HealthTest::Shell(words[1].clone()))
                    }
                    Some("CMD-SHELL") if words.len() > 2 => {
                        Some(HealthTest::Shell(words[1..].join(" ")))
                    }
                    _ => {
                        sink.invalid(
                            "healthcheck.test",
                            "a list test must start with CMD (and a command), CMD-SHELL (and a command) or NONE",
                        );
                        None
                    }
                }
            }
            Some(other) => {
                sink.invalid(
                    "healthcheck.test",
                    format!("must be a string or a list, not {}", kind_of(other)),
                );
                None
            }
        }
    };
    let dur = |sink: &mut Sink<'_>, k: &str, default| {
        get(k)
            .and_then(|v| sink.duration(&format!("healthcheck.{k}"), v))
            .unwrap_or(default)
    };
    let interval = dur(sink, "interval", Healthcheck::DEFAULT_INTERVAL);
    let timeout = dur(sink, "timeout", Healthcheck::DEFAULT_TIMEOUT);
    let start_period = dur(sink, "start_period", std::time::Duration::ZERO);
    let start_interval = dur(sink, "start_interval", Healthcheck::DEFAULT_START_INTERVAL);
    let retries = get("retries")
        .and_then(|v| sink.u32("healthcheck.retries", v))
        .unwrap_or(Healthcheck::DEFAULT_RETRIES);
    if interval.is_zero() && !disabled {
        sink.invalid("healthcheck.interval", "must be greater than 0s");
    }
    if timeout.is_zero() && !disabled {
        sink.invalid("healthcheck.timeout", "must be greater than 0s");
    }
    Some(Healthcheck {
        test,
        interval,
        timeout,
        retries,
        start_period,
        start_interval,
    })
}

fn tmpfs_short(sink: &mut Sink<'_>, key: &str, entry: &str) -> Option<Mount> {
    let (target, opts) = match entry.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (entry, None),
    };
    if !check_abs_target(sink, key, target) {
        return None;
    }
    let mut options = TmpfsOptions::default();
    for opt in opts
        .into_iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        match opt.split_once('=') {
            Some(("size", s)) => match parse_memory(s) {
                Ok(n) => options.size = Some(n),
                Err(e) => sink.invalid(key, e),
            },
            Some(("mode", s)) => match parse_octal_mode(s) {
                Ok(n) => options.mode = Some(n),
                Err(e) => sink.invalid(key, e),
            },
            _ => sink.invalid(
                key,
                format!("unsupported tmpfs option {opt:?}: cntnr supports size= and mode="),
            ),
        }
    }
    Some(Mount::Tmpfs {
        target: target.to_string(),
        tmpfs: options,
    })
}

const PROPAGATIONS: &[&str] = &[
    "rprivate", "private", "rshared", "shared", "rslave", "slave",
];

fn is_path_like(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

fn check_volume_name(sink: &mut Sink<'_>, key: &str, name: &str) -> bool {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        sink.invalid(key, format!("invalid volume name {name:?}: use letters, digits, `_`, `.`, `-` (or a path for a bind mount)"));
    }
    ok
}

fn mount(sink: &mut Sink<'_>, key: &str, v: &Value, ctx: &Context<'_>) -> Option<Mount> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, *t, None),
                [src, t] => (Some(*src), *t, None),
                [src, t, m] => (Some(*src), *t, Some(*m)),
                _ => {
                    sink.invalid(
                        key,
                        format!("invalid volume {s:?}: expected [source:]target[:mode]"),
                    );
                    return None;
                }
            };
            if !check_abs_target(sink, key, target) {
                return None;
            }
            let mut read_only = false;
            let mut nocopy = false;
            let mut propagation = None;
            for opt in mode.into_iter().flat_map(|m| m.split(',')) {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    "nocopy" => nocopy = true,
                    p if PROPAGATIONS.contains(&p) => propagation = Some(p.to_string()),
                    "z" | "Z" => sink.invalid(
                        key,
                        format!("volume mode {opt:?} (SELinux relabel) is not supported"),
                    ),
                    other => sink.invalid(
                        key,
                        format!(
                            "invalid volume mode {other:?}: use ro, rw, nocopy or a propagation"
                        ),
                    ),
                }
            }
            match source {
                None => Some(Mount::Volume {
                    source: None,
                    target: target.to_string(),
                    read_only,
                    volume: VolumeOptions {
                        nocopy,
                        subpath: None,
                    },
                }),
                Some(src) if is_path_like(src) => {
                    if nocopy {
                        sink.invalid(key, "nocopy applies to volumes, not bind mounts");
                    }
                    match resolve_bind_source(src, ctx) {
                        Ok(source) => Some(Mount::Bind {
                            source,
                            target: target.to_string(),
                            read_only,
                            bind: BindOptions {
                                propagation,
                                create_host_path: true,
                            },
                        }),
                        Err(e) => {
                            sink.invalid(key, e);
                            None
                        }
                    }
                }
                Some(name) => {
                    if propagation.is_some() {
                        sink.invalid(key, "propagation applies to bind mounts, not volumes");
                    }
                    check_volume_name(sink, key, name).then(|| Mount::Volume {
                        source: Some(name.to_string()),
                        target: target.to_string(),
                        read_only,
                        volume: VolumeOptions {
                            nocopy,
                            subpath: None,
                        },
                    })
                }
            }
        }
        Value::Object(m) => {
            sink.check_keys(key, m, &schema::MOUNT);
            let get = |k: &str| m.get(k).filter(|v| !v.is_null());
            let ty = get("type").and_then(|t| sink.string(&format!("{key}.type"), t));
            let target = match get("target").and_then(|t| sink.string(&format!("{key}.target"), t))
            {
                Some(t) => t,
                None => {
                    sink.invalid(key, "a long-syntax volume needs `target`");
                    return None;
                }
            };
            if !check_abs_target(sink, &format!("{key}.target"), &target) {
                return None;
            }
            let source = get("source").and_then(|s| sink.string(&format!("{key}.source"), s));
            let read_only = get("read_only")
                .and_then(|b| sink.bool(&format!("{key}.read_only"), b))
                .unwrap_or(false);
            let sub =
                |sink: &mut Sink<'_>, name: &str, set: &KeySet| -> Option<Map<String, Value>> {
                    let v = get(name)?;
                    let sk = format!("{key}.{name}");
                    let sm = sink.map(&sk, v)?.clone();
                    sink.check_keys(&sk, &sm, set);
                    Some(sm)
                };
            let ty = ty.unwrap_or_else(|| match &source {
                Some(s) if is_path_like(s) => "bind".to_string(),
                _ => "volume".to_string(),
            });
            let others: &[&str] = match ty.as_str() {
                "bind" => &["volume", "tmpfs"],
                "volume" => &["bind", "tmpfs"],
                "tmpfs" => &["bind", "volume"],
                _ => &[],
            };
            for o in others {
                if get(o).is_some() {
                    sink.invalid(
                        format!("{key}.{o}"),
                        format!("`{o}` options do not apply to a {ty} mount"),
                    );
                }
            }
            match ty.as_str() {
                "bind" => {
                    let Some(src) = source else {
                        sink.invalid(key, "a bind mount needs `source`");
                        return None;
                    };
                    let mut bind = BindOptions {
                        propagation: None,
                        create_host_path: false,
                    };
                    if let Some(b) = sub(sink, "bind", &schema::MOUNT_BIND) {
                        if let Some(p) = b
                            .get("propagation")
                            .and_then(|p| sink.string(&format!("{key}.bind.propagation"), p))
                        {
                            if PROPAGATIONS.contains(&p.as_str()) {
                                bind.propagation = Some(p);
                            } else {
                                sink.invalid(
                                    format!("{key}.bind.propagation"),
                                    format!("invalid propagation {p:?}"),
                                );
                            }
                        }
                        if let Some(c) = b
                            .get("create_host_path")
                            .and_then(|c| sink.bool(&format!("{key}.bind.create_host_path"), c))
                        {
                            bind.create_host_path = c;
                        }
                    }
                    match resolve_bind_source(&src, ctx) {
                        Ok(source) => Some(Mount::Bind {
                            source,
                            target,
                            read_only,
                            bind,
                        }),
                        Err(e) => {
                            sink.invalid(format!("{key}.source"), e);
                            None
                        }
                    }
                }
                "volume" => {
                    if let Some(s) = &source {
                        if !check_volume_name(sink, &format!("{key}.source"), s) {
                            return None;
                        }
                    }
                    let mut volume = VolumeOptions::default();
                    if let Some(vo) = sub(sink, "volume", &schema::MOUNT_VOLUME) {
                        if let Some(n) = vo
                            .get("nocopy")
                            .and_then(|n| sink.bool(&format!("{key}.volume.nocopy"), n))
                        {
                            volume.nocopy = n;
                        }
                        if let Some(sp) = vo
                            .get("subpath")
                            .and_then(|s| sink.string(&format!("{key}.volume.subpath"), s))
                        {
                            if sp.starts_with('/') || has_parent_dir(&sp) {
                                sink.invalid(
                                    format!("{key}.volume.subpath"),
                                    format!("subpath {sp:?} must be relative, without `..`"),
                                );
                            } else {
                                volume.subpath = Some(sp);
                            }
                        }
                    }
                    Some(Mount::Volume {
                        source,
                        target,
                        read_only,
                        volume,
                    })
                }
                "tmpfs" => {
                    if source.is_some() {
                        sink.invalid(format!("{key}.source"), "a tmpfs mount has no source");
                    }
                    let mut tmpfs = TmpfsOptions::default();
                    if let Some(t) = sub(sink, "tmpfs", &schema::MOUNT_TMPFS) {
                        if let Some(s) = t
                            .get("size")
                            .and_then(|s| sink.string(&format!("{key}.tmpfs.size"), s))
                        {
                            match parse_memory(&s) {
                                Ok(n) => tmpfs.size = Some(n),
                                Err(e) => sink.invalid(format!("{key}.tmpfs.size"), e),
                            }
                        }
                        if let Some(s) = t
                            .get("mode")
                            .and_then(|s| sink.string(&format!("{key}.tmpfs.mode"), s))
                        {
                            match parse_octal_mode(&s) {
                                Ok(n) => tmpfs.mode = Some(n),
                                Err(e) => sink.invalid(format!("{key}.tmpfs.mode"), e),
                            }
                        }
                    }
                    Some(Mount::Tmpfs { target, tmpfs })
                }
                other => {
                    sink.invalid(
                        format!("{key}.type"),
                        format!("unsupported volume type {other:?}: cntnr supports bind, volume and tmpfs"),
                    );
                    None
                }
            }
        }
        other => {
            sink.invalid(
                key,
                format!("must be a string or a mapping, not {}", kind_of(other)),
            );
            None
        }
    }
}

fn parse_constraint(s: &str) -> Result<Constraint, String> {
    let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = s.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!(
            "invalid constraint {s:?}: expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE"
        ));
    };
    let (lhs, value) = (lhs.trim(), rhs.trim());
    if value.is_empty() {
        return Err(format!("invalid constraint {s:?}: missing value"));
    }
    let attr = if lhs == "node.hostname" {
        ConstraintAttr::Hostname
    } else if let Some(label) = lhs.strip_prefix("node.labels.") {
        if label.is_empty() {
            return Err(format!("invalid constraint {s:?}: missing label name"));
        }
        ConstraintAttr::Label(label.to_string())
    } else {
        return Err(format!(
            "unsupported constraint attribute {lhs:?}: cntnr supports node.hostname and node.labels.<name>"
        ));
    };
    Ok(Constraint {
        attr,
        equal,
        value: value.to_string(),
    })
}

fn deploy(sink: &mut Sink<'_>, v: &Value) -> Deploy {
    let mut d = Deploy::default();
    let Some(m) = sink.map("deploy", v) else {
        return d;
    };
    sink.check_keys("deploy", m, &schema::DEPLOY);
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());
    if let Some(mode) = get("mode").and_then(|v| sink.string("deploy.mode", v)) {
        d.mode = match mode.as_str() {
            "replicated" => DeployMode::Replicated,
            "global" => DeployMode::Global,
            other => {
                sink.invalid(
                    "deploy.mode",
                    format!("invalid mode {other:?}: must be replicated or global"),
                );
                DeployMode::Replicated
            }
        };
    }
    if let Some(r) = get("replicas") {
        if d.mode == DeployMode::Global {
            sink.invalid(
                "deploy.replicas",
                "cannot be set with mode: global (one replica runs on every eligible node)",
            );
        } else if let Some(n) = sink.u32("deploy.replicas", r) {
            d.replicas = n;
        }
    }
    if let Some(pv) = get("placement") {
        if let Some(pm) = sink.map("deploy.placement", pv) {
            sink.check_keys("deploy.placement", pm, &schema::PLACEMENT);
            if let Some(c) = pm.get("constraints") {
                for (i, s) in sink
                    .strings("deploy.placement.constraints", c)
                    .into_iter()
                    .enumerate()
                {
                    match parse_constraint(&s) {
                        Ok(c) if !d.placement.constraints.contains(&c) => {
                            d.placement.constraints.push(c)
                        }
                        Ok(_) => {}
                        Err(e) => sink.invalid(format!("deploy.placement.constraints[{i}]"), e),
                    }
                }
            }
            if let Some(n) = pm.get("max_replicas_per_node").filter(|v| !v.is_null()) {
                match sink.u32("deploy.placement.max_replicas_per_node", n) {
                    Some(0) => sink.invalid(
                        "deploy.placement.max_replicas_per_node",
                        "must be at least 1",
                    ),
                    Some(n) => d.placement.max_replicas_per_node = Some(n),
                    None => {}
                }
            }
        }
    }
    if let Some(rv) = get("resources") {
        if let Some(rm) = sink.map("deploy.resources", rv) {
            sink.check_keys("deploy.resources", rm, &schema::RESOURCES);
            if let Some(lv) = rm.get("limits").filter(|v| !v.is_null()) {
                if let Some(lm) = sink.map("deploy.resources.limits", lv) {
                    sink.check_keys("deploy.resources.limits", lm, &schema::LIMITS);
                    if let Some(c) = lm
                        .get("cpus")
                        .and_then(|c| sink.string("deploy.resources.limits.cpus", c))
                    {
                        match parse_cpus(&c) {
                            Ok(c) => d.resources.limits.cpus = Some(c),
                            Err(e) => sink.invalid("deploy.resources.limits.cpus", e),
                        }
                    }
                    if let Some(mem) = lm
                        .get("memory")
                        .and_then(|c| sink.string("deploy.resources.limits.memory", c))
                    {
                        match parse_memory(&mem) {
                            Ok(0) => sink.invalid(
                                "deploy.resources.limits.memory",
                                "must be greater than 0",
                            ),
                            Ok(n) => d.resources.limits.memory = Some(n),
                            Err(e) => sink.invalid("deploy.resources.limits.memory", e),
                        }
                    }
                    if let Some(p) = lm
                        .get("pids")
                        .and_then(|p| sink.i64("deploy.resources.limits.pids", p))
                    {
                        if p == 0 || p < -1 {
                            sink.invalid(
                                "deploy.resources.limits.pids",
                                "must be at least 1 (or -1 for unlimited)",
                            );
                        } else {
                            d.resources.limits.pids = Some(p);
                        }
                    }
                }
            }
        }
    }
    if let Some(rv) = get("restart_policy") {
        if let Some(rm) = sink.map("deploy.restart_policy", rv) {
            sink.check_keys("deploy.restart_policy", rm, &schema::RESTART_POLICY);
            let mut p = DeployRestartPolicy {
                condition: RestartCondition::Any,
                delay: std::time::Duration::from_secs(5),
                max_attempts: None,
                window: None,
            };
            if let Some(c) = rm
                .get("condition")
                .and_then(|c| sink.string("deploy.restart_policy.condition", c))
            {
                p.condition = match c.as_str() {
                    "none" => RestartCondition::None,
                    "on-failure" => RestartCondition::OnFailure,
                    "any" => RestartCondition::Any,
                    other => {
                        sink.invalid(
                            "deploy.restart_policy.condition",
                            format!("invalid condition {other:?}: must be none, on-failure or any"),
                        );
                        RestartCondition::Any
                    }
                };
            }
            if let Some(dl) = rm
                .get("delay")
                .and_then(|v| sink.duration("deploy.restart_policy.delay", v))
            {
                p.delay = dl;
            }
            if let Some(n) = rm
                .get("max_attempts")
                .and_then(|v| sink.u32("deploy.restart_policy.max_attempts", v))
            {
                p.max_attempts = Some(n);
            }
            if let Some(w) = rm
                .get("window")
                .and_then(|v| sink.duration("deploy.restart_policy.window", v))
            {
                p.window = Some(w);
            }
            d.restart_policy = Some(p);
        }
    }
    // Presence matters: a service with an `update_config` key (even one
    // equal to swarm's defaults) is rolled out replica by replica.
    if let Some(uv) = m.get("update_config") {
        d.update_config = Some(update_config(sink, "deploy.update_config", uv, false));
    }
    if let Some(rv) = m.get("rollback_config") {
        d.rollback_config = Some(update_config(sink, "deploy.rollback_config", rv, true));
    }
    d
}

/// Normalizes `deploy.update_config` or, with `rollback`,
/// `deploy.rollback_config` (same keys; its `failure_action` is only
/// `pause` or `continue`, as in swarm). Absent keys take swarm's defaults,
/// which are the same for both. An empty (null) block is all defaults.
fn update_config(sink: &mut Sink<'_>, key: &str, v: &Value, rollback: bool) -> UpdateConfig {
    let mut u = UpdateConfig::default();
    if v.is_null() {
        return u;
    }
    let Some(um) = sink.map(key, v) else {
        return u;
    };
    let set = if rollback {
        &schema::ROLLBACK_CONFIG
    } else {
        &schema::UPDATE_CONFIG
    };
    sink.check_keys(key, um, set);
    let k = |f: &str| format!("{key}.{f}");
    let get = |f: &str| um.get(f).filter(|v| !v.is_null());
    if let Some(n) = get("parallelism").and_then(|v| sink.u32(&k("parallelism"), v)) {
        u.parallelism = n;
    }
    if let Some(dl) = get("delay").and_then(|v| sink.duration(&k("delay"), v)) {
        u.delay = dl;
    }
    if let Some(mo) = get("monitor").and_then(|v| sink.duration(&k("monitor"), v)) {
        u.monitor = mo;
    }
    if let Some(fa) = get("failure_action").and_then(|v| sink.string(&k("failure_action"), v)) {
        u.failure_action = match fa.as_str() {
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if !rollback => FailureAction::Rollback,
            other => {
                let allowed = if rollback {
                    "pause or continue"
                } else {
                    "pause, continue or rollback"
                };
                sink.invalid(
                    k("failure_action"),
                    format!("invalid failure_action {other:?}: must be {allowed}"),
                );
                FailureAction::Pause
            }
        };
    }
    if let Some(o) = get("order").and_then(|v| sink.string(&k("order"), v)) {
        u.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                sink.invalid(
                    k("order"),
                    format!("invalid order {other:?}: must be stop-first or start-first"),
                );
                UpdateOrder::StopFirst
            }
        };
    }
    if let Some(r) = get("max_failure_ratio").and_then(|v| sink.string(&k("max_failure_ratio"), v))
    {
        match r.trim().parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => u.max_failure_ratio = x,
            _ => sink.invalid(
                k("max_failure_ratio"),
                format!("invalid ratio {r:?}: must be a number from 0 to 1"),
            ),
        }
    }
    u
}

/// Normalizes a top-level `networks` or `volumes` entry.
pub(crate) fn resource(
    sink: &mut Sink<'_>,
    section: &str,
    name: &str,
    v: &Value,
    set: &KeySet,
    driver: &str,
) -> (Option<String>, bool, BTreeMap<String, String>) {
    let key = format!("{section}.{name}");
    let ok_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok_name {
        sink.invalid(
            &key,
            format!("invalid name {name:?}: use letters, digits, `_`, `.`, `-`"),
        );
    }
    let Value::Object(m) = v else {
        if !v.is_null() {
            sink.invalid(&key, "must be a mapping or empty");
        }
        return (None, false, BTreeMap::new());
    };
    sink.check_keys(&key, m, set);
    let get = |k: &str| m.get(k).filter(|v| !v.is_null());
    let real_name = get("name").and_then(|v| sink.string(&format!("{key}.name"), v));
    let external = get("external")
        .and_then(|v| sink.bool(&format!("{key}.external"), v))
        .unwrap_or(false);
    let labels = get("labels")
        .map(|v| {
            sink.pairs(&format!("{key}.labels"), v)
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(d) = get("driver").and_then(|v| sink.string(&format!("{key}.driver"), v)) {
        if d != driver {
            sink.invalid(
                format!("{key}.driver"),
                format!("unsupported driver {d:?}: cntnr supports only {driver}"),
            );
        }
    }
    (real_name, external, labels)
}

/// `services.<name>` keys that must be service names.
pub(crate) fn service_names(
    services: &Map<String, Value>,
    issues: &mut Vec<Issue>,
) -> Vec<(ServiceName, Value)> {
    let mut out = Vec::new();
    for (name, v) in services {
        match ServiceName::new(name.as_str()) {
            Ok(n) => out.push((n, v.clone())),
            Err(e) => issues.push(Issue {
                service: Some(name.clone()),
                key: String::new(),
                kind: ErrorKind::Invalid(e.to_string()),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_parse_and_oci_paths_resolve() {
        let env = BTreeMap::new();
        let dir = Path::new("/srv/app");
        let ctx = Context {
            env: &env,
            project_dir: Some(dir),
        };
        assert_eq!(
            parse_image("oci:./image:latest", &ctx).unwrap(),
            ImageRef::OciLayout {
                path: "/srv/app/image".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            parse_image("oci:/x/y", &ctx).unwrap(),
            ImageRef::OciLayout {
                path: "/x/y".into(),
                tag: None
            }
        );
        for ok in ["nginx", "nginx:1.25", "library/nginx:1.25-alpine", "ghcr.io/org/app:v1", "localhost:5000/app", "registry.example.com:443/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"] {
            assert!(parse_image(ok, &ctx).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:bad tag",
            "a//b",
            "oci:",
            "nginx@sha256:xyz",
        ] {
            assert!(parse_image(bad, &ctx).is_err(), "{bad}");
        }
        let no_dir = Context {
            env: &env,
            project_dir: None,
        };
        assert!(parse_image("oci:./image", &no_dir).is_err());
    }

    #[test]
    fn bind_sources_resolve_or_fail() {
        let env: BTreeMap<String, String> = [("HOME".to_string(), "/home/u".to_string())].into();
        let ctx = Context {
            env: &env,
            project_dir: Some(Path::new("/srv/app")),
        };
        assert_eq!(
            resolve_bind_source("./data", &ctx).unwrap(),
            PathBuf::from("/srv/app/data")
        );
        assert_eq!(
            resolve_bind_source("~/x", &ctx).unwrap(),
            PathBuf::from("/home/u/x")
        );
        assert_eq!(
            resolve_bind_source("/a/./b", &ctx).unwrap(),
            PathBuf::from("/a/b")
        );
        assert!(resolve_bind_source("../data", &ctx).is_err());
        assert!(resolve_bind_source("/srv/../etc", &ctx).is_err());
        let no_dir = Context {
            env: &env,
            project_dir: None,
        };
        assert!(resolve_bind_source("./data", &no_dir)
            .unwrap_err()
            .contains("absolute"));
    }

    #[test]
    fn constraints_parse() {
        let c = parse_constraint("node.labels.zone != eu").unwrap();
        assert_eq!(c.attr, ConstraintAttr::Label("zone".into()));
        assert!(!c.equal);
        assert_eq!(c.to_string(), "node.labels.zone!=eu");
        assert!(parse_constraint("node.role==manager").is_err());
        assert!(parse_constraint("node.hostname=x").is_err());
        assert!(parse_constraint("node.hostname==").is_err());
    }

    #[test]
    fn restart_values() {
        assert_eq!(
            parse_restart("on-failure:3").unwrap(),
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert!(parse_restart("sometimes").is_err());
        assert!(parse_restart("on-failure:x").is_err());
    }
}
