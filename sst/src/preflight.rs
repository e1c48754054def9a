//! Before any data flows, the donor announces what is coming (the
//! [`Preamble`]: sizes, server and mariadb-backup versions, fingerprints of
//! its data-at-rest keys) and the joiner decides whether it can take it —
//! space on every target filesystem, a mariadb-backup that can prepare the
//! donor's redo format, the same encryption keys — and refuses, naming the
//! culprit and the way out, while its old data is still untouched.
//!
//! Pure decisions here; the flows gather the facts ([`gather_keyring`],
//! [`program_version`], [`fs_facts`] do the reading).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::layout::Special;
use crate::options::SstOptions;
use crate::plan::LowSpace;

/// Largest preamble a joiner reads.
pub const MAX_PREAMBLE: u64 = 64 << 10;

/// The context of key fingerprints in a session (the token is appended).
pub const KEY_CONTEXT: &[u8] = b"sluice data-at-rest key fingerprint v1";

/// What the donor announces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preamble {
    /// The donor's sluice version.
    pub sluice: String,
    /// `backup` or `copy`.
    pub mode: String,
    /// Expected payload in bytes.
    pub bytes: u64,
    /// Bytes of the files that belong in each special directory (undo
    /// tablespaces, redo, system tablespace, Aria logs), part of `bytes`.
    pub parts: Vec<(Special, u64)>,
    /// `mariadbd --version` of the donor's server.
    pub server: Option<String>,
    /// `mariadb-backup --version` on the donor.
    pub backup: Option<String>,
    /// The donor's key management, if it encrypts data at rest.
    pub keys: Option<Keyring>,
    /// Galera chose IST: only the state follows, the joiner's data stays.
    pub ist: bool,
}

/// A key management plugin and the fingerprints of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub plugin: String,
    /// Key id → keyed fingerprint (hex); empty for plugins whose keys live
    /// elsewhere (a key server).
    pub prints: BTreeMap<u32, String>,
}

fn special_from(name: &str) -> Option<Special> {
    Special::ALL.into_iter().find(|s| s.name() == name)
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string()
}

impl Preamble {
    /// The wire form: one `key value` per line.
    pub fn to_text(&self) -> String {
        let mut out = format!("sluice {}\nmode {}\nbytes {}\n", one_line(&self.sluice), self.mode, self.bytes);
        if self.ist {
            out.push_str("ist 1\n");
        }
        for (k, n) in &self.parts {
            let _ = writeln!(out, "part {} {n}", k.name());
        }
        if let Some(v) = &self.server {
            let _ = writeln!(out, "server {}", one_line(v));
        }
        if let Some(v) = &self.backup {
            let _ = writeln!(out, "backup {}", one_line(v));
        }
        if let Some(k) = &self.keys {
            let _ = writeln!(out, "keys {}", one_line(&k.plugin));
            for (id, p) in &k.prints {
                let _ = writeln!(out, "key {id} {p}");
            }
        }
        out
    }

    /// Parses what a peer sent (hostile until proven otherwise: every line
    /// is checked, unknown keys are ignored for forward compatibility).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Self::default();
        let mut seen_bytes = false;
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("line {} of the donor's announcement is invalid: {:?}", n + 1, line.chars().take(80).collect::<String>());
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "sluice" => p.sluice = value.to_string(),
                "mode" if value == "backup" || value == "copy" => p.mode = value.to_string(),
                "bytes" => {
                    p.bytes = value.parse().map_err(|_| bad())?;
                    seen_bytes = true;
                }
                "part" => {
                    let (k, n) = value.split_once(' ').ok_or_else(bad)?;
                    p.parts.push((special_from(k).ok_or_else(bad)?, n.parse().map_err(|_| bad())?));
                }
                "ist" => p.ist = value == "1",
                "server" => p.server = Some(value.to_string()),
                "backup" => p.backup = Some(value.to_string()),
                "keys" => p.keys = Some(Keyring { plugin: value.to_string(), prints: BTreeMap::new() }),
                "key" => {
                    let (id, print) = value.split_once(' ').ok_or_else(bad)?;
                    let ring = p.keys.as_mut().ok_or_else(bad)?;
                    if print.len() != 32 || !print.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad());
                    }
                    ring.prints.insert(id.parse().map_err(|_| bad())?, print.to_string());
                }
                "mode" => return Err(bad()),
                _ => {}
            }
        }
        if !seen_bytes || p.mode.is_empty() {
            return Err("the donor's announcement lacks its mode or size".into());
        }
        Ok(p)
    }
}

