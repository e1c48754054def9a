//! The session core without I/O, in the spirit of quinn-proto: what each
//! end decides, given the frames and the time, with no socket, thread,
//! file or clock of its own.
//!
//! * [`Intake`]: the manifest a receiver takes on stream 0, checked;
//!   [`check_end`]: END's totals against what arrived (the verdict's count).
//! * [`Inbound`]: one receiver stream — order, negotiated capabilities,
//!   sealing, checksums, the end of the stream, and the processed count
//!   its ACKs carry across reconnections.
//! * [`ManifestTable`]: which file a block writes into and when a file is
//!   complete.
//! * [`Outbound`]: one sender stream's numbering and STREAM_END totals,
//!   shared by tree and streamed sessions.
//!
//! Admission of strangers is [`crate::admission`]'s, rejoin proofs and the
//! replay log [`crate::resume`]'s, block scheduling and tallies
//! [`crate::plan`]'s: all without I/O as well. `send.rs` and `recv.rs` are
//! the drivers: sockets, TLS, threads, the backend and the sink. The
//! `sim` tests run whole sessions of these pieces in memory with
//! connections cut at random, frames duplicated, reordered and corrupted.

mod inbound;
mod intake;
mod outbound;
mod table;

#[cfg(test)]
mod sim;

pub use inbound::{Event, Inbound, Processed, check_sealing};
pub use intake::{Arrived, Intake, check_end};
pub use outbound::Outbound;
pub use table::ManifestTable;
