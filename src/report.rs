//! Progress reporting for the CLI: an indicatif bar when stderr is a
//! terminal, plain lines at 1 Hz otherwise, or one JSON object per second on
//! stdout (`--progress-json`). It only reads the engine's shared counters.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_engine::progress::{Progress, Snapshot};

/// How to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Human,
    Json,
}

impl Mode {
    pub fn from_flags(human: bool, json: bool) -> Self {
        match (human, json) {
            (_, true) => Self::Json,
            (true, false) => Self::Human,
            _ => Self::Off,
        }
    }
}

/// A running reporter; [`Reporter::finish`] stops it.
#[derive(Debug)]
pub struct Reporter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Bytes as a short human string (binary units).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// One plain progress line.
pub fn line(s: &Snapshot, rate: f64) -> String {
    let pct = if s.total == 0 { 100.0 } else { s.done as f64 * 100.0 / s.total as f64 };
    let eta = if rate > 0.0 { format!("{:.0} s", s.total.saturating_sub(s.done) as f64 / rate) } else { "?".into() };
    format!("sluice: {} / {} ({pct:.0} %), {}/s, ETA {eta}", human(s.done as f64), human(s.total as f64), human(rate))
}

impl Reporter {
    pub fn start(progress: Arc<Progress>, mode: Mode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if mode == Mode::Off {
            return Self { stop, handle: None };
        }
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let bar = (mode == Mode::Human && std::io::stderr().is_terminal()).then(|| {
                let b = indicatif::ProgressBar::new(0);
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec} ETA {eta}")
                {
                    b.set_style(style);
                }
                b
            });
            let tick = if bar.is_some() { Duration::from_millis(200) } else { Duration::from_secs(1) };
            let (mut last, mut last_at) = (0u64, Instant::now());
            let mut next = Instant::now() + tick;
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next += tick;
                let s = progress.snapshot();
                let rate = (s.done - last) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
                (last, last_at) = (s.done, Instant::now());
                match (&bar, mode) {
                    (Some(b), _) => {
                        b.set_length(s.total);
                        b.set_position(s.done);
                    }
                    (None, Mode::Json) => {
                        let v = serde_json::json!({"event": "progress", "bytes": s.done, "total": s.total,
                            "wire_bytes": s.wire, "seconds": s.seconds, "bytes_per_sec": rate.round()});
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{v}");
                        let _ = out.flush();
                    }
                    (None, _) => eprintln!("{}", line(&s, rate)),
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Self { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_bytes_percent_rate_and_eta() {
        let s = Snapshot { total: 4 << 30, done: 1 << 30, wire: 1 << 29, resent: 0, resuming: 0, seconds: 2.0 };
        let l = line(&s, 512.0 * 1024.0 * 1024.0);
        assert_eq!(l, "sluice: 1.0 GiB / 4.0 GiB (25 %), 512.0 MiB/s, ETA 6 s");
        assert_eq!(human(1023.0), "1023.0 B");
    }
}