// ---------------------------------------------------------------- versions

/// A MariaDB version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The first `X.Y.Z` in a `--version` line.
pub fn parse_version(text: &str) -> Option<Version> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.')).find_map(|w| {
        let mut it = w.split('.').filter(|s| !s.is_empty());
        let (a, b, c) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        Some(Version { major: a, minor: b, patch: c })
    })
}

/// InnoDB's redo log format generation (it changed in 10.5 and in 10.8).
fn redo_format(v: Version) -> u8 {
    match (v.major, v.minor) {
        (m, _) if m > 10 => 2,
        (10, n) if n >= 8 => 2,
        (10, n) if n >= 5 => 1,
        _ => 0,
    }
}

/// Whether this joiner's mariadb-backup (`local`, its `--version` text)
/// can prepare what the donor's server (or, if unknown, its mariadb-backup)
/// wrote. `Ok(Some(w))` carries a warning.
pub fn check_versions(p: &Preamble, local: &str, local_path: &Path) -> Result<Option<String>, String> {
    let Some(mine) = parse_version(local) else {
        return Ok(Some(format!("cannot tell the version of {} from {:?}; not checking it", local_path.display(), one_line(local))));
    };
    let (what, theirs) = match (p.server.as_deref().and_then(parse_version), p.backup.as_deref().and_then(parse_version)) {
        (Some(v), _) => ("server", v),
        (None, Some(v)) => ("mariadb-backup", v),
        (None, None) => return Ok(Some("the donor did not say its server version; not checking it".into())),
    };
    if redo_format(mine) != redo_format(theirs) {
        return Err(format!(
            "the donor's {what} is MariaDB {theirs} but this joiner's mariadb-backup ({}) is {mine}: it cannot prepare a backup in \
             another redo log format (the format changed in 10.5 and 10.8, MDEV-27437). Nothing was touched. Either install \
             mariadb-backup {}.{} on this node and name it with [sst] prepare-binary=/path/to/mariadb-backup, or set [sst] mode=copy \
             on this joiner (copy mode moves the files as they are, as rsync does, and works across versions)",
            local_path.display(),
            theirs.major,
            theirs.minor
        ));
    }
    if (mine.major, mine.minor) != (theirs.major, theirs.minor) {
        return Ok(Some(format!(
            "the donor's {what} is MariaDB {theirs} and this joiner's mariadb-backup is {mine}: the redo format is the same, but \
             mariadb-backup should match the server's major version"
        )));
    }
    Ok(None)
}

/// `program --version` (mariadb-backup prints it on stderr), first line.
pub fn program_version(program: &Path) -> Option<String> {
    let out = std::process::Command::new(program).arg("--version").stdin(std::process::Stdio::null()).output().ok()?;
    let text = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
    text.lines().find(|l| parse_version(l).is_some()).map(str::to_string)
}

// ------------------------------------------------------------------ space

/// One filesystem the joiner writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What lands there, e.g. "the staging directory /var/lib/mysql/.sst".
    pub label: String,
    pub dev: u64,
    /// Bytes free for the SST's writes now.
    pub avail: u64,
    /// Bytes the new data needs there.
    pub need: u64,
    /// Bytes the old data occupies there (freed by cleaning first).
    pub old: u64,
}

/// What the space allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Space {
    /// Old and new fit side by side.
    Fits,
    /// Only if the old data goes first; the message names the shortfall.
    CleanFirst(String),
}

/// Room kept free beyond the announced size: files grow while the donor
/// copies them, and `--prepare` extends a few.
pub fn headroom(need: u64) -> u64 {
    need / 50 + (16 << 20)
}

