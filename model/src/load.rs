//! The loader: files → parse → interpolate → merge → type → validate →
//! [`Project`].
//!
//! The only IO is reading the files it is given: the compose files, the
//! project's `.env` (by [`load_files`]) and the services' `env_file`s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Diagnostic, ErrorKind, LoadError};
use crate::interpolate::Interpolator;
use crate::names::{normalize_project_name, ProjectName};
use crate::normalize::{self, Context, Issue, Sink};
use crate::path::KeyPath;
use crate::schema;
use crate::spec::{NetworkSpec, Project, VolumeSpec};

/// How to load a project.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The project name (`-p`); wins over top-level `name:` and the
    /// directory name. Must be a valid project name as given (it is not
    /// normalized).
    pub project_name: Option<String>,
    /// The environment for interpolation (usually the process
    /// environment). [`load_files`] adds the project's `.env` under it:
    /// a variable set here wins over the same variable in `.env`.
    pub env: BTreeMap<String, String>,
    /// The project directory: relative bind sources, `env_file`s and
    /// `oci:` paths resolve against it, and its name is the fallback project
    /// name. [`load_files`] defaults it to the directory of the first file.
    /// Without one, relative paths are errors (the case of YAML read back
    /// from the store, which `deploy` wrote with absolute paths).
    pub project_dir: Option<PathBuf>,
    /// Skip interpolation: for text that was already interpolated (the
    /// store's `projects/<p>`), where a `$` is literal.
    pub skip_interpolation: bool,
}

/// One compose document to load, with the name used in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Shown in errors (a file path, or a store key).
    pub name: String,
    /// The YAML text.
    pub text: String,
}

fn diag(file: Option<&str>, kind: ErrorKind) -> Diagnostic {
    Diagnostic {
        file: file.map(str::to_string),
        ..Diagnostic::new(kind)
    }
}

