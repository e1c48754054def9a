//! Stream threads and their shutdown.
//!
//! Owns how a session's per-stream work runs: one scoped thread per stream,
//! a shared abort flag, a hook that unblocks the other streams when one
//! fails (closing their sockets), and the choice of the error to report —
//! the root cause, not the "aborted" echoes it triggered in other streams.
//! Queues between stages are bounded (`crossbeam_channel::bounded`); the
//! block queue itself is a cursor (`plan::Schedule`), so memory does not grow
//! with file count or size. It parses no frames.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// Shared "stop now" flag of one session.
#[derive(Debug, Default)]
pub struct Abort(AtomicBool);

impl Abort {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Sets the flag; returns true for the first caller only.
    pub fn trip(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// The error a stream reports when it stops because another failed.
    pub fn error() -> Error {
        Error::Aborted("another stream failed".into())
    }
}

/// Runs `work` once per item of `streams`, each on its own thread. The first
/// failure trips `abort` and calls `on_first_failure` with its error (which
/// should tell the peer and unblock the other threads); a thread that fails
/// after that reports [`Abort::error`], so the first failure stays the root
/// cause. Every thread's result is returned in input order.
pub fn run_streams<S, T, W, F>(streams: &[S], abort: &Abort, work: W, on_first_failure: F) -> Vec<Result<T>>
where
    S: Sync,
    T: Send,
    W: Fn(usize, &S) -> Result<T> + Sync,
    F: Fn(&Error) + Sync,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (work, on_fail) = (&work, &on_first_failure);
                scope.spawn(move || match work(i, s) {
                    Err(e) if abort.trip() => {
                        on_fail(&e);
                        Err(e)
                    }
                    Err(_) => Err(Abort::error()),
                    ok => ok,
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::Aborted("a stream thread panicked".into())))).collect()
    })
}

/// Splits stream results into the successes, or the root-cause error: the
/// first error that is not an [`Error::Aborted`] echo, else the first error.
pub fn collect<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut ok = Vec::with_capacity(results.len());
    let mut first: Option<Error> = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) if first.is_none() || matches!(first, Some(Error::Aborted(_))) && !matches!(e, Error::Aborted(_)) => first = Some(e),
            Err(_) => {}
        }
    }
    first.map_or(Ok(ok), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_root_cause_wins_over_its_echoes() {
        let abort = Abort::default();
        let hooks = AtomicUsize::new(0);
        let results: Vec<Result<()>> = run_streams(
            &[0, 1, 2],
            &abort,
            |i, _| {
                if i == 1 {
                    return Err(Error::Config("disk on fire".into()));
                }
                while !abort.is_set() {
                    std::thread::yield_now();
                }
                Err(Abort::error())
            },
            |e| {
                assert!(e.to_string().contains("disk on fire"), "the hook sees the root cause");
                hooks.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(hooks.load(Ordering::Relaxed), 1, "the hook runs once");
        let err = collect(results).unwrap_err().to_string();
        assert!(err.contains("disk on fire"), "{err}");
    }

    #[test]
    fn successes_come_back_in_order() {
        let abort = Abort::default();
        let r = collect(run_streams(&[10, 20, 30], &abort, |i, s| Ok(i * 100 + s), |_| {})).unwrap();
        assert_eq!(r, vec![10, 120, 230]);
        assert!(!abort.is_set());
    }
}
