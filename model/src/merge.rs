//! Merging several compose files, in order, with compose's override rules
//! (compose-spec "Merge"):
//!
//! - mappings merge by key, later files winning on conflicts;
//! - sequences append, dropping exact duplicates (`dns`, `dns_search`,
//!   `expose`, `cap_add`, `cap_drop`, `env_file`, `tmpfs`,
//!   `deploy.placement.constraints`, …);
//! - `command`, `entrypoint` and `healthcheck.test` are replaced, never
//!   appended;
//! - `environment`, `labels`, `annotations`, `sysctls` and `extra_hosts`
//!   are first brought from their list form (`KEY=VALUE`) to a mapping, then
//!   merged by key;
//! - `depends_on` and `networks` are brought from list to mapping form and
//!   merged by service/network name;
//! - `ports` are unique by (host ip, published, target, protocol) and
//!   `volumes` by target: a later entry with the same key replaces the
//!   earlier one in place, new entries are appended;
//! - `ulimits` merge by limit name, each limit replaced whole.
//!
//! The merge runs on interpolated trees, before typing, so a later file may
//! be a fragment that is not a complete compose file.

use serde_json::{Map, Value};

use crate::ports::port_merge_key;

/// Merges `over` into `base` (both whole compose files).
pub fn merge_files(base: &mut Value, over: Value) {
    let (Value::Object(base_map), Value::Object(over_map)) = (&mut *base, over.clone()) else {
        if !over.is_null() {
            *base = over;
        }
        return;
    };
    for (key, over_val) in over_map {
        match (key.as_str(), base_map.get_mut(&key)) {
            ("services", Some(Value::Object(base_services))) => {
                if let Value::Object(over_services) = over_val {
                    for (name, svc) in over_services {
                        match base_services.get_mut(&name) {
                            Some(existing) => merge_service(existing, svc),
                            None => {
                                base_services.insert(name, svc);
                            }
                        }
                    }
                } else if !over_val.is_null() {
                    base_map.insert(key, over_val);
                }
            }
            (_, Some(existing)) => merge_default(existing, over_val),
            (_, None) => {
                base_map.insert(key, over_val);
            }
        }
    }
}

/// Merges one service definition into another.
pub fn merge_service(base: &mut Value, over: Value) {
    let (Value::Object(base_map), Value::Object(over_map)) = (&mut *base, over.clone()) else {
        if !over.is_null() {
            *base = over;
        }
        return;
    };
    for (key, over_val) in over_map {
        let Some(existing) = base_map.get_mut(&key) else {
            base_map.insert(key, over_val);
            continue;
        };
        match key.as_str() {
            "command" | "entrypoint" => *existing = over_val,
            "healthcheck" => {
                if let (Value::Object(b), Value::Object(o)) = (&mut *existing, &over_val) {
                    for (k, v) in o {
                        if k == "test" {
                            b.insert(k.clone(), v.clone());
                        } else {
                            match b.get_mut(k) {
                                Some(e) => merge_default(e, v.clone()),
                                None => {
                                    b.insert(k.clone(), v.clone());
                                }
                            }
                        }
                    }
                } else {
                    *existing = over_val;
                }
            }
            "environment" | "labels" | "annotations" | "sysctls" => {
                merge_keyed(existing, over_val, |v| list_to_map(v, '='), false)
            }
            "extra_hosts" => merge_keyed(existing, over_val, extra_hosts_to_map, false),
            "depends_on" | "networks" => merge_keyed(existing, over_val, names_to_map, true),
            "ulimits" => {
                if let (Value::Object(b), Value::Object(o)) = (&mut *existing, &over_val) {
                    for (k, v) in o {
                        b.insert(k.clone(), v.clone());
                    }
                } else {
                    *existing = over_val;
                }
            }
            "ports" => merge_unique(existing, over_val, port_merge_key),
            "volumes" => merge_unique(existing, over_val, volume_merge_key),
            "dns" | "dns_search" | "env_file" | "tmpfs" | "expose" | "cap_add" | "cap_drop" => {
                let b = string_or_list(existing.take());
                let o = string_or_list(over_val);
                *existing = b;
                merge_default(existing, o);
            }
            _ => merge_default(existing, over_val),
        }
    }
}

/// The default rule: maps merge recursively, lists append without exact
/// duplicates, anything else is replaced.
fn merge_default(base: &mut Value, over: Value) {
    match (&mut *base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(e) => merge_default(e, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => {
            for item in o {
                if !b.contains(&item) {
                    b.push(item);
                }
            }
        }
        (_, o) => *base = o,
    }
}

/// Brings both sides to mapping form with `to_map`, then merges by key; when
/// either side cannot be brought to a mapping, the later value replaces the
/// earlier one (typing reports the bad shape). With `null_keeps`, a later
/// bare name (`- db` in `depends_on`, `- front` in `networks`) keeps the
/// settings an earlier file gave that name.
fn merge_keyed(
    base: &mut Value,
    over: Value,
    to_map: fn(&Value) -> Option<Map<String, Value>>,
    null_keeps: bool,
) {
    match (to_map(base), to_map(&over)) {
        (Some(mut b), Some(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(_) if null_keeps && v.is_null() => {}
                    Some(e) if e.is_object() && v.is_object() => merge_default(e, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
            *base = Value::Object(b);
        }
        _ => *base = over,
    }
}

/// Appends `over`'s items to `base`'s, an item replacing an earlier one
/// with the same `key`.
fn merge_unique(base: &mut Value, over: Value, key: fn(&Value) -> String) {
    match (&mut *base, over) {
        (Value::Array(b), Value::Array(o)) => {
            for item in o {
                let k = key(&item);
                match b.iter_mut().find(|e| key(e) == k) {
                    Some(e) => *e = item,
                    None => b.push(item),
                }
            }
        }
        (_, o) => *base = o,
    }
}

/// `["A=1", "B"]` or `{A: 1, B: null}` to a mapping; items without `sep`
/// map to `null`.
pub(crate) fn list_to_map(v: &Value, sep: char) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m.clone()),
        Value::Array(items) => {
            let mut m = Map::new();
            for item in items {
                let s = item.as_str()?;
                match s.split_once(sep) {
                    Some((k, val)) => m.insert(k.to_string(), Value::String(val.to_string())),
                    None => m.insert(s.to_string(), Value::Null),
                };
            }
            Some(m)
        }
        Value::Null => Some(Map::new()),
        _ => None,
    }
}