fn gib(b: u64) -> String {
    if b >= 1 << 30 { format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30)) } else { format!("{:.1} MiB", b as f64 / 1_048_576.0) }
}

/// Decides from the per-filesystem facts.
pub fn decide_space(targets: &[Target], policy: LowSpace) -> Result<Space, String> {
    let mut short = Vec::new();
    let mut impossible = Vec::new();
    for t in targets.iter().filter(|t| t.need > 0) {
        let want = t.need + headroom(t.need);
        if t.avail >= want {
            continue;
        }
        let line = format!(
            "the filesystem of {} has {} free but the new data needs {} ({} + {} headroom)",
            t.label,
            gib(t.avail),
            gib(want),
            gib(t.need),
            gib(headroom(t.need))
        );
        if t.avail.saturating_add(t.old) >= want {
            short.push(format!("{line}; the old data there takes {}", gib(t.old)));
        } else {
            impossible.push(format!("{line}, and deleting the old data would free only {}", gib(t.old)));
        }
    }
    if !impossible.is_empty() {
        return Err(format!("not enough disk space: {}. Nothing was touched; free space or grow the filesystem", impossible.join("; ")));
    }
    if short.is_empty() {
        return Ok(Space::Fits);
    }
    let what = short.join("; ");
    match policy {
        LowSpace::Clean => Ok(Space::CleanFirst(format!(
            "{what}: deleting the old data before receiving ([sst] low-space=clean); if this SST fails, the old data is lost"
        ))),
        LowSpace::Refuse => Err(format!(
            "{what}: the old data and the new do not fit side by side. Nothing was touched. Free space, or set [sst] \
             low-space=clean to delete the old data first (the stock behaviour: a failed SST then leaves no data)"
        )),
    }
}

