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
    serde_saphyr::from_str_with_options::<Value>(text, options)
        .map_err(|e| e.render().replace(['\n', '\r'], " ").trim().to_string())
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
        assert!(e.contains("duplicate") && e.contains("line 2"), "{e}");
        let e = parse_yaml("ports: !reset []\n").unwrap_err();
        assert!(e.contains("!reset"), "{e}");
        assert!(!parse_yaml("{").unwrap_err().contains('\n'));
        assert_eq!(parse_yaml("").unwrap(), Value::Null);
    }
}
