//! Errors of the compose model.
//!
//! Loading a project never stops at the first problem: every problem found is
//! a [`Diagnostic`], and [`LoadError`] carries all of them. Each diagnostic
//! renders as one line naming the file, project, service and key it is about.

use std::fmt;

/// What is wrong, without the where (that is in [`Diagnostic`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// A file given to the loader could not be read.
    #[error("cannot read file: {0}")]
    Read(String),
    /// The text is not valid YAML (or not a single YAML document).
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// `${…}` interpolation failed (a required variable is missing, or the
    /// expression is malformed).
    #[error("{0}")]
    Interpolation(#[from] crate::interpolate::InterpolationError),
    /// A key that compose defines but cntnr does not implement.
    #[error("`{key}` is a compose key that cntnr does not support{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    UnsupportedKey {
        /// The key as written.
        key: String,
        /// What to do instead, when there is an obvious alternative.
        hint: Option<&'static str>,
    },
    /// A key that is not part of compose (a typo, most likely).
    #[error("unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(", did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The nearest supported key, when one is close enough to be a typo.
        suggestion: Option<String>,
    },
    /// A value that does not parse or is out of range.
    #[error("{0}")]
    Invalid(String),
    /// `depends_on` forms a cycle; the payload is the cycle, `a -> b -> a`.
    #[error("depends_on cycle: {0}")]
    DependencyCycle(String),
}

/// One problem in a compose project, with where it is.
///
/// `Display` is a single line: `FILE: project "P", service "S", key "K": MESSAGE`,
/// leaving out the parts that are unknown or do not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the offending key came from (for merged projects, the last
    /// file that set the key).
    pub file: Option<String>,
    /// The project name, once it is known.
    pub project: Option<String>,
    /// The service, for problems inside `services.<name>`.
    pub service: Option<String>,
    /// The key path inside the service (or from the top level when there is
    /// no service), e.g. `ports[1]` or `deploy.resources.limits.memory`.
    pub key: Option<String>,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl Diagnostic {
    /// A diagnostic with no location yet; the loader fills it in.
    pub fn new(kind: ErrorKind) -> Self {
        Diagnostic {
            file: None,
            project: None,
            service: None,
            key: None,
            kind,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        let mut parts = Vec::new();
        if let Some(p) = &self.project {
            parts.push(format!("project \"{p}\""));
        }
        if let Some(s) = &self.service {
            parts.push(format!("service \"{s}\""));
        }
        if let Some(k) = &self.key {
            parts.push(format!("key \"{k}\""));
        }
        if !parts.is_empty() {
            write!(f, "{}: ", parts.join(", "))?;
        }
        // One line, always: a YAML error message may carry a newline.
        let msg = self.kind.to_string().replace(['\n', '\r'], " ");
        f.write_str(&msg)
    }
}

impl std::error::Error for Diagnostic {}

/// Loading a compose project failed; carries every problem found, in a
/// stable order (by file, then service, then key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadError {
    /// Every problem found; never empty.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    /// One line per problem, as printed by `cntnr validate`.
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics.iter().map(|d| d.to_string()).collect()
    }
}
