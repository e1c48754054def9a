//! Where progress of an SST goes, as the `[sst]` options ask
//! (shared/SST-PROTOCOL.md §3.9): `total`/`complete` lines for mysqld when
//! it passed `--progress 1` and `progress` is unset; a human-readable line
//! in the error log for `progress=1`; the same lines appended to a file for
//! `progress=<path>` (a fifo is removed at exit). [`crate::status`] writes
//! them. `time=1` adds the stock "NOTE: … took N seconds" lines.

use std::path::PathBuf;
use std::time::Duration;

use crate::options::SstOptions;

/// Where progress goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `total`/`complete` lines on stdout (mysqld parses them).
    Mysqld,
    /// Lines in the error log.
    Log,
    /// Lines appended to a file or fifo.
    File(PathBuf),
    None,
}

impl Sink {
    /// The sink the options and mysqld's `--progress` ask for.
    pub fn choose(opts: &SstOptions, mysqld_progress: bool) -> Self {
        match opts.progress.as_deref().map(str::trim) {
            None | Some("") if mysqld_progress => Self::Mysqld,
            None | Some("" | "none" | "0") => Self::None,
            Some("1") => Self::Log,
            Some(path) => Self::File(PathBuf::from(path)),
        }
    }
}

/// Removes a progress fifo at exit, as the stock script does.
pub fn remove_fifo(sink: &Sink) {
    if let Sink::File(p) = sink {
        if std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One log line for a finished transfer: `<verb> N files, X MiB in T s (R MiB/s…)`.
pub fn summary_line(verb: &str, s: &sluice_engine::Summary) -> String {
    let ratio = s.compression_ratio();
    let packed = if (ratio - 1.0).abs() > f64::EPSILON || verb == "sent" { format!(", {ratio:.2}x compression") } else { String::new() };
    format!(
        "{verb} {} files, {:.1} MiB in {:.1} s ({:.0} MiB/s{packed})",
        s.files,
        s.bytes as f64 / 1_048_576.0,
        s.elapsed.as_secs_f64(),
        s.mib_per_sec()
    )
}

/// Stage timing in the stock `time=1` form.
pub fn note_time(opts: &SstOptions, stage: &str, took: Duration) {
    if opts.time {
        tracing::info!("NOTE: {stage} took {} seconds", took.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(cnf: &str) -> SstOptions {
        SstOptions::from_cnf(cnf).unwrap()
    }

    #[test]
    fn the_sink_follows_the_stock_precedence() {
        assert_eq!(Sink::choose(&opts(""), true), Sink::Mysqld);
        assert_eq!(Sink::choose(&opts(""), false), Sink::None);
        assert_eq!(Sink::choose(&opts("[sst]\nprogress=1\n"), true), Sink::Log);
        assert_eq!(Sink::choose(&opts("[sst]\nprogress=/tmp/p\n"), true), Sink::File("/tmp/p".into()));
        assert_eq!(Sink::choose(&opts("[sst]\nprogress=none\n"), true), Sink::None);
    }
}