/// Loads compose files from disk, in order, with the project's `.env`
/// (next to the first file, or in `opts.project_dir`).
///
/// Errors: every problem found, each naming its file (and project, service
/// and key where they apply).
pub fn load_files<P: AsRef<Path>>(files: &[P], opts: &LoadOptions) -> Result<Project, LoadError> {
    let Some(first) = files.first() else {
        return Err(LoadError {
            diagnostics: vec![diag(
                None,
                ErrorKind::Invalid("no compose file given".to_string()),
            )],
        });
    };
    let dir = match &opts.project_dir {
        Some(d) => d.clone(),
        None => {
            let parent = first
                .as_ref()
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            parent
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        }
    };
    let dir = normalize::join_lexically(
        &std::path::absolute(&dir).unwrap_or(dir.clone()),
        Path::new(""),
    );
    let mut diagnostics = Vec::new();
    let mut env = BTreeMap::new();
    let dotenv = dir.join(".env");
    match std::fs::read_to_string(&dotenv) {
        Ok(text) => match crate::envfile::parse_dotenv(&text, &opts.env) {
            Ok(vars) => env = vars,
            Err(e) => diagnostics.push(diag(
                Some(&dotenv.display().to_string()),
                ErrorKind::Invalid(e),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => diagnostics.push(diag(
            Some(&dotenv.display().to_string()),
            ErrorKind::Read(e.to_string()),
        )),
    }
    env.extend(opts.env.clone());
    let mut sources = Vec::new();
    for f in files {
        let name = f.as_ref().display().to_string();
        match std::fs::read_to_string(f.as_ref()) {
            Ok(text) => sources.push(Source { name, text }),
            Err(e) => diagnostics.push(diag(Some(&name), ErrorKind::Read(e.to_string()))),
        }
    }
    if !diagnostics.is_empty() {
        return Err(LoadError { diagnostics });
    }
    let opts = LoadOptions {
        project_name: opts.project_name.clone(),
        env,
        project_dir: Some(dir),
        skip_interpolation: opts.skip_interpolation,
    };
    load_sources(&sources, &opts)
}

/// Loads a project as stored under `projects/<project>` by `cntnr deploy`:
/// already interpolated (a `$` is literal), paths absolute, no `.env` and
/// no project directory; `key` names the source in errors. The project is
/// named `project` whatever the text's `name:` says.
pub fn load_stored(project: &ProjectName, key: &str, text: &str) -> Result<Project, LoadError> {
    let opts = LoadOptions {
        project_name: Some(project.to_string()),
        skip_interpolation: true,
        ..LoadOptions::default()
    };
    load_sources(
        &[Source {
            name: key.to_string(),
            text: text.to_string(),
        }],
        &opts,
    )
}

/// Where each part of the merged tree came from, for error messages.
#[derive(Debug, Default)]
struct Origins {
    top: BTreeMap<String, String>,
    service: BTreeMap<String, String>,
    service_key: BTreeMap<(String, String), String>,
    last: Option<String>,
}

impl Origins {
    fn record(&mut self, file: &str, tree: &Map<String, Value>) {
        for (k, v) in tree {
            self.top.insert(k.clone(), file.to_string());
            if k == "services" {
                for (s, sv) in v.as_object().into_iter().flatten() {
                    self.service
                        .entry(s.clone())
                        .or_insert_with(|| file.to_string());
                    for sk in sv.as_object().into_iter().flat_map(|m| m.keys()) {
                        self.service_key
                            .insert((s.clone(), sk.clone()), file.to_string());
                    }
                }
            }
        }
        self.last = Some(file.to_string());
    }

    fn file_of(&self, service: Option<&str>, key: &str) -> Option<String> {
        let first_seg = key.split(['.', '[']).next().unwrap_or("");
        match service {
            Some(s) => self
                .service_key
                .get(&(s.to_string(), first_seg.to_string()))
                .or_else(|| self.service.get(s))
                .or(self.last.as_ref())
                .cloned(),
            None => self.top.get(first_seg).or(self.last.as_ref()).cloned(),
        }
    }
}

/// Loads compose documents, merged in order. Reads no `.env` (put its
/// variables in `opts.env`); reads `env_file`s relative to
/// `opts.project_dir`.
pub fn load_sources(sources: &[Source], opts: &LoadOptions) -> Result<Project, LoadError> {
    let mut diagnostics = Vec::new();
    let mut origins = Origins::default();
    let mut merged = Value::Object(Map::new());
    let mut unset = std::collections::BTreeSet::new();
    if sources.is_empty() {
        diagnostics.push(diag(
            None,
            ErrorKind::Invalid("no compose file given".to_string()),
        ));
    }
    for src in sources {
        let mut tree = match crate::parse::parse_yaml(&src.text) {
            Ok(Value::Null) => Value::Object(Map::new()),
            Ok(t @ Value::Object(_)) => t,
            Ok(_) => {
                diagnostics.push(diag(
                    Some(&src.name),
                    ErrorKind::Invalid(
                        "the top level of a compose file must be a mapping".to_string(),
                    ),
                ));
                continue;
            }
            Err(e) => {
                diagnostics.push(diag(Some(&src.name), ErrorKind::Yaml(e)));
                continue;
            }
        };
        if !opts.skip_interpolation {
            let mut interp = Interpolator::new(&opts.env);
            for (path, e) in interp.expand_tree(&mut tree) {
                let mut d = located(&src.name, &path, ErrorKind::Interpolation(e));
                d.project = opts.project_name.clone();
                diagnostics.push(d);
            }
            unset.extend(interp.unset);
        }
        if let Value::Object(m) = &tree {
            origins.record(&src.name, m);
        }
        crate::merge::merge_files(&mut merged, tree);
    }
    if !diagnostics.is_empty() {
        return Err(LoadError { diagnostics });
    }
    let mut warnings: Vec<String> = unset
        .into_iter()
        .map(|v| format!("variable {v} is not set, substituting an empty string"))
        .collect();

    let Value::Object(top) = merged else {
        return Err(LoadError {
            diagnostics: vec![diag(
                None,
                ErrorKind::Invalid("the top level must be a mapping".to_string()),
            )],
        });
    };
    let mut issues: Vec<Issue> = Vec::new();
    let mut sink = Sink::new(None, &mut issues);
    for k in top.keys() {
        if let Some(kind) = schema::TOP.check(k) {
            sink.push(k.clone(), kind);
        }
    }

    let name = project_name(&top, opts, &mut sink);

    let ctx = Context {
        env: &opts.env,
        project_dir: opts.project_dir.as_deref(),
    };
    let mut networks = BTreeMap::new();
    if let Some(v) = top.get("networks").filter(|v| !v.is_null()) {
        match v.as_object() {
            Some(m) => {
                for (n, nv) in m {
                    let (real, external, labels) = normalize::resource(
                        &mut sink,
                        "networks",
                        n,
                        nv,
                        &schema::NETWORK,
                        "bridge",
                    );
                    networks.insert(
                        n.clone(),
                        NetworkSpec {
                            name: real,
                            external,
                            labels,
                        },
                    );
                }
            }
            None => sink.invalid("networks", "must be a mapping"),
        }
    }
    let mut volumes = BTreeMap::new();
    if let Some(v) = top.get("volumes").filter(|v| !v.is_null()) {
        match v.as_object() {
            Some(m) => {
                for (n, vv) in m {
                    let (real, external, labels) =
                        normalize::resource(&mut sink, "volumes", n, vv, &schema::VOLUME, "local");
                    volumes.insert(
                        n.clone(),
                        VolumeSpec {
                            name: real,
                            external,
                            labels,
                        },
                    );
                }
            }
            None => sink.invalid("volumes", "must be a mapping"),
        }
    }
    let services_tree = match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => m.clone(),
        Some(Value::Object(_)) | Some(Value::Null) | None => {
            sink.invalid("services", "no services defined");
            Map::new()
        }
        Some(_) => {
            sink.invalid("services", "must be a mapping of service names to services");
            Map::new()
        }
    };
    let mut services = BTreeMap::new();
    for (sname, sv) in normalize::service_names(&services_tree, &mut issues) {
        let spec = normalize::service(&sname, &sv, &ctx, &mut issues);
        services.insert(sname, spec);
    }
    if services
        .values()
        .any(|s| s.networks.contains_key("default"))
        && !networks.contains_key("default")
    {
        networks.insert("default".to_string(), NetworkSpec::default());
    }

    let project = name.map(|name| Project {
        name,
        services,
        networks,
        volumes,
        warnings: Vec::new(),
    });
    if let Some(p) = &project {
        warnings.extend(crate::validate::cross_check(p, &mut issues));
    }
    match project {
        Some(mut p) if issues.is_empty() => {
            p.warnings = warnings;
            Ok(p)
        }
        p => {
            let project = p.map(|p| p.name.to_string());
            let diagnostics = issues
                .into_iter()
                .map(|i| Diagnostic {
                    file: origins.file_of(i.service.as_deref(), &i.key),
                    project: project.clone(),
                    service: i.service,
                    key: (!i.key.is_empty()).then_some(i.key),
                    kind: i.kind,
                })
                .collect();
            Err(LoadError { diagnostics })
        }
    }
}

fn located(file: &str, path: &KeyPath, kind: ErrorKind) -> Diagnostic {
    let (service, key) = match path.split_service() {
        Some((s, rest)) => (Some(s), (!rest.is_empty()).then(|| rest.to_string())),
        None => (None, (!path.is_empty()).then(|| path.to_string())),
    };
    Diagnostic {
        file: Some(file.to_string()),
        project: None,
        service,
        key,
        kind,
    }
}

/// `-p`, else top-level `name:`, else the project directory's name.
fn project_name(
    top: &Map<String, Value>,
    opts: &LoadOptions,
    sink: &mut Sink<'_>,
) -> Option<ProjectName> {
    if let Some(p) = &opts.project_name {
        return ProjectName::new(p.as_str())
            .map_err(|e| sink.invalid("", format!("{e} (given with -p)")))
            .ok();
    }
    if let Some(v) = top.get("name").filter(|v| !v.is_null()) {
        let Some(s) = normalize::scalar(v) else {
            sink.invalid("name", "must be a string");
            return None;
        };
        return ProjectName::new(s)
            .map_err(|e| sink.invalid("name", e.to_string()))
            .ok();
    }
    let dir_name = opts
        .project_dir
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().to_string());
    match dir_name.as_deref().and_then(normalize_project_name) {
        Some(n) => Some(n),
        None => {
            sink.invalid(
                "",
                format!(
                    "cannot derive a project name from directory {:?}: give one with -p or a top-level name:",
                    dir_name.unwrap_or_default()
                ),
            );
            None
        }
    }
}
