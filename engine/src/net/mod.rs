//! Sockets: connecting with retries, socket options, TLS ([`tls`]), the
//! plain-or-TLS [`Link`], the session token and reading/writing whole
//! control frames.
//!
//! Knows nothing of file layout. Every read of a peer's frame goes through
//! [`read_frame`], which bounds the body before allocating it.

mod link;
pub mod tls;

pub use link::Link;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::codec::seal::{Sealer, TAG_LEN};
use crate::wire::{DATA_HEADER_LEN, DataHeader, FRAME_HEADER_LEN, Frame, FrameHeader, Kind, SEALED};
use crate::{Error, Result};

/// A one-time session token: 128 random bits minted by the receiver.
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; 16]);

impl Token {
    /// Mints a fresh token from the kernel's random source.
    pub fn generate() -> Result<Self> {
        Ok(Self(random_bytes().map_err(|e| Error::io("reading /dev/urandom for a session token", e))?))
    }

    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The token as 32 lowercase hex characters (what users copy).
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Constant-time comparison, so a network peer cannot guess the token
    /// byte by byte from response timing.
    pub fn matches(&self, other: &[u8; 16]) -> bool {
        self.0.iter().zip(other).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || Error::Config("a session token is 32 hex characters, as printed by `sluice recv`".into());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Address family restriction (`pf=` in a socat-style option list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// TCP congestion control for sluice's sockets (`cc=` in the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBR where the kernel lets this process use it, else the system's
    /// default (said once in the log). BBR paces at the measured
    /// bottleneck rate instead of filling the bottleneck's queue, so
    /// Galera's replication traffic on the same link waits less behind the
    /// SST (on the tbf rig: pings 2.0 ms against cubic's 2.6 ms, the same
    /// transfer time; perf/RESULTS.md).
    #[default]
    Preferred,
    /// `cc=system`: the kernel's default (`net.ipv4.tcp_congestion_control`).
    System,
    /// `cc=NAME`: that algorithm, or an error naming how to enable it.
    Named([u8; 16]),
}

impl Congestion {
    /// The algorithm's name, if one is set.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Preferred => Some("bbr"),
            Self::System => None,
            Self::Named(n) => std::str::from_utf8(&n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())]).ok(),
        }
    }
}

/// Socket options from a socat-style list, as the stock `sockopt` option
/// holds it: `pf=ip6,keepalive,nodelay,sndbuf=N,rcvbuf=N,cc=NAME,pacing=RATE`
/// (a leading comma is fine; sizes accept K/M/G). Socket buffers are left to
/// the kernel's autotuning unless set: a fixed size switches it off.
/// `pacing` caps each connection's rate (bytes per second,
/// `SO_MAX_PACING_RATE`), unlike `rlimit`, which caps the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockOpts {
    pub family: Option<Family>,
    pub keepalive: bool,
    pub sndbuf: Option<usize>,
    pub rcvbuf: Option<usize>,
    pub congestion: Congestion,
    pub pacing: Option<u64>,
}

impl FromStr for SockOpts {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut o = Self::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').map_or((item, None), |(k, v)| (k.trim(), Some(v.trim())));
            let size = |v: Option<&str>| -> Result<usize> {
                let v = v.ok_or_else(|| Error::Config(format!("socket option {k:?} needs a value, e.g. {k}=4M")))?;
                usize::try_from(crate::throttle::parse_bytes(v)?).map_err(|_| Error::Config(format!("{item:?} is too large")))
            };
            match (k.to_ascii_lowercase().as_str(), v) {
                ("pf", Some(f)) => {
                    o.family = Some(match f.to_ascii_lowercase().as_str() {
                        "ip4" | "ipv4" | "inet" => Family::V4,
                        "ip6" | "ipv6" | "inet6" => Family::V6,
                        _ => return Err(Error::Config(format!("unknown address family in {item:?}: use pf=ip4 or pf=ip6"))),
                    });
                }
                ("keepalive", None) => o.keepalive = true,
                // Every sluice socket already runs with TCP_NODELAY.
                ("nodelay", None) => {}
                ("sndbuf", v) => o.sndbuf = Some(size(v)?),
                ("rcvbuf", v) => o.rcvbuf = Some(size(v)?),
                ("pacing", v) => o.pacing = Some(size(v)? as u64).filter(|&r| r > 0),
                ("cc" | "congestion", Some(name)) => {
                    o.congestion = match name.to_ascii_lowercase().as_str() {
                        "system" | "default" => Congestion::System,
                        n if !n.is_empty() && n.len() < 16 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                            let mut buf = [0u8; 16];
                            buf[..n.len()].copy_from_slice(n.as_bytes());
                            Congestion::Named(buf)
                        }
                        _ => return Err(Error::Config(format!("{item:?} is not a congestion control name (bbr, cubic, system)"))),
                    }
                }
                _ => {
                    return Err(Error::Config(format!(
                        "unsupported socket option {item:?}: sluice understands pf=ip4|ip6, keepalive, nodelay, sndbuf=N, rcvbuf=N, cc=NAME, \
                         pacing=RATE"
                    )));
                }
            }
        }
        Ok(o)
    }
}

