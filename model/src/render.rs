//! A [`Project`] written back as compose text.
//!
//! The text is the normalized long syntax, interpolated (a `$` in it is
//! literal), with every service's config hash added as the extension key
//! `x-cntnr-config-hash` (ignored when loading). Loading it with
//! [`crate::LoadOptions::skip_interpolation`] gives back an equal project:
//! this is what `cntnr validate` prints and what `cntnr deploy` stores
//! under `projects/<project>`.

use serde_json::{json, Value};

use crate::spec::Project;

/// The extension key carrying a service's config hash in rendered text.
pub const CONFIG_HASH_KEY: &str = "x-cntnr-config-hash";

/// The project as a JSON tree, with config hashes.
pub fn to_tree(project: &Project) -> Value {
    // Serializing plain data into a Value cannot fail for these types
    // (string map keys only); Null would be an obvious, loud failure.
    let mut v = serde_json::to_value(project).unwrap_or(Value::Null);
    if let Some(services) = v.get_mut("services").and_then(Value::as_object_mut) {
        for (name, spec) in &project.services {
            if let Some(Value::Object(s)) = services.get_mut(name.as_str()) {
                s.insert(
                    CONFIG_HASH_KEY.to_string(),
                    json!(spec.config_hash().as_str()),
                );
            }
        }
    }
    v
}

/// The project as compose YAML (one line per scalar, no folded strings).
pub fn to_yaml(project: &Project) -> Result<String, String> {
    let options = serde_saphyr::ser_options! {
        prefer_block_scalars: false,
    };
    serde_saphyr::to_string_with_options(&to_tree(project), options).map_err(|e| e.to_string())
}

/// The project as pretty-printed JSON (also valid compose YAML).
pub fn to_json(project: &Project) -> String {
    serde_json::to_string_pretty(&to_tree(project)).unwrap_or_default()
}
