//! Service registry records for the etcd and dir backends: one JSON record
//! per instance under `<registry prefix>/<name>/<id>`, bound to the
//! registering session, carrying its check status and when it was set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::session::Session;
use crate::store::{
    Health, Registration, ServiceInstance, ServiceStream, Snapshot, Store, WatchFrom,
};
use crate::watch::{spawn_stream, watch_backoff};
use crate::{Error, Result};

/// The stored record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record {
    pub name: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub status: Health,
    #[serde(default)]
    pub output: String,
    /// Check TTL in milliseconds.
    pub check_ttl_ms: u64,
    /// Wall-clock time (Unix ms) the status was last set.
    pub updated_ms: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Record {
    pub fn new(reg: &Registration) -> Record {
        Record {
            name: reg.name.clone(),
            id: reg.id.clone(),
            address: reg.address.clone(),
            port: reg.port,
            tags: reg.tags.clone(),
            meta: reg.meta.clone(),
            status: Health::Passing,
            output: String::new(),
            check_ttl_ms: reg.check_ttl.as_millis() as u64,
            updated_ms: now_ms(),
        }
    }

    /// Health now: the stored status, or critical when it was not refreshed
    /// within the check TTL (hosts are assumed to have synchronized clocks
    /// within a fraction of the TTL).
    pub fn health(&self, now_ms: u64) -> Health {
        if self.status != Health::Critical
            && now_ms > self.updated_ms.saturating_add(self.check_ttl_ms)
        {
            Health::Critical
        } else {
            self.status
        }
    }

    pub fn instance(&self, now_ms: u64) -> ServiceInstance {
        ServiceInstance {
            name: self.name.clone(),
            id: self.id.clone(),
            address: self.address.clone(),
            port: self.port,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            health: self.health(now_ms),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("registry record serializes")
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
        serde_json::from_slice(bytes).map_err(|e| Error::Decode {
            what: format!("registry record {key}"),
            message: e.to_string(),
        })
    }
}

/// Key of an instance record. Instance ids may contain `/` (SPEC:
/// `<node>/<container id>`); it is kept as a path below the service name.
pub(crate) fn record_key(prefix: &str, name: &str, id: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::bad_key(
            name,
            "service name must be non-empty and contain no '/'",
        ));
    }
    let key = format!("{}/{}/{}", prefix.trim_end_matches('/'), name, id);
    crate::watch::check_key(&key)?;
    Ok(key)
}

pub(crate) fn service_prefix(prefix: &str, name: &str) -> String {
    format!("{}/{}/", prefix.trim_end_matches('/'), name)
}

