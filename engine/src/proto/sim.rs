//! Whole tree sessions in memory: the sender's schedule, tallies, stream
//! numbering and replay logs against the receiver's manifest intake,
//! stream states and file table, with connections cut at random points
//! (frames in flight lost, a block cut between its header and its
//! verification), acknowledgements delayed, and — in hostile runs —
//! frames duplicated, reordered and corrupted. Every session ends with
//! the files byte-identical to the source or with a named error; never
//! silently wrong. The drivers (`send.rs`, `recv.rs`) run exactly these
//! pieces over sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Arrived, Event, Inbound, Intake, ManifestTable, Outbound, check_end};
use crate::manifest::{Entry, EntryKind, Extent};
use crate::plan::{RecvTally, Schedule, SendTally};
use crate::resume::ReplayLog;
use crate::wire::{DataHeader, Frame, FrameHeader, Kind, caps};
use crate::{Error, digest};

#[derive(Debug, Clone)]
enum Msg {
    Data(DataHeader, Vec<u8>),
    Ctl(Frame),
}

#[derive(Debug, Clone, Copy)]
enum Act {
    /// A stream sends its next block (or its end).
    Send,
    /// A stream's connection delivers its oldest frame in flight.
    Deliver,
    /// The sender reads the receiver's latest ACK.
    Ack,
    /// The connection breaks: what is in flight is lost, and a new one
    /// rejoins. With `half`, the receiver had read the next block's
    /// headers but not its payload.
    Cut { half: bool },
    /// Hostile: the oldest frame in flight arrives twice.
    Dup,
    /// Hostile: the two oldest frames in flight swap places.
    Swap,
    /// Hostile: a bit of the oldest block in flight flips.
    Flip,
}

fn act(hostile: bool) -> impl Strategy<Value = (Act, usize, u8)> {
    let honest = prop_oneof![
        6 => Just(Act::Send),
        6 => Just(Act::Deliver),
        2 => Just(Act::Ack),
        1 => any::<bool>().prop_map(|half| Act::Cut { half }),
    ];
    let acts = if hostile {
        prop_oneof![10 => honest, 1 => Just(Act::Dup), 1 => Just(Act::Swap), 1 => Just(Act::Flip)].boxed()
    } else {
        honest.boxed()
    };
    (acts, 0usize..4, any::<u8>())
}

/// A file of `size` bytes (with a hole in the middle when `hole` > 0),
/// filled from `seed`.
fn file(id: u32, size: u64, hole: u64, seed: u64) -> (Entry, Vec<u8>) {
    let mut data = vec![0u8; size as usize];
    let mut x = seed | 1;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let extents = if hole > 0 && size > hole + 2 {
        let a = (size - hole) / 2;
        data[a as usize..(a + hole) as usize].fill(0);
        vec![Extent { offset: 0, len: a }, Extent { offset: a + hole, len: size - a - hole }]
    } else if size > 0 {
        vec![Extent { offset: 0, len: size }]
    } else {
        Vec::new()
    };
    (Entry { extents, ..Entry::new(id, EntryKind::File, format!("d/f{id}").as_bytes(), size) }, data)
}

/// The receiver's files, or the first error of either end.
type Outcome = Result<Vec<Vec<u8>>, String>;

struct SendStream {
    out: Outbound,
    log: ReplayLog<Msg>,
    /// Frames on the current connection, not yet read by the receiver.
    wire: VecDeque<Msg>,
    ended: bool,
}

struct RecvStream {
    state: Inbound,
    /// The count of the last ACK told.
    told: u64,
    done: bool,
}

/// One session; returns the receiver's files, or the first error of
/// either end.
fn session(files: &[(u64, u64)], block_size: u32, streams: usize, acts: &[(Act, usize, u8)]) -> (Vec<Vec<u8>>, Outcome) {
    let mut entries = vec![Entry::new(0, EntryKind::Dir, b"d", 0)];
    let mut source = vec![Vec::new()];
    for (i, &(size, hole)) in files.iter().enumerate() {
        let (e, d) = file(i as u32 + 1, size, hole, i as u64 * 7919 + size);
        entries.push(e);
        source.push(d);
    }
    let data_bytes: u64 = entries.iter().map(Entry::data_bytes).sum();
    let result = run(&entries, data_bytes, &source, block_size, streams, acts);
    (source, result)
}