/// The filesystem (device) of `path` or of its nearest existing ancestor,
/// and the bytes free there.
pub fn fs_facts(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut p = path.to_path_buf();
    loop {
        match std::fs::File::open(&p) {
            Ok(f) => {
                let dev = std::os::unix::fs::MetadataExt::dev(&f.metadata()?);
                return Ok((dev, sluice_engine::backend::sys::available_bytes(&f)?));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !p.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes allocated by `path` and everything under it (no symlink
/// followed), and the device it is on.
pub fn allocated(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, depth: usize) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
        let own = m.blocks() * 512;
        if !m.is_dir() || depth > 8 {
            return own;
        }
        let Ok(rd) = std::fs::read_dir(p) else { return own };
        own + rd.flatten().map(|e| walk(&e.path(), depth + 1)).sum::<u64>()
    }
    let dev = std::fs::symlink_metadata(path).map_or(0, |m| m.dev());
    (walk(path, 0), dev)
}

/// Which special directory a backup file belongs in, by name (the donor's
/// layout may differ from the joiner's).
pub fn special_of(name: &str) -> Option<Special> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if name.starts_with("ibdata") {
        Some(Special::DataHome)
    } else if name.starts_with("ib_logfile") {
        Some(Special::Redo)
    } else if name.strip_prefix("undo").is_some_and(digits) {
        Some(Special::Undo)
    } else if name.strip_prefix("aria_log.").is_some_and(digits) || name == "aria_log_control" {
        Some(Special::Aria)
    } else {
        None
    }
}

/// The payload a donor expects to send from `dirs` (its datadir first,
/// then its special directories): every regular file but those an SST
/// leaves out (the Galera cache and state, logs, binary logs), with the
/// bytes of each special kind. The redo log counts whole: a backup carries
/// the part written since the last checkpoint, which can approach it.
pub fn payload(dirs: &[PathBuf]) -> (u64, Vec<(Special, u64)>) {
    fn walk(dir: &Path, depth: usize, total: &mut u64, parts: &mut BTreeMap<&'static str, (Special, u64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if m.is_dir() {
                if depth < 3 && name != ".sst" && name != crate::aside::ASIDE_DIR && name != "lost+found" {
                    walk(&e.path(), depth + 1, total, parts);
                }
                continue;
            }
            if !m.is_file() {
                continue;
            }
            let ext = Path::new(&name).extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            let skipped = name == "galera.cache"
                || ["err", "log", "pid"].contains(&ext.as_str())
                || name == "gvwstate.dat"
                || name.rsplit_once('.').is_some_and(|(_, n)| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
            if skipped {
                continue;
            }
            *total += m.len();
            if let Some(k) = special_of(&name) {
                parts.entry(k.name()).or_insert((k, 0)).1 += m.len();
            }
        }
    }
    let mut total = 0;
    let mut parts = BTreeMap::new();
    let mut seen = Vec::new();
    for d in dirs {
        let canon = d.canonicalize().unwrap_or_else(|_| d.clone());
        if seen.iter().any(|s: &PathBuf| canon.starts_with(s)) {
            continue;
        }
        seen.push(canon);
        walk(d, 0, &mut total, &mut parts);
    }
    (total, parts.into_values().collect())
}

// ------------------------------------------------------------------- keys

/// Whether the options load a key management plugin, and which.
fn key_plugin(o: &SstOptions) -> Option<String> {
    let loaded = o.plugin_load.iter().flat_map(|v| v.split(';')).map(|p| p.split('=').next_back().unwrap_or(p).trim());
    for p in loaded {
        let name = p.trim_end_matches(".so");
        if name.ends_with("key_management") {
            return Some(name.to_string());
        }
    }
    o.file_key_management_filename.as_ref().map(|_| "file_key_management".to_string())
}

/// Parses a file_key_management key file: `<id>;<hex key>` lines, `#`
/// comments.
pub fn parse_key_file(text: &str) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let mut keys = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || format!("line {} is not `<id>;<hex key>`", n + 1);
        let (id, hex) = l.split_once(';').ok_or_else(bad)?;
        let id: u32 = id.trim().parse().map_err(|_| bad())?;
        let hex = hex.trim();
        if ![32, 48, 64].contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {}: the key of id {id} is not 16, 24 or 32 bytes of hex", n + 1));
        }
        let key = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)).collect();
        keys.insert(id, key);
    }
    Ok(keys)
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// This node's key management and the fingerprints of its keys under
/// `context`; `None` when it encrypts nothing at rest.
pub fn gather_keyring(o: &SstOptions, context: &[u8]) -> Result<Option<Keyring>, String> {
    let Some(plugin) = key_plugin(o) else { return Ok(None) };
    if plugin != "file_key_management" {
        return Ok(Some(Keyring { plugin, prints: BTreeMap::new() }));
    }
    let path = o
        .file_key_management_filename
        .as_ref()
        .ok_or("file_key_management is loaded but file_key_management_filename is not set in the server's option groups")?;
    let read = |p: &Path| -> Result<Vec<u8>, String> {
        use std::io::Read as _;
        let mut buf = Vec::new();
        std::fs::File::open(p)
            .and_then(|f| f.take(1 << 20).read_to_end(&mut buf))
            .map_err(|e| format!("cannot read the key file {}: {e}", p.display()))?;
        Ok(buf)
    };
    let mut bytes = read(path)?;
    if let Some(filekey) = o.file_key_management_filekey.as_deref().filter(|k| !k.is_empty()) {
        let secret = match filekey.strip_prefix("FILE:") {
            Some(f) => {
                let mut s = read(Path::new(f))?;
                while s.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    s.pop();
                }
                s
            }
            None => filekey.as_bytes().to_vec(),
        };
        bytes = sluice_engine::secret::openssl_decrypt(&bytes, &secret).map_err(|e| format!("{} ({e})", path.display()))?;
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the key file {} is not text (is file_key_management_filekey missing?)", path.display()))?;
    let keys = parse_key_file(&text).map_err(|e| format!("the key file {}: {e}", path.display()))?;
    let prints = keys
        .into_iter()
        .map(|(id, k)| {
            let mut data = id.to_le_bytes().to_vec();
            data.extend_from_slice(&k);
            (id, hex(&sluice_engine::secret::fingerprint(context, &data)))
        })
        .collect();
    Ok(Some(Keyring { plugin, prints }))
}

