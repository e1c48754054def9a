//! MariaDB option files, read the way `my_print_defaults` (MariaDB 10.11)
//! reads them.
//!
//! Owns: the default search order (`/etc/my.cnf`, `/etc/mysql/my.cnf`,
//! `$MARIADB_HOME` or `$MYSQL_HOME/my.cnf`, `--defaults-extra-file`,
//! `~/.my.cnf`) or a single `--defaults-file`; `!include` (a missing file is
//! skipped) and `!includedir` (its `*.cnf` files, sorted; a missing
//! directory is fatal); group names compared case-insensitively, and each
//! group also read with `--defaults-group-suffix` appended; `#` comments
//! outside quotes; values trimmed, unquoted when the whole value is quoted,
//! and unescaped (`\n \t \r \b \s \" \' \\`; other escapes keep their
//! backslash). Options are returned in file order with their origin, all
//! occurrences kept (the last one wins for a consumer). File access goes
//! through [`Files`], so the parser is tested in memory; behaviour was
//! checked against the real binary (tests/mycnf.rs).

use std::path::{Path, PathBuf};

/// How option files are read (the real filesystem, or a map in tests).
pub trait Files {
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    /// Reads an option file as mysys does: a regular file that anyone may
    /// write is ignored with mysys's warning (SECURITY.md F7), so a value
    /// such as `compressor` can never come from a file another user could
    /// have planted.
    fn read(&self, path: &Path) -> std::io::Result<String> {
        use std::io::Read as _;
        use std::os::unix::fs::PermissionsExt;
        let mut f = std::fs::File::open(path)?;
        let m = f.metadata()?;
        if m.is_file() && m.permissions().mode() & 0o002 != 0 {
            tracing::warn!("World-writable config file '{}' is ignored", path.display());
            return Ok(String::new());
        }
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect()
    }
}

/// One option as found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    /// The group it was found in, as written.
    pub group: String,
    /// The key as written (`-` and `_` not normalised; see [`OptionLine::name`]).
    pub key: String,
    /// `None` for a bare `key` line.
    pub value: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

impl OptionLine {
    /// The key with `_` as `-` and any `loose-` prefix removed, for lookups.
    pub fn name(&self) -> String {
        let k = self.key.trim_start_matches("--").replace('_', "-");
        k.strip_prefix("loose-").map_or(k.clone(), str::to_string)
    }

    /// The line `my_print_defaults` prints for this option.
    pub fn render(&self) -> String {
        match &self.value {
            Some(v) => format!("--{}={v}", self.key),
            None => format!("--{}", self.key),
        }
    }
}

/// Where to look, as mysqld and the SST scripts pass it.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub defaults_file: Option<PathBuf>,
    pub extra_file: Option<PathBuf>,
    pub group_suffix: Option<String>,
    /// `$HOME`, for `~/.my.cnf`.
    pub home: Option<PathBuf>,
    /// `$MARIADB_HOME` or `$MYSQL_HOME`.
    pub mariadb_home: Option<PathBuf>,
}

impl Sources {
    /// From the process environment, plus the given files and suffix.
    pub fn from_env(defaults_file: Option<PathBuf>, extra_file: Option<PathBuf>, group_suffix: Option<String>) -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let suffix = group_suffix.or_else(|| std::env::var("MYSQL_GROUP_SUFFIX").ok().filter(|s| !s.is_empty()));
        Self {
            defaults_file,
            extra_file,
            group_suffix: suffix,
            home: var("HOME"),
            mariadb_home: var("MARIADB_HOME").or_else(|| var("MYSQL_HOME")),
        }
    }

    /// The files read, in order; `required` ones must exist.
    fn files(&self) -> Vec<(PathBuf, bool)> {
        if let Some(f) = &self.defaults_file {
            return vec![(f.clone(), true)];
        }
        let mut v = vec![(PathBuf::from("/etc/my.cnf"), false), (PathBuf::from("/etc/mysql/my.cnf"), false)];
        if let Some(h) = &self.mariadb_home {
            v.push((h.join("my.cnf"), false));
        }
        if let Some(x) = &self.extra_file {
            v.push((x.clone(), true));
        }
        if let Some(h) = &self.home {
            v.push((h.join(".my.cnf"), false));
        }
        v
    }
}

/// Why reading option files failed (fatal, as in `my_print_defaults`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MycnfError {
    #[error("could not open required defaults file: {0}")]
    Required(PathBuf),
    #[error("found option without preceding group in config file {file} at line {line}")]
    NoGroup { file: PathBuf, line: usize },
    #[error("wrong group definition in config file {file} at line {line}")]
    BadGroup { file: PathBuf, line: usize },
    #[error("cannot read directory {dir} (named by !includedir in {file}): {reason}")]
    IncludeDir { dir: PathBuf, file: PathBuf, reason: String },
    #[error(
        "option files include one another more than {MAX_INCLUDED_FILES} times or hold more than {MAX_OPTIONS} options (last: {file}); look for an include loop"
    )]
    TooManyIncludes { file: PathBuf },
}

