//! External filter commands: one block in on stdin, its transform out on
//! stdout, through `sh -c`. Used when an operator configured a compressor
//! (or any filter) that sluice has no in-process codec for, so the setting
//! keeps working — at the price of a process per block.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, bounded};

use crate::backend::sys;
use crate::cleanup;

/// Longest a filter may take for one block before it is killed.
pub const FILTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most stderr text kept for the error message (the rest is drained).
const STDERR_KEEP: usize = 4096;

/// Runs `command` on `input` and returns what it wrote to stdout, at most
/// `limit` bytes: a filter that writes more is killed at once and reported
/// (a decompression bomb never grows past `limit + 1` bytes of memory,
/// SECURITY.md F6). A filter that runs longer than [`FILTER_TIMEOUT`] is
/// killed; stderr is drained alongside stdout so a chatty filter cannot
/// deadlock; the child is registered for cleanup on a fatal signal. A
/// non-zero exit is an error that names the command and its stderr.
pub fn run_filter(command: &str, input: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    run_filter_for(command, input, limit, FILTER_TIMEOUT)
}

fn run_filter_for(command: &str, input: &[u8], limit: usize, timeout: Duration) -> io::Result<Vec<u8>> {
    // Its own process group, so a kill reaches whatever `sh -c` started.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting filter {command:?}: {e}")))?;
    let pid = child.id();
    cleanup::add_child(pid);
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let mut out = Vec::with_capacity(input.len().min(limit));
    let (done, finished) = bounded::<()>(0);
    // Write, read stdout and drain stderr at once: a filter may fill either
    // pipe before it has read all its input.
    let (read, written, err, timed_out) = std::thread::scope(|s| {
        let watchdog = s.spawn(move || {
            let fired = matches!(finished.recv_timeout(timeout), Err(RecvTimeoutError::Timeout));
            if fired {
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
            fired
        });
        let writer = s.spawn(move || stdin.write_all(input));
        let errs = s.spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut stderr).take(STDERR_KEEP as u64).read_to_end(&mut kept);
            let _ = io::copy(&mut stderr, &mut io::sink());
            String::from_utf8_lossy(&kept).into_owned()
        });
        let read = (&mut stdout).take(limit as u64 + 1).read_to_end(&mut out);
        if out.len() > limit {
            // Too much: stop it now rather than read the rest.
            let _ = sys::kill_group(pid, libc::SIGKILL);
        }
        drop(stdout);
        let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("filter writer panicked")));
        let err = errs.join().unwrap_or_default();
        drop(done);
        let timed_out = watchdog.join().unwrap_or(false);
        (read, written, err, timed_out)
    });
    let status = child.wait();
    cleanup::remove_child(pid);
    let status = status?;
    if timed_out {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("filter {command:?} took longer than {timeout:?} for one block; killed"),
        ));
    }
    if out.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("filter {command:?} produced more than the {limit} bytes the block may decode to; killed"),
        ));
    }
    if !status.success() {
        return Err(io::Error::other(format!("filter {command:?} failed ({status}): {}", crate::printable(err.trim()))));
    }
    read?;
    written.map_err(|e| io::Error::new(e.kind(), format!("filter {command:?}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_pair_round_trips_and_failures_are_named() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let packed = run_filter("gzip -1 -c", &data, 1 << 20).unwrap();
        assert!(packed.len() < data.len() / 10);
        assert_eq!(run_filter("gzip -dc", &packed, data.len()).unwrap(), data);
        let e = run_filter("echo nope >&2; exit 3", b"x", 10).unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
    }

    #[test]
    fn a_bomb_is_cut_at_the_limit_and_a_hung_filter_is_killed() {
        // 256 MiB of zeros from a few bytes of input: stopped after 4 KiB.
        let e = run_filter("head -c 268435456 /dev/zero", b"x", 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("more than the 4096 bytes"), "{e}");
        let started = std::time::Instant::now();
        let e = run_filter_for("sleep 30", b"x", 10, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // A filter that writes a lot to stderr before any stdout does not
        // deadlock.
        let out = run_filter("head -c 1000000 /dev/zero >&2; cat", b"abc", 10).unwrap();
        assert_eq!(out, b"abc");
    }
}
