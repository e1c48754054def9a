//! Syslog for SST logs (shared/SST-PROTOCOL.md §3.8): with `syslog` in
//! `[mysqld_safe]` (and `sst-syslog` not -1) the stock script sends its
//! messages to syslog as `<tag>wsrep-sst-<role>` and mariadb-backup's output
//! as `<tag>innobackupex-{backup,apply,move}`, where `<tag>` is
//! `syslog-tag` (or `$SST_SYSLOG_TAG`) followed by `-`. sluice writes
//! RFC 3164 datagrams to `/dev/log` (facility daemon) itself; log files are
//! still written too.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::mysqld::Level;
use crate::options::SstOptions;

/// A connected syslog socket with the tag prefix.
#[derive(Debug)]
pub struct Syslog {
    sock: UnixDatagram,
    prefix: String,
    role: &'static str,
}

static ACTIVE: OnceLock<Syslog> = OnceLock::new();

/// The socket to log to: `/dev/log`, or `$SLUICE_SYSLOG_SOCKET` (tests).
fn socket_path() -> PathBuf {
    std::env::var_os("SLUICE_SYSLOG_SOCKET").map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from)
}

impl Syslog {
    /// Connects to `path` with the options' tag for `role`.
    pub fn connect(path: &Path, opts: &SstOptions, role: &'static str) -> std::io::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        let tag = opts.syslog_tag.clone().or_else(|| std::env::var("SST_SYSLOG_TAG").ok()).unwrap_or_default();
        let prefix = if tag.is_empty() { String::new() } else { format!("{tag}-") };
        Ok(Self { sock, prefix, role })
    }

    /// Sends one message with `ident` after the tag prefix.
    pub fn send(&self, ident: &str, level: Level, msg: &str) {
        // daemon (3) * 8 + severity: err 3, warning 4, info 6.
        let pri = 24
            + match level {
                Level::Error => 3,
                Level::Warning => 4,
                Level::Info => 6,
            };
        let line = format!("<{pri}>{}{ident}[{}]: {msg}", self.prefix, std::process::id());
        let _ = self.sock.send(line.as_bytes());
    }

    /// A line of the SST's own log.
    pub fn script(&self, level: Level, msg: &str) {
        self.send(&format!("wsrep-sst-{}", self.role), level, msg);
    }
}

/// Turns syslog on for this process if the options ask for it; returns
/// whether it is on.
pub fn enable(opts: &SstOptions, role: &'static str) -> bool {
    if !opts.syslog || opts.sst_syslog == -1 {
        return false;
    }
    match Syslog::connect(&socket_path(), opts, role) {
        Ok(s) => ACTIVE.set(s).is_ok(),
        Err(e) => {
            tracing::warn!(
                "[mysqld_safe] syslog is set but {} is not usable ({e}); logging to the error log only",
                socket_path().display()
            );
            false
        }
    }
}

/// The active syslog, if any (the binary's log formatter mirrors to it).
pub fn active() -> Option<&'static Syslog> {
    ACTIVE.get()
}

/// Forwards a helper's log file to syslog as `<tag>innobackupex-<stage>`.
pub fn forward_log(stage: &str, log: &Path) {
    if let Some(s) = active() {
        let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            s.send(&format!("innobackupex-{stage}"), Level::Info, line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_stock_tags_and_priorities() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut opts = SstOptions::defaults_for_test();
        opts.syslog_tag = Some("mysqld".into());
        let s = Syslog::connect(&path, &opts, "joiner").unwrap();
        s.script(Level::Error, "boom");
        s.send("innobackupex-apply", Level::Info, "prepare line");
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let pid = std::process::id();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("<27>mysqld-wsrep-sst-joiner[{pid}]: boom"));
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), format!("<30>mysqld-innobackupex-apply[{pid}]: prepare line"));
    }
}