fn run(entries: &[Entry], data_bytes: u64, source: &[Vec<u8>], block_size: u32, n: usize, acts: &[(Act, usize, u8)]) -> Outcome {
    let peer = "sender";
    let granted = caps::RESUME;
    // The manifest goes first on stream 0, in batches of 2, counted like
    // every later frame (protocol 6): cuts may fall inside it too. The
    // other streams start once it is sent; the receiver's, once it is in.
    let mut manifest: VecDeque<Frame> = entries.chunks(2).map(|b| Frame::Manifest(b.to_vec())).collect();
    manifest.push_back(Frame::ManifestEnd { entries: entries.len() as u64, data_bytes });
    let mut intake = Some(Intake::new(peer, 1000));

    // Sender.
    let schedule = Schedule::new(entries, block_size);
    let send_tally = SendTally::new(entries, block_size);
    let mut tx: Vec<SendStream> =
        (0..n).map(|_| SendStream { out: Outbound::new(), log: ReplayLog::default(), wire: VecDeque::new(), ended: false }).collect();
    // Receiver.
    let recv_tally = RecvTally::new(entries);
    let table = ManifestTable { entries, tally: &recv_tally };
    let mut rx: Vec<RecvStream> =
        (0..n).map(|i| RecvStream { state: Inbound::new(i as u16, peer, granted, false), told: 0, done: false }).collect();
    let mut dest: Vec<Vec<u8>> = entries.iter().map(|e| vec![0u8; e.size as usize]).collect();
    let mut end = None;
    let mut now = Instant::now();

    let send = |s: &mut SendStream| -> Result<(), String> {
        if s.ended {
            return Ok(());
        }
        let push = |s: &mut SendStream, m: Msg| {
            s.log.push(m.clone(), 0);
            s.wire.push_back(m);
        };
        if let Some(b) = schedule.next_block() {
            let bytes = source[b.file_id as usize][b.offset as usize..][..b.len as usize].to_vec();
            let sum = digest::checksum(&bytes);
            let h = s.out.block(b.file_id, b.offset, b.len, sum).map_err(|e| e.to_string())?;
            push(s, Msg::Data(h, bytes));
            if let Some(d) = send_tally.record(&b, sum) {
                push(s, Msg::Ctl(Frame::FileDone { file_id: b.file_id, digest: d }));
            }
        } else {
            let e = s.out.end();
            push(s, Msg::Ctl(e));
            s.ended = true;
        }
        Ok(())
    };
    // The receiver reads one frame of stream `i`.
    let mut deliver = |m: Msg, r: &mut RecvStream, now: Instant, end: &mut Option<(u64, u64, u64)>| -> Result<(), Error> {
        let processed = match m {
            Msg::Data(d, payload) => {
                let h = FrameHeader { kind: Kind::Data, flags: 0, len: 0 };
                r.state.data(h, &d)?;
                let entry = table.target(d.file_id, d.offset, d.raw_len, peer)?;
                let sum = digest::checksum(&payload);
                let p = r.state.verified(&d, sum, now, || entry.display_path())?;
                dest[d.file_id as usize][d.offset as usize..][..payload.len()].copy_from_slice(&payload);
                table.block(entry, d.offset, d.raw_len, sum)?;
                p
            }
            Msg::Ctl(f) => {
                let (event, p) = r.state.control(f, now)?;
                match event {
                    Event::FileDone { file_id, digest } => {
                        table.done(file_id, digest, peer)?;
                    }
                    Event::StreamEnded { last } => r.done = last,
                    Event::Parked => {}
                    Event::End { entries, data_bytes, frames } => {
                        *end = Some((entries, data_bytes, frames));
                        r.done = true;
                    }
                    other => return Err(Error::peer(peer, format!("sent {other:?} in a manifest session"))),
                }
                p
            }
        };
        if let Some(p) = processed.filter(|p| p.tell) {
            r.told = p.frames;
        }
        Ok(())
    };

    let mut steps = acts.iter().copied().map(Some).chain(std::iter::repeat(None));
    let mut idle = 0;
    loop {
        let all_ended = tx.iter().all(|s| s.ended && s.log.settled());
        if all_ended && rx[0].done && end.is_some() {
            break;
        }
        if all_ended && !rx[0].done {
            // Every stream settled: END on stream 0.
            let (frames, bytes) = tx.iter().fold((0, 0), |(f, b), s| (f + s.out.totals().0, b + s.out.totals().1));
            let m = Msg::Ctl(Frame::End { entries: entries.len() as u64, data_bytes: bytes, frames });
            tx[0].log.push(m.clone(), 0);
            tx[0].wire.push_back(m);
            while let Some(m) = tx[0].wire.pop_front() {
                deliver(m, &mut rx[0], now, &mut end).map_err(|e| e.to_string())?;
            }
            continue;
        }
        let Some(step) = steps.next() else { unreachable!("the chain is endless") };
        // After the scripted steps: an honest, orderly finish.
        let (a, stream, jitter) = if let Some((a, s, j)) = step {
            (a, s % n, j)
        } else {
            idle += 1;
            assert!(idle < 1_000_000, "the session makes progress");
            let i = idle % n;
            let a = if !tx[i].wire.is_empty() {
                Act::Deliver
            } else if !tx[i].ended {
                Act::Send
            } else {
                Act::Ack
            };
            (a, i, 0)
        };
        now += Duration::from_millis(u64::from(jitter % 20));
        let (s, r) = (&mut tx[stream], &mut rx[stream]);
        match a {
            Act::Send if stream == 0 && !manifest.is_empty() => {
                let m = Msg::Ctl(manifest.pop_front().expect("not empty"));
                s.log.push(m.clone(), 0);
                s.wire.push_back(m);
            }
            Act::Send if manifest.is_empty() => send(s)?,
            Act::Send => {}
            Act::Deliver if stream == 0 && intake.is_some() => {
                let Some(m) = s.wire.pop_front() else { continue };
                let Msg::Ctl(frame) = m else { return Err("a DATA frame inside the manifest".into()) };
                let got = intake.as_mut().expect("checked").take(frame).map_err(|e| e.to_string())?;
                if let Some(p) = r.state.counted(now).filter(|p| p.tell) {
                    r.told = p.frames;
                }
                if let Some((got_entries, got_bytes)) = got {
                    assert_eq!((&got_entries[..], got_bytes), (entries, data_bytes), "the manifest arrives as it was sent");
                    intake = None;
                }
            }
            // The receiver's other streams start after the manifest.
            Act::Deliver if intake.is_some() => {}
            Act::Deliver => {
                if let Some(m) = s.wire.pop_front() {
                    deliver(m, r, now, &mut end).map_err(|e| e.to_string())?;
                }
            }
            Act::Ack => {
                // Tell the count at least at the end of a stream, as the
                // receiver does; the sender drops what it covers.
                s.log.ack(r.told).map_err(|e| format!("stream {stream}: {e}"))?;
            }
            Act::Cut { half } => {
                if half {
                    if let Some(Msg::Data(d, _)) = s.wire.front() {
                        r.state.data(FrameHeader { kind: Kind::Data, flags: 0, len: 0 }, d).map_err(|e| e.to_string())?;
                    }
                }
                s.wire.clear();
                let count = r.state.rejoined(now);
                r.told = count;
                s.log.ack(count).map_err(|e| format!("stream {stream}: {e}"))?;
                s.wire.extend(s.log.pending().cloned());
            }
            Act::Dup => {
                if let Some(m) = s.wire.front().cloned() {
                    s.wire.push_front(m);
                }
            }
            Act::Swap => {
                if s.wire.len() >= 2 {
                    s.wire.swap(0, 1);
                }
            }
            Act::Flip => {
                if let Some(Msg::Data(_, p)) = s.wire.front_mut() {
                    if !p.is_empty() {
                        let at = usize::from(jitter) % p.len();
                        p[at] ^= 1 << (jitter % 8);
                    }
                }
            }
        }
    }
    let (frames, bytes) = rx.iter().fold((0, 0), |(f, b), r| (f + r.state.totals().0, b + r.state.totals().1));
    let got = Arrived { entries: entries.len() as u64, bytes, frames, expected_bytes: data_bytes };
    check_end(peer, end, got).map_err(|e| e.to_string())?;
    table.check_complete().map_err(|e| e.to_string())?;
    Ok(dest)
}

