//! External filter commands: one block in on stdin, its transform out on
//! stdout, through `sh -c`. Used when an operator configured a compressor
//! (or any filter) that sluice has no in-process codec for, so the setting
//! keeps working — at the price of a process per block.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

/// Runs `command` on `input` and returns what it wrote to stdout; a
/// non-zero exit is an error that names the command and its stderr.
pub fn run_filter(command: &str, input: &[u8]) -> io::Result<Vec<u8>> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting filter {command:?}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut out = Vec::with_capacity(input.len());
    let mut stdout = child.stdout.take().expect("piped");
    // Write and read at once: a filter may fill its stdout pipe before it
    // has read all its input.
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let read = stdout.read_to_end(&mut out);
        let written = writer.join().unwrap_or_else(|_| Err(io::Error::other("filter writer panicked")));
        read.and(written)
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("filter {command:?} failed ({status}): {}", err.trim())));
    }
    written.map_err(|e| io::Error::new(e.kind(), format!("filter {command:?}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_pair_round_trips_and_failures_are_named() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let packed = run_filter("gzip -1 -c", &data).unwrap();
        assert!(packed.len() < data.len() / 10);
        assert_eq!(run_filter("gzip -dc", &packed).unwrap(), data);
        let e = run_filter("echo nope >&2; exit 3", b"x").unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
    }
}
