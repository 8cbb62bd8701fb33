//! Dotenv files: the project's `.env` and a service's `env_file`.
//!
//! Format (as compose reads it): one `KEY=VALUE` per line; blank lines and
//! lines starting with `#` are skipped; an optional `export ` prefix;
//! `'single quoted'` values are literal; `"double quoted"` values understand
//! `\n`, `\t`, `\"`, `\\` and are interpolated; unquoted values are trimmed,
//! lose a trailing ` # comment`, and are interpolated. Interpolation sees the
//! caller's environment and the keys defined earlier in the same file. A
//! bare `KEY` line takes `KEY` from the environment and is skipped when it
//! is not set there.

use std::collections::BTreeMap;

use crate::interpolate::Interpolator;

/// Parses dotenv `text`. `env` is the environment that `${…}` in values and
/// bare `KEY` lines refer to. Errors name the 1-based line.
pub fn parse_dotenv(
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (line, None),
        };
        if let Err(e) = crate::validate::check_env_name(key) {
            return Err(format!("line {line_no}: {e}"));
        }
        let Some(value) = value else {
            if let Some(v) = env.get(key) {
                out.insert(key.to_string(), v.clone());
            }
            continue;
        };
        let mut scope = env.clone();
        scope.extend(
            out.iter()
                .map(|(k, v): (&String, &String)| (k.clone(), v.clone())),
        );
        let value = value.trim();
        let parsed = if let Some(body) = value.strip_prefix('\'') {
            let end = body
                .find('\'')
                .ok_or_else(|| format!("line {line_no}: unterminated single quote"))?;
            body[..end].to_string()
        } else if let Some(body) = value.strip_prefix('"') {
            let mut s = String::new();
            let mut chars = body.chars();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some(other) => {
                            if !matches!(other, '"' | '\\' | '$') {
                                s.push('\\');
                            }
                            if other == '$' {
                                // `\$` is a literal dollar: escape it for the interpolator.
                                s.push('$');
                            }
                            s.push(other);
                        }
                        None => s.push('\\'),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => s.push(c),
                }
            }
            if !closed {
                return Err(format!("line {line_no}: unterminated double quote"));
            }
            Interpolator::new(&scope)
                .expand(&s)
                .map_err(|e| format!("line {line_no}: {e}"))?
        } else {
            let without_comment = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            Interpolator::new(&scope)
                .expand(without_comment.trim())
                .map_err(|e| format!("line {line_no}: {e}"))?
        };
        out.insert(key.to_string(), parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_forms() {
        let env: BTreeMap<String, String> = [("HOME".to_string(), "/root".to_string())].into();
        let text = r#"
# comment
A=1
export B = two words   # trailing comment
C='lit $HOME # not a comment'
D="line\nnext $HOME \$HOME"
E=${A}-${HOME}
HOME
MISSING
F=
G=a#b
"#;
        let got = parse_dotenv(text, &env).unwrap();
        assert_eq!(got["A"], "1");
        assert_eq!(got["B"], "two words");
        assert_eq!(got["C"], "lit $HOME # not a comment");
        assert_eq!(got["D"], "line\nnext /root $HOME");
        assert_eq!(got["E"], "1-/root");
        assert_eq!(got["HOME"], "/root");
        assert!(!got.contains_key("MISSING"));
        assert_eq!(got["F"], "");
        assert_eq!(got["G"], "a#b");
    }

    #[test]
    fn dotenv_errors_name_the_line() {
        let env = BTreeMap::new();
        assert!(parse_dotenv("A='x", &env)
            .unwrap_err()
            .starts_with("line 1:"));
        assert!(parse_dotenv("\n1A=x", &env)
            .unwrap_err()
            .starts_with("line 2:"));
        assert!(parse_dotenv("A=${B:?need B}", &env)
            .unwrap_err()
            .contains("need B"));
    }
}