/// The errors a broken rule may give: each names what was wrong.
fn named(e: &str) -> bool {
    [
        "was due (replayed or lost)",
        "checksum mismatch",
        "after its end",
        "announced done twice",
        "but the sender announced",
        "acknowledged",
        "ended claiming",
        "digest",
        "before the previous",
        "sent a bad manifest",
        "in the middle of the data",
        "inside the manifest",
    ]
    .iter()
    .any(|w| e.contains(w))
}

fn sizes() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..3000, prop_oneof![3 => Just(0u64), 1 => 1u64..700]), 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Honest peers over connections that break anywhere: the files
    /// arrive byte-identical.
    #[test]
    fn cuts_and_late_acks_never_change_a_byte(
        files in sizes(),
        block in prop_oneof![Just(64u32), Just(100), Just(512)],
        streams in 1usize..5,
        acts in proptest::collection::vec(act(false), 0..400),
    ) {
        let (source, got) = session(&files, block, streams, &acts);
        let got = got.map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, source);
    }

    /// Frames duplicated, reordered or corrupted on top of the cuts: the
    /// session fails with a named error, or — when the damage was lost in a
    /// later cut, or only reordered control frames — ends byte-identical.
    #[test]
    fn damaged_frames_are_named_or_harmless_never_silently_wrong(
        files in sizes(),
        block in prop_oneof![Just(64u32), Just(512)],
        streams in 1usize..4,
        acts in proptest::collection::vec(act(true), 0..400),
    ) {
        let (source, got) = session(&files, block, streams, &acts);
        match got {
            Ok(got) => prop_assert_eq!(got, source),
            Err(e) => prop_assert!(named(&e), "an unnamed failure: {}", e),
        }
    }
}

