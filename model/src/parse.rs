//! YAML text to an untyped tree.
//!
//! serde-saphyr resolves anchors, aliases and merge keys (`<<`) while
//! deserializing into a `serde_json::Value`, so the tree the rest of the
//! model sees has no YAML-specific constructs left. Options are chosen to
//! match what compose users expect:
//! - only `true`/`false` are booleans (`yes`/`no`/`on` stay strings, as in
//!   YAML 1.2 and compose);
//! - numbers with leading zeros stay strings (`0755`, `007`);
//! - duplicate keys are an error;
//! - unknown tags (compose's `!reset`, `!override`) are an error instead of
//!   being silently ignored;
//! - serde-saphyr's budget bounds depth, aliases and size, so hostile input
//!   fails instead of exhausting the stack or memory.

use serde_json::Value;

/// Parses one YAML document into a tree. An empty document is `Null`.
/// The error is a single line with the position (`… at line 3, column 5`).
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        reject_unsupported_tags: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| tidy(&e.render()))
}

/// One line, without advice aimed at users of the library rather than
/// authors of compose files.
fn tidy(msg: &str) -> String {
    let one_line = msg.replace(['\n', '\r'], " ");
    let replacements = [
        (", set DuplicateKeyPolicy in Options if acceptable", ""),
        (
            "; use from_str_multiple or from_str_multiple_with_options",
            " (one document per file)",
        ),
        ("; use Option<String>", ""),
    ];
    let mut out = one_line.trim().to_string();
    for (from, to) in replacements {
        out = out.replace(from, to);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anchors_and_merge_keys_are_resolved() {
        let text = r#"
x-common: &common
  restart: always
  environment: {A: "1"}
x-logs: &logs
  labels: {team: web}
services:
  web:
    <<: [*common, *logs]
    image: nginx
    restart: unless-stopped
  worker:
    <<: *common
    image: busybox
"#;
        let v = parse_yaml(text).unwrap();
        assert_eq!(
            v["services"]["web"]["restart"], "unless-stopped",
            "explicit key wins over merged"
        );
        assert_eq!(v["services"]["web"]["labels"], json!({"team": "web"}));
        assert_eq!(v["services"]["worker"]["restart"], "always");
        assert_eq!(v["services"]["worker"]["environment"], json!({"A": "1"}));
    }

    #[test]
    fn scalars_are_typed_like_compose() {
        let v = parse_yaml("a: yes\nb: 0755\nc: true\nd: 8080:80\ne: 1.5\nf:\n").unwrap();
        assert_eq!(
            v,
            json!({"a": "yes", "b": "0755", "c": true, "d": "8080:80", "e": 1.5, "f": null})
        );
    }

    #[test]
    fn errors_are_one_line_with_position() {
        let e = parse_yaml("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e, "duplicate mapping key: a at line 2, column 1");
        let e = parse_yaml("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.contains("one document per file"), "{e}");
        let e = parse_yaml("ports: !reset []\n").unwrap_err();
        assert!(e.contains("!reset"), "{e}");
        assert!(!parse_yaml("{").unwrap_err().contains('\n'));
        assert_eq!(parse_yaml("").unwrap(), Value::Null);
    }
}
