//! SST log housekeeping (shared/SST-PROTOCOL.md §2.5, §3.8): the previous
//! SST's `mariabackup.*.log` files are gzipped into `sst-log-archive-dir`
//! before a new SST overwrites them (unless `sst-log-archive=0`), and
//! `wsrep_sst.pid` keeps two SSTs from running on one datadir at once.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Result, SstError};
use crate::options::SstOptions;
use crate::process;

/// The SST logs in the datadir, by role.
pub const LOGS: [&str; 3] = ["mariabackup.backup.log", "mariabackup.prepare.log", "mariabackup.move.log"];

/// `name.YYYY.mm.dd-HH.MM.SS.nnnnnnnnn` (UTC), the stock archive naming.
fn stamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let line = crate::mysqld::log_line(crate::mysqld::Level::Info, "", now);
    // log_line ends with "(YYYYmmdd HH:MM:SS.mmm)"; reuse its calendar math.
    let ts = line.rsplit_once('(').map_or("", |(_, t)| t.trim_end_matches(')'));
    let (date, time) = ts.split_once(' ').unwrap_or(("19700101", "00:00:00.000"));
    let hms = time.split('.').next().unwrap_or("00:00:00").replace(':', ".");
    format!("{}.{}.{}-{hms}.{:09}", &date[..4], &date[4..6], &date[6..8], d.subsec_nanos())
}

fn gzip(src: &Path, dest: &Path) -> io::Result<()> {
    let mut input = File::open(src)?;
    let mut gz = flate2::write::GzEncoder::new(crate::fresh::create(dest, 0o640)?, flate2::Compression::default());
    io::copy(&mut input, &mut gz)?;
    gz.finish()?.sync_all()?;
    fs::remove_file(src)
}

/// Archives the previous SST logs of `datadir`; returns the archives made.
pub fn archive(datadir: &Path, opts: &SstOptions) -> Vec<PathBuf> {
    if !opts.sst_log_archive {
        return Vec::new();
    }
    let present: Vec<PathBuf> = LOGS.iter().map(|n| datadir.join(n)).filter(|p| p.exists()).collect();
    if present.is_empty() {
        return Vec::new();
    }
    let dir = match fs::create_dir_all(&opts.sst_log_archive_dir) {
        Ok(()) => opts.sst_log_archive_dir.clone(),
        Err(e) => {
            tracing::warn!(
                "cannot create the SST log archive {} ({e}); archiving next to the logs in {}",
                opts.sst_log_archive_dir.display(),
                datadir.display()
            );
            datadir.to_path_buf()
        }
    };
    let stamp = stamp(SystemTime::now());
    let mut made = Vec::new();
    for log in present {
        let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dest = dir.join(format!("{name}.{stamp}.gz"));
        match gzip(&log, &dest) {
            Ok(()) => made.push(dest),
            Err(e) => tracing::warn!("cannot archive {} to {}: {e}", log.display(), dest.display()),
        }
    }
    made
}

/// `wsrep_sst.pid`, removed on drop.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Waits up to `wait` (1 s steps) while another live SST holds the pid
/// file, then takes it; exit 114 (EALREADY) if it never frees up.
pub fn acquire_pid_file(datadir: &Path, wait: Duration) -> Result<PidFile> {
    let path = datadir.join("wsrep_sst.pid");
    let me = std::process::id();
    let started = std::time::Instant::now();
    loop {
        let other = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok()).filter(|p| *p != me && process::alive(*p));
        match other {
            None => break,
            Some(pid) if started.elapsed() >= wait => {
                return Err(SstError::Busy(format!("another SST (pid {pid}) is still running on {}", datadir.display())));
            }
            Some(_) => std::thread::sleep(Duration::from_secs(1).min(wait)),
        }
    }
    let mut f = crate::fresh::create(&path, 0o644).map_err(|e| SstError::io(format!("writing {}", path.display()), e))?;
    writeln!(f, "{me}").map_err(|e| SstError::io(format!("writing {}", path.display()), e))?;
    Ok(PidFile(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn previous_logs_are_gzipped_into_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("mariabackup.prepare.log"), "prepare said hello\n").unwrap();
        let mut opts = crate::options::SstOptions::defaults_for_test();
        opts.sst_log_archive_dir = dir.path().join("archive");
        let made = archive(&data, &opts);
        assert_eq!(made.len(), 1);
        let name = made[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("mariabackup.prepare.log.20") && name.len() > 40, "{name}");
        assert_eq!(made[0].extension().and_then(|e| e.to_str()), Some("gz"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&made[0]).unwrap()).read_to_string(&mut text).unwrap();
        assert_eq!(text, "prepare said hello\n");
        assert!(!data.join("mariabackup.prepare.log").exists());
        opts.sst_log_archive = false;
        fs::write(data.join("mariabackup.move.log"), "x").unwrap();
        assert!(archive(&data, &opts).is_empty());
        assert!(data.join("mariabackup.move.log").exists(), "sst-log-archive=0 leaves the log to be overwritten");
    }

    #[test]
    fn a_live_pid_file_holds_off_a_second_sst() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        fs::write(dir.path().join("wsrep_sst.pid"), format!("{}\n", other.id())).unwrap();
        let e = acquire_pid_file(dir.path(), Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.exit_code(), 114);
        other.kill().unwrap();
        other.wait().unwrap();
        let held = acquire_pid_file(dir.path(), Duration::from_secs(5)).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("wsrep_sst.pid")).unwrap().trim(), std::process::id().to_string());
        drop(held);
        assert!(!dir.path().join("wsrep_sst.pid").exists());
    }
}
