//! Sockets: connecting with retries, socket options, the session token and
//! reading/writing whole control frames.
//!
//! Knows nothing of file layout. Every read of a peer's frame goes through
//! [`read_frame`], which bounds the body before allocating it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::wire::{DATA_HEADER_LEN, DataHeader, FRAME_HEADER_LEN, Frame, FrameHeader, Kind};
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

/// Resolves `addr` (`host:port`, `[v6]:port`) to socket addresses.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("cannot resolve {addr:?} (expected host:port or [ipv6]:port): {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Config(format!("{addr:?} resolves to no address")));
    }
    Ok(addrs)
}

/// Connects to `addr`, retrying refused connections until `timeout` has
/// passed (the receiver may still be starting).
pub fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let targets = resolve(addr)?;
    loop {
        let mut last = None;
        for t in &targets {
            match TcpStream::connect_timeout(t, Duration::from_secs(5).min(timeout.max(Duration::from_millis(100)))) {
                Ok(s) => return Ok(s),
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

fn read_err(peer: &str, what: &str, e: &io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::peer(peer, format!("closed the connection {what}")),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::peer(peer, format!("sent nothing for too long {what} (idle timeout)"))
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

/// Reads the body of a control frame whose header was already read.
pub fn read_body(mut sock: impl Read, peer: &str, h: FrameHeader) -> Result<Frame> {
    if h.kind == Kind::Data {
        return Err(Error::peer(peer, "sent a DATA frame where a control frame was expected"));
    }
    // Bounded: FrameHeader::decode capped `len` for this kind.
    let mut body = vec![0u8; h.len as usize];
    sock.read_exact(&mut body).map_err(|e| read_err(peer, "inside a control frame", &e))?;
    Frame::decode(h, &body).map_err(|source| Error::Wire { peer: peer.into(), source })
}

/// Reads one whole control frame.
pub fn read_frame(mut sock: impl Read, peer: &str, what: &str) -> Result<Frame> {
    let h = read_header(&mut sock, peer, what)?;
    read_body(&mut sock, peer, h)
}

/// Writes one control frame.
pub fn write_frame(mut sock: &TcpStream, peer: &str, frame: &Frame) -> Result<()> {
    let mut buf = Vec::with_capacity(64);
    frame.encode(&mut buf);
    sock.write_all(&buf).map_err(|e| Error::peer(peer, format!("sending {:?} failed: {e}", frame.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_secret() {
        let t = Token::generate().unwrap();
        let parsed: Token = t.to_hex().parse().unwrap();
        assert_eq!(parsed, t);
        assert!(t.matches(parsed.as_bytes()));
        assert!(!t.matches(&[0; 16]) || t.as_bytes() == &[0; 16]);
        assert!(!format!("{t:?}").contains(&t.to_hex()));
        assert!("xyz".parse::<Token>().is_err());
        assert!("zz".repeat(16).parse::<Token>().is_err());
    }
}
