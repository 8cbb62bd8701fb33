//! Leader election for a service's replicas (`cntnr.election: "true"`,
//! issue 7): the agent campaigns on a replica's behalf for
//! `elections/<project>/<service>` through the store's lock (etcd lease +
//! create-revision, Consul session + acquire), with the winner's
//! [`ElectionRecord`] (instance id, address) as the lock's value — so the
//! key names the winner for as long as it leads and vanishes with its
//! session.
//!
//! Every elected replica has its own session (the locks are re-entrant per
//! session, so two replicas of one agent must not share one) and a file
//! `/run/cntnr/leader` ([`cntnr_reconcile::bundle::leader_path`]):
//!
//! ```text
//! true            (or false)
//! token=1234      (fencing token; greater for every later leadership)
//! valid-until=1764437000000   (unix ms; 0 when not leader)
//! ```
//!
//! `valid-until` is when the last successful renewal of the session was
//! sent, plus the session TTL, minus a margin: the store cannot expire the
//! session (and so let another replica win) before the renewal time plus
//! TTL, Consul adds its lock-delay on top, and the margin absorbs the
//! session's creation round trip. The deadline only moves when a renewal
//! succeeds, so a frozen agent leaves a file whose deadline passes before
//! anyone else can be elected. A resign first writes `false`, then waits
//! for the last deadline it wrote ([`ReplicaElection::resign`]; not needed
//! when the container is gone: [`ReplicaElection::resign_now`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cntnr_kv::{DynStore, Session};
use cntnr_model::{Prefix, ProjectName, ServiceName, StoreKey};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::envsync::watch::ElectionRecord;

/// Session TTL and the margin taken off it.
#[derive(Clone, Copy, Debug)]
pub struct ElectionTiming {
    /// TTL of each replica's session (Consul: at least 10 s).
    pub ttl: Duration,
    /// Taken off `renewal + ttl` for `valid-until`.
    pub margin: Duration,
}

impl ElectionTiming {
    /// `ttl` with a margin of a fifth of it, at least 500 ms.
    pub fn new(ttl: Duration) -> Self {
        ElectionTiming {
            ttl,
            margin: (ttl / 5).max(Duration::from_millis(500)),
        }
    }
}

/// The replica on whose behalf the agent campaigns.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Project.
    pub project: ProjectName,
    /// Service with `cntnr.election: "true"`.
    pub service: ServiceName,
    /// `<node>/<container id>`.
    pub instance: String,
    /// Address other containers reach it at.
    pub address: String,
    /// `<bundle>/run/leader`.
    pub leader_file: PathBuf,
}

/// What `/run/cntnr/leader` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// This replica leads.
    pub leader: bool,
    /// Fencing token of its leadership (0 when not leader).
    pub token: u64,
    /// Unix ms before which it may act as leader (0 when not leader).
    pub valid_until_ms: u64,
}

/// The file's text.
pub fn render_leader_file(s: &LeaderState) -> String {
    format!(
        "{}\ntoken={}\nvalid-until={}\n",
        s.leader, s.token, s.valid_until_ms
    )
}

