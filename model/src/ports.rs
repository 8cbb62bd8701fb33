//! Port syntax: `ports` (short `[[ip:]published:]target[/proto]` with
//! ranges, and long mappings) and `expose` (`port[-port][/proto]`).

use std::net::IpAddr;

use serde_json::Value;

use crate::spec::{ExposedPort, PortMapping, PortMode, PortRange, Protocol};

fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid {what} port {s:?}: not a number"))?;
    if n == 0 || n > 65535 {
        return Err(format!("invalid {what} port {s:?}: must be 1-65535"));
    }
    Ok(n as u16)
}

/// Parses `N` or `N-M` (M ≥ N).
pub fn parse_range(s: &str, what: &str) -> Result<PortRange, String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let start = parse_port(a, what)?;
            let end = parse_port(b, what)?;
            if end < start {
                return Err(format!("invalid {what} port range {s:?}: end before start"));
            }
            Ok(PortRange { start, end })
        }
        None => {
            let p = parse_port(s, what)?;
            Ok(PortRange { start: p, end: p })
        }
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("invalid protocol {s:?}: must be tcp or udp")),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("invalid host ip {s:?}"))
}

/// Parses one short-syntax `ports` entry into one mapping per target port.
pub fn parse_short(spec: &str) -> Result<Vec<PortMapping>, String> {
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, parse_protocol(p)?),
        None => (spec, Protocol::Tcp),
    };
    let (ip, published, target) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, tail) = after
            .split_once(']')
            .ok_or_else(|| format!("invalid port {spec:?}: unclosed `[` around the host ip"))?;
        let tail = tail
            .strip_prefix(':')
            .ok_or_else(|| format!("invalid port {spec:?}: expected `:` after the host ip"))?;
        let (p, t) = tail
            .split_once(':')
            .ok_or_else(|| format!("invalid port {spec:?}: expected [ip]:published:target"))?;
        (Some(ip), p, t)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.as_slice() {
            [t] => (None, "", *t),
            [p, t] => (None, *p, *t),
            [ip, p, t] => (Some(*ip), *p, *t),
            _ => {
                return Err(format!(
                    "invalid port {spec:?}: expected [[ip:]published:]target[/protocol] (write IPv6 host addresses in brackets)"
                ))
            }
        }
    };
    let host_ip = match ip {
        Some(ip) if !ip.is_empty() => {
            Some(parse_ip(ip).map_err(|e| format!("invalid port {spec:?}: {e}"))?)
        }
        _ => None,
    };
    let targets =
        parse_range(target, "container").map_err(|e| format!("invalid port {spec:?}: {e}"))?;
    let published = if published.is_empty() {
        None
    } else {
        Some(
            parse_range(published, "published")
                .map_err(|e| format!("invalid port {spec:?}: {e}"))?,
        )
    };
    let n_targets = u32::from(targets.end - targets.start) + 1;
    let mapping = |target: u16, published: Option<PortRange>| PortMapping {
        target,
        published,
        host_ip,
        protocol,
        mode: PortMode::Ingress,
        name: None,
        app_protocol: None,
    };
    match published {
        Some(pubr) if n_targets > 1 => {
            let n_pub = u32::from(pubr.end - pubr.start) + 1;
            if n_pub != n_targets {
                return Err(format!(
                    "invalid port {spec:?}: published range has {n_pub} ports but the container range has {n_targets}"
                ));
            }
            Ok((0..n_targets as u16)
                .map(|i| {
                    let p = pubr.start + i;
                    mapping(targets.start + i, Some(PortRange { start: p, end: p }))
                })
                .collect())
        }
        published => Ok((targets.start..=targets.end)
            .map(|t| mapping(t, published))
            .collect()),
    }
}

/// A scalar as text (ports may be written as numbers or strings).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one `ports` entry (short string, bare number, or long mapping).
/// Errors are `(sub-key, message)`; the sub-key is empty for the entry
/// itself.
pub fn parse_entry(v: &Value) -> Result<Vec<PortMapping>, (String, String)> {
    match v {
        Value::String(_) | Value::Number(_) => {
            parse_short(&scalar(v).unwrap_or_default()).map_err(|e| (String::new(), e))
        }
        Value::Object(m) => {
            for k in m.keys() {
                if !matches!(
                    k.as_str(),
                    "target"
                        | "published"
                        | "host_ip"
                        | "protocol"
                        | "mode"
                        | "name"
                        | "app_protocol"
                ) && !k.starts_with("x-")
                {
                    let suggestion = crate::schema::suggest(
                        k,
                        &[
                            "target",
                            "published",
                            "host_ip",
                            "protocol",
                            "mode",
                            "name",
                            "app_protocol",
                        ],
                    );
                    return Err((
                        k.clone(),
                        crate::error::ErrorKind::UnknownKey {
                            key: k.clone(),
                            suggestion,
                        }
                        .to_string(),
                    ));
                }
            }
            let target = m.get("target").and_then(scalar).ok_or_else(|| {
                (
                    "target".to_string(),
                    "a long-syntax port needs `target`".to_string(),
                )
            })?;
            let target = parse_port(&target, "container").map_err(|e| ("target".to_string(), e))?;
            let published = match m.get("published") {
                None | Some(Value::Null) => None,
                Some(p) => {
                    let p = scalar(p).ok_or_else(|| {
                        (
                            "published".to_string(),
                            "must be a port or a range".to_string(),
                        )
                    })?;
                    if p.is_empty() {
                        None
                    } else {
                        Some(
                            parse_range(&p, "published")
                                .map_err(|e| ("published".to_string(), e))?,
                        )
                    }
                }
            };
            let host_ip = match m.get("host_ip").and_then(Value::as_str) {
                Some(ip) if !ip.is_empty() => {
                    Some(parse_ip(ip).map_err(|e| ("host_ip".to_string(), e))?)
                }
                _ => None,
            };
            let protocol = match m.get("protocol").and_then(Value::as_str) {
                Some(p) => parse_protocol(p).map_err(|e| ("protocol".to_string(), e))?,
                None => Protocol::Tcp,
            };
            let mode = match m.get("mode").and_then(Value::as_str) {
                None | Some("ingress") => PortMode::Ingress,
                Some("host") => PortMode::Host,
                Some(other) => {
                    return Err((
                        "mode".to_string(),
                        format!("invalid port mode {other:?}: must be host or ingress"),
                    ))
                }
            };
            let text = |k: &str| m.get(k).and_then(scalar).filter(|s| !s.is_empty());
            Ok(vec![PortMapping {
                target,
                published,
                host_ip,
                protocol,
                mode,
                name: text("name"),
                app_protocol: text("app_protocol"),
            }])
        }
        _ => Err((
            String::new(),
            "a port must be a string, a number or a mapping".to_string(),
        )),
    }
}

