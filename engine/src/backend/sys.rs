//! Safe wrappers over the raw Linux syscalls the engine needs.
//!
//! Every `unsafe` block of the workspace lives in this module tree. Each
//! wrapper takes borrowed descriptors and Rust slices, so callers cannot pass
//! dangling pointers or closed descriptors.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
}

/// A pipe with close-on-exec ends: `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe capacity of `size` bytes and returns what was granted
/// (the kernel caps it at `/proc/sys/fs/pipe-max-size` without privilege).
pub fn set_pipe_size(fd: impl AsFd, size: usize) -> io::Result<usize> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    let granted = unsafe { libc::fcntl(raw, libc::F_SETPIPE_SZ, size as libc::c_int) };
    if granted >= 0 {
        return Ok(granted as usize);
    }
    // SAFETY: F_GETPIPE_SZ takes no argument.
    cvt(unsafe { libc::fcntl(raw, libc::F_GETPIPE_SZ) }).map(|n| n as usize)
}

/// `sendfile(2)` from `file` at `*offset` to `sock`, advancing `*offset`.
pub fn sendfile(sock: impl AsFd, file: impl AsFd, offset: &mut u64, count: usize) -> io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: `off` is a valid off_t for the duration of the call; both fds are borrowed open descriptors.
    let n = cvt_size(unsafe { libc::sendfile(sock.as_fd().as_raw_fd(), file.as_fd().as_raw_fd(), &raw mut off, count) })?;
    *offset = off as u64;
    Ok(n)
}

/// `splice(2)` between `fd_in` and `fd_out`; a `Some` offset is used (and
/// advanced) for the side that is a regular file.
pub fn splice(
    fd_in: impl AsFd,
    off_in: Option<&mut u64>,
    fd_out: impl AsFd,
    off_out: Option<&mut u64>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let mut oi = off_in.as_ref().map(|o| **o as libc::loff_t);
    let mut oo = off_out.as_ref().map(|o| **o as libc::loff_t);
    let pi = oi.as_mut().map_or(std::ptr::null_mut(), std::ptr::from_mut);
    let po = oo.as_mut().map_or(std::ptr::null_mut(), std::ptr::from_mut);
    // SAFETY: the offset pointers are null or point at locals that outlive the call; fds are borrowed and open.
    let n = cvt_size(unsafe { libc::splice(fd_in.as_fd().as_raw_fd(), pi, fd_out.as_fd().as_raw_fd(), po, len, flags) })?;
    if let (Some(o), Some(v)) = (off_in, oi) {
        *o = v as u64;
    }
    if let (Some(o), Some(v)) = (off_out, oo) {
        *o = v as u64;
    }
    Ok(n)
}

/// `send(2)` with `MSG_MORE` (the next write continues this segment) and
/// `MSG_NOSIGNAL`.
pub fn send_more(sock: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::send(sock.as_fd().as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_MORE | libc::MSG_NOSIGNAL) })
}

