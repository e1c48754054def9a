//! Progress of an SST stage, reported as the `[sst]` options ask
//! (shared/SST-PROTOCOL.md §3.9): `complete <bytes>` lines for mysqld when
//! it passed `--progress 1` and `progress` is unset; a human-readable line
//! in the error log for `progress=1`; the same lines appended to a file for
//! `progress=<path>` (a fifo is removed at exit). `time=1` adds the stock
//! "NOTE: … took N seconds" lines.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_engine::progress::Progress;

use crate::mysqld::Protocol;
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

/// A running reporter; [`stop`](Self::stop) it before the stage's last line.
#[derive(Debug)]
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn human(role: &str, p: &Progress) -> String {
    let s = p.snapshot();
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let rate = mib(s.done) / s.seconds.max(1e-9);
    if s.total > 0 {
        format!("{role}: {:.0} of {:.0} MiB ({:.0} %), {rate:.0} MiB/s", mib(s.done), mib(s.total), 100.0 * s.done as f64 / s.total as f64)
    } else {
        format!("{role}: {:.0} MiB, {rate:.0} MiB/s", mib(s.done))
    }
}

/// Emits one progress report.
fn emit(sink: &Sink, role: &str, p: &Progress) {
    match sink {
        Sink::Mysqld => {
            let _ = Protocol::new(std::io::stdout()).complete(p.snapshot().done);
        }
        Sink::Log => tracing::info!("{}", human(role, p)),
        Sink::File(path) => {
            // A fifo without a reader must not block the SST.
            let f = OpenOptions::new().append(true).create(true).custom_flags(libc::O_NONBLOCK).open(path);
            if let Ok(mut f) = f {
                let _ = writeln!(f, "{}", human(role, p));
            }
        }
        Sink::None => {}
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

impl Reporter {
    /// Starts reporting `progress` every second (mysqld) or ten (humans).
    pub fn start(sink: Sink, role: &'static str, progress: Arc<Progress>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if sink == Sink::None {
            return Self { stop, thread: None };
        }
        let every = if sink == Sink::Mysqld { Duration::from_secs(1) } else { Duration::from_secs(10) };
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sluice-progress".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() >= every {
                        emit(&sink, role, &progress);
                        last = Instant::now();
                    }
                }
                emit(&sink, role, &progress);
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops the reporter after one last report.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

/// The stock donor's payload estimate: data files under the datadir
/// (`*.ibd`, `*.MYI`, `*.MYD`, `ibdata*`, `undo*`), symlinks followed.
pub fn footprint(datadir: &Path) -> u64 {
    fn walk(dir: &Path, depth: usize, sum: &mut u64) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::metadata(&p) else { continue };
            if m.is_dir() && depth < 3 {
                walk(&p, depth + 1, sum);
            } else if m.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                let data =
                    [".ibd", ".MYI", ".MYD"].iter().any(|x| name.ends_with(x)) || name.starts_with("ibdata") || name.starts_with("undo");
                if data {
                    *sum += m.len();
                }
            }
        }
    }
    let mut sum = 0;
    walk(datadir, 0, &mut sum);
    sum
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

    #[test]
    fn reports_reach_a_file_and_footprint_counts_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("progress.txt");
        let p = Arc::new(Progress::default());
        p.set_total(4 << 20);
        p.add(1 << 20);
        Reporter::start(Sink::File(out.clone()), "donor", Arc::clone(&p)).stop();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("donor: 1 of 4 MiB (25 %)"), "{text}");
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/t.ibd"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("ibdata1"), vec![0u8; 24]).unwrap();
        std::fs::write(dir.path().join("db/t.frm"), vec![0u8; 500]).unwrap();
        assert_eq!(footprint(dir.path()), 1024);
    }
}
