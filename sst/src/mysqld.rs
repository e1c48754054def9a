//! The lines mysqld reads from an SST script's stdout, and the log lines it
//! expects on stderr (shared/SST-PROTOCOL.md §2, MARIADB-OBSERVED.md §7).
//!
//! Owns formatting and parsing only; a caller writes the lines. stdout in SST
//! mode belongs to mysqld: nothing but these lines may reach it, each
//! terminated by a newline and flushed at once ([`Protocol`]).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of the module sluice advertises in its `ready` line; the session
/// token follows as 32 hex characters.
pub const MODULE_PREFIX: &str = "sluice2_";

/// The module prefixes of sluice before the donor's announcement (0.1):
/// recognised only to say that the joiner must be upgraded.
const LEGACY_PREFIXES: [&str; 2] = ["sluice_", "sluice-copy_"];

/// A cluster state position: `<uuid>:<seqno>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gtid {
    pub uuid: String,
    pub seqno: i64,
}

impl std::fmt::Display for Gtid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uuid, self.seqno)
    }
}

impl std::str::FromStr for Gtid {
    type Err = String;
    /// Parses `<uuid>:<seqno>` with a canonical 8-4-4-4-12 hex UUID.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (uuid, seqno) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not <uuid>:<seqno>"))?;
        let canonical = uuid.len() == 36
            && uuid.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
        if !canonical {
            return Err(format!("{uuid:?} is not a canonical UUID"));
        }
        let seqno = seqno.parse().map_err(|_| format!("{seqno:?} is not a seqno"))?;
        Ok(Self { uuid: uuid.to_ascii_lowercase(), seqno })
    }
}

/// The first line of `donor_galera_info` or `mariadb_backup_galera_info`:
/// `<uuid>:<seqno>[ <domain_id>]` (older donors omit the domain).
pub fn parse_galera_info(text: &str) -> Result<(Gtid, Option<u64>), String> {
    let line = text.lines().next().unwrap_or("").trim();
    let (gtid, domain) = match line.split_once(char::is_whitespace) {
        Some((g, d)) => (g, Some(d.trim().parse().map_err(|_| format!("{d:?} is not a gtid domain id"))?)),
        None => (line, None),
    };
    Ok((gtid.parse()?, domain))
}

/// Prefix of the module a joiner in copy mode advertises.
pub const COPY_MODULE_PREFIX: &str = "sluice2-copy_";

/// This build's version as a module suffix (`_0.1.0`), so the donor can
/// log which sluice the joiner runs.
fn version_suffix() -> String {
    let v: String = env!("CARGO_PKG_VERSION").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
    format!("_{v}")
}

/// The module for a one-time session token and this build's version (only
/// `[A-Za-z0-9._-]`: mysqld rejects other characters in the address).
pub fn module_for(token_hex: &str) -> String {
    format!("{MODULE_PREFIX}{token_hex}{}", version_suffix())
}

/// The module of a joiner in copy mode.
pub fn copy_module_for(token_hex: &str) -> String {
    format!("{COPY_MODULE_PREFIX}{token_hex}{}", version_suffix())
}

/// The 32 hex digits of a token, then nothing or `_<version>`.
fn hex32(t: &str) -> Option<&str> {
    let (token, rest) = t.split_at_checked(32)?;
    let rest_ok = rest.is_empty() || rest.strip_prefix('_').is_some_and(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'));
    (token.bytes().all(|b| b.is_ascii_hexdigit()) && rest_ok).then_some(token)
}

/// The joiner's sluice version carried in its module, if any.
pub fn version_in(module: &str) -> Option<&str> {
    let rest = module.strip_prefix(MODULE_PREFIX).or_else(|| module.strip_prefix(COPY_MODULE_PREFIX))?;
    rest.get(32..)?.strip_prefix('_').filter(|v| !v.is_empty())
}

/// The token in a sluice module, or `None` for a foreign one (e.g. the stock
/// `xtrabackup_sst`).
pub fn token_in(module: &str) -> Option<&str> {
    module.strip_prefix(MODULE_PREFIX).and_then(hex32)
}

/// Whether `module` is an older sluice joiner's.
pub fn legacy_token_in(module: &str) -> bool {
    LEGACY_PREFIXES.iter().any(|p| module.strip_prefix(p).and_then(hex32).is_some())
}

/// The token in a copy-mode module.
pub fn copy_token_in(module: &str) -> Option<&str> {
    module.strip_prefix(COPY_MODULE_PREFIX).and_then(hex32)
}

/// `ready <host>:<port>/<module>//1` — the joiner's first line. `host`
/// keeps IPv6 brackets; the trailing sst_ver `1` is required by stock donors.
pub fn ready_line(host: &str, port: u16, module: &str) -> String {
    format!("ready {host}:{port}/{module}//1")
}

/// The joiner's final line: `<uuid>:<seqno> <domain_id>`.
pub fn coordinates_line(gtid: &Gtid, domain: Option<u64>) -> String {
    match domain {
        Some(d) => format!("{gtid} {d}"),
        None => gtid.to_string(),
    }
}

/// The donor's final line.
pub fn done_line(gtid: &Gtid) -> String {
    format!("done {gtid}")
}

/// Writes protocol lines to mysqld, each flushed at once.
#[derive(Debug)]
pub struct Protocol<W: Write> {
    out: W,
}

impl<W: Write> Protocol<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    fn line(&mut self, l: &str) -> crate::error::Result<()> {
        debug_assert!(!l.contains('\n'), "one protocol line at a time");
        writeln!(self.out, "{l}").and_then(|()| self.out.flush()).map_err(|e| crate::error::SstError::io("writing to mysqld (stdout)", e))
    }

    pub fn ready(&mut self, host: &str, port: u16, module: &str) -> crate::error::Result<()> {
        self.line(&ready_line(host, port, module))
    }
    pub fn coordinates(&mut self, gtid: &Gtid, domain: Option<u64>) -> crate::error::Result<()> {
        self.line(&coordinates_line(gtid, domain))
    }
    pub fn done(&mut self, gtid: &Gtid) -> crate::error::Result<()> {
        self.line(&done_line(gtid))
    }
    pub fn flush_tables(&mut self) -> crate::error::Result<()> {
        self.line("flush tables")
    }
    pub fn continue_(&mut self) -> crate::error::Result<()> {
        self.line("continue")
    }
    /// `total <N>`: a new progress stage of N bytes (only with `--progress 1`).
    pub fn total(&mut self, bytes: u64) -> crate::error::Result<()> {
        self.line(&format!("total {bytes}"))
    }
    /// `complete <N>`: bytes done in the current stage.
    pub fn complete(&mut self, bytes: u64) -> crate::error::Result<()> {
        self.line(&format!("complete {bytes}"))
    }
}

