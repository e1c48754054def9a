//! Sealing is bound to both ends (SECURITY.md F2): a sealed session
//! recorded by a proxy that holds no key, replayed later into a new
//! receiver that shares the key file (with only the new token patched in,
//! as the review's attack did), fails; the new receiver never reports
//! success and nothing is written. A receiver that
//! answers with its own nonce seals its verdict under a key no other
//! session uses, so the replay cannot make two receivers reuse a
//! (key, nonce) pair either.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sluice_engine::codec::seal::SealKey;
use sluice_engine::{ReceiveConfig, Receiver, SendConfig};

/// Offset of the token in a connection's first bytes: magic (8), frame
/// header (8), then HELLO's versions, stream fields and capabilities (16).
const TOKEN_AT: usize = 32;

/// A one-connection-per-stream TCP proxy to `to` that records what each
/// client sent and what the server answered.
/// What each stream's client sent and its server answered.
type Recording = Vec<(Vec<u8>, Vec<u8>)>;

fn recording_proxy(to: String, streams: usize) -> (String, std::thread::JoinHandle<Recording>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..streams {
            let (client, _) = l.accept().unwrap();
            let server = TcpStream::connect(&to).unwrap();
            let up = Arc::new(Mutex::new(Vec::new()));
            let down = Arc::new(Mutex::new(Vec::new()));
            let pipe = |mut from: TcpStream, mut to: TcpStream, rec: Arc<Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                })
            };
            let a = pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), Arc::clone(&up));
            let b = pipe(server, client, Arc::clone(&down));
            conns.push((a, b, up, down));
        }
        conns
            .into_iter()
            .map(|(a, b, up, down)| {
                a.join().unwrap();
                b.join().unwrap();
                (std::mem::take(&mut *up.lock().unwrap()), std::mem::take(&mut *down.lock().unwrap()))
            })
            .collect()
    });
    (addr, h)
}

fn key() -> SealKey {
    SealKey::parse(&[0x5a; 32]).unwrap()
}

/// Replays the recorded client bytes of every stream into a fresh receiver
/// (token patched); returns its result and what it answered.
fn replay(recorded: &[(Vec<u8>, Vec<u8>)], dest: &Path) -> (sluice_engine::Result<sluice_engine::Summary>, Vec<Vec<u8>>) {
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { seal_key: Some(key()), ..ReceiveConfig::default() }).unwrap();
    let addr = r.local_addr().unwrap();
    let token = *r.token().as_bytes();
    let dest = dest.to_path_buf();
    let h = std::thread::spawn(move || r.run(&dest));
    let mut answers = Vec::new();
    let socks: Vec<TcpStream> = recorded
        .iter()
        .map(|(up, _)| {
            let mut bytes = up.clone();
            bytes[TOKEN_AT..TOKEN_AT + 16].copy_from_slice(&token);
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Write);
            s
        })
        .collect();
    for mut s in socks {
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        answers.push(got);
    }
    (h.join().unwrap(), answers)
}

#[test]
fn a_recorded_sealed_session_replayed_into_a_new_receiver_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture(&tmp.path().join("src"));
    let streams = 2;
    // The real session, recorded by a proxy without the key.
    let r = Receiver::bind("127.0.0.1:0", ReceiveConfig { seal_key: Some(key()), ..ReceiveConfig::default() }).unwrap();
    let (proxy, recording) = recording_proxy(r.local_addr().unwrap().to_string(), streams);
    let token = r.token().clone();
    let first = tmp.path().join("first");
    let d = first.clone();
    let h = std::thread::spawn(move || r.run(&d));
    let cfg = SendConfig { streams: streams as u16, seal_key: Some(key()), block_size: common::BLOCK, ..SendConfig::default() };
    sluice_engine::send(&proxy, &token, std::slice::from_ref(&src), &cfg).unwrap();
    h.join().unwrap().unwrap();
    common::assert_copy(&src, &first);
    let recorded = recording.join().unwrap();
    assert!(recorded.iter().all(|(up, _)| up.len() > TOKEN_AT + 16), "the proxy recorded every stream");

    // The replays: each fails, nothing is reported as received, and the
    // two receivers' answers (WELCOME nonce and sealed verdict) differ.
    let mut answers = Vec::new();
    for name in ["replay1", "replay2"] {
        let dest = tmp.path().join(name);
        let (result, answer) = replay(&recorded, &dest);
        let e = result.expect_err("a replayed session must not be accepted").to_string();
        assert!(e.contains("failed authentication"), "{name}: {e}");
        // The very first sealed frame (the manifest) fails to open, so
        // nothing was created.
        assert!(!dest.exists(), "{name}: the replay wrote into the destination");
        answers.push(answer);
    }
    assert_ne!(answers[0][0], answers[1][0], "two receivers answered identically: their nonces or keys repeat");
}
