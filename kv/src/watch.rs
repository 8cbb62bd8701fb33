//! Watch machinery shared by the backends: the snapshot diff that turns two
//! states into events, and the level-based watcher state machine used by
//! Consul (blocking queries) and dir (inotify + rescan).
//!
//! The state machine follows kube-rs's watcher: `Empty → InitListed →
//! Watching`, and "history gone → relist": a relist is diffed against the
//! last known state, so a delete that happened in the gap is still reported.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::store::{Entry, EventKind, Snapshot, WatchEvent, WatchFrom, WatchStream};
use crate::{Error, Result};

/// The events that turn `old` into `new`, in version order (deletes carry
/// `position`, the position at which they were observed missing).
pub(crate) fn diff(
    old: &BTreeMap<String, Entry>,
    new: &BTreeMap<String, Entry>,
    position: u64,
    synthetic: bool,
) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    for (k, e) in new {
        let changed = match old.get(k) {
            None => true,
            Some(o) => o.version != e.version || o.value != e.value,
        };
        if changed {
            out.push(WatchEvent {
                kind: EventKind::Put,
                key: k.clone(),
                value: e.value.clone(),
                version: e.version,
                position,
                synthetic,
            });
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(WatchEvent {
                kind: EventKind::Delete,
                key: k.clone(),
                value: Vec::new(),
                version: position,
                position,
                synthetic,
            });
        }
    }
    // Stable: equal versions keep key order.
    out.sort_by_key(|e| e.version);
    out
}

impl Snapshot {
    /// Applies a watch event, so a caller can keep its own state and resume a
    /// watch from it with [`WatchFrom::Snapshot`].
    pub fn apply(&mut self, ev: &WatchEvent) {
        match ev.kind {
            EventKind::Put => {
                self.entries.insert(
                    ev.key.clone(),
                    Entry {
                        key: ev.key.clone(),
                        value: ev.value.clone(),
                        version: ev.version,
                    },
                );
            }
            EventKind::Delete => {
                self.entries.remove(&ev.key);
            }
        }
        self.position = ev.position;
    }
}

