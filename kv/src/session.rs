//! Sessions: a TTL'd liveness token (etcd lease, Consul session, dir
//! session record) kept alive by a background task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// What a backend does to keep a session alive.
#[async_trait]
pub(crate) trait SessionOps: Send + Sync + 'static {
    /// One renewal. `Ok(true)`: alive; `Ok(false)`: the server says it is gone.
    async fn renew(&self, id: &str) -> Result<bool>;
    /// Revokes/destroys the session (bound keys are deleted). Idempotent.
    async fn revoke(&self, id: &str) -> Result<()>;
}

/// A live session. Drop or [`Session::close`] it; dropping stops the
/// keepalive without revoking (the server expires it after its TTL).
///
/// Loss: the keepalive task renews every TTL/3. The session is declared lost
/// — `lost()` resolves, `is_lost()` turns true, all at once — when the
/// server says it is gone, or when no renewal has succeeded for a whole TTL
/// (so the holder learns no later than the server expires it). After loss
/// the holder must assume it holds nothing: bound keys, locks and
/// leadership are gone or going.
pub struct Session {
    id: String,
    ttl: Duration,
    lost_rx: watch::Receiver<bool>,
    cancel: CancellationToken,
    frozen: Arc<AtomicBool>,
    ops: Arc<dyn SessionOps>,
    lost_tx: Arc<watch::Sender<bool>>,
    renewed: Arc<std::sync::Mutex<Instant>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &*self.lost_rx.borrow())
            .finish()
    }
}

