//! Log lines in SST mode: every event becomes `WSREP_SST: [LEVEL] message
//! (YYYYmmdd HH:MM:SS.mmm)` on stderr (mysqld's error log), one line per
//! line of the message, as the stock scripts log. stdout stays mysqld's.

use std::fmt::Write as _;

use sluice_sst::mysqld::{Level, log_line};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, format::Writer};
use tracing_subscriber::registry::LookupSpan;

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The `WSREP_SST:` event format.
pub struct SstFormat;

impl<S, N> FormatEvent<S, N> for SstFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &tracing::Event<'_>) -> std::fmt::Result {
        let mut m = Message(String::new());
        event.record(&mut m);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warning,
            _ => Level::Info,
        };
        let now = std::time::SystemTime::now();
        for line in m.0.lines().filter(|l| !l.trim().is_empty()) {
            writeln!(w, "{}", log_line(level, line, now))?;
            if let Some(s) = sluice_sst::syslog::active() {
                s.script(level, line);
            }
        }
        Ok(())
    }
}

/// Installs the SST-mode subscriber (info and above unless RUST_LOG says
/// otherwise).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).event_format(SstFormat).init();
}