/// Runs `body` as the producer of a stream; the task ends when the stream
/// is dropped (the channel closes), even while `body` is blocked in a
/// request.
pub(crate) fn spawn_stream<T, F, Fut>(body: F) -> futures::stream::BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let closed = tx.clone();
    let fut = body(tx);
    tokio::spawn(async move {
        tokio::select! {
            _ = closed.closed() => {}
            _ = fut => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Backoff for re-establishing a failed watch: 100ms doubling to 10s, with
/// jitter, forever.
pub(crate) fn watch_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// A level-based source: something that can return the full state of a
/// prefix, waiting first for a change after a position.
#[async_trait]
pub(crate) trait LevelSource: Send + Sync + 'static {
    /// The state of `prefix`. With `after = Some(p)`, block until the state
    /// may have changed after position `p` (or an internal timeout passes —
    /// returning the same position then is a spurious wake-up).
    async fn poll(&self, prefix: &str, after: Option<u64>) -> Result<Snapshot>;
}

enum State {
    Empty,
    Watching(Snapshot),
}

/// The level-based watcher: `Empty` → (list, emit all) → `Watching(snapshot)`
/// → (poll, diff, emit) → … Errors back off and retry from the same state,
/// so nothing is lost or repeated across reconnects. A position that goes
/// backwards (Consul index reset, server data loss) is logged and treated
/// as a relist against the known state.
pub(crate) fn level_watch<S: LevelSource>(
    source: S,
    prefix: String,
    from: WatchFrom,
) -> WatchStream {
    spawn_stream(move |tx| async move {
        let mut state = match from {
            WatchFrom::Start => State::Empty,
            WatchFrom::Snapshot(s) => State::Watching(s),
        };
        let mut backoff = watch_backoff();
        loop {
            let after = match &state {
                State::Empty => None,
                State::Watching(s) => Some(s.position),
            };
            match source.poll(&prefix, after).await {
                Ok(new) => {
                    backoff = watch_backoff();
                    let events = match &state {
                        State::Empty => diff(&BTreeMap::new(), &new.entries, new.position, true),
                        State::Watching(old) if new.position == old.position => Vec::new(),
                        State::Watching(old) => {
                            let reset = new.position < old.position;
                            if reset {
                                tracing::warn!(%prefix, from = old.position, to = new.position,
                                    "store position went backwards (index reset); relisting against last known state");
                            }
                            diff(&old.entries, &new.entries, new.position, reset)
                        }
                    };
                    state = State::Watching(new);
                    for ev in events {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%prefix, error = %e, ?delay, "watch request failed; retrying");
                    if !e.is_retryable() && tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    })
}

/// Rejects keys no backend can store consistently.
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::bad_key(key, "empty key"));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(Error::bad_key(key, "keys must not start or end with '/'"));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(Error::bad_key(key, "empty, '.' or '..' path segment"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(Error::bad_key(key, "control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &str, ver: u64) -> (String, Entry) {
        (
            k.to_string(),
            Entry {
                key: k.into(),
                value: v.as_bytes().to_vec(),
                version: ver,
            },
        )
    }

    #[test]
    fn diff_orders_puts_by_version_and_reports_deletes() {
        let old: BTreeMap<_, _> = [e("a", "1", 5), e("b", "1", 6), e("c", "1", 7)].into();
        let new: BTreeMap<_, _> = [e("a", "1", 5), e("b", "2", 9), e("d", "1", 8)].into();
        let ev = diff(&old, &new, 10, false);
        let got: Vec<_> = ev
            .iter()
            .map(|e| (e.kind, e.key.as_str(), e.version))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventKind::Put, "d", 8),
                (EventKind::Put, "b", 9),
                (EventKind::Delete, "c", 10)
            ]
        );
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let s: BTreeMap<_, _> = [e("a", "1", 5)].into();
        assert!(diff(&s, &s, 5, false).is_empty());
    }

    #[test]
    fn apply_replays_a_diff() {
        let old: BTreeMap<_, _> = [e("a", "1", 5), e("c", "1", 7)].into();
        let new: BTreeMap<_, _> = [e("a", "2", 8), e("b", "1", 9)].into();
        let mut snap = Snapshot {
            entries: old.clone(),
            position: 7,
        };
        for ev in diff(&old, &new, 9, false) {
            snap.apply(&ev);
        }
        assert_eq!(snap.entries, new);
        assert_eq!(snap.position, 9);
    }

    #[test]
    fn keys_are_checked() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", "a/./b", "a\nb"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_key("cntnr/projects/shop").unwrap();
    }
}

#[cfg(test)]
mod machine_tests {
    use super::*;
    use std::sync::Mutex;

    /// Scripted poll results: the level watcher's state machine in paused time.
    struct Script(Mutex<Vec<Result<Snapshot>>>);

    #[async_trait]
    impl LevelSource for Script {
        async fn poll(&self, _prefix: &str, _after: Option<u64>) -> Result<Snapshot> {
            let next = self.0.lock().unwrap().pop();
            match next {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }
    }

    fn snap(entries: &[(&str, &str, u64)], position: u64) -> Snapshot {
        Snapshot {
            entries: entries
                .iter()
                .map(|(k, v, ver)| {
                    (
                        k.to_string(),
                        Entry {
                            key: k.to_string(),
                            value: v.as_bytes().to_vec(),
                            version: *ver,
                        },
                    )
                })
                .collect(),
            position,
        }
    }

    async fn run(mut script: Vec<Result<Snapshot>>, from: WatchFrom, n: usize) -> Vec<WatchEvent> {
        script.reverse();
        let mut w = level_watch(Script(Mutex::new(script)), "p/".into(), from);
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(120), w.next()).await {
                Ok(Some(Ok(ev))) => out.push(ev),
                Ok(Some(Err(_))) => {}
                _ => break,
            }
        }
        // Nothing more comes.
        assert!(tokio::time::timeout(Duration::from_secs(60), w.next())
            .await
            .is_err());
        out
    }

    #[tokio::test(start_paused = true)]
    async fn lists_then_diffs_and_ignores_spurious_wakeups() {
        let evs = run(
            vec![
                Ok(snap(&[("p/a", "1", 5)], 5)),
                Ok(snap(&[("p/a", "1", 5)], 5)), // spurious: same index
                Ok(snap(&[("p/a", "2", 7)], 7)),
            ],
            WatchFrom::Start,
            2,
        )
        .await;
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.kind, e.value.clone(), e.version, e.synthetic))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventKind::Put, b"1".to_vec(), 5, true),
                (EventKind::Put, b"2".to_vec(), 7, false)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_and_resume_without_repeats() {
        let down = || {
            Err(Error::Unavailable {
                op: "poll".into(),
                message: "down".into(),
            })
        };
        let evs = run(
            vec![
                Ok(snap(&[("p/a", "1", 5)], 5)),
                down(),
                down(),
                down(),
                Ok(snap(&[("p/a", "1", 5), ("p/b", "1", 9)], 9)),
            ],
            WatchFrom::Start,
            2,
        )
        .await;
        let keys: Vec<_> = evs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["p/a", "p/b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn index_going_backwards_relists_and_reports_deletes() {
        let evs = run(
            vec![Ok(snap(&[("p/a", "1", 3)], 4))],
            WatchFrom::Snapshot(snap(&[("p/a", "1", 50), ("p/b", "1", 60)], 100)),
            2,
        )
        .await;
        let got: Vec<_> = evs
            .iter()
            .map(|e| (e.kind, e.key.as_str(), e.synthetic))
            .collect();
        assert_eq!(
            got,
            vec![
                (EventKind::Put, "p/a", true),
                (EventKind::Delete, "p/b", true)
            ]
        );
    }
}
