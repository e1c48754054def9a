//! Where a joiner's files live besides the datadir (shared/SST-PROTOCOL.md
//! §3.4, §3.7): the InnoDB data home, redo log and undo directories, the
//! Aria log directory, and the binary log's base name and index. An
//! explicit SST argument wins over `--mysqld-args`, which wins over the
//! option files; relative paths are taken from the datadir, as mysqld does.

use std::path::{Path, PathBuf};

use crate::args::SstArgs;
use crate::backup::MysqldArgs;
use crate::options::SstOptions;

/// The binary log's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binlog {
    /// Directory and base name, e.g. `/var/log/mysql/mysql-bin`.
    pub base: PathBuf,
    /// The index file.
    pub index: PathBuf,
}

impl Binlog {
    pub fn dir(&self) -> &Path {
        self.base.parent().unwrap_or(Path::new("."))
    }

    /// The base file name, e.g. `mysql-bin`.
    pub fn name(&self) -> String {
        self.base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Whether `file` is one of this log's numbered files (`<name>.000001`).
    pub fn is_log_file(&self, file: &str) -> bool {
        file.strip_prefix(&self.name())
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// The special directories a datadir's files may live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    DataHome,
    Redo,
    Undo,
    Aria,
}

impl Special {
    pub const ALL: [Self; 4] = [Self::DataHome, Self::Redo, Self::Undo, Self::Aria];

    /// A short name (copy mode sends a special directory as
    /// `sluice-dir-<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::DataHome => "datahome",
            Self::Redo => "redo",
            Self::Undo => "undo",
            Self::Aria => "aria",
        }
    }
}

/// The joiner's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// InnoDB data home, redo, undo and Aria log directories that differ
    /// from the datadir.
    pub special: Vec<(Special, PathBuf)>,
    pub binlog: Option<Binlog>,
}

impl Layout {
    /// The directory of `kind`, or `None` when it is the datadir.
    pub fn dir(&self, kind: Special) -> Option<&Path> {
        self.special.iter().find(|(k, _)| *k == kind).map(|(_, d)| d.as_path())
    }
}

fn anchored(datadir: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { datadir.join(p) };
    // Normalise `.` components so `./` compares equal to the datadir.
    joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

/// Resolves the layout for `datadir`.
pub fn resolve(args: &SstArgs, m: &MysqldArgs, o: &SstOptions) -> Layout {
    let datadir = &args.datadir;
    let pick = |a: Option<&PathBuf>, b: Option<&String>, c: Option<&PathBuf>| {
        a.cloned().or_else(|| b.map(PathBuf::from)).or_else(|| c.cloned()).filter(|p| !p.as_os_str().is_empty())
    };
    let mut special: Vec<(Special, PathBuf)> = Vec::new();
    for (kind, dir) in [
        (Special::DataHome, pick(args.innodb_data_home_dir.as_ref(), m.innodb_data_home_dir.as_ref(), o.innodb_data_home_dir.as_ref())),
        (
            Special::Redo,
            pick(args.innodb_log_group_home_dir.as_ref(), m.innodb_log_group_home_dir.as_ref(), o.innodb_log_group_home_dir.as_ref()),
        ),
        (Special::Undo, pick(args.innodb_undo_directory.as_ref(), m.innodb_undo_directory.as_ref(), o.innodb_undo_directory.as_ref())),
        (Special::Aria, pick(args.aria_log_dir_path.as_ref(), m.aria_log_dir_path.as_ref(), o.aria_log_dir_path.as_ref())),
    ] {
        let Some(dir) = dir else { continue };
        let d = anchored(datadir, &dir);
        if &d != datadir && !special.iter().any(|(_, x)| *x == d) {
            special.push((kind, d));
        }
    }
    let basename = args.log_basename.clone().or_else(|| m.log_basename.clone()).or_else(|| o.log_basename.clone());
    let bin = args.binlog.clone().or_else(|| m.log_bin.clone()).or_else(|| o.log_bin.clone());
    let binlog = bin.map(|b| {
        let default_name = basename.as_ref().map_or_else(|| "mysql-bin".to_string(), |n| format!("{n}-bin"));
        let base = anchored(datadir, Path::new(if b.is_empty() { &default_name } else { &b }));
        let index = args.binlog_index.clone().or_else(|| m.log_bin_index.clone()).or_else(|| o.log_bin_index.clone());
        let index = if let Some(i) = index.filter(|i| !i.is_empty()) {
            let p = anchored(datadir, Path::new(&i));
            if p.extension().is_none() { p.with_extension("index") } else { p }
        } else {
            let mut s = base.clone().into_os_string();
            s.push(".index");
            PathBuf::from(s)
        };
        Binlog { base, index }
    });
    Layout { special, binlog }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;
    use crate::backup::split_mysqld_args;
    use crate::mycnf::{MemFiles, Sources};

    fn layout(argv: &[&str], cnf: &str) -> Layout {
        let mut full: Vec<String> = ["--role", "joiner", "--datadir", "/var/lib/mysql/"].iter().map(|s| (*s).to_string()).collect();
        full.extend(argv.iter().map(|s| (*s).to_string()));
        let a = args::parse(&full).unwrap();
        let o = crate::options::load(
            &MemFiles::new(&[("/my.cnf", cnf)]),
            &Sources { defaults_file: Some("/my.cnf".into()), ..Sources::default() },
        )
        .unwrap();
        resolve(&a, &split_mysqld_args(&a.mysqld_args), &o)
    }

    #[test]
    fn special_dirs_come_from_args_then_mysqld_args_then_config() {
        let l = layout(
            &["--innodb-undo-directory", "/undo", "--mysqld-args", "--innodb-undo-directory=/ignored", "--innodb-log-group-home-dir=redo"],
            "[mysqld]\ninnodb_data_home_dir=./\naria_log_dir_path=/aria\ninnodb_log_group_home_dir=/ignored-too\n",
        );
        assert_eq!(
            l.special,
            vec![
                (Special::Redo, PathBuf::from("/var/lib/mysql/redo")),
                (Special::Undo, PathBuf::from("/undo")),
                (Special::Aria, PathBuf::from("/aria"))
            ]
        );
        assert_eq!(l.dir(Special::DataHome), None, "./ is the datadir");
        assert_eq!(l.binlog, None);
    }

    #[test]
    fn binlog_names_follow_the_stock_defaults() {
        let l = layout(&["--binlog", "/logs/bin/mysql-bin"], "");
        let b = l.binlog.unwrap();
        assert_eq!((b.base.clone(), b.index.clone()), (PathBuf::from("/logs/bin/mysql-bin"), PathBuf::from("/logs/bin/mysql-bin.index")));
        assert!(b.is_log_file("mysql-bin.000012") && !b.is_log_file("mysql-bin.index") && !b.is_log_file("mysql-bin.state"));
        let b = layout(&[], "[mysqld]\nlog-bin\nlog-basename=node7\n").binlog.unwrap();
        assert_eq!(b.base, PathBuf::from("/var/lib/mysql/node7-bin"));
        let b = layout(&["--binlog-index", "idx/binlogs"], "[mysqld]\nlog-bin=mysql-bin\n").binlog.unwrap();
        assert_eq!(b.index, PathBuf::from("/var/lib/mysql/idx/binlogs.index"));
    }
}