impl Session {
    pub(crate) fn start(id: String, ttl: Duration, ops: Arc<dyn SessionOps>) -> Session {
        let (lost_tx, lost_rx) = watch::channel(false);
        let lost_tx = Arc::new(lost_tx);
        let cancel = CancellationToken::new();
        let frozen = Arc::new(AtomicBool::new(false));
        let renewed = Arc::new(std::sync::Mutex::new(Instant::now()));
        let task = tokio::spawn(keepalive(
            id.clone(),
            ttl,
            ops.clone(),
            lost_tx.clone(),
            cancel.clone(),
            frozen.clone(),
            renewed.clone(),
        ));
        Session {
            id,
            ttl,
            lost_rx,
            cancel,
            frozen,
            ops,
            lost_tx,
            renewed,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// When the last successful renewal was sent (session start before the
    /// first): the server keeps the session at least `ttl` past this, so
    /// `renewed_at() + ttl` minus a margin (for the creation round trip) is
    /// a deadline before which nobody else can take its locks, even if this
    /// process freezes right now.
    pub fn renewed_at(&self) -> Instant {
        *self.renewed.lock().expect("session renewed_at")
    }

    /// Backend id: etcd lease id (decimal), Consul session UUID, dir session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The TTL the session was created with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True once the session is known lost. Never turns false again.
    pub fn is_lost(&self) -> bool {
        *self.lost_rx.borrow()
    }

    /// Resolves when the session is lost (immediately if it already is).
    pub async fn lost(&self) {
        let mut rx = self.lost_rx.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// A receiver that turns `true` when the session is lost.
    pub fn lost_watch(&self) -> watch::Receiver<bool> {
        self.lost_rx.clone()
    }

    pub(crate) fn ensure_alive(&self) -> Result<()> {
        if self.is_lost() {
            return Err(crate::Error::SessionLost {
                id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// Test hook: stop (`true`) or resume (`false`) renewals without telling
    /// the server, as if the holder were frozen. The loss detection keeps
    /// running, so the holder is told when the TTL runs out.
    #[doc(hidden)]
    pub fn freeze_keepalive(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Stops the keepalive and revokes the session at the server, so bound
    /// keys and locks are released now (fast failover). Idempotent in
    /// effect; on a retryable error the server expires it after the TTL.
    ///
    /// Takes `&self` so a session shared in an `Arc` can be closed; after
    /// `close` the session counts as lost.
    pub async fn close(&self) -> Result<()> {
        self.cancel.cancel();
        let task = self.task.lock().expect("session task").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let _ = self.lost_tx.send(true);
        self.ops.revoke(&self.id).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn keepalive(
    id: String,
    ttl: Duration,
    ops: Arc<dyn SessionOps>,
    lost_tx: Arc<watch::Sender<bool>>,
    cancel: CancellationToken,
    frozen: Arc<AtomicBool>,
    renewed: Arc<std::sync::Mutex<Instant>>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut last_ok = Instant::now();
    let mut next = Instant::now() + period;
    loop {
        let deadline = last_ok + ttl;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(session = %id, ?ttl, "session lost: no successful renewal within its TTL");
            let _ = lost_tx.send(true);
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            next = Instant::now() + period;
            continue;
        }
        let sent = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => None,
            r = ops.renew(&id) => Some(r),
        };
        match result {
            Some(Ok(true)) => {
                *renewed.lock().expect("session renewed_at") = sent;
                last_ok = Instant::now();
                next = last_ok + period;
            }
            Some(Ok(false)) => {
                tracing::warn!(session = %id, "session lost: the store says it no longer exists");
                let _ = lost_tx.send(true);
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(session = %id, error = %e, "session renewal failed; retrying");
                next = Instant::now() + (period / 4).max(Duration::from_millis(100));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// Scripted renewals: pure logic of the keepalive loop, in paused time.
    struct Script {
        answers: Mutex<Vec<Result<bool>>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl SessionOps for Script {
        async fn renew(&self, _id: &str) -> Result<bool> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut a = self.answers.lock().unwrap();
            if a.is_empty() {
                Ok(true)
            } else {
                a.remove(0)
            }
        }
        async fn revoke(&self, _id: &str) -> Result<()> {
            Ok(())
        }
    }

    fn script(answers: Vec<Result<bool>>) -> Arc<Script> {
        Arc::new(Script {
            answers: Mutex::new(answers),
            calls: AtomicUsize::new(0),
        })
    }

    fn unavailable() -> Result<bool> {
        Err(crate::Error::Unavailable {
            op: "renew".into(),
            message: "down".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_it_alive() {
        let ops = script(vec![]);
        let s = Session::start("s".into(), Duration::from_secs(9), ops.clone());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!s.is_lost());
        assert!(ops.calls.load(Ordering::SeqCst) >= 19, "renews every TTL/3");
    }

    #[tokio::test(start_paused = true)]
    async fn renewed_at_advances_only_with_successful_renewals() {
        let ops = script(vec![]);
        let s = Session::start("s".into(), Duration::from_secs(9), ops);
        let t0 = s.renewed_at();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(s.renewed_at(), t0 + Duration::from_secs(3));
        s.freeze_keepalive(true);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(s.renewed_at(), t0 + Duration::from_secs(3), "frozen");
    }

    #[tokio::test(start_paused = true)]
    async fn server_says_gone_means_lost_at_once() {
        let s = Session::start("s".into(), Duration::from_secs(9), script(vec![Ok(false)]));
        let t = Instant::now();
        s.lost().await;
        assert_eq!(
            t.elapsed(),
            Duration::from_secs(3),
            "lost at the first renewal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_lose_it_after_one_ttl() {
        let s = Session::start(
            "s".into(),
            Duration::from_secs(9),
            script((0..100).map(|_| unavailable()).collect()),
        );
        let t = Instant::now();
        s.lost().await;
        assert_eq!(t.elapsed(), Duration::from_secs(9));
        assert!(matches!(
            s.ensure_alive(),
            Err(crate::Error::SessionLost { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_before_the_ttl() {
        let s = Session::start(
            "s".into(),
            Duration::from_secs(9),
            script(vec![unavailable(), unavailable()]),
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!s.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn close_marks_it_lost_and_stops_renewing() {
        let ops = script(vec![]);
        let s = Arc::new(Session::start(
            "s".into(),
            Duration::from_secs(9),
            ops.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(4)).await;
        s.close().await.unwrap();
        assert!(s.is_lost());
        let calls = ops.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(ops.calls.load(Ordering::SeqCst), calls);
        s.close().await.unwrap(); // idempotent
    }

    #[tokio::test(start_paused = true)]
    async fn frozen_keepalive_is_lost_after_ttl() {
        let ops = script(vec![]);
        let s = Session::start("s".into(), Duration::from_secs(9), ops.clone());
        tokio::time::sleep(Duration::from_secs(4)).await;
        s.freeze_keepalive(true);
        let calls = ops.calls.load(Ordering::SeqCst);
        s.lost().await;
        assert_eq!(
            ops.calls.load(Ordering::SeqCst),
            calls,
            "no renewals while frozen"
        );
    }
}
