//! Signals: SIGTERM/SIGINT start a drain (the shutdown token is
//! cancelled); a second one exits at once; SIGHUP asks for the credential
//! files to be re-read.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the signal task drives.
#[derive(Clone, Debug)]
pub struct Signals {
    /// Cancelled by the first SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Notified on SIGHUP.
    pub reload: Arc<Notify>,
}

/// Exit status when a second signal cuts the drain short.
pub const EXIT_FORCED: i32 = 130;

/// Installs the handlers and starts the task that turns signals into
/// [`Signals`] events. The task ends when `stop` is cancelled.
pub fn install(stop: CancellationToken) -> std::io::Result<(Signals, JoinHandle<()>)> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let signals = Signals {
        shutdown: CancellationToken::new(),
        reload: Arc::new(Notify::new()),
    };
    let s = signals.clone();
    let task = tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = stop.cancelled() => return,
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: re-reading credential files");
                    s.reload.notify_one();
                    continue;
                }
            };
            if s.shutdown.is_cancelled() {
                tracing::warn!("{name} again: exiting now, without draining");
                std::process::exit(EXIT_FORCED);
            }
            tracing::info!(
                "{name}: draining (containers keep running); send it again to exit at once"
            );
            s.shutdown.cancel();
        }
    });
    Ok((signals, task))
}