/// Includes nested deeper than this are ignored, as mysys does.
const MAX_INCLUDE_DEPTH: usize = 10;
/// Most files read through includes in one load. mysys has no such cap,
/// but without one files that include each other several times grow
/// exponentially up to the depth limit (found by fuzzing); a real
/// configuration reads a handful.
const MAX_INCLUDED_FILES: usize = 4096;
/// Most options one load collects through includes (a real configuration
/// has hundreds).
const MAX_OPTIONS: usize = 100_000;

/// Reads the options of `groups` (and their suffixed variants) from the
/// files `sources` names, in file order.
pub fn load(files: &dyn Files, sources: &Sources, groups: &[&str]) -> Result<Vec<OptionLine>, MycnfError> {
    let mut wanted: Vec<String> = groups.iter().map(|g| g.to_ascii_lowercase()).collect();
    if let Some(s) = &sources.group_suffix {
        wanted.extend(groups.iter().map(|g| format!("{g}{s}").to_ascii_lowercase()));
    }
    let mut out = Vec::new();
    let cx = Cx { wanted: &wanted, reads: std::cell::Cell::new(0) };
    for (path, required) in sources.files() {
        match files.read(&path) {
            Ok(text) => parse(files, &path, &text, &cx, 0, &mut out)?,
            Err(_) if required => return Err(MycnfError::Required(path)),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// What one load looks for, and how many files its includes read so far.
struct Cx<'a> {
    wanted: &'a [String],
    reads: std::cell::Cell<usize>,
}

fn parse(files: &dyn Files, path: &Path, text: &str, cx: &Cx<'_>, depth: usize, out: &mut Vec<OptionLine>) -> Result<(), MycnfError> {
    let mut group: Option<(String, bool)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let s = raw.trim_start();
        if s.is_empty() || s.starts_with('#') || s.starts_with(';') {
            continue;
        }
        if let Some(rest) = s.strip_prefix('!') {
            include(files, path, rest, cx, depth, out)?;
            continue;
        }
        if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or_else(|| MycnfError::BadGroup { file: path.into(), line })?;
            let name = rest[..end].trim_end();
            let on = cx.wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
            group = Some((name.to_string(), on));
            continue;
        }
        let Some((gname, on)) = &group else {
            return Err(MycnfError::NoGroup { file: path.into(), line });
        };
        if !on {
            continue;
        }
        let s = strip_comment(s).trim_end();
        let (key, value) = match s.find('=') {
            Some(eq) => (s[..eq].trim_end(), Some(unquote(s[eq + 1..].trim()))),
            None => (s, None),
        };
        out.push(OptionLine { group: gname.clone(), key: key.to_string(), value, file: path.into(), line });
    }
    Ok(())
}

fn include(files: &dyn Files, from: &Path, rest: &str, cx: &Cx<'_>, depth: usize, out: &mut Vec<OptionLine>) -> Result<(), MycnfError> {
    if depth >= MAX_INCLUDE_DEPTH {
        return Ok(());
    }
    let (is_dir, target) = if let Some(t) = rest.strip_prefix("includedir") {
        (true, t)
    } else if let Some(t) = rest.strip_prefix("include") {
        (false, t)
    } else {
        return Ok(());
    };
    if !target.starts_with(char::is_whitespace) {
        return Ok(());
    }
    let target = PathBuf::from(target.trim());
    if is_dir {
        let mut names =
            files.list(&target).map_err(|e| MycnfError::IncludeDir { dir: target.clone(), file: from.into(), reason: e.to_string() })?;
        // Case-sensitive on purpose: mysys compares the extension with strcmp.
        #[allow(clippy::case_sensitive_file_extension_comparisons)]
        names.retain(|n| n.ends_with(".cnf"));
        names.sort();
        for n in names {
            let p = target.join(n);
            if let Ok(text) = read_counted(files, &p, cx, out.len())? {
                parse(files, &p, &text, cx, depth + 1, out)?;
            }
        }
    } else if let Ok(text) = read_counted(files, &target, cx, out.len())? {
        parse(files, &target, &text, cx, depth + 1, out)?;
    }
    Ok(())
}

/// Reads an included file, within the load's budget of reads and options.
fn read_counted(files: &dyn Files, p: &Path, cx: &Cx<'_>, options: usize) -> Result<std::io::Result<String>, MycnfError> {
    cx.reads.set(cx.reads.get() + 1);
    if cx.reads.get() > MAX_INCLUDED_FILES || options > MAX_OPTIONS {
        return Err(MycnfError::TooManyIncludes { file: p.to_path_buf() });
    }
    Ok(files.read(p))
}

/// Cuts a `#` comment that is outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (c, quote) {
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) => return &s[..i],
            _ => {}
        }
    }
    s
}