impl SockOpts {
    fn admits(&self, a: &SocketAddr) -> bool {
        match self.family {
            None => true,
            Some(Family::V4) => a.is_ipv4(),
            Some(Family::V6) => a.is_ipv6(),
        }
    }

    /// Applies the options to a connected or listening socket.
    pub fn apply(&self, sock: impl std::os::fd::AsFd) -> io::Result<()> {
        use crate::backend::sys::set_sockopt_int;
        let fd = sock.as_fd();
        if self.keepalive {
            set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        }
        if let Some(n) = self.sndbuf {
            set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, n.min(i32::MAX as usize) as i32)?;
        }
        if let Some(n) = self.rcvbuf {
            set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n.min(i32::MAX as usize) as i32)?;
        }
        if let Some(rate) = self.pacing {
            crate::backend::sys::set_sockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, &rate.to_ne_bytes())?;
        }
        if let Some(name) = self.congestion.name() {
            let set = crate::backend::sys::set_sockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_bytes());
            match (set, self.congestion) {
                (Ok(()), _) => {}
                // Not loaded, or not in net.ipv4.tcp_allowed_congestion_control
                // for an unprivileged process: the system's default it is.
                (Err(e), Congestion::Preferred) => {
                    // Said once per process: every socket would say the same.
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        tracing::info!(
                            "TCP congestion control: the system's default, not bbr ({e}); to use bbr, load tcp_bbr and list it in \
                             net.ipv4.tcp_allowed_congestion_control, or set sockopt cc=system to silence this"
                        );
                    });
                }
                (Err(e), _) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "TCP congestion control {name:?}: {e} (see /proc/sys/net/ipv4/tcp_available_congestion_control; \
                             `modprobe tcp_{name}` loads it, and an unprivileged process needs it in \
                             net.ipv4.tcp_allowed_congestion_control)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Resolves `addr` (`host:port`, `[v6]:port`) to socket addresses.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    resolve_with(addr, &SockOpts::default())
}

/// Resolves `addr`, keeping only the family `opts` allows.
pub fn resolve_with(addr: &str, opts: &SockOpts) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("cannot resolve {addr:?} (expected host:port or [ipv6]:port): {e}")))?
        .filter(|a| opts.admits(a))
        .collect();
    if addrs.is_empty() {
        return Err(Error::Config(format!("{addr:?} resolves to no address of the requested family")));
    }
    Ok(addrs)
}