/// Resolution flags for [`openat2`]: stay beneath the directory and follow
/// no symlink (and no magic link) in any component.
pub const RESOLVE_CONFINED: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// `openat2(2)` relative to `dir` with `resolve` flags.
pub fn openat2(dir: impl AsFd, path: &CStr, flags: libc::c_int, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    // The kernel's `struct open_how` (include/uapi/linux/openat2.h); libc's
    // version is non-exhaustive, so we lay it out ourselves.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: u64::from(mode), resolve };
    // SAFETY: `path` is NUL-terminated and `how` is a fully initialised open_how whose size we pass.
    let fd =
        unsafe { libc::syscall(libc::SYS_openat2, dir.as_fd().as_raw_fd(), path.as_ptr(), &raw const how, std::mem::size_of::<OpenHow>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `mkdirat(2)` of a single name inside `dir`.
pub fn mkdirat(dir: impl AsFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the fd is borrowed and open.
    cvt(unsafe { libc::mkdirat(dir.as_fd().as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `symlinkat(2)`: creates `name` in `dir` pointing at `target`.
pub fn symlinkat(target: &CStr, dir: impl AsFd, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the fd is borrowed and open.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_fd().as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// Sets the mtime of `name` in `dir` without following a symlink (atime untouched).
pub fn set_mtime_nofollow(dir: impl AsFd, name: &CStr, sec: i64, nsec: u32) -> io::Result<()> {
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: libc::c_long::from(nsec as i32) },
    ];
    // SAFETY: `name` is NUL-terminated and `times` is an array of two timespecs, as utimensat requires.
    cvt(unsafe { libc::utimensat(dir.as_fd().as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// Sets the mtime of an open file or directory (atime untouched).
pub fn set_mtime(fd: impl AsFd, sec: i64, nsec: u32) -> io::Result<()> {
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: libc::c_long::from(nsec as i32) },
    ];
    // SAFETY: `times` is an array of two timespecs; the fd is borrowed and open.
    cvt(unsafe { libc::futimens(fd.as_fd().as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// Changes the owner of `name` in `dir` without following a symlink.
pub fn chown_nofollow(dir: impl AsFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the fd is borrowed and open.
    cvt(unsafe { libc::fchownat(dir.as_fd().as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

fn seek(fd: impl AsFd, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek touches no memory of ours; the fd is borrowed and open.
    let r = unsafe { libc::lseek(fd.as_fd().as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `offset`.
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// `lseek(SEEK_DATA)`: the next data offset at or after `offset`.
pub fn seek_data(fd: impl AsFd, offset: u64) -> io::Result<Option<u64>> {
    seek(fd, offset, libc::SEEK_DATA)
}

/// `lseek(SEEK_HOLE)`: the next hole at or after `offset` (EOF counts as one).
pub fn seek_hole(fd: impl AsFd, offset: u64) -> io::Result<Option<u64>> {
    seek(fd, offset, libc::SEEK_HOLE)
}

/// Starts asynchronous writeback of a whole file (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`), so the final sync finds less to do.
pub fn start_writeback(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: sync_file_range touches no memory of ours; the fd is borrowed and open.
    cvt(unsafe { libc::sync_file_range(fd.as_fd().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) }).map(drop)
}

/// Asks the kernel to start reading `[offset, offset + len)` of a file into
/// the page cache (`POSIX_FADV_WILLNEED`). Streams that share a file read
/// interleaved blocks, which defeats per-descriptor readahead on a cold
/// cache; announcing the range ahead keeps the disk streaming.
pub fn will_need(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else { return Ok(()) };
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is borrowed and open.
    match unsafe { libc::posix_fadvise(fd.as_fd().as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `setsockopt(2)` with an int value.
pub fn set_sockopt_int(sock: impl AsFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live c_int and its exact size.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `setsockopt(2)` with a byte-string value (`TCP_CONGESTION`'s name).
pub fn set_sockopt_bytes(sock: impl AsFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: we pass a pointer to a live byte slice and its exact length.
    cvt(unsafe { libc::setsockopt(sock.as_fd().as_raw_fd(), level, name, value.as_ptr().cast(), len) }).map(drop)
}

/// Reads a socket option into `buf`; returns the bytes the kernel wrote.
fn get_sockopt_bytes(sock: impl AsFd, level: libc::c_int, name: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a live socklen_t.
    cvt(unsafe { libc::getsockopt(sock.as_fd().as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &raw mut len) })?;
    Ok((len as usize).min(buf.len()))
}

/// A socket's pacing cap in bytes per second (`SO_MAX_PACING_RATE`;
/// `u64::MAX`: none).
pub fn max_pacing_rate(sock: impl AsFd) -> io::Result<u64> {
    let mut rate = [0u8; 8];
    Ok(match get_sockopt_bytes(sock, libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, &mut rate)? {
        8 => u64::from_ne_bytes(rate),
        _ => u64::from(u32::from_ne_bytes([rate[0], rate[1], rate[2], rate[3]])),
    })
}

/// The TCP congestion control algorithm a socket runs (`TCP_CONGESTION`).
pub fn congestion_control(sock: impl AsFd) -> io::Result<String> {
    let mut name = [0u8; 16];
    let len = get_sockopt_bytes(sock, libc::IPPROTO_TCP, libc::TCP_CONGESTION, &mut name)?;
    let name = &name[..len];
    Ok(String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]).into_owned())
}

/// What the kernel says of a TCP connection's retransmissions
/// (`TCP_INFO`): its retransmission timer's backoff (how many times in a
/// row the timeout doubled without an acknowledgement: RTOs, or zero-window
/// probes when nothing is outstanding) and how many segments are
/// unacknowledged.
pub fn tcp_backoff(sock: impl AsFd) -> io::Result<(u8, u32)> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is valid for writes of `len` bytes and `len` is a live socklen_t.
    cvt(unsafe { libc::getsockopt(sock.as_fd().as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &raw mut len) })?;
    // SAFETY: zero-initialized, then partly or wholly written by the kernel;
    // tcp_info holds only integers, for which every bit pattern is valid.
    let info = unsafe { info.assume_init() };
    Ok((info.tcpi_backoff, info.tcpi_unacked))
}

/// `copy_file_range(2)` of up to `len` bytes from `src` at `src_off` to
/// `dst` at `dst_off` (the kernel copies, or shares the extents where the
/// filesystem can reflink); returns the bytes copied (0 at `src`'s end).
pub fn copy_file_range(src: impl AsFd, src_off: u64, dst: impl AsFd, dst_off: u64, len: usize) -> io::Result<usize> {
    let (mut so, mut d) = (src_off as libc::loff_t, dst_off as libc::loff_t);
    // SAFETY: both offsets point to locals that live across the call; the
    // fds are borrowed and open; no user memory is read or written.
    let n = unsafe { libc::copy_file_range(src.as_fd().as_raw_fd(), &raw mut so, dst.as_fd().as_raw_fd(), &raw mut d, len, 0) };
    cvt_size(n)
}

/// `syncfs(2)`: flushes the whole filesystem holding `fd`, data and metadata.
pub fn syncfs(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: syncfs touches no memory of ours; the fd is borrowed and open.
    cvt(unsafe { libc::syncfs(fd.as_fd().as_raw_fd()) }).map(drop)
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `fd` (`fstatvfs(2)`: `f_bavail × f_frsize`).
pub fn available_bytes(fd: impl AsFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is valid for writes of one statvfs; the fd is open.
    cvt(unsafe { libc::fstatvfs(fd.as_fd().as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between targets (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// The effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Marks every descriptor above 2 close-on-exec, so no child inherits what
/// this process inherited (mysqld leaks `grastate.dat` and its stdout pipe
/// into SST scripts).
pub fn cloexec_inherited() -> io::Result<()> {
    // SAFETY: close_range only changes descriptor flags; no memory is involved.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `listen(2)` again on a listening socket: sets its accept backlog.
pub fn listen_backlog(sock: impl AsFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen takes an fd we borrow and an integer.
    cvt(unsafe { libc::listen(sock.as_fd().as_raw_fd(), backlog) }).map(drop)
}

/// Caps glibc's malloc arenas at `n` (M_ARENA_MAX). Each thread that
/// allocates may otherwise get an arena of its own, up to 8 per core, and
/// an arena keeps what it touched: a flood of strangers, each examined on
/// a short-lived thread, grew an SST joiner's peak RSS from 16 to 50 MiB
/// with the default and to 18 MiB with 2 arenas (tests/flood.rs). Returns
/// whether glibc took the setting.
pub fn limit_malloc_arenas(n: i32) -> bool {
    // SAFETY: mallopt takes two integers and changes only allocator
    // tuning; it is called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

/// Raises the soft limit on open descriptors to the hard limit (as mysqld
/// does), returning the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads one rlimit from the struct we pass.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) })?;
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// Sends `signal` to process `pid` (a child this process started).
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sends `signal` to the process group `pgid` (a child started with
/// `process_group(0)` and whatever it started).
pub fn kill_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers; a negative pid names a group.
    if unsafe { libc::kill(-pgid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Waits for the child `pid` to exit and reaps it (no zombie remains).
pub fn reap(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes one int into `status`, which we own.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `unlinkat(2)` of `name` in `dir` (a symlink is removed, never followed).
pub fn unlinkat(dir: impl AsFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid C string; the fd is borrowed and open.
    cvt(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

/// `unlinkat(2)` with `AT_REMOVEDIR`: removes the empty directory `name`
/// in `dir` (never through a symlink).
pub fn rmdirat(dir: impl AsFd, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid C string; the fd is borrowed and open.
    cvt(unsafe { libc::unlinkat(dir.as_fd().as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
}

/// `renameat(2)` of `from` to `to`, both names in `dir` (atomic; a
/// symlink named `to` is replaced, never followed).
pub fn renameat(dir: impl AsFd, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_fd().as_raw_fd();
    // SAFETY: both names are valid C strings; the fd is borrowed and open.
    cvt(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) }).map(drop)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`: changes the owner of the
/// very inode `fd` refers to (an `O_PATH` descriptor works), whatever its
/// name now points at.
pub fn chown_fd(fd: impl AsFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the path is a valid empty C string; the fd is borrowed and open.
    cvt(unsafe { libc::fchownat(fd.as_fd().as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) }).map(drop)
}

/// Whether `fd` is a pipe or a regular file (not a terminal, socket or
/// character device such as /dev/null).
pub fn is_pipe_or_file(fd: impl AsFd) -> bool {
    let Ok(f) = fd.as_fd().try_clone_to_owned() else { return false };
    std::fs::File::from(f).metadata().is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo() || m.is_file()
    })
}