/// Whether this joiner holds every key the donor's data may need.
pub fn check_keys(
    donor: Option<&Keyring>,
    mine: Result<Option<Keyring>, String>,
    key_file: Option<&Path>,
) -> Result<Option<String>, String> {
    let Some(d) = donor else { return Ok(None) };
    let here = key_file.map_or_else(|| "this node".to_string(), |p| p.display().to_string());
    let mine = mine.map_err(|e| {
        format!("the donor encrypts data at rest with {}, but this node's keys cannot be read: {e}. Nothing was touched", d.plugin)
    })?;
    let Some(m) = mine else {
        return Err(format!(
            "the donor encrypts data at rest with {} (key ids {}), but this node loads no key management plugin: it could not read \
             the new data. Nothing was touched. Configure {} with the donor's keys on this node and retry",
            d.plugin,
            d.prints.keys().map(u32::to_string).collect::<Vec<_>>().join(", "),
            d.plugin
        ));
    };
    if m.plugin != d.plugin {
        return Err(format!(
            "the donor uses {} but this node {}: configure the same key management plugin. Nothing was touched",
            d.plugin, m.plugin
        ));
    }
    if d.prints.is_empty() {
        return Ok(Some(format!("the donor's keys live in {} (a key server); not comparing them", d.plugin)));
    }
    let missing: Vec<String> = d.prints.keys().filter(|id| !m.prints.contains_key(id)).map(u32::to_string).collect();
    let differ: Vec<String> =
        d.prints.iter().filter(|(id, p)| m.prints.get(id).is_some_and(|q| q != *p)).map(|(id, _)| id.to_string()).collect();
    if missing.is_empty() && differ.is_empty() {
        return Ok(None);
    }
    let mut why = Vec::new();
    if !differ.is_empty() {
        why.push(format!("key id(s) {} differ", differ.join(", ")));
    }
    if !missing.is_empty() {
        why.push(format!("key id(s) {} are missing", missing.join(", ")));
    }
    Err(format!(
        "this node's encryption keys do not match the donor's: in {here}, {}. The new data could not be read with them. Nothing \
         was touched. Copy the donor's key file to this node and retry",
        why.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    #[test]
    fn the_preamble_round_trips_and_hostile_lines_are_refused() {
        let mut prints = BTreeMap::new();
        prints.insert(1, "00112233445566778899aabbccddeeff".to_string());
        let p = Preamble {
            sluice: "0.1.0".into(),
            mode: "backup".into(),
            bytes: 123,
            parts: vec![(Special::Undo, 7)],
            server: Some("mariadbd  Ver 10.11.19-MariaDB".into()),
            backup: Some("mariadb-backup based on MariaDB server 10.11.19-MariaDB".into()),
            keys: Some(Keyring { plugin: "file_key_management".into(), prints }),
            ist: false,
        };
        let ist = Preamble { mode: "copy".into(), ist: true, ..Preamble::default() };
        assert_eq!(Preamble::parse(&ist.to_text()).unwrap(), ist);
        assert_eq!(Preamble::parse(&p.to_text()).unwrap(), p);
        assert!(Preamble::parse("mode backup\n").unwrap_err().contains("size"));
        assert!(Preamble::parse("mode backup\nbytes -1\n").unwrap_err().contains("line 2"));
        assert!(Preamble::parse("mode rsync\nbytes 1\n").is_err());
        assert!(Preamble::parse("mode copy\nbytes 1\nkey 1 00\n").is_err(), "a key needs a keyring line and 32 hex digits");
        assert!(Preamble::parse("mode copy\nbytes 1\nfuture thing\n").is_ok(), "unknown keys are ignored");
    }

    #[test]
    fn versions_across_a_redo_format_change_are_refused_with_the_ways_out() {
        assert_eq!(v("mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian"), Version { major: 10, minor: 11, patch: 19 });
        assert_eq!(v("mariadb-backup based on MariaDB server 10.6.5-MariaDB"), Version { major: 10, minor: 6, patch: 5 });
        let p = Preamble { server: Some("mariadbd Ver 10.11.19-MariaDB".into()), ..Preamble::default() };
        let mb = Path::new("/usr/bin/mariadb-backup");
        assert_eq!(check_versions(&p, "based on MariaDB server 10.11.6-MariaDB", mb), Ok(None));
        let e = check_versions(&p, "mariadb-backup based on MariaDB server 10.6.5-MariaDB", mb).unwrap_err();
        assert!(e.contains("10.11.19") && e.contains("10.6.5") && e.contains("prepare-binary") && e.contains("mode=copy"), "{e}");
        assert!(check_versions(&p, "server 10.4.30", mb).is_err());
        assert!(check_versions(&p, "server 11.4.2", mb).unwrap().unwrap().contains("major version"), "same format, a warning");
        let old = Preamble { backup: Some("server 10.5.9".into()), ..Preamble::default() };
        assert!(check_versions(&old, "server 10.7.1", mb).unwrap().is_some());
        assert!(check_versions(&old, "server 10.8.1", mb).is_err());
    }

    fn t(need: u64, avail: u64, old: u64) -> Target {
        Target { label: "the datadir /d".into(), dev: 1, avail, need, old }
    }

    #[test]
    fn space_decisions_name_the_filesystem_the_need_and_the_free_bytes() {
        const G: u64 = 1 << 30;
        assert_eq!(decide_space(&[t(G, 2 * G, G)], LowSpace::Refuse), Ok(Space::Fits));
        let e = decide_space(&[t(2 * G, G, 2 * G)], LowSpace::Refuse).unwrap_err();
        assert!(e.contains("/d") && e.contains("1.00 GiB free") && e.contains("low-space=clean"), "{e}");
        match decide_space(&[t(2 * G, G, 2 * G)], LowSpace::Clean).unwrap() {
            Space::CleanFirst(w) => assert!(w.contains("deleting the old data"), "{w}"),
            s @ Space::Fits => panic!("{s:?}"),
        }
        let e = decide_space(&[t(4 * G, G, G)], LowSpace::Clean).unwrap_err();
        assert!(e.contains("would free only 1.00 GiB"), "cleaning cannot help: refused whatever the policy: {e}");
    }

    #[test]
    fn key_files_parse_and_fingerprints_compare_without_the_keys() {
        let keys =
            parse_key_file("# keys\n1;00112233445566778899aabbccddeeff\n\n2;00112233445566778899aabbccddeeff0011223344556677\n").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(parse_key_file("1;xyz\n").unwrap_err().contains("line 1"));
        assert!(parse_key_file("one;00\n").is_err());
        let ring = |p: &[(u32, &str)]| Keyring {
            plugin: "file_key_management".into(),
            prints: p.iter().map(|(i, s)| (*i, (*s).to_string())).collect(),
        };
        let d = ring(&[(1, "aa"), (2, "bb")]);
        assert_eq!(check_keys(Some(&d), Ok(Some(ring(&[(1, "aa"), (2, "bb"), (3, "cc")]))), None), Ok(None));
        let e = check_keys(Some(&d), Ok(Some(ring(&[(1, "aa"), (2, "zz")]))), Some(Path::new("/k"))).unwrap_err();
        assert!(e.contains("key id(s) 2 differ") && e.contains("/k") && !e.contains("bb"), "{e}");
        assert!(check_keys(Some(&d), Ok(Some(ring(&[(1, "aa")]))), None).unwrap_err().contains("2 are missing"));
        assert!(check_keys(Some(&d), Ok(None), None).unwrap_err().contains("loads no key management plugin"));
        assert_eq!(check_keys(None, Ok(None), None), Ok(None));
    }

    #[test]
    fn files_are_sorted_into_special_directories_by_name() {
        assert_eq!(special_of("undo001"), Some(Special::Undo));
        assert_eq!(special_of("ibdata1"), Some(Special::DataHome));
        assert_eq!(special_of("ib_logfile0"), Some(Special::Redo));
        assert_eq!(special_of("aria_log.00000001"), Some(Special::Aria));
        assert_eq!(special_of("undo_table.ibd"), None);
    }
}
