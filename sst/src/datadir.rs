//! The joiner's datadir cleanup before an SST (shared/SST-PROTOCOL.md §3.6).
//!
//! The stock script deletes every top-level entry of the datadir (and of
//! the InnoDB home, undo and log directories and the Aria log directory)
//! whose full path does not match `cpat`, a GNU `find -regex` pattern
//! (emacs syntax: `\|` alternates, `\(` `\)` group, the whole path must
//! match). This module translates such a pattern, decides what goes, and
//! removes it without following symlinks. A user's `cpat` replaces the
//! default, so [`KeepPattern::check`] warns when it would delete the staging
//! directory or `grastate.dat`.

use std::path::{Path, PathBuf};

use regex::Regex;

/// What the default keep-list keeps: TLS files, Galera state and cache, the
/// SST markers and staging directory, and logs.
const DEFAULT_ENDINGS: &[&str] = &[
    ".pem",
    "galera.cache",
    "sst_in_progress",
    ".sst",
    "gvwstate.dat",
    "grastate.dat",
    ".err",
    ".log",
    "RPM_UPGRADE_MARKER",
    "RPM_UPGRADE_HISTORY",
];

/// A compiled `cpat`.
#[derive(Debug, Clone)]
pub struct KeepPattern {
    source: String,
    re: Regex,
}

/// Translates a GNU find (emacs-style) regex into Rust regex syntax.
fn translate(emacs: &str) -> String {
    let mut out = String::with_capacity(emacs.len() + 8);
    let mut chars = emacs.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        if in_class {
            // Inside [...] everything is literal except the closing bracket.
            if c == ']' {
                in_class = false;
            }
            if c == '\\' || (c == '[' && chars.peek() != Some(&':')) {
                out.push('\\');
            }
            out.push(c);
            continue;
        }
        match c {
            '\\' => match chars.next() {
                Some('|') => out.push('|'),
                Some('(') => out.push('('),
                Some(')') => out.push(')'),
                Some('{') => out.push('{'),
                Some('}') => out.push('}'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push_str("\\\\"),
            },
            // Literal in emacs syntax, special in Rust's.
            '|' | '(' | ')' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '[' => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().expect("peeked"));
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str("\\]");
                }
            }
            _ => out.push(c),
        }
    }
    out
}

impl KeepPattern {
    /// The stock default keep-list.
    pub fn stock_default() -> Self {
        let alternatives: Vec<String> = DEFAULT_ENDINGS.iter().map(|e| format!(".*{}$", e.replace('.', "\\."))).collect();
        Self::parse(&alternatives.join("\\|")).expect("the default pattern is valid")
    }

    /// Compiles a `cpat` value (GNU find emacs-style regex).
    pub fn parse(cpat: &str) -> Result<Self, String> {
        let re = Regex::new(&format!("^(?:{})$", translate(cpat))).map_err(|e| format!("cpat {cpat:?} is not a valid find regex: {e}"))?;
        Ok(Self { source: cpat.to_string(), re })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the entry at `path` (full path, as find prints it) is kept.
    pub fn keeps(&self, path: &str) -> bool {
        self.re.is_match(path)
    }

    /// Problems with a user's pattern: it must keep the staging directory
    /// and `grastate.dat` in `datadir`.
    pub fn check(&self, datadir: &Path) -> Vec<String> {
        [".sst", "grastate.dat"]
            .iter()
            .filter_map(|name| {
                let p = datadir.join(name);
                (!self.keeps(&p.to_string_lossy())).then(|| format!("cpat {:?} would delete {}", self.source, p.display()))
            })
            .collect()
    }
}

/// The top-level entries of `dirs` that the cleanup deletes, in sorted order.
pub fn doomed(dirs: &[PathBuf], keep: &KeepPattern) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        for e in rd {
            let p = e?.path();
            if !keep.keeps(&p.to_string_lossy()) {
                out.push(p);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Deletes what [`doomed`] lists; symlinks are removed, never followed.
pub fn clean(dirs: &[PathBuf], keep: &KeepPattern) -> std::io::Result<Vec<PathBuf>> {
    let victims = doomed(dirs, keep)?;
    for v in &victims {
        let meta = std::fs::symlink_metadata(v)?;
        if meta.is_dir() { std::fs::remove_dir_all(v) } else { std::fs::remove_file(v) }
            .map_err(|e| std::io::Error::new(e.kind(), format!("removing {}: {e}", v.display())))?;
    }
    Ok(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_state_logs_and_staging() {
        let k = KeepPattern::stock_default();
        for p in [
            "/d/grastate.dat",
            "/d/galera.cache",
            "/d/.sst",
            "/d/server-cert.pem",
            "/d/node.err",
            "/d/mariabackup.move.log",
            "/d/sst_in_progress",
        ] {
            assert!(k.keeps(p), "{p}");
        }
        for p in ["/d/ibdata1", "/d/mysql", "/d/ib_logfile0", "/d/grastate.dat.bak", "/d/xpem"] {
            assert!(!k.keeps(p), "{p}");
        }
        assert!(k.check(Path::new("/d")).is_empty());
    }

    #[test]
    fn emacs_syntax_translates() {
        assert_eq!(translate(r".*\.pem$\|.*(x)$"), r".*\.pem$|.*\(x\)$");
        assert_eq!(translate(r"\(a\|b\)c"), "(a|b)c");
        assert_eq!(translate("[|(]x"), "[|(]x");
        let k = KeepPattern::parse(r".*\.ibd$").unwrap();
        assert!(k.keeps("/d/t.ibd") && !k.keeps("/d/t.ibdx"));
        let warn = k.check(Path::new("/d"));
        assert_eq!(warn.len(), 2, "{warn:?}");
        assert!(KeepPattern::parse(r"\(unclosed").is_err());
    }
}
