//! Splitting a command string into words the way a POSIX shell would
//! (quotes and backslashes, no expansion), as compose does for the string
//! form of `command` and `entrypoint`.

/// Splits `s` into words. Single quotes are literal; inside double quotes a
/// backslash escapes `"`, `\`, `$` and `` ` ``; outside quotes a backslash
/// escapes any character. Errors on an unterminated quote.
pub fn split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&n) if matches!(n, '"' | '\\' | '$' | '`') => {
                                cur.push(n);
                                chars.next();
                            }
                            _ => cur.push('\\'),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split("echo hello  world").unwrap(),
            ["echo", "hello", "world"]
        );
        assert_eq!(
            split(r#"sh -c 'echo $HOME && ls'"#).unwrap(),
            ["sh", "-c", "echo $HOME && ls"]
        );
        assert_eq!(
            split(r#"a "b \"c\" d" e\ f"#).unwrap(),
            ["a", r#"b "c" d"#, "e f"]
        );
        assert_eq!(split(r#"x '' y"#).unwrap(), ["x", "", "y"]);
        assert!(split("'oops").is_err());
        assert!(split("\"oops").is_err());
        assert!(split("").unwrap().is_empty());
    }
}