/// Removes quotes that enclose the whole value, then decodes escapes.
fn unquote(v: &str) -> String {
    let b = v.as_bytes();
    let inner = if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] { &v[1..v.len() - 1] } else { v };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('s') => out.push(' '),
            Some(e @ ('"' | '\'' | '\\')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// In-memory option files for unit tests.
#[cfg(test)]
pub(crate) struct MemFiles(pub std::collections::BTreeMap<PathBuf, String>);

#[cfg(test)]
impl MemFiles {
    pub(crate) fn new(files: &[(&str, &str)]) -> Self {
        Self(files.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_string())).collect())
    }
}

#[cfg(test)]
impl Files for MemFiles {
    fn read(&self, p: &Path) -> std::io::Result<String> {
        self.0.get(p).cloned().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn list(&self, d: &Path) -> std::io::Result<Vec<String>> {
        let v: Vec<String> =
            self.0.keys().filter(|k| k.parent() == Some(d)).map(|k| k.file_name().unwrap().to_string_lossy().into_owned()).collect();
        if v.is_empty() { Err(std::io::ErrorKind::NotFound.into()) } else { Ok(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)], src: &Sources, groups: &[&str]) -> Result<Vec<String>, MycnfError> {
        load(&MemFiles::new(files), src, groups).map(|v| v.iter().map(OptionLine::render).collect())
    }

    fn file(p: &str) -> Sources {
        Sources { defaults_file: Some(p.into()), ..Sources::default() }
    }

    #[test]
    fn values_are_parsed_like_my_print_defaults() {
        let cnf = "[SST]\nk = v # c\nq=\"a # b\"\ne=a\\tb\\\\c\\x\nbare\nmixed=\"a\" b\nsemi=b ;c\n[other]\nno=1\n[sst]\nlast=1\n";
        let out = run(&[("/a.cnf", cnf)], &file("/a.cnf"), &["sst"]).unwrap();
        assert_eq!(out, ["--k=v", "--q=a # b", "--e=a\tb\\c\\x", "--bare", "--mixed=\"a\" b", "--semi=b ;c", "--last=1"]);
    }

    #[test]
    fn mutual_includes_are_cut_off_with_a_named_error() {
        let files = MemFiles::new(&[
            ("/a.cnf", "[sst]\nk=1\n!include /b.cnf\n!include /b.cnf\n!include /b.cnf\n"),
            ("/b.cnf", "[sst]\nj=2\n!include /a.cnf\n!include /a.cnf\n!include /a.cnf\n"),
        ]);
        let e = load(&files, &Sources { defaults_file: Some("/a.cnf".into()), ..Sources::default() }, &["sst"]).unwrap_err();
        assert!(matches!(e, MycnfError::TooManyIncludes { .. }), "{e}");
        assert!(e.to_string().contains("include loop"), "{e}");
    }

    #[test]
    fn includes_suffixes_and_search_order() {
        let files = [
            ("/etc/my.cnf", "[g]\na=1\n!include /inc.cnf\n!includedir /d\n"),
            ("/inc.cnf", "[g]\nb=1\n"),
            ("/d/z.cnf", "[g]\nz=1\n"),
            ("/d/a.cnf", "[gX]\nsuffixed=1\n"),
            ("/d/skip.txt", "[g]\nno=1\n"),
            ("/extra.cnf", "[g]\nextra=1\n"),
            ("/home/u/.my.cnf", "[g]\nuser=1\n"),
        ];
        let src = Sources {
            extra_file: Some("/extra.cnf".into()),
            home: Some("/home/u".into()),
            group_suffix: Some("X".into()),
            ..Sources::default()
        };
        assert_eq!(run(&files, &src, &["g"]).unwrap(), ["--a=1", "--b=1", "--suffixed=1", "--z=1", "--extra=1", "--user=1"]);
    }

    #[test]
    fn fatal_errors_name_the_file_and_line() {
        assert_eq!(run(&[("/a", "x=1\n")], &file("/a"), &["g"]), Err(MycnfError::NoGroup { file: "/a".into(), line: 1 }));
        assert_eq!(run(&[], &file("/missing"), &["g"]), Err(MycnfError::Required("/missing".into())));
        assert!(matches!(run(&[("/a", "[g]\n!includedir /nodir\n")], &file("/a"), &["g"]), Err(MycnfError::IncludeDir { .. })));
        assert!(matches!(run(&[("/a", "[g\nk=1\n")], &file("/a"), &["g"]), Err(MycnfError::BadGroup { line: 1, .. })));
    }

    #[test]
    fn names_normalise_dashes_and_loose() {
        let o = OptionLine { group: "sst".into(), key: "loose-inno_backup_opts".into(), value: None, file: "/a".into(), line: 1 };
        assert_eq!(o.name(), "inno-backup-opts");
    }
}