/// Log levels of `WSREP_SST:` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// `WSREP_SST: [LEVEL] message (YYYYmmdd HH:MM:SS.mmm)`, in UTC.
pub fn log_line(level: Level, msg: &str, now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let lvl = match level {
        Level::Info => "INFO",
        Level::Warning => "WARNING",
        Level::Error => "ERROR",
    };
    format!(
        "WSREP_SST: [{lvl}] {msg} ({y:04}{m:02}{day:02} {:02}:{:02}:{:02}.{:03})",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) — H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const UUID: &str = "5ddc2d84-e57f-11f1-bdb1-3269f43d81db";

    #[test]
    fn lines_match_what_mysqld_parses() {
        let g: Gtid = format!("{UUID}:16").parse().unwrap();
        let mut buf = Vec::new();
        let mut p = Protocol::new(&mut buf);
        let token = "0123456789abcdef0123456789abcdef";
        p.ready("127.0.0.1", 14445, &module_for(token)).unwrap();
        p.ready("[::1]", 4444, "m").unwrap();
        p.total(100).unwrap();
        p.complete(50).unwrap();
        p.coordinates(&g, Some(0)).unwrap();
        p.done(&g).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            format!(
                "ready 127.0.0.1:14445/sluice2_{token}_{}//1\nready [::1]:4444/m//1\ntotal 100\ncomplete 50\n{UUID}:16 0\ndone {UUID}:16\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(version_in(&module_for(token)), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(token_in(&format!("sluice2_{token}")), Some(token), "a module without a version still parses");
        assert_eq!(token_in(&format!("sluice2_{token}_1.2/x")), None);
        let module = module_for(token);
        assert!(module.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "mysqld's filename_char set");
        assert_eq!(token_in(&module), Some(token));
        assert_eq!(token_in("xtrabackup_sst"), None);
        assert_eq!(token_in("sluice_short"), None);
        let copy = copy_module_for(token);
        assert!(copy.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!((copy_token_in(&copy), token_in(&copy), copy_token_in(&module)), (Some(token), None, None));
        assert!(legacy_token_in(&format!("sluice_{token}")) && legacy_token_in(&format!("sluice-copy_{token}")));
        assert!(!legacy_token_in(&module) && !legacy_token_in(&copy));
    }

    #[test]
    fn galera_info_and_gtids_parse_strictly() {
        assert_eq!(parse_galera_info(&format!("{UUID}:16 0\nsecret x\n")).unwrap(), (Gtid { uuid: UUID.into(), seqno: 16 }, Some(0)));
        assert_eq!(parse_galera_info(&format!("{UUID}:-1")).unwrap().1, None);
        assert!(parse_galera_info("").is_err());
        assert!("not-a-uuid:1".parse::<Gtid>().is_err());
        assert!(format!("{UUID}:x").parse::<Gtid>().is_err());
        assert!(parse_galera_info(&format!("{UUID}:1 zero")).is_err());
    }

    #[test]
    fn log_lines_carry_level_and_millisecond_timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_251_901_123); // 2026-11-21 09:05:01.123 UTC (checked with Python)
        assert_eq!(log_line(Level::Error, "boom", t), "WSREP_SST: [ERROR] boom (20261121 09:05:01.123)");
        assert_eq!(log_line(Level::Info, "x", UNIX_EPOCH), "WSREP_SST: [INFO] x (19700101 00:00:00.000)");
    }
}