/// `acts` after the manifest of a directory and one file: stream 0 sends
/// it (one MANIFEST frame and MANIFEST_END) and the receiver takes it.
fn after_manifest(acts: &[(Act, usize, u8)]) -> Vec<(Act, usize, u8)> {
    [(Act::Send, 0, 0), (Act::Send, 0, 0), (Act::Deliver, 0, 0), (Act::Deliver, 0, 0)].into_iter().chain(acts.iter().copied()).collect()
}

#[test]
fn a_duplicated_block_is_named_as_replayed() {
    let acts = after_manifest(&[(Act::Send, 0, 0), (Act::Dup, 0, 0), (Act::Deliver, 0, 0), (Act::Deliver, 0, 0)]);
    let (_, got) = session(&[(500, 0)], 100, 1, &acts);
    let e = got.unwrap_err();
    assert!(e.contains("sent block 0 where block 1 was due (replayed or lost)"), "{e}");
}

#[test]
fn a_flipped_bit_is_a_checksum_mismatch_naming_the_file() {
    let acts = after_manifest(&[(Act::Send, 0, 0), (Act::Flip, 0, 3), (Act::Deliver, 0, 0)]);
    let (_, got) = session(&[(500, 0)], 100, 1, &acts);
    let e = got.unwrap_err();
    assert!(e.contains("d/f1") && e.contains("checksum mismatch"), "{e}");
}

#[test]
fn a_cut_after_the_headers_resends_the_block_and_nothing_is_counted_twice() {
    let acts = after_manifest(&[
        (Act::Send, 0, 0),
        (Act::Send, 0, 0),
        (Act::Deliver, 0, 0),
        (Act::Cut { half: true }, 0, 0),
        (Act::Deliver, 0, 0),
    ]);
    let (source, got) = session(&[(250, 0)], 100, 1, &acts);
    assert_eq!(got.unwrap(), source);
}

#[test]
fn a_cut_inside_the_manifest_sends_the_rest_of_it_again() {
    // Three files: two MANIFEST frames and MANIFEST_END. The first arrives,
    // the connection breaks with the other two in flight.
    let acts = [(Act::Send, 0, 0), (Act::Send, 0, 0), (Act::Send, 0, 0), (Act::Deliver, 0, 0), (Act::Cut { half: false }, 0, 0)];
    let (source, got) = session(&[(300, 0), (10, 0), (0, 0)], 100, 2, &acts);
    assert_eq!(got.unwrap(), source);
}
