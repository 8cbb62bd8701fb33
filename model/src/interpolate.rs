//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`,
//! `${VAR+replacement}`, nesting inside the operand, and `$$` for a literal
//! `$`.
//!
//! As in compose, interpolation applies to string values (never to mapping
//! keys), file by file before merging. A `$` not followed by a name, `{` or
//! `$` is kept as is. An unset variable without a default becomes the empty
//! string and is reported back as a warning. Operands are evaluated lazily:
//! the default of a set variable is never looked at.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::path::KeyPath;

/// Interpolation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${VAR:?msg}` / `${VAR?msg}` with `VAR` missing (or empty, for `:?`).
    #[error("required variable {var} is missing a value{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Required {
        /// The variable.
        var: String,
        /// The (interpolated) message from the expression.
        message: String,
    },
    /// A `${…}` that is not one of the supported forms.
    #[error("invalid interpolation format {expr:?}: {reason}")]
    InvalidFormat {
        /// The offending `${…}` text.
        expr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Expands variables in strings against an environment.
///
/// Variables that were referenced but unset (and had no default) are
/// collected in [`Interpolator::unset`] so the caller can warn about them.
#[derive(Debug)]
pub struct Interpolator<'a> {
    env: &'a BTreeMap<String, String>,
    /// Variables referenced without a value and without a default.
    pub unset: BTreeSet<String>,
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Length of the variable name at the start of `s` (0 if none).
fn name_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if is_name_start(c) => {}
        _ => return 0,
    }
    s.find(|c: char| !is_name_char(c)).unwrap_or(s.len())
}

/// Byte offset of the `}` closing a `${` whose body starts at `s[0]`,
/// skipping nested `${…}` and `$$`.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 2,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
            }
            b'}' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

impl<'a> Interpolator<'a> {
    /// An interpolator reading variables from `env`.
    pub fn new(env: &'a BTreeMap<String, String>) -> Self {
        Interpolator {
            env,
            unset: BTreeSet::new(),
        }
    }

    /// Expands every variable reference in `s`.
    pub fn expand(&mut self, s: &str) -> Result<String, InterpolationError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let close = find_close(body).ok_or_else(|| InterpolationError::InvalidFormat {
                    expr: format!("${{{body}"),
                    reason: "missing closing `}`",
                })?;
                let expr = &body[..close];
                out.push_str(&self.braced(expr)?);
                rest = &body[close + 1..];
            } else {
                let n = name_len(after);
                if n == 0 {
                    // Not a variable reference: compose keeps the `$`.
                    out.push('$');
                    rest = after;
                } else {
                    let name = &after[..n];
                    out.push_str(&self.direct(name));
                    rest = &after[n..];
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn direct(&mut self, name: &str) -> String {
        match self.env.get(name) {
            Some(v) => v.clone(),
            None => {
                self.unset.insert(name.to_string());
                String::new()
            }
        }
    }

    fn braced(&mut self, expr: &str) -> Result<String, InterpolationError> {
        let invalid = |reason| InterpolationError::InvalidFormat {
            expr: format!("${{{expr}}}"),
            reason,
        };
        let n = name_len(expr);
        if n == 0 {
            return Err(invalid(
                "expected a variable name ([_a-zA-Z][_a-zA-Z0-9]*) after `${`",
            ));
        }
        let name = &expr[..n];
        let op_and_arg = &expr[n..];
        if op_and_arg.is_empty() {
            return Ok(self.direct(name));
        }
        let value = self.env.get(name).cloned();
        let set = value.is_some();
        let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        let ops: [(&str, bool); 6] = [
            (":-", true),
            (":?", true),
            (":+", true),
            ("-", false),
            ("?", false),
            ("+", false),
        ];
        for (op, colon) in ops {
            if let Some(arg) = op_and_arg.strip_prefix(op) {
                let present = if colon { non_empty } else { set };
                let kind = op.trim_start_matches(':');
                return match kind {
                    "-" => {
                        if present {
                            Ok(value.unwrap_or_default())
                        } else {
                            self.expand(arg)
                        }
                    }
                    "?" => {
                        if present {
                            Ok(value.unwrap_or_default())
                        } else {
                            Err(InterpolationError::Required {
                                var: name.to_string(),
                                message: self.expand(arg)?,
                            })
                        }
                    }
                    _ => {
                        if present {
                            self.expand(arg)
                        } else {
                            Ok(String::new())
                        }
                    }
                };
            }
        }
        Err(invalid(
            "supported forms are ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+r}, ${VAR+r}",
        ))
    }

    /// Interpolates every string value of `tree` in place (mapping keys are
    /// left alone), collecting one error per failing string with its path.
    /// Top-level `x-` extension fragments are skipped: they are ignored after
    /// anchors are resolved, so a `${REQUIRED:?}` there must not fail a load.
    pub fn expand_tree(&mut self, tree: &mut Value) -> Vec<(KeyPath, InterpolationError)> {
        let mut errors = Vec::new();
        if let Value::Object(map) = tree {
            for (k, v) in map.iter_mut() {
                if k.starts_with("x-") {
                    continue;
                }
                self.walk(v, &KeyPath::root().key(k), &mut errors);
            }
        } else {
            self.walk(tree, &KeyPath::root(), &mut errors);
        }
        errors
    }

    fn walk(
        &mut self,
        v: &mut Value,
        path: &KeyPath,
        errors: &mut Vec<(KeyPath, InterpolationError)>,
    ) {
        match v {
            Value::String(s) if s.contains('$') => match self.expand(s) {
                Ok(new) => *s = new,
                Err(e) => errors.push((path.clone(), e)),
            },
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.walk(item, &path.index(i), errors);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    self.walk(item, &path.key(k), errors);
                }
            }
            _ => {}
        }
    }
}

