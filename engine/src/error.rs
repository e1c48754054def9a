//! The engine's one error type.
//!
//! Every variant names what it is about (file, peer, option) so the message
//! a user reads says what went wrong and where; `hint` adds what to do.

use std::io;

use crate::wire::WireError;

/// Everything that can make a transfer fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local I/O operation failed; `context` names the operation and path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The peer sent bytes that break the protocol.
    #[error("protocol violation from {peer}: {source}")]
    Wire {
        peer: String,
        #[source]
        source: WireError,
    },
    /// The peer went away or misbehaved at the session level.
    #[error("{peer}: {}", printable(.reason))]
    Peer { peer: String, reason: String },
    /// The connection to the peer broke (reset, aborted, silent for too
    /// long): as far as this end can tell, the network's fault, so a
    /// resumable session waits for the stream to come back.
    #[error("{peer}: {}", printable(.reason))]
    Broken { peer: String, reason: String },
    /// The receiver refused the connection or the session.
    #[error("the receiver rejected the session: {}", printable(.0))]
    Rejected(String),
    /// The receiver's final verdict was an error.
    #[error("the receiver reported a failure: {}", printable(.0))]
    ReceiverFailed(String),
    /// The sender's source failed mid-session and the sender said why.
    #[error("the sender gave up: {}", printable(.0))]
    SenderFailed(String),
    /// Data arrived but does not match what the sender announced.
    #[error("verification failed for {path}: {reason}")]
    Verify { path: String, reason: String },
    /// A destination path is missing, exists already, or is not writable.
    #[error("destination {path}: {reason}")]
    Destination { path: String, reason: String },
    /// An option or argument is invalid.
    #[error("{0}")]
    Config(String),
    /// A forced I/O backend cannot run here.
    #[error("I/O backend {backend} is unavailable: {reason} (use --io auto, splice or copy)")]
    BackendUnavailable { backend: &'static str, reason: String },
    /// This receiver examined what arrived and refused it (the reason
    /// is also the sender's error).
    #[error("{}", printable(.0))]
    Refused(String),
    /// The session was aborted because another stream failed first.
    #[error("aborted: {0}")]
    Aborted(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn peer(peer: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self::Peer { peer: peer.to_string(), reason: reason.into() }
    }

    pub(crate) fn broken(peer: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self::Broken { peer: peer.to_string(), reason: reason.into() }
    }
}

/// `text` with control characters escaped, so a peer-supplied reason can
/// never forge extra log lines (SECURITY.md F16).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_supplied_text_cannot_add_log_lines() {
        let e = Error::ReceiverFailed("disk full\nWSREP_SST: [ERROR] forged (20260101 00:00:00.000)\r".into());
        let shown = e.to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown}");
        assert!(shown.contains("disk full\\nWSREP_SST"), "{shown}");
        assert_eq!(printable("tab\there é"), "tab\\there é");
    }
}