/// Parses one `expose` entry: `port`, `port-port`, optionally `/tcp|udp`.
pub fn parse_expose(v: &Value) -> Result<Vec<ExposedPort>, String> {
    let s = scalar(v).ok_or_else(|| "an exposed port must be a string or a number".to_string())?;
    let (range, protocol) = match s.rsplit_once('/') {
        Some((r, p)) => (r, parse_protocol(p)?),
        None => (s.as_str(), Protocol::Tcp),
    };
    let r = parse_range(range, "exposed")?;
    Ok((r.start..=r.end)
        .map(|port| ExposedPort { port, protocol })
        .collect())
}

/// The merge key of a `ports` entry: its (host ip, published, target,
/// protocol) tuples, so `8080:80` and `{target: 80, published: 8080}` are
/// the same entry. Unparseable entries are keyed by their text.
pub fn port_merge_key(v: &Value) -> String {
    match parse_entry(v) {
        Ok(mappings) => mappings
            .iter()
            .map(|m| {
                format!(
                    "{}|{}|{}|{}",
                    m.host_ip.map(|i| i.to_string()).unwrap_or_default(),
                    m.published.map(|p| p.to_string()).unwrap_or_default(),
                    m.target,
                    m.protocol
                )
            })
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(s: &str) -> PortMapping {
        let mut v = parse_short(s).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v.remove(0)
    }

    #[test]
    fn short_syntax() {
        let m = one("80");
        assert_eq!((m.target, m.published, m.host_ip), (80, None, None));
        let m = one("8080:80");
        assert_eq!(
            m.published,
            Some(PortRange {
                start: 8080,
                end: 8080
            })
        );
        let m = one("127.0.0.1:8080:80/udp");
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(m.protocol, Protocol::Udp);
        let m = one("127.0.0.1::80");
        assert_eq!(m.published, None);
        let m = one("[::1]:53:53/udp");
        assert_eq!(m.host_ip, Some("::1".parse().unwrap()));
        let m = one("9000-9010:80");
        assert_eq!(
            m.published,
            Some(PortRange {
                start: 9000,
                end: 9010
            })
        );
    }

    #[test]
    fn ranges_expand() {
        let v = parse_short("8000-8002:9000-9002").unwrap();
        let pairs: Vec<_> = v
            .iter()
            .map(|m| (m.published.unwrap().start, m.target))
            .collect();
        assert_eq!(pairs, vec![(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert_eq!(parse_short("3000-3002").unwrap().len(), 3);
    }

    #[test]
    fn bad_ports() {
        for bad in [
            "",
            "0",
            "70000",
            "80:",
            "a:80",
            "8000-8001:80-82",
            "80/sctp",
            "1:2:3:4",
            "90-80",
            "x.y:80:80",
        ] {
            assert!(parse_short(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_syntax_and_merge_keys() {
        let v = parse_entry(&json!({"target": 80, "published": "8080", "host_ip": "10.0.0.1", "mode": "host", "name": "web"})).unwrap();
        assert_eq!(v[0].mode, PortMode::Host);
        assert_eq!(v[0].name.as_deref(), Some("web"));
        assert_eq!(
            port_merge_key(&json!("8080:80")),
            port_merge_key(&json!({"target": 80, "published": 8080}))
        );
        assert_ne!(
            port_merge_key(&json!("8080:80")),
            port_merge_key(&json!("8080:80/udp"))
        );
        let e = parse_entry(&json!({"target": 80, "publihsed": 1})).unwrap_err();
        assert!(e.1.contains("did you mean `published`"), "{e:?}");
    }

    #[test]
    fn expose_entries() {
        assert_eq!(parse_expose(&json!(3000)).unwrap().len(), 1);
        assert_eq!(
            parse_expose(&json!("3000-3002/udp")).unwrap()[2],
            ExposedPort {
                port: 3002,
                protocol: Protocol::Udp
            }
        );
        assert!(parse_expose(&json!("x")).is_err());
    }
}
