//! A connection that is either plain TCP or TLS, usable from two threads at
//! once: one reading (the verdict listener, the receive loop) and one
//! writing (a stream thread).
//!
//! rustls needs `&mut` for both directions, so the TLS state sits behind a
//! mutex. Reading never holds it across a blocking socket call: ciphertext
//! is read under the `inbox` lock only, then fed to rustls. Writing holds it
//! while rustls writes its records straight to the socket (no intermediate
//! copy), which keeps records in order; that is safe because the reading
//! side of a sluice connection carries almost nothing (the receiver's
//! verdict) and needs the lock only when bytes arrive. Lock order:
//! inbox → conn.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard};

use rustls::Connection;

/// Ciphertext read from the socket and not yet handed to rustls.
#[derive(Debug)]
struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct Tls {
    conn: Mutex<Connection>,
    inbox: Mutex<Inbox>,
}

/// A plain or TLS connection; `&Link` implements `Read` and `Write`.
#[derive(Debug)]
pub struct Link {
    tcp: TcpStream,
    tls: Option<Tls>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked mid-call; the session fails
    // through that thread, and the state is still memory-safe to use.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    pub fn plain(tcp: TcpStream) -> Self {
        Self { tcp, tls: None }
    }

    /// Runs the TLS handshake on `tcp` (bounded by its read timeout).
    pub fn tls(mut tcp: TcpStream, mut conn: Connection) -> io::Result<Self> {
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        // Encrypt each write at once: the link flushes after every write.
        conn.set_buffer_limit(None);
        let inbox = Inbox { buf: vec![0u8; 256 << 10], start: 0, end: 0 };
        Ok(Self { tcp, tls: Some(Tls { conn: Mutex::new(conn), inbox: Mutex::new(inbox) }) })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.tcp.shutdown(how);
    }

    /// Writes what rustls has queued straight to the socket, in order.
    fn flush_records(&self, mut conn: MutexGuard<'_, Connection>) -> io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(&mut &self.tcp)?;
        }
        Ok(())
    }
}

impl Read for &Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return (&self.tcp).read(buf) };
        loop {
            match lock(&tls.conn).reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let mut inbox = lock(&tls.inbox);
            let eof = if inbox.start == inbox.end {
                let n = (&self.tcp).read(&mut inbox.buf)?;
                (inbox.start, inbox.end) = (0, n);
                n == 0
            } else {
                false
            };
            let mut conn = lock(&tls.conn);
            if eof {
                conn.read_tls(&mut io::empty())?;
            } else {
                let Inbox { buf: ref b, start, end } = *inbox;
                let used = conn.read_tls(&mut &b[start..end])?;
                inbox.start += used;
            }
            conn.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            drop(inbox);
            self.flush_records(conn)?;
        }
    }
}

impl Write for &Link {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return (&self.tcp).write(data) };
        let mut conn = lock(&tls.conn);
        let n = conn.writer().write(data)?;
        self.flush_records(conn)?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = &self.tls else { return (&self.tcp).write_vectored(bufs) };
        let mut conn = lock(&tls.conn);
        let n = conn.writer().write_vectored(bufs)?;
        self.flush_records(conn)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