/// Connects to `addr`, retrying refused connections until `timeout` has
/// passed (the receiver may still be starting).
pub fn connect(addr: &str, timeout: Duration, opts: &SockOpts) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let targets = resolve_with(addr, opts)?;
    loop {
        let mut last = None;
        for t in &targets {
            match TcpStream::connect_timeout(t, Duration::from_secs(5).min(timeout.max(Duration::from_millis(100)))) {
                Ok(s) => {
                    opts.apply(&s).map_err(|e| Error::io(format!("applying socket options to the connection to {t}"), e))?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("resolve returns at least one address");
        let retryable = matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut);
        if !retryable || Instant::now() >= deadline {
            return Err(Error::peer(addr, format!("cannot connect: {e} (is `sluice recv` listening there, and the port reachable?)")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Socket options every data connection gets: no Nagle delay (headers are
/// coalesced explicitly with MSG_MORE) and bounded blocking.
pub fn configure(sock: &TcpStream, idle: Duration) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let t = (!idle.is_zero()).then_some(idle);
    sock.set_read_timeout(t)?;
    sock.set_write_timeout(t)
}

/// Describes a socket's peer for error messages.
pub fn peer_name(sock: &TcpStream) -> String {
    sock.peer_addr().map_or_else(|_| "peer".to_string(), |a| a.to_string())
}

/// Whether `e` says the connection broke under us (reset, aborted, the
/// route gone) rather than that the peer closed it or misbehaved.
pub fn is_break(e: &io::Error) -> bool {
    use io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionReset, HostUnreachable, NetworkDown, NetworkUnreachable, NotConnected, TimedOut,
        WouldBlock,
    };
    matches!(
        e.kind(),
        BrokenPipe
            | ConnectionAborted
            | ConnectionReset
            | HostUnreachable
            | NetworkDown
            | NetworkUnreachable
            | NotConnected
            | TimedOut
            | WouldBlock
    )
}

pub(crate) fn read_err(peer: &str, what: &str, e: &io::Error) -> Error {
    match e.kind() {
        // A closed connection mid-session is ambiguous: the peer process
        // ended, or something on the path cut it (a SOCK_DESTROY, a
        // middlebox); a resumable session waits for it to come back.
        io::ErrorKind::UnexpectedEof => Error::broken(peer, format!("closed the connection {what}")),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::broken(peer, format!("sent nothing for too long {what} (idle timeout)"))
        }
        _ if is_break(e) => Error::broken(peer, format!("connection failed {what}: {e}")),
        _ if e.get_ref().is_some_and(<dyn std::error::Error + Send + Sync>::is::<rustls::Error>) => {
            Error::peer(peer, format!("TLS failed {what}: {}", tls::explain(e, true)))
        }
        _ => Error::peer(peer, format!("connection failed {what}: {e}")),
    }
}

/// Reads one frame header.
pub fn read_header(mut sock: impl Read, peer: &str, what: &str) -> Result<FrameHeader> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    sock.read_exact(&mut h).map_err(|e| read_err(peer, what, &e))?;
    FrameHeader::decode(&h).map_err(|source| Error::Wire { peer: peer.into(), source })
}

/// Reads the DATA sub-header after a DATA frame header.
pub fn read_data_header(mut sock: impl Read, peer: &str, h: FrameHeader) -> Result<(DataHeader, u32)> {
    let mut b = [0u8; DATA_HEADER_LEN];
    sock.read_exact(&mut b).map_err(|e| read_err(peer, "inside a DATA frame", &e))?;
    DataHeader::decode(h.len, h.flags, &b).map_err(|source| Error::Wire { peer: peer.into(), source })
}

/// Reads the body of a control frame whose header was already read,
/// opening it with `seal` in a sealed session.
pub fn read_body(mut sock: impl Read, peer: &str, h: FrameHeader, seal: Option<&mut Sealer>) -> Result<Frame> {
    if h.kind == Kind::Data {
        return Err(Error::peer(peer, "sent a DATA frame where a control frame was expected"));
    }
    crate::proto::check_sealing(peer, h, seal.is_some())?;
    // Bounded: FrameHeader::decode capped `len` for this kind.
    let mut body = vec![0u8; h.len as usize];
    sock.read_exact(&mut body).map_err(|e| read_err(peer, "inside a control frame", &e))?;
    let plain = match seal {
        Some(s) => s.open(&h.encode(), &mut body).map_err(|e| Error::peer(peer, e.to_string()))?,
        None => body.len(),
    };
    let h = FrameHeader { flags: h.flags & !SEALED, len: plain as u32, ..h };
    Frame::decode(h, &body[..plain]).map_err(|source| Error::Wire { peer: peer.into(), source })
}

/// Reads one whole control frame (opened with `seal` when sealed).
pub fn read_frame(mut sock: impl Read, peer: &str, what: &str, seal: Option<&mut Sealer>) -> Result<Frame> {
    let h = read_header(&mut sock, peer, what)?;
    read_body(&mut sock, peer, h, seal)
}

/// Appends `frame` to `out`, sealed with `seal` when given.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>, seal: Option<&mut Sealer>) {
    let start = out.len();
    frame.encode(out);
    if let Some(s) = seal {
        let body_len = out.len() - start - FRAME_HEADER_LEN;
        let h = FrameHeader { kind: frame.kind(), flags: SEALED, len: (body_len + TAG_LEN) as u32 }.encode();
        out[start..start + FRAME_HEADER_LEN].copy_from_slice(&h);
        let tag = s.seal(&h, &mut out[start + FRAME_HEADER_LEN..]);
        out.extend_from_slice(&tag);
    }
}

/// Writes one control frame (sealed with `seal` when given).
pub fn write_frame(mut sock: impl Write, peer: &str, frame: &Frame, seal: Option<&mut Sealer>) -> Result<()> {
    let mut buf = Vec::with_capacity(64);
    encode_frame(frame, &mut buf, seal);
    sock.write_all(&buf).map_err(|e| Error::peer(peer, format!("sending {:?} failed: {e}", frame.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socat_style_options_parse_and_name_what_is_wrong() {
        let o: SockOpts = ",pf=ip6,keepalive,nodelay,sndbuf=4M,rcvbuf=262144".parse().unwrap();
        assert_eq!(
            o,
            SockOpts {
                family: Some(Family::V6),
                keepalive: true,
                sndbuf: Some(4 << 20),
                rcvbuf: Some(262_144),
                congestion: Congestion::Preferred,
                pacing: None,
            }
        );
        assert_eq!("cc=system".parse::<SockOpts>().unwrap().congestion, Congestion::System);
        assert_eq!("cc=cubic".parse::<SockOpts>().unwrap().congestion.name(), Some("cubic"));
        assert!("cc=../../x".parse::<SockOpts>().unwrap_err().to_string().contains("congestion control"));
        let e = "keepalive,cork".parse::<SockOpts>().unwrap_err().to_string();
        assert!(e.contains("\"cork\""), "{e}");
        assert!("pf=ipx".parse::<SockOpts>().unwrap_err().to_string().contains("pf=ipx"));
        assert!("sndbuf".parse::<SockOpts>().is_err());
        assert!(resolve_with("127.0.0.1:1", &SockOpts { family: Some(Family::V6), ..SockOpts::default() }).is_err());
        assert_eq!(resolve_with("[::1]:1", &"pf=ip6".parse().unwrap()).unwrap().len(), 1);
    }

    /// On a real connection: nothing outstanding and nothing retransmitted
    /// once the peer has read what was sent (what the stall watch reads).
    #[test]
    fn tcp_info_says_what_is_outstanding() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        a.write_all(&vec![7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        b.read_exact(&mut got).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (backoff, unacked) = crate::backend::sys::tcp_backoff(&a).unwrap();
            assert_eq!(backoff, 0, "no retransmission timeout on loopback");
            if unacked == 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{unacked} segments still unacknowledged after 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// On real sockets: BBR by default where the kernel has it, the
    /// system's choice with `cc=system`, a named algorithm or an error that
    /// names it.
    #[test]
    fn congestion_control_is_bbr_by_default_and_settable() {
        use crate::backend::sys::congestion_control;
        let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap_or_default();
        let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
        let sock = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = sock();
        SockOpts::default().apply(&s).unwrap();
        let got = congestion_control(&s).unwrap();
        // BBR loads on first use for a privileged process; otherwise it must
        // already be available (and allowed) to be chosen.
        if available.split_whitespace().any(|a| a == "bbr") {
            assert_eq!(got, "bbr");
        }
        let s = sock();
        "cc=system".parse::<SockOpts>().unwrap().apply(&s).unwrap();
        assert_eq!(congestion_control(&s).unwrap(), system.trim());
        let s = sock();
        "cc=reno".parse::<SockOpts>().unwrap().apply(&s).unwrap();
        assert_eq!(congestion_control(&s).unwrap(), "reno");
        let e = "cc=nosuchcc".parse::<SockOpts>().unwrap().apply(sock()).unwrap_err().to_string();
        assert!(e.contains("\"nosuchcc\"") && e.contains("tcp_available_congestion_control"), "{e}");
    }

    #[test]
    fn pacing_caps_each_connection() {
        use crate::backend::sys::max_pacing_rate;
        let o: SockOpts = "cc=system, pacing=20M".parse().unwrap();
        assert_eq!(o.pacing, Some(20 << 20));
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(max_pacing_rate(&s).unwrap(), u64::MAX, "no cap unless asked");
        o.apply(&s).unwrap();
        assert_eq!(max_pacing_rate(&s).unwrap(), 20 << 20);
        assert!("pacing".parse::<SockOpts>().unwrap_err().to_string().contains("needs a value"));
    }

    #[test]
    fn tokens_round_trip_and_stay_secret() {
        let t = Token::generate().unwrap();
        let parsed: Token = t.to_hex().parse().unwrap();
        assert_eq!(parsed, t);
        assert!(t.matches(parsed.as_bytes()));
        let fixed = Token::from_bytes([7; 16]);
        assert!(fixed.matches(&[7; 16]));
        for i in 0..16 {
            let mut other = [7u8; 16];
            other[i] ^= 0x80;
            assert!(!fixed.matches(&other), "a token differing in byte {i} matched");
        }
        assert!(!format!("{t:?}").contains(&t.to_hex()));
        assert!("xyz".parse::<Token>().is_err());
        assert!("zz".repeat(16).parse::<Token>().is_err());
    }
}
