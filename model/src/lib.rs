//! cntnr-model: compose parsing, interpolation, merge, validation, the
//! normalized [`Project`]/[`ServiceSpec`], the config hash, the store key
//! layout and the status/schedule record types. No IO besides reading the
//! files it is given; no tokio.
//!
//! The entry points are [`load_files`] (compose files on disk, with the
//! project's `.env`; what `cntnr validate` and `cntnr deploy` use),
//! [`load_stored`] (the text `deploy` wrote to `projects/<p>`, as the agent
//! reads it) and [`load_sources`] (YAML text with explicit options); then
//! [`render::to_yaml`] writes a project back as compose text and
//! [`ServiceSpec::config_hash`] digests what shapes its containers. All run
//! the same pipeline:
//!
//! 1. [`parse`]: YAML → untyped tree (anchors, aliases and `<<` merge keys
//!    resolved by serde-saphyr);
//! 2. [`interpolate`]: `${VAR}` in every string value, file by file;
//! 3. [`merge`]: files merged in order with compose's override rules;
//! 4. [`normalize`]: typed [`ServiceSpec`]s, unknown keys reported;
//! 5. [`validate`]: cross-service checks (dependencies, references);
//!
//! and report every problem found as a one-line [`Diagnostic`].

#![warn(missing_docs)]

pub mod annotations;
pub mod envfile;
pub mod error;
pub mod hash;
pub mod interpolate;
pub mod keys;
pub mod linux;
mod load;
pub mod merge;
pub mod names;
pub mod normalize;
pub mod parse;
pub mod path;
pub mod ports;
pub mod records;
pub mod render;
pub mod rollout;
pub mod schema;
pub mod shellwords;
pub mod spec;
pub mod units;
pub mod validate;

pub use annotations::{
    AgentSettings, EnvMissing, EnvOnChange, EnvSource, HealthOnFailure, HttpCheck, OnDisconnect,
    DEFAULT_RESCHEDULE_AFTER,
};
pub use error::{Diagnostic, ErrorKind, LoadError};
pub use hash::{config_hash, ConfigHash, HASH_VERSION};
pub use keys::{ConfigKey, KeyError, Prefix, StoreKey};
pub use load::{load_files, load_sources, load_stored, LoadOptions, Source};
pub use names::{
    ContainerId, InstanceId, NameError, NodeName, ProjectName, RegisteredName, Replica, ServiceName,
};
pub use spec::*;
