//! Quantities with units as compose writes them: durations (`1m30s`),
//! memory sizes (`512m`, `1GiB`), cpus (`0.5`), file modes (`1777`).

use std::time::Duration;

/// Parses a Go-style duration as compose uses it: one or more
/// `<number><unit>` with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`
/// (`1h30m`, `1.5s`, `100ms`); a bare `0` is zero. Negative durations are
/// rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(format!("invalid duration {s:?}: empty"));
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(format!(
                "invalid duration {s:?}: expected a number followed by a unit (ns, us, ms, s, m, h), e.g. 30s or 1m30s"
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: bad number {num:?}"))?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ns, us, ms, s, m, h), e.g. {num}s"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        total += value * scale;
        rest = next;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    // Round to whole nanoseconds so `0.1s` is exactly 100ms.
    Ok(Duration::from_nanos((total * 1e9).round() as u64))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly:
/// the largest of `h`, `m`, `s`, `ms`, `us`, `ns` that divides it, e.g.
/// `90s` → `"1m30s"`, 1.5 s → `"1500ms"`, zero → `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos.is_multiple_of(1_000_000_000) {
        let mut secs = d.as_secs();
        let mut out = String::new();
        let h = secs / 3600;
        secs %= 3600;
        let m = secs / 60;
        secs %= 60;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
        return out;
    }
    if nanos.is_multiple_of(1_000_000) {
        return format!("{}ms", nanos / 1_000_000);
    }
    if nanos.is_multiple_of(1_000) {
        return format!("{}us", nanos / 1_000);
    }
    format!("{nanos}ns")
}

/// Parses a memory size like docker's `RAMInBytes`: an integer or decimal
/// number with an optional binary unit `b`, `k`, `m`, `g`, `t`, `p` (any case,
/// optionally followed by `i` and/or `b`: `512m`, `1GiB`, `64KB`). A bare
/// number is bytes. Units are powers of 1024.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_len);
    let bad = || {
        format!("invalid memory size {s:?}: expected a number with an optional unit b, k, m, g, t, p (e.g. 512m, 1g)")
    };
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "ki" | "kib" => 1024.0,
        "m" | "mb" | "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" | "pi" | "pib" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("invalid memory size {s:?}: too large"));
    }
    Ok(bytes as u64)
}

/// Parses a cpu count (`0.5`, `2`): a finite number greater than zero and at
/// most 1024.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid cpus {s:?}: expected a number such as 0.5 or 2"))?;
    if !v.is_finite() || v <= 0.0 || v > 1024.0 {
        return Err(format!(
            "invalid cpus {s:?}: must be greater than 0 and at most 1024"
        ));
    }
    Ok(v)
}

/// Parses a file mode written in octal digits, with or without a `0`/`0o`
/// prefix (`1777`, `0755`, `0o644`), at most `0o7777`.
pub fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let v = u32::from_str_radix(digits, 8).map_err(|_| {
        format!("invalid file mode {s:?}: expected octal digits such as 1777 or 0755")
    })?;
    if v > 0o7777 {
        return Err(format!("invalid file mode {s:?}: at most 7777"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_go_syntax() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("100ms", Duration::from_millis(100)),
            ("10us", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0.1s", Duration::from_millis(100)),
        ];
        for (s, d) in cases {
            assert_eq!(parse_duration(s).unwrap(), *d, "{s}");
            assert_eq!(
                parse_duration(&format_duration(*d)).unwrap(),
                *d,
                "{s} round trip"
            );
        }
        for bad in ["", "30", "s", "-1s", "1x", "1..2s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn memory_sizes_are_binary() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("64KB").unwrap(), 64 << 10);
        for bad in ["", "m", "12x", "-1m", "1 gigabyte"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_must_be_positive() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        for bad in ["0", "-1", "x", "NaN", "inf", "2000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_octal_mode("1777").unwrap(), 0o1777);
        assert_eq!(parse_octal_mode("0o644").unwrap(), 0o644);
        assert!(parse_octal_mode("9").is_err());
        assert!(parse_octal_mode("17777").is_err());
    }
}
