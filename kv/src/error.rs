//! The crate's error type and its retry classification.

use std::time::Duration;

/// Every failure of the store layer.
///
/// Errors say what was being done and with what; they never contain
/// credentials (tokens and passwords are redacted before they reach here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL (or its TLS/credential options) is malformed. Not retryable.
    #[error("bad store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (credentials are never accepted in URLs).
        url: String,
        /// One-line cause.
        reason: String,
    },
    /// A key or prefix is not acceptable for this backend. Not retryable.
    #[error("bad key {key:?}: {reason}")]
    BadKey {
        /// The offending key.
        key: String,
        /// One-line cause.
        reason: String,
    },
    /// A compare-and-set lost: the key's version was not the expected one.
    /// `current` is the version now stored (`None`: the key does not exist),
    /// when the backend reports it.
    #[error("compare-and-set on {key:?} failed: expected {expected:?}, found {current:?}")]
    CasConflict {
        /// The key written.
        key: String,
        /// The version the caller expected (`None`: must not exist).
        expected: Option<u64>,
        /// The version found, when known.
        current: Option<u64>,
    },
    /// A fenced write was rejected: the fence (leadership) no longer holds.
    /// The caller must assume it is no longer leader. Not retryable.
    #[error(
        "fenced write to {key:?} rejected: leadership of {lock:?} (token {token}) no longer holds"
    )]
    FencedOut {
        /// The key that was to be written.
        key: String,
        /// The lock key whose leadership was the fence.
        lock: String,
        /// The fencing token presented.
        token: u64,
    },
    /// The session (Consul session / etcd lease / dir session) is gone.
    /// Everything bound to it must be assumed lost. Not retryable with the same session.
    #[error("session {id} is lost")]
    SessionLost {
        /// The session id.
        id: String,
    },
    /// Authentication or authorization failed (bad token, user or password). Not retryable.
    #[error("{op}: permission denied: {message}")]
    Auth {
        /// What was being done.
        op: String,
        /// The server's message (never contains the credential).
        message: String,
    },
    /// The TLS handshake with the server was refused: its certificate is not
    /// signed by the trusted CA (or not for its address), or it refused ours.
    /// Not retryable: the CA file or the client certificate must change.
    #[error(
        "{op}: TLS handshake failed: {message} (check the CA file and the client certificate)"
    )]
    Tls {
        /// What was being done, naming the server.
        op: String,
        /// The TLS library's cause.
        message: String,
    },
    /// The server could not be reached or the request timed out. Retryable.
    #[error("{op}: store unreachable: {message}")]
    Unavailable {
        /// What was being done.
        op: String,
        /// Transport-level cause.
        message: String,
    },
    /// The server answered with an error. Retryable when `retryable`.
    #[error("{op}: server error: {message}")]
    Server {
        /// What was being done.
        op: String,
        /// The server's message.
        message: String,
        /// Whether backing off and trying again can help (5xx, leader election, …).
        retryable: bool,
    },
    /// Watch history at the requested position is gone (etcd compaction,
    /// Consul index reset). Watch streams handle this internally by
    /// re-listing; it only surfaces from low-level calls.
    #[error(
        "watch history of {prefix:?} from position {position} is gone (compacted at {compacted})"
    )]
    HistoryGone {
        /// Watched prefix.
        prefix: String,
        /// Requested position.
        position: u64,
        /// Oldest position still available, when known.
        compacted: u64,
    },
    /// Local filesystem failure (dir backend, TLS files).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored record (registry JSON, lock record) does not parse.
    #[error("{what}: invalid record: {message}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Parser message.
        message: String,
    },
    /// A wait (campaign, connect) did not finish in time.
    #[error("{op}: timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        op: String,
        /// The limit that passed.
        after: Duration,
    },
}

impl Error {
    /// Whether backing off and repeating the same call can succeed.
    ///
    /// True for transport failures, timeouts and transient server errors;
    /// false for bad input, auth failures, CAS conflicts, fencing and lost
    /// sessions (those need a decision by the caller, not a retry).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Server { retryable, .. } => *retryable,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    /// While connecting: an `Unavailable` that is really a refused TLS
    /// handshake becomes [`Error::Tls`] naming `server`, so `connect` fails
    /// at once instead of retrying a handshake that cannot succeed. Other
    /// errors pass through.
    pub(crate) fn tls_refusal(self, server: &str) -> Self {
        match self {
            Error::Unavailable { message, .. } if is_tls_refusal(&message) => Error::Tls {
                op: format!("connecting to {server}"),
                message: tls_cause(&message).to_string(),
            },
            e => e,
        }
    }

    pub(crate) fn io(
        op: impl Into<String>,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            op: op.into(),
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub(crate) fn bad_key(key: &str, reason: impl Into<String>) -> Self {
        Error::BadKey {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// rustls's words for a handshake that failed on certificates or was
/// refused by the peer (as opposed to a network failure).
const TLS_REFUSALS: [&str; 4] = [
    "invalid peer certificate",
    "received fatal alert",
    "peer sent no certificates",
    "peer is incompatible",
];

fn is_tls_refusal(message: &str) -> bool {
    TLS_REFUSALS.iter().any(|w| message.contains(w))
}

/// The TLS part of a transport error chain (drops the HTTP client's
/// "error sending request for url …" wrapping).
fn tls_cause(message: &str) -> &str {
    TLS_REFUSALS
        .iter()
        .filter_map(|w| message.find(w))
        .min()
        .map_or(message, |i| &message[i..])
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(message: &str) -> Error {
        Error::Unavailable {
            op: "connecting".into(),
            message: message.into(),
        }
    }

    /// Regression: a wrong CA made `connect` retry the handshake forever.
    #[test]
    fn refused_tls_handshake_is_not_retried() {
        let e = unavailable(
            "error sending request for url (https://127.0.0.1:8501/v1/status/leader): \
             client error (Connect): invalid peer certificate: UnknownIssuer",
        )
        .tls_refusal("Consul agent at 127.0.0.1:8501");
        assert!(matches!(e, Error::Tls { .. }), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "connecting to Consul agent at 127.0.0.1:8501: TLS handshake failed: \
             invalid peer certificate: UnknownIssuer (check the CA file and the client certificate)"
        );
        let alert = unavailable("received fatal alert: BadCertificate").tls_refusal("etcd at a:1");
        assert!(matches!(alert, Error::Tls { .. }), "{alert:?}");
    }

    #[test]
    fn network_failures_stay_retryable() {
        for m in ["connection refused", "operation was canceled", "timed out"] {
            let e = unavailable(m).tls_refusal("etcd at a:1");
            assert!(
                matches!(e, Error::Unavailable { .. }) && e.is_retryable(),
                "{e:?}"
            );
        }
        let auth = Error::Auth {
            op: "x".into(),
            message: "invalid peer certificate".into(),
        }
        .tls_refusal("etcd at a:1");
        assert!(matches!(auth, Error::Auth { .. }));
    }
}
