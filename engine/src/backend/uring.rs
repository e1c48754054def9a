//! io_uring data path: `IORING_OP_SPLICE` chains file → pipe → socket and
//! socket → pipe → file, one ring per stream thread.
//!
//! Each round submits two hard-linked splices: source → pipe for up to the
//! pipe's capacity, then pipe → destination with `SPLICE_F_NONBLOCK`, so the
//! second moves whatever the first delivered without ever waiting on an
//! empty pipe (a plain hard link could block forever in io-wq when the first
//! op is short; shared/MEASURED-IO.md §8.3). Bytes left in the pipe are
//! drained with single blocking splices before the next round.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{IoUring, Probe, opcode, squeue, types};

use super::Pipe;

/// A small ring owned by one stream thread.
pub struct Ring {
    ring: IoUring,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

/// Checks once that io_uring can be set up and supports SPLICE.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(4).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
    if !probe.is_supported(opcode::Splice::CODE) {
        return Err("the kernel's io_uring lacks IORING_OP_SPLICE".into());
    }
    Ok(())
}

impl Ring {
    pub fn new() -> io::Result<Self> {
        Ok(Self { ring: IoUring::new(4)? })
    }

    /// Moves exactly `len` bytes from `src` to `dst` through `pipe`. A `Some`
    /// offset addresses the side that is a regular file; sockets take `None`.
    pub fn pump(
        &mut self,
        pipe: &Pipe,
        src: BorrowedFd<'_>,
        src_off: Option<u64>,
        dst: BorrowedFd<'_>,
        dst_off: Option<u64>,
        len: u64,
    ) -> io::Result<()> {
        let (pr, pw) = (types::Fd(pipe.read.as_raw_fd()), types::Fd(pipe.write.as_raw_fd()));
        let (s, d) = (types::Fd(src.as_raw_fd()), types::Fd(dst.as_raw_fd()));
        let at = |base: Option<u64>, done: u64| base.map_or(-1, |o| (o + done) as i64);
        let mut moved_in = 0u64;
        let mut moved_out = 0u64;
        while moved_out < len {
            let in_pipe = moved_in - moved_out;
            if in_pipe > 0 {
                let drain = opcode::Splice::new(pr, -1, d, at(dst_off, moved_out), in_pipe as u32).build().user_data(3);
                let n = self.run(&[drain])?[0];
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "splice out of the pipe moved no bytes"));
                }
                moved_out += n;
                continue;
            }
            let chunk = (len - moved_in).min(pipe.capacity as u64) as u32;
            let fill = opcode::Splice::new(s, at(src_off, moved_in), pw, -1, chunk).build().flags(squeue::Flags::IO_HARDLINK).user_data(1);
            let empty = opcode::Splice::new(pr, -1, d, at(dst_off, moved_out), chunk).flags(libc::SPLICE_F_NONBLOCK).build().user_data(2);
            let r = self.run(&[fill, empty])?;
            if r[0] == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "source ended early"));
            }
            moved_in += r[0];
            moved_out += r[1];
        }
        Ok(())
    }

    /// Submits `entries`, waits for all of them and returns their results in
    /// submission order. The second of a linked pair may report EAGAIN
    /// (nothing in the pipe yet), which counts as zero bytes.
    fn run(&mut self, entries: &[squeue::Entry]) -> io::Result<[u64; 2]> {
        {
            let mut sq = self.ring.submission();
            for e in entries {
                // SAFETY: the entries reference only descriptors borrowed by `pump`'s caller for the
                // whole call and no user memory; we wait below for every completion before returning,
                // so nothing an entry names is released while the kernel may use it.
                unsafe { sq.push(e) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        self.ring.submit_and_wait(entries.len())?;
        let mut out = [0u64; 2];
        let mut seen = 0;
        let mut first_err = None;
        for cqe in self.ring.completion() {
            seen += 1;
            let slot = match cqe.user_data() {
                2 => 1,
                _ => 0,
            };
            let res = cqe.result();
            if res >= 0 {
                out[slot] = res as u64;
            } else if slot == 1 && (-res == libc::EAGAIN || -res == libc::ECANCELED) {
                out[slot] = 0;
            } else if first_err.is_none() {
                first_err = Some(io::Error::from_raw_os_error(-res));
            }
        }
        if seen < entries.len() {
            return Err(io::Error::other("io_uring lost a completion"));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