/// Parses [`render_leader_file`]'s output (for tests and tools).
pub fn parse_leader_file(text: &str) -> Option<LeaderState> {
    let mut lines = text.lines();
    let leader = match lines.next()? {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    let token = lines.next()?.strip_prefix("token=")?.parse().ok()?;
    let valid_until_ms = lines.next()?.strip_prefix("valid-until=")?.parse().ok()?;
    Some(LeaderState {
        leader,
        token,
        valid_until_ms,
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The deadline of a leadership held by `session`, in unix ms: the last
/// successful renewal's send time + TTL − margin, or `None` when that has
/// already passed (renewals stalled: stop acting as leader).
pub fn valid_until(session: &Session, margin: Duration) -> Option<u64> {
    let deadline = (session.renewed_at() + session.ttl()).checked_sub(margin)?;
    let now = Instant::now();
    if deadline <= now {
        return None;
    }
    Some(unix_ms(SystemTime::now() + (deadline - now)))
}

/// The campaign of one replica. Dropping it stops campaigning as
/// [`ReplicaElection::resign`] does, in the background: the file says
/// `false` at once and the lock is released after the last deadline written
/// (or, if the process ends first, when the session lapses).
pub struct ReplicaElection {
    rx: watch::Receiver<LeaderState>,
    cancel: CancellationToken,
    wait_deadline: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ReplicaElection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ReplicaElection {
    /// Starts campaigning: writes `false` at once, `true` when elected.
    pub fn start(
        store: DynStore,
        prefix: &Prefix,
        cand: Candidate,
        timing: ElectionTiming,
    ) -> ReplicaElection {
        let (tx, rx) = watch::channel(LeaderState::default());
        let cancel = CancellationToken::new();
        let wait_deadline = Arc::new(AtomicBool::new(true));
        let frozen = Arc::new(AtomicBool::new(false));
        let key = StoreKey::Election(cand.project.clone(), cand.service.clone()).render(prefix);
        let task = tokio::spawn(run(
            store,
            key,
            cand,
            timing,
            tx,
            cancel.clone(),
            wait_deadline.clone(),
            frozen.clone(),
        ));
        ReplicaElection {
            rx,
            cancel,
            wait_deadline,
            frozen,
            task: Some(task),
        }
    }

    /// What the file says now.
    pub fn state(&self) -> LeaderState {
        *self.rx.borrow()
    }

    /// Follows the state (a flip of `leader` is when the replica gets its
    /// change signal).
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.rx.clone()
    }

    /// Gives up (the container is unhealthy or being stopped, but may still
    /// act on the file): writes `false`, waits until the last `valid-until`
    /// written has passed, then releases the lock so another replica wins.
    pub async fn resign(mut self) {
        self.wait_deadline.store(true, Ordering::SeqCst);
        self.finish().await;
    }

    /// Gives up at once (the container is gone): writes `false` and
    /// releases the lock.
    pub async fn resign_now(mut self) {
        self.wait_deadline.store(false, Ordering::SeqCst);
        self.finish().await;
    }

    async fn finish(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Test hook: behave as if the agent were frozen (SIGSTOP): no session
    /// renewals, no file writes, no reaction to anything.
    #[doc(hidden)]
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

fn write_state(file: &std::path::Path, s: &LeaderState, cand: &Candidate) {
    if let Err(e) = crate::envsync::write_atomic(file, render_leader_file(s).as_bytes()) {
        tracing::warn!(
            project = %cand.project, service = %cand.service, instance = %cand.instance,
            path = %file.display(), error = %e, "writing the leader file failed"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    store: DynStore,
    key: String,
    cand: Candidate,
    timing: ElectionTiming,
    tx: watch::Sender<LeaderState>,
    cancel: CancellationToken,
    wait_deadline: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
) {
    let not_leader = LeaderState::default();
    let publish = |s: LeaderState| {
        write_state(&cand.leader_file, &s, &cand);
        tx.send_replace(s);
    };
    publish(not_leader);
    let value = serde_json::to_vec(&ElectionRecord {
        instance: cand.instance.clone(),
        address: cand.address.clone(),
    })
    .expect("election record serializes");
    let refresh = (timing.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut delay = Duration::from_millis(200);
    // Wait out a freeze for good (the test hook), never acting again.
    let frozen_forever = || async {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    loop {
        let session = tokio::select! {
            _ = cancel.cancelled() => return,
            s = store.create_session(timing.ttl) => s,
        };
        let session = match session {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(project = %cand.project, service = %cand.service, key = %key, error = %e, ?delay,
                    "election: creating a session failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let won = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = session.close().await;
                return;
            }
            r = store.campaign(&session, &key, &value) => r,
        };
        let leadership = match won {
            Ok(l) => l,
            Err(e) => {
                if !matches!(e, cntnr_kv::Error::SessionLost { .. }) {
                    tracing::warn!(project = %cand.project, service = %cand.service, key = %key, error = %e, ?delay,
                        "election: campaigning failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                let _ = session.close().await;
                if cancel.is_cancelled() {
                    return;
                }
                continue;
            }
        };
        delay = Duration::from_millis(200);
        tracing::info!(project = %cand.project, service = %cand.service, instance = %cand.instance,
            token = leadership.token, "replica elected leader");
        let mut last_written = 0u64;
        let mut cancelled = false;
        loop {
            if frozen.load(Ordering::SeqCst) {
                session.freeze_keepalive(true);
                frozen_forever().await;
                return;
            }
            let Some(vu) = valid_until(&session, timing.margin) else {
                tracing::warn!(project = %cand.project, service = %cand.service, instance = %cand.instance,
                    "leader's session renewals stalled: no longer acting as leader");
                break;
            };
            if vu != last_written {
                publish(LeaderState {
                    leader: true,
                    token: leadership.token,
                    valid_until_ms: vu,
                });
                last_written = vu;
            }
            tokio::select! {
                _ = cancel.cancelled() => { cancelled = true; break; }
                _ = leadership.lost() => break,
                _ = tokio::time::sleep(refresh) => {}
            }
        }
        publish(not_leader);
        if cancelled && wait_deadline.load(Ordering::SeqCst) {
            // The container may still act on what it read: release only once
            // the deadline it saw has passed.
            let now = unix_ms(SystemTime::now());
            if last_written > now {
                tokio::time::sleep(Duration::from_millis(last_written - now)).await;
            }
        }
        if let Err(e) = store.resign(leadership).await {
            tracing::warn!(project = %cand.project, service = %cand.service, key = %key, error = %e,
                "election: resigning failed (the session lapses instead)");
        }
        let _ = session.close().await;
        if cancelled {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_file_round_trips() {
        let s = LeaderState {
            leader: true,
            token: 42,
            valid_until_ms: 1_764_437_000_000,
        };
        let text = render_leader_file(&s);
        assert_eq!(text, "true\ntoken=42\nvalid-until=1764437000000\n");
        assert_eq!(parse_leader_file(&text), Some(s));
        assert_eq!(
            parse_leader_file(&render_leader_file(&LeaderState::default())),
            Some(LeaderState::default())
        );
        assert_eq!(parse_leader_file("maybe\n"), None);
    }
}