/// `extra_hosts` list entries are `host=ip` or `host:ip` (the first `:`).
pub(crate) fn extra_hosts_to_map(v: &Value) -> Option<Map<String, Value>> {
    match v {
        Value::Array(items) => {
            let mut m = Map::new();
            for item in items {
                let s = item.as_str()?;
                let (host, ip) = if let Some((h, ip)) = s.split_once('=') {
                    (h, ip)
                } else {
                    s.split_once(':')?
                };
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                m.insert(host.to_string(), Value::String(ip.to_string()));
            }
            Some(m)
        }
        other => list_to_map(other, '='),
    }
}

/// `[a, b]` to `{a: null, b: null}` (for `depends_on` and `networks`).
pub(crate) fn names_to_map(v: &Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m.clone()),
        Value::Array(items) => {
            let mut m = Map::new();
            for item in items {
                m.insert(item.as_str()?.to_string(), Value::Null);
            }
            Some(m)
        }
        Value::Null => Some(Map::new()),
        _ => None,
    }
}

fn string_or_list(v: Value) -> Value {
    match v {
        Value::String(_) => Value::Array(vec![v]),
        Value::Null => Value::Array(Vec::new()),
        other => other,
    }
}

/// The merge key of a `volumes` entry: its target path.
pub(crate) fn volume_merge_key(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [target] => target.to_string(),
                [_, target, ..] => target.to_string(),
                [] => s.clone(),
            }
        }
        Value::Object(m) => m
            .get("target")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_merge_and_scalars_replace() {
        let mut base = json!({"services": {"web": {"image": "a", "user": "1"}}, "name": "p"});
        merge_files(
            &mut base,
            json!({"services": {"web": {"image": "b"}, "db": {"image": "pg"}}, "name": "q"}),
        );
        assert_eq!(
            base,
            json!({"services": {"web": {"image": "b", "user": "1"}, "db": {"image": "pg"}}, "name": "q"})
        );
    }

    #[test]
    fn command_replaces_and_lists_append_dedup() {
        let mut base = json!({"command": ["a", "b"], "dns": ["1.1.1.1"], "cap_add": ["NET_ADMIN"]});
        merge_service(
            &mut base,
            json!({"command": ["c"], "dns": ["8.8.8.8", "1.1.1.1"], "cap_add": "SYS_TIME"}),
        );
        assert_eq!(base["command"], json!(["c"]));
        assert_eq!(base["dns"], json!(["1.1.1.1", "8.8.8.8"]));
        assert_eq!(base["cap_add"], json!(["NET_ADMIN", "SYS_TIME"]));
    }

    #[test]
    fn environment_merges_by_key_across_forms() {
        let mut base = json!({"environment": ["A=1", "B=2"], "labels": {"x": "1"}});
        merge_service(
            &mut base,
            json!({"environment": {"B": "3", "C": null}, "labels": ["y=2"]}),
        );
        assert_eq!(base["environment"], json!({"A": "1", "B": "3", "C": null}));
        assert_eq!(base["labels"], json!({"x": "1", "y": "2"}));
    }

    #[test]
    fn ports_unique_by_mapping_and_volumes_by_target() {
        let mut base = json!({
            "ports": ["8080:80", {"target": 443, "published": "8443"}],
            "volumes": ["data:/var/lib/data", "./conf:/etc/app:ro"]
        });
        merge_service(
            &mut base,
            json!({
                "ports": ["8080:80", "9090:90", {"target": 443, "published": 8443, "protocol": "tcp"}],
                "volumes": ["other:/var/lib/data", "/logs"]
            }),
        );
        assert_eq!(
            base["ports"],
            json!(["8080:80", {"target": 443, "published": 8443, "protocol": "tcp"}, "9090:90"])
        );
        assert_eq!(
            base["volumes"],
            json!(["other:/var/lib/data", "./conf:/etc/app:ro", "/logs"])
        );
    }

    #[test]
    fn healthcheck_test_replaces_other_fields_merge() {
        let mut base = json!({"healthcheck": {"test": ["CMD", "a"], "interval": "10s"}});
        merge_service(
            &mut base,
            json!({"healthcheck": {"test": ["CMD", "b"], "retries": 5}}),
        );
        assert_eq!(
            base["healthcheck"],
            json!({"test": ["CMD", "b"], "interval": "10s", "retries": 5})
        );
    }

    #[test]
    fn depends_on_and_networks_merge_across_forms() {
        let mut base = json!({"depends_on": ["db"], "networks": {"front": {"aliases": ["w"]}}});
        merge_service(
            &mut base,
            json!({"depends_on": {"cache": {"condition": "service_healthy"}}, "networks": ["front", "back"]}),
        );
        assert_eq!(
            base["depends_on"],
            json!({"db": null, "cache": {"condition": "service_healthy"}})
        );
        assert_eq!(
            base["networks"],
            json!({"front": {"aliases": ["w"]}, "back": null})
        );
    }
}