/// Expands `s` against `env`; unset variables without defaults become empty.
pub fn interpolate(s: &str, env: &BTreeMap<String, String>) -> Result<String, InterpolationError> {
    Interpolator::new(env).expand(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("SET", "value"),
            ("EMPTY", ""),
            ("FALLBACK", "fb"),
            ("TAG", "1.25"),
            ("_U1", "u"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn every_operator_and_form() {
        let cases: &[(&str, &str)] = &[
            // direct
            ("$SET", "value"),
            ("${SET}", "value"),
            ("${_U1}x", "ux"),
            ("$SET-x", "value-x"),
            ("a${SET}b", "avalueb"),
            ("$UNSET", ""),
            ("${UNSET}", ""),
            ("${EMPTY}", ""),
            // :- and -
            ("${SET:-d}", "value"),
            ("${EMPTY:-d}", "d"),
            ("${UNSET:-d}", "d"),
            ("${SET-d}", "value"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${UNSET:-}", ""),
            ("${UNSET:-a b:c}", "a b:c"),
            // :? and ? when satisfied
            ("${SET:?boom}", "value"),
            ("${SET?boom}", "value"),
            ("${EMPTY?boom}", ""),
            // :+ and +
            ("${SET:+r}", "r"),
            ("${EMPTY:+r}", ""),
            ("${UNSET:+r}", ""),
            ("${SET+r}", "r"),
            ("${EMPTY+r}", "r"),
            ("${UNSET+r}", ""),
            // nesting
            ("${UNSET:-${FALLBACK}}", "fb"),
            ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
            ("${UNSET:-$FALLBACK}", "fb"),
            ("${SET:+tag-${TAG}}", "tag-1.25"),
            ("${UNSET:-x}${UNSET:-y}", "xy"),
            // escapes and stray dollars
            ("$$", "$"),
            ("$$SET", "$SET"),
            ("$${SET}", "${SET}"),
            ("cost: $$5", "cost: $5"),
            ("$1", "$1"),
            ("a $ b", "a $ b"),
            ("end$", "end$"),
            ("${UNSET:-$$}", "$"),
            ("no vars", "no vars"),
            ("image:${TAG:-latest}", "image:1.25"),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, &env()).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn required_and_malformed_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("${UNSET:?must be set}", "required variable UNSET is missing a value: must be set"),
            ("${EMPTY:?empty}", "required variable EMPTY is missing a value: empty"),
            ("${UNSET?}", "required variable UNSET is missing a value"),
            ("${UNSET?need $SET}", "required variable UNSET is missing a value: need value"),
            ("${UNSET:-${NOPE:?inner}}", "required variable NOPE is missing a value: inner"),
            ("${SET", "invalid interpolation format \"${SET\": missing closing `}`"),
            ("${}", "invalid interpolation format \"${}\": expected a variable name ([_a-zA-Z][_a-zA-Z0-9]*) after `${`"),
            ("${1A}", "invalid interpolation format \"${1A}\": expected a variable name ([_a-zA-Z][_a-zA-Z0-9]*) after `${`"),
        ];
        for (input, want) in cases {
            let err = interpolate(input, &env()).unwrap_err();
            assert_eq!(err.to_string(), *want, "{input}");
        }
        let err = interpolate("${SET/a/b}", &env()).unwrap_err();
        assert!(
            matches!(err, InterpolationError::InvalidFormat { .. }),
            "{err}"
        );
        let err = interpolate("${SET:=x}", &env()).unwrap_err();
        assert!(
            matches!(err, InterpolationError::InvalidFormat { .. }),
            "{err}"
        );
    }

    #[test]
    fn unused_defaults_are_not_evaluated() {
        assert_eq!(
            interpolate("${SET:-${NOPE:?never}}", &env()).unwrap(),
            "value"
        );
    }

    #[test]
    fn unset_variables_are_reported() {
        let e = env();
        let mut i = Interpolator::new(&e);
        i.expand("$A ${B} ${C:-x} $SET").unwrap();
        assert_eq!(i.unset.into_iter().collect::<Vec<_>>(), vec!["A", "B"]);
    }

    #[test]
    fn tree_interpolates_values_not_keys_and_skips_x_fragments() {
        let e = env();
        let mut tree = serde_json::json!({
            "services": {"web": {"image": "nginx:${TAG}", "labels": {"$SET": "$SET"}, "command": ["echo", "$$HOME", 3]}},
            "x-defaults": {"a": "${UNSET:?never checked}"}
        });
        let errs = Interpolator::new(&e).expand_tree(&mut tree);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(tree["services"]["web"]["image"], "nginx:1.25");
        assert_eq!(tree["services"]["web"]["labels"]["$SET"], "value");
        assert_eq!(
            tree["services"]["web"]["command"],
            serde_json::json!(["echo", "$HOME", 3])
        );
    }

    #[test]
    fn tree_errors_carry_paths() {
        let e = env();
        let mut tree =
            serde_json::json!({"services": {"db": {"environment": ["PW=${PW:?set PW}"]}}});
        let errs = Interpolator::new(&e).expand_tree(&mut tree);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0.to_string(), "services.db.environment[0]");
    }
}