/// The directory every instance record is under: `<registry prefix>/`.
pub(crate) fn registry_root(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// `Store::service_names` for the record-based backends: the `<name>` of
/// every key under [`registry_root`] that is an instance record
/// (`<root><name>/<id>`, `<id>` non-empty). Keys of another shape are
/// skipped.
pub(crate) fn service_names<'a>(
    prefix: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    let root = registry_root(prefix);
    keys.into_iter()
        .filter_map(|k| {
            let (name, id) = k.strip_prefix(&root)?.split_once('/')?;
            (!name.is_empty() && !id.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// `Store::register` for the record-based backends (etcd, dir): the record,
/// passing, bound to `session`. Idempotent.
pub(crate) async fn register_record<S: Store + ?Sized>(
    store: &S,
    prefix: &str,
    session: &Session,
    reg: &Registration,
) -> Result<()> {
    register_record_with(store, prefix, session, reg, Health::Passing).await
}

/// `Store::register_with_status` for the record-based backends: one write.
pub(crate) async fn register_record_with<S: Store + ?Sized>(
    store: &S,
    prefix: &str,
    session: &Session,
    reg: &Registration,
    status: Health,
) -> Result<()> {
    let key = record_key(prefix, &reg.name, &reg.id)?;
    let mut rec = Record::new(reg);
    rec.status = status;
    store.put_bound(session, &key, &rec.encode()).await?;
    Ok(())
}

/// `Store::set_check` for the record-based backends: rewrites the record
/// with the new status, bound to `session`. Fails if it is not registered.
pub(crate) async fn set_check_record<S: Store + ?Sized>(
    store: &S,
    prefix: &str,
    session: &Session,
    (name, id): (&str, &str),
    health: Health,
    output: &str,
) -> Result<()> {
    let key = record_key(prefix, name, id)?;
    let Some(cur) = store.get(&key).await? else {
        return Err(Error::Server {
            op: format!("updating check of {name}/{id}"),
            message: "instance not registered".into(),
            retryable: false,
        });
    };
    let mut rec = Record::decode(&key, &cur.value)?;
    rec.status = health;
    rec.output = output.to_string();
    rec.updated_ms = now_ms();
    store.put_bound(session, &key, &rec.encode()).await?;
    Ok(())
}

/// Instances in a snapshot of a service prefix, sorted by id. Records that
/// do not parse are skipped with a warning (one bad record never hides the
/// others).
pub(crate) fn instances(snap: &Snapshot, passing_only: bool) -> Vec<ServiceInstance> {
    let now = now_ms();
    let mut out: Vec<ServiceInstance> = snap
        .entries
        .values()
        .filter_map(|e| match Record::decode(&e.key, &e.value) {
            Ok(r) => Some(r.instance(now)),
            Err(err) => {
                tracing::warn!(error = %err, "skipping registry record");
                None
            }
        })
        .filter(|i| !passing_only || i.health == Health::Passing)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Follows a service prefix as full instance lists: lists it first (the
/// first item is the current list, possibly empty), then watches from that
/// snapshot and yields a new list on every change, and whenever a check TTL
/// running out changes the health (re-evaluated every `tick`).
pub(crate) fn service_stream<S: Store + Clone + 'static>(
    store: S,
    prefix: String,
    passing_only: bool,
    tick: Duration,
) -> ServiceStream {
    spawn_stream(move |tx| async move {
        let mut backoff = watch_backoff();
        let mut snap = loop {
            match store.list(&prefix).await {
                Ok(s) => break s,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%prefix, error = %e, ?delay, "listing service failed; retrying");
                    if !e.is_retryable() && tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let mut events = store.watch(&prefix, WatchFrom::Snapshot(snap.clone()));
        let mut last = instances(&snap, passing_only);
        if tx.send(Ok(last.clone())).await.is_err() {
            return;
        }
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    None => return,
                    Some(Err(e)) => {
                        if tx.send(Err(e)).await.is_err() { return; }
                        continue;
                    }
                    Some(Ok(ev)) => {
                        snap.apply(&ev);
                        // Apply what is already there: one list per burst.
                        while let Some(Some(next)) = events.next().now_or_never() {
                            match next {
                                Ok(ev) => snap.apply(&ev),
                                Err(e) => { if tx.send(Err(e)).await.is_err() { return; } }
                            }
                        }
                    }
                },
                _ = ticker.tick() => {}
            }
            let now = instances(&snap, passing_only);
            if now != last {
                last = now.clone();
                if tx.send(Ok(now)).await.is_err() {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_expiry_turns_critical() {
        let reg = Registration {
            name: "web".into(),
            id: "n1/web-1".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec![],
            meta: BTreeMap::new(),
            check_ttl: Duration::from_secs(10),
            deregister_after: Duration::from_secs(60),
        };
        let mut r = Record::new(&reg);
        r.updated_ms = 1_000;
        assert_eq!(r.health(5_000), Health::Passing);
        assert_eq!(r.health(11_001), Health::Critical);
        r.status = Health::Warning;
        assert_eq!(r.health(5_000), Health::Warning);
        assert_eq!(
            record_key("cntnr/services", "web", "n1/web-1").unwrap(),
            "cntnr/services/web/n1/web-1"
        );
        assert!(record_key("cntnr/services", "a/b", "x").is_err());
    }

    #[test]
    fn service_names_are_the_first_segment_of_instance_keys() {
        let keys = [
            "cntnr/services/web/n1/web-1",
            "cntnr/services/web/n2/web-1",
            "cntnr/services/db/tool-7",
            // Not instance records: no id, no name, outside the root.
            "cntnr/services/lonely",
            "cntnr/services/empty/",
            "cntnr/services//x",
            "cntnr/servicesX/api/n1/api-1",
            "cntnr/projects/shop",
        ];
        let want: BTreeSet<String> = ["db".to_string(), "web".to_string()].into();
        assert_eq!(service_names("cntnr/services", keys), want);
        assert_eq!(service_names("cntnr/services/", keys), want);
    }
}
