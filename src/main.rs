//! `sluice`: the command-line front-end.
//!
//! `recv` listens and receives one session, `send` sends trees to it, `copy`
//! runs both ends in one process over loopback, `demo` generates a sample
//! datadir and copies it, `gen-sample` writes sample data for perf runs.
//! Logs go to stderr; stdout carries only machine-readable lines (`--json`).

#![forbid(unsafe_code)]

mod docs;
mod report;
mod sample;
mod sstlog;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::sync::Arc;

use sluice_engine::codec::Compression;
use sluice_engine::codec::seal::SealKey;
use sluice_engine::net::SockOpts;
use sluice_engine::net::tls::{TlsMode, TlsOptions};
use sluice_engine::progress::Progress;
use sluice_engine::sink::SinkOptions;
use sluice_engine::{IoMode, Journaling, ReceiveConfig, Receiver, SendConfig, Summary, Token};
use sluice_sst::mycnf;

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Fast, verified, multi-stream copies of data directories")]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Listen, print the address and a one-time token, receive one session.
    Recv(RecvArgs),
    /// Send files and directories to a `sluice recv`.
    Send(SendArgs),
    /// Copy a tree locally through the engine (both ends in this process).
    Copy(CopyArgs),
    /// Generate a sample datadir, copy it with the engine and verify the copy.
    Demo(DemoArgs),
    /// Write sample data: a MariaDB-like datadir or the perf corpus.
    GenSample(GenArgs),
    /// Print the options of option-file groups exactly as my_print_defaults
    /// does (one --key=value per line), to see what sluice reads.
    PrintDefaults(PrintDefaultsArgs),
    /// Run as the Galera SST method (what mysqld runs as `wsrep_sst_sluice`,
    /// a symlink to this binary): `sluice sst --role joiner|donor ...`.
    Sst(SstArgs),
    /// Manual SST, second half on its own: prepare a received backup, write
    /// grastate.dat, move it into an empty datadir.
    Restore(RestoreArgs),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenDocs(GenDocsArgs),
    /// Check this node for everything that would make an SST fail
    /// (mariadb-backup, credentials, TLS, SST port, disk, encryption), each
    /// with its fix; exits 1 if anything fails.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    files: OptionFiles,
    /// The datadir (default: `datadir` from the option files).
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// The server's socket (default: `socket` from the option files).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// One JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct GenDocsArgs {
    /// Directory that receives man/ and completions/.
    #[arg(long)]
    out: PathBuf,
}

/// Which MariaDB option files to read, as the server's tools take them
/// (the field names are the tools' option names).
#[derive(Args, Debug)]
#[allow(clippy::struct_field_names)]
struct OptionFiles {
    /// Read only this file (and what it includes), as mysqld's `--defaults-file`.
    #[arg(long)]
    defaults_file: Option<PathBuf>,
    /// Read this file after the global ones.
    #[arg(long)]
    defaults_extra_file: Option<PathBuf>,
    /// Also read GROUP<suffix> for every group.
    #[arg(long)]
    defaults_group_suffix: Option<String>,
}

impl OptionFiles {
    fn sources(&self) -> mycnf::Sources {
        mycnf::Sources::from_env(self.defaults_file.clone(), self.defaults_extra_file.clone(), self.defaults_group_suffix.clone())
    }
}

#[derive(Args, Debug)]
struct SstArgs {
    /// mysqld's SST arguments, passed through unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args, Debug)]
struct PrintDefaultsArgs {
    #[command(flatten)]
    files: OptionFiles,
    /// Read nothing.
    #[arg(short, long)]
    no_defaults: bool,
    /// Groups to print, e.g. sst mysqld.
    groups: Vec<String>,
}

#[derive(Args, Debug)]
struct IoArgs {
    /// I/O backend: auto, uring, splice or copy (auto honours SLUICE_IO).
    #[arg(long, default_value = "auto", value_parser = engine_value::<IoMode>)]
    io: IoMode,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// Progress on stderr: a bar on a terminal, a line per second otherwise.
    #[arg(long)]
    progress: bool,
    /// Progress as one JSON object per second on stdout.
    #[arg(long)]
    progress_json: bool,
    /// Socket options, socat style: pf=ip4|ip6, keepalive, nodelay, sndbuf=N, rcvbuf=N, cc=NAME
    /// (default bbr where allowed), pacing=RATE (a cap per connection).
    #[arg(long, default_value = "", value_parser = engine_value::<SockOpts>)]
    sockopt: SockOpts,
    /// Seconds a stream may stay silent (or stalled) mid-session.
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Seconds a broken stream waits to reconnect and resume where the
    /// receiver stopped (0: fail at the first broken connection; both ends
    /// must allow it).
    #[arg(long, default_value_t = 600)]
    resume_window: u64,
    /// TLS: disabled, required (encrypt, no verification), verify-ca or
    /// verify-identity (the stock ssl-mode values). The receiver is the server.
    #[arg(long, default_value = "disabled", value_parser = engine_value::<TlsMode>)]
    tls_mode: TlsMode,
    /// Own certificate chain, PEM (may also hold the key, as encrypt=2 uses).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Own private key, PEM (PKCS#1, PKCS#8 or SEC1).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA file or directory: verifies the receiver (sender side) or requires
    /// and verifies a client certificate (receiver side).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name the receiver's certificate must carry with verify-identity
    /// (default: the host in --to).
    #[arg(long)]
    tls_name: Option<String>,
}

impl ControlArgs {
    fn mode(&self) -> report::Mode {
        report::Mode::from_flags(self.progress, self.progress_json)
    }

    fn tls(&self) -> TlsOptions {
        TlsOptions {
            mode: self.tls_mode,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            name: self.tls_name.clone(),
        }
    }
}

impl Default for ControlArgs {
    fn default() -> Self {
        Self {
            progress: false,
            progress_json: false,
            sockopt: SockOpts::default(),
            idle_timeout: 120,
            resume_window: 600,
            tls_mode: TlsMode::Disabled,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_name: None,
        }
    }
}

#[derive(Args, Debug)]
struct TransformArgs {
    /// Per-chunk compression: none, lz4, zstd, zstd:LEVEL or auto (lz4 only
    /// where chunks shrink and the link is slower than the codec, zstd:1 or
    /// none when they are measured to deliver more). Default: auto, or none
    /// with `--io uring|splice` (zero-copy needs untouched bytes).
    #[arg(long, value_parser = engine_value::<Compression>)]
    compress: Option<Compression>,
    /// Seconds before `auto` first measures another codec against lz4, and
    /// the shortest wait between such measurements (a knob for tests and
    /// experiments).
    #[arg(long, hide = true, default_value_t = 8.0)]
    adapt_after: f64,
    /// Limit the wire rate of all streams together, e.g. 200M (bytes per
    /// second; K, M, G are powers of 1024).
    #[arg(long, value_parser = parse_size)]
    rate_limit: Option<u64>,
    /// Seal every frame with AES-256-GCM using this key file (32 raw bytes
    /// or 64 hex characters; `openssl rand -hex 32 > FILE`). The receiver
    /// must use the same file.
    #[arg(long)]
    encrypt_key_file: Option<PathBuf>,
}

impl TransformArgs {
    /// The compression asked for, or the default for `io`: adaptive, except
    /// where a zero-copy backend was chosen explicitly.
    fn compression(&self, io: IoMode) -> Compression {
        self.compress.unwrap_or(match io {
            IoMode::Uring | IoMode::Splice => Compression::None,
            _ => Compression::Auto,
        })
    }

    fn seal_key(&self) -> Result<Option<SealKey>> {
        self.encrypt_key_file.as_deref().map(SealKey::from_file).transpose().map_err(Into::into)
    }
}

#[derive(Args, Debug)]
struct RecvArgs {
    /// Address to listen on (host:port or [v6]:port).
    #[arg(long, default_value = "127.0.0.1:4444")]
    listen: String,
    /// Destination directory (created if missing).
    #[arg(long, required_unless_present = "prepare")]
    dir: Option<PathBuf>,
    /// Manual SST: receive a `send --backup` stream into DATADIR/.sst, run
    /// mariadb-backup --prepare, write grastate.dat from its Galera
    /// position, move it into the (empty) datadir, give it to the datadir's
    /// owner.
    #[arg(long, requires = "datadir")]
    prepare: bool,
    #[command(flatten)]
    restore: RestoreOpts,
    /// Print the address and token as one JSON line on stdout (and not on
    /// stderr).
    #[arg(long)]
    json: bool,
    /// Write the token to this new file (mode 0600) instead of printing it.
    #[arg(long, conflicts_with = "json")]
    token_file: Option<PathBuf>,
    /// Replace existing files in the destination instead of refusing.
    #[arg(long)]
    overwrite: bool,
    /// Continue an interrupted receive into --dir (this receiver was
    /// killed, or its host rebooted): its journal says what is verified
    /// and durable; run the sender again with the new token and it sends
    /// only the rest. Not for streamed backups, which cannot be rewound.
    #[arg(long)]
    resume: bool,
    /// --dir holds an older copy of what is sent: update it in place, block
    /// by block (like rsync --inplace). This receiver fingerprints its
    /// files' 16 KiB pages and the sender (with --delta) sends only the
    /// pages that differ. If the transfer fails, --dir is marked
    /// incomplete and holds a mix of old and new data.
    #[arg(long, conflicts_with_all = ["resume", "delta_base", "prepare"])]
    delta: bool,
    /// The older copy is in this directory (not in --dir): the pages it
    /// holds are copied from it (copy_file_range; reflinked where the
    /// filesystem can) instead of sent. It is only read.
    #[arg(long, conflicts_with_all = ["resume", "prepare"])]
    delta_base: Option<PathBuf>,
    /// Apply the sender's owners (root only).
    #[arg(long)]
    preserve_owner: bool,
    /// Write only through the page cache (no O_DIRECT for large files).
    #[arg(long)]
    buffered: bool,
    /// Require sealed sessions, with this key file (see `send --help`).
    #[arg(long)]
    encrypt_key_file: Option<PathBuf>,
    #[command(flatten)]
    io: IoArgs,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args, Debug)]
struct SendArgs {
    /// Receiver address (host:port or [v6]:port).
    #[arg(long)]
    to: String,
    /// The token printed by `sluice recv` (better: the SLUICE_TOKEN variable,
    /// which other users cannot read from the process list).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, value_parser = engine_value::<Token>)]
    token: Token,
    /// Parallel TCP streams (default: CPUs, at least 2). Set alone, the
    /// count is fixed.
    #[arg(long)]
    streams: Option<u16>,
    /// Add streams up to this many while each one added makes the transfer
    /// faster, and retire them when they stop paying (default, without
    /// --streams: 4 × the start, at most 16; not toward this host).
    #[arg(long)]
    max_streams: Option<u16>,
    /// Block size, e.g. 1M or 256K.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    block_size: u64,
    /// Seconds to keep retrying a refused connection.
    #[arg(long, default_value_t = 30)]
    connect_timeout: u64,
    #[command(flatten)]
    io: IoArgs,
    #[command(flatten)]
    transform: TransformArgs,
    #[command(flatten)]
    control: ControlArgs,
    /// Manual SST: stream a fresh `mariadb-backup --backup` of the local
    /// server instead of files (its password, if any, in MYSQL_PWD).
    #[arg(long)]
    backup: bool,
    /// Send only what the receiver's older copy lacks (a receiver started
    /// with --delta or --delta-base; for --backup, --delta-base): every
    /// 16 KiB page equal to the old copy's travels as a reference. Costs a
    /// BLAKE3 of each page on both ends; pays on a link slower than about
    /// 1 GB/s.
    #[arg(long)]
    delta: bool,
    #[command(flatten)]
    source: BackupOpts,
    /// Files and directories; a directory sends its contents.
    #[arg(required_unless_present = "backup")]
    paths: Vec<PathBuf>,
}

/// mariadb-backup options for `send --backup`.
#[derive(Args, Debug)]
struct BackupOpts {
    /// Option file of the server to back up (passed to mariadb-backup).
    #[arg(long, requires = "backup")]
    defaults_file: Option<PathBuf>,
    /// The server's socket.
    #[arg(long, requires = "backup")]
    socket: Option<PathBuf>,
    /// The backup user (the password comes from MYSQL_PWD).
    #[arg(long, requires = "backup")]
    user: Option<String>,
    /// The server's datadir, if the option file does not say.
    #[arg(long = "backup-datadir", requires = "backup")]
    backup_datadir: Option<PathBuf>,
    /// Record the Galera position (a Galera node), so the receiver writes
    /// grastate.dat.
    #[arg(long, requires = "backup")]
    galera_info: bool,
    /// mariadb-backup's log.
    #[arg(long, default_value = "mariabackup.backup.log", requires = "backup")]
    backup_log: PathBuf,
}

/// Where and how a received backup is restored.
#[derive(Args, Debug)]
struct RestoreOpts {
    /// The datadir to restore into (must be empty and not in use).
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Restore into a non-empty datadir (its content is deleted) or past a
    /// pid file.
    #[arg(long)]
    force: bool,
    /// Option file for --move-back (where undo/redo directories go).
    #[arg(long = "restore-defaults-file")]
    restore_defaults_file: Option<PathBuf>,
    /// Buffer pool for --prepare, e.g. 1G.
    #[arg(long)]
    use_memory: Option<String>,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// A backup received with `sluice recv --dir` from `send --backup`.
    #[arg(long)]
    backup_dir: PathBuf,
    #[command(flatten)]
    restore: RestoreOpts,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// Source directory or file.
    src: PathBuf,
    /// Destination directory.
    dest: PathBuf,
    #[arg(long)]
    streams: Option<u16>,
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    block_size: u64,
    #[arg(long)]
    overwrite: bool,
    /// DEST holds an older copy: update it in place, writing only the
    /// 16 KiB pages that differ (see `recv --delta`).
    #[arg(long)]
    delta: bool,
    #[arg(long)]
    preserve_owner: bool,
    /// Write only through the page cache (no O_DIRECT for large files).
    #[arg(long)]
    buffered: bool,
    #[command(flatten)]
    io: IoArgs,
    #[command(flatten)]
    transform: TransformArgs,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Working directory (default: a new directory under /tmp, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the sample datadir in MiB.
    #[arg(long, default_value_t = 256)]
    size: u64,
    #[arg(long)]
    streams: Option<u16>,
    #[command(flatten)]
    io: IoArgs,
}

#[derive(Args, Debug)]
struct GenArgs {
    /// Directory to create.
    dir: PathBuf,
    /// Write the perf corpus instead of a datadir.
    #[arg(long)]
    corpus: bool,
    /// Datadir size in MiB (datadir mode).
    #[arg(long, default_value_t = 256)]
    size: u64,
    /// Size of the big file in MiB (corpus mode).
    #[arg(long, default_value_t = 4096)]
    big_mib: u64,
    /// Number of small files (corpus mode).
    #[arg(long, default_value_t = 20_000)]
    small: u64,
}

/// clap adapter for the engine's `FromStr` types (I/O mode, compression,
/// TLS mode, socket options): their errors already say what is accepted.
fn engine_value<T: std::str::FromStr<Err = sluice_engine::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: sluice_engine::Error| e.to_string())
}

/// Sizes with optional K/M/G suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    sluice_engine::throttle::parse_bytes(s).map_err(|e| e.to_string())
}

/// The name mysqld runs the SST method under.
const SST_SCRIPT: &str = "wsrep_sst_sluice";

fn main() {
    // Bounded memory whatever peers do: few malloc arenas, however many
    // short-lived handshake threads a flood makes (backend::sys).
    sluice_engine::backend::sys::limit_malloc_arenas(2);
    // Every file of a datadir may pass through a receiver: take the
    // descriptors the hard limit allows (the engine bounds its own use).
    let _ = sluice_engine::backend::sys::raise_nofile_limit();
    // Multi-call: run as `wsrep_sst_sluice` (a symlink), this is the SST
    // method and takes mysqld's arguments unchanged.
    let argv: Vec<String> = std::env::args().collect();
    let invoked = argv.first().map(|a| std::path::Path::new(a).file_name().unwrap_or_default().to_string_lossy().into_owned());
    if invoked.as_deref() == Some(SST_SCRIPT) && matches!(argv.get(1).map(String::as_str), Some("--help" | "-h" | "--version" | "-V")) {
        // An operator asking, not mysqld: stdout is free.
        let text = if matches!(argv[1].as_str(), "--version" | "-V") {
            sluice_engine::build_info()
        } else {
            format!(
                "wsrep_sst_sluice: the sluice Galera SST method; mysqld runs it (wsrep_sst_method=sluice) as\n  \
                 wsrep_sst_sluice --role joiner|donor --address HOST:PORT[/MODULE] --datadir DIR [--defaults-file F] [--parent PID] ...\n\
                 The [sst] keys it reads: man wsrep_sst_sluice. Check a node first: sluice check.\n{}",
                sluice_engine::build_info()
            )
        };
        println!("{text}");
        return;
    }
    if invoked.as_deref() == Some(SST_SCRIPT) {
        sstlog::init();
        on_fatal_signals(true);
        finish(sluice_sst::session::main(&argv[1..]));
    }
    // `--version` says the protocol versions and features of this build.
    let version: &'static str = Box::leak(sluice_engine::build_info().trim_start_matches("sluice ").to_string().into_boxed_str());
    let cli = Cli::from_arg_matches(&Cli::command().version(version).get_matches()).unwrap_or_else(|e| e.exit());
    if let Command::Sst(a) = &cli.command {
        sstlog::init();
        on_fatal_signals(true);
        finish(sluice_sst::session::main(&a.args));
    }
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    on_fatal_signals(false);
    if let Err(e) = run(cli.command) {
        if !sluice_engine::cleanup::stopping() {
            eprintln!("sluice: error: {e:#}");
        }
        finish(1);
    }
}

/// Exits with `code` — unless a fatal signal is being handled: then the
/// failure was its doing (a helper killed, a directory removed under the
/// work), and the signal thread exits with the signal's status.
fn finish(code: i32) -> ! {
    if sluice_engine::cleanup::stopping() {
        std::thread::sleep(Duration::from_secs(10));
    }
    std::process::exit(code)
}

/// On SIGTERM, SIGINT, SIGQUIT or SIGHUP: kill and reap every helper this
/// process started (mariadb-backup, filters), remove its temporary
/// directories, and exit — leaving any incomplete-marker in place, so a
/// half-received directory never looks complete (SECURITY.md F13). The SST
/// method exits as the stock scripts do (HUP 32; INT, QUIT, TERM 3); the
/// CLI with 128 + the signal number.
fn on_fatal_signals(sst: bool) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot install signal handlers ({e}); a signal will leave helpers running");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("sluice-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let name = match sig {
                SIGTERM => "SIGTERM",
                SIGINT => "SIGINT",
                SIGQUIT => "SIGQUIT",
                _ => "SIGHUP",
            };
            let (children, dirs) = sluice_engine::cleanup::run(&format!("stopped by {name}"));
            tracing::error!("stopped by signal {sig}: killed {children} helper process(es), removed {dirs} temporary director(ies)");
            let code = match (sst, sig) {
                (true, SIGHUP) => 32,
                (true, _) => 3,
                (false, s) => 128 + s,
            };
            std::process::exit(code);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the signal thread ({e})");
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Recv(a) => recv(&a),
        Command::Send(a) => send(&a),
        Command::Copy(a) => {
            let sink =
                SinkOptions { overwrite: a.overwrite, preserve_owner: a.preserve_owner, direct_io: !a.buffered, ..SinkOptions::default() };
            let scfg = SendConfig { delta: a.delta, ..send_config(a.io.io, a.streams, a.block_size, &a.transform, &a.control)? };
            let rcfg = ReceiveConfig {
                seal_key: scfg.seal_key.clone(),
                delta: a.delta.then_some(sluice_engine::delta::Base::InPlace),
                ..recv_config(a.io.io, sink, &a.control)
            };
            let s = copy(&a.src, &a.dest, &scfg, rcfg, a.control.mode())?;
            report("copied", &s);
            Ok(())
        }
        Command::Demo(a) => demo(&a),
        Command::PrintDefaults(a) => print_defaults(&a),
        Command::Check(a) => check(&a),
        Command::GenDocs(a) => docs::generate(&Cli::command(), &a.out).with_context(|| format!("writing docs to {}", a.out.display())),
        Command::Sst(_) => unreachable!("handled in main before logging is set up"),
        Command::Restore(a) => restore(&a.backup_dir, &a.restore),
        Command::GenSample(a) => {
            let t = Instant::now();
            if a.corpus {
                sample::corpus(&a.dir, a.big_mib, a.small)?;
            } else {
                sample::datadir(&a.dir, a.size)?;
            }
            tracing::info!("wrote sample data to {} in {:.1} s", a.dir.display(), t.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// `my_print_defaults`, reimplemented: stdout gets the options, a fatal
/// error exits 2 as the original does.
fn check(a: &CheckArgs) -> Result<()> {
    let opts = sluice_sst::options::load(&mycnf::Disk, &a.files.sources()).context("reading the option files")?;
    let findings = sluice_sst::check::run(&opts, &sluice_sst::check::Inputs { datadir: a.datadir.clone(), socket: a.socket.clone() });
    let (text, ok) = sluice_sst::check::report(&findings, a.json);
    std::io::stdout().lock().write_all(text.as_bytes())?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn print_defaults(a: &PrintDefaultsArgs) -> Result<()> {
    if a.no_defaults {
        return Ok(());
    }
    let sources = a.files.sources();
    let groups: Vec<&str> = a.groups.iter().map(String::as_str).collect();
    match mycnf::load(&mycnf::Disk, &sources, &groups) {
        Ok(options) => {
            let mut out = std::io::stdout().lock();
            for o in options {
                writeln!(out, "{}", o.render())?;
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    }
}

fn report(verb: &str, s: &Summary) {
    tracing::info!(
        "{verb} {} files ({} entries), {:.1} MiB in {:.2} s: {:.0} MiB/s, compression ratio {:.2}",
        s.files,
        s.entries,
        s.bytes as f64 / 1_048_576.0,
        s.elapsed.as_secs_f64(),
        s.mib_per_sec(),
        s.compression_ratio()
    );
    if !verb.starts_with("received") {
        tracing::info!("at most {} streams carried data at once", s.peak_streams);
    }
    if s.resent > 0 {
        tracing::info!("{:.1} MiB were sent again after broken connections", s.resent as f64 / 1_048_576.0);
    }
    if s.reused + s.zeros > 0 {
        tracing::info!(
            "delta: {:.1} MiB were taken from the older copy, {:.1} MiB were zeros, {:.1} MiB travelled",
            s.reused as f64 / 1_048_576.0,
            s.zeros as f64 / 1_048_576.0,
            s.bytes.saturating_sub(s.reused + s.zeros) as f64 / 1_048_576.0
        );
    }
    if s.held > 0 {
        tracing::info!("{:.1} MiB the receiver held from the interrupted transfer were not sent again", s.held as f64 / 1_048_576.0);
    }
}

/// The sender's configuration from the shared flags.
fn send_config(io: IoMode, streams: Option<u16>, block: u64, t: &TransformArgs, c: &ControlArgs) -> Result<SendConfig> {
    Ok(SendConfig {
        streams: streams.unwrap_or_else(sluice_engine::send::default_streams),
        // Unset, the streams shift between the default and its bound.
        max_streams: streams.is_none().then(|| sluice_engine::gears::default_max(sluice_engine::send::default_streams())),
        io,
        block_size: u32::try_from(block).map_err(|_| anyhow::anyhow!("--block-size {block} is too large"))?,
        compress: t.compression(io),
        adapt_after: Duration::try_from_secs_f64(t.adapt_after).map_err(|e| anyhow::anyhow!("--adapt-after {}: {e}", t.adapt_after))?,
        rate_limit: t.rate_limit,
        seal_key: t.seal_key()?,
        tls: c.tls(),
        idle_timeout: Duration::from_secs(c.idle_timeout),
        resume_window: Duration::from_secs(c.resume_window),
        sockopt: c.sockopt,
        progress: Some(Arc::new(Progress::default())),
        ..SendConfig::default()
    })
}

/// The receiver's configuration from the shared flags.
fn recv_config(io: IoMode, sink: SinkOptions, c: &ControlArgs) -> ReceiveConfig {
    ReceiveConfig {
        io,
        sink,
        idle_timeout: Duration::from_secs(c.idle_timeout),
        resume_window: Duration::from_secs(c.resume_window),
        sockopt: c.sockopt,
        tls: c.tls(),
        progress: Some(Arc::new(Progress::default())),
        ..ReceiveConfig::default()
    }
}

/// What `recv --resume` continues: refuses, before listening, a
/// destination that holds no resumable transfer.
fn resumable(dir: &Path) -> Result<()> {
    use sluice_engine::journal::{self, Found};
    let shown = dir.display();
    let root = journal::open_root(dir).with_context(|| format!("--resume: cannot open {shown}"))?;
    match journal::find(&root).with_context(|| format!("--resume: reading the journal in {shown}"))? {
        Found::NoMarker => anyhow::bail!(
            "--resume: {shown} holds no interrupted transfer (no {} marker), so there is nothing to resume; receive without --resume",
            sluice_engine::manifest::INCOMPLETE_MARKER
        ),
        Found::NoJournal => anyhow::bail!(
            "--resume: {shown} holds an interrupted transfer but no journal ({}): it was a streamed backup, or received by `sluice copy` or an SST, and cannot be resumed; receive it again from the start, without --resume (into an empty directory, or with --overwrite)",
            sluice_engine::manifest::JOURNAL_FILE
        ),
        Found::Held(h) => {
            eprintln!(
                "sluice: resuming into {shown}: the journal holds {:.1} MiB in {} files, verified and durable; the sender sends the rest",
                h.bytes() as f64 / 1_048_576.0,
                h.files()
            );
            Ok(())
        }
    }
}

fn recv(a: &RecvArgs) -> Result<()> {
    let sink = SinkOptions { overwrite: a.overwrite, preserve_owner: a.preserve_owner, direct_io: !a.buffered, ..SinkOptions::default() };
    let seal_key = a.encrypt_key_file.as_deref().map(SealKey::from_file).transpose()?;
    if a.resume && a.prepare {
        anyhow::bail!(
            "--resume continues a tree transfer; a streamed backup (send --backup, recv --prepare) cannot be rewound: receive it again from the start"
        );
    }
    match (a.resume, &a.dir) {
        (true, Some(dir)) => resumable(dir)?,
        (true, None) => anyhow::bail!("--resume continues an interrupted receive into --dir: give that directory"),
        (false, _) => {}
    }
    // A tree received into --dir is journaled, so that `--resume` can
    // continue it if this receiver dies.
    let journal = match (a.resume, &a.dir) {
        (true, _) => Journaling::Resume,
        (false, Some(_)) => Journaling::Write,
        (false, None) => Journaling::Off,
    };
    let delta = match (&a.delta_base, a.delta) {
        (Some(dir), _) => Some(sluice_engine::delta::Base::Dir(dir.clone())),
        (None, true) => Some(sluice_engine::delta::Base::InPlace),
        (None, false) => None,
    };
    let cfg = ReceiveConfig { seal_key, journal, delta, ..recv_config(a.io.io, sink, &a.control) };
    let progress = cfg.progress.clone().unwrap_or_default();
    let r = Receiver::bind(&a.listen, cfg)?;
    let addr = r.local_addr()?;
    // The token is printed once, where asked: in the JSON line, in a
    // private file, or else on stderr for the operator to copy.
    if let Some(f) = &a.token_file {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(f)
            .with_context(|| format!("creating the token file {} (it must not exist yet)", f.display()))?;
        writeln!(file, "{}", r.token().to_hex())?;
        eprintln!("sluice: listening on {addr}; session token in {}", f.display());
    } else if !a.json {
        eprintln!("sluice: listening on {addr}; session token {}", r.token().to_hex());
    }
    if a.json {
        let line = serde_json::json!({ "event": "listening", "addr": addr.to_string(), "token": r.token().to_hex() });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let dir = match (&a.dir, &a.restore.datadir) {
        (Some(d), _) => d.clone(),
        (None, Some(datadir)) => {
            // Refuse before any byte arrives.
            sluice_sst::manual::check_datadir(datadir, a.restore.force)?;
            datadir.join(".sst")
        }
        (None, None) => anyhow::bail!("give --dir, or --prepare with --datadir"),
    };
    let reporter = report::Reporter::start(progress, a.control.mode());
    let result = r.run(&dir);
    reporter.finish();
    let s = result.with_context(|| format!("receiving into {}", dir.display()))?;
    report("received and verified", &s);
    if a.prepare {
        restore(&dir, &a.restore)?;
    }
    Ok(())
}

fn restore(backup: &Path, o: &RestoreOpts) -> Result<()> {
    let datadir = o.datadir.clone().ok_or_else(|| anyhow::anyhow!("--datadir is required"))?;
    let r = sluice_sst::manual::Restore {
        backup: backup.to_path_buf(),
        datadir: datadir.clone(),
        force: o.force,
        defaults_file: o.restore_defaults_file.clone(),
        use_memory: o.use_memory.clone(),
    };
    let position = sluice_sst::manual::restore(&r).with_context(|| format!("restoring {} into {}", backup.display(), datadir.display()))?;
    if let Some((gtid, _)) = position {
        tracing::info!("restored into {}; grastate.dat at {gtid}", datadir.display());
    } else {
        tracing::info!("restored into {} (no Galera position in the backup, no grastate.dat)", datadir.display());
    }
    Ok(())
}

fn send(a: &SendArgs) -> Result<()> {
    let token = a.token.clone();
    let base = send_config(a.io.io, a.streams, a.block_size, &a.transform, &a.control)?;
    let cfg = SendConfig {
        connect_timeout: Duration::from_secs(a.connect_timeout),
        delta: a.delta,
        max_streams: a.max_streams.or(base.max_streams),
        ..base
    };
    let reporter = report::Reporter::start(cfg.progress.clone().unwrap_or_default(), a.control.mode());
    let result = if a.backup {
        let src = sluice_sst::manual::BackupSource {
            defaults_file: a.source.defaults_file.clone(),
            socket: a.source.socket.clone(),
            user: a.source.user.clone(),
            datadir: a.source.backup_datadir.clone(),
            galera_info: a.source.galera_info,
            log: a.source.backup_log.clone(),
        };
        let r = sluice_sst::manual::send_backup(&a.to, &token, &cfg, &src);
        reporter.finish();
        let s = r.with_context(|| format!("sending a backup to {}", a.to))?;
        report("sent and confirmed", &s);
        return Ok(());
    } else {
        sluice_engine::send(&a.to, &token, &a.paths, &cfg)
    };
    reporter.finish();
    let s = result.with_context(|| format!("sending to {}", a.to))?;
    report("sent and confirmed", &s);
    Ok(())
}

/// Both ends in one process over loopback; progress comes from the
/// receiver's counters, and the receiver's error wins because it says what
/// went wrong with the destination.
fn copy(src: &Path, dest: &Path, send: &SendConfig, recv: ReceiveConfig, mode: report::Mode) -> Result<Summary> {
    let progress = recv.progress.clone().unwrap_or_default();
    let r = Receiver::bind("127.0.0.1:0", recv)?;
    let addr = r.local_addr()?.to_string();
    let token = r.token().clone();
    let cancel = r.cancel_handle();
    let dest_owned = dest.to_path_buf();
    let receiver = std::thread::spawn(move || r.run(&dest_owned));
    let reporter = report::Reporter::start(progress, mode);
    let sent = sluice_engine::send(&addr, &token, &[src.to_path_buf()], send);
    if sent.is_err() {
        cancel.store(true, std::sync::atomic::Ordering::Release);
    }
    let received = receiver.join().map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;
    reporter.finish();
    match (sent, received) {
        (Ok(_), Ok(s)) => Ok(s),
        (Err(e), Err(sluice_engine::Error::Aborted(_)) | Ok(_)) | (_, Err(e)) => {
            Err(e).with_context(|| format!("copying {} to {}", src.display(), dest.display()))
        }
    }
}

fn demo(a: &DemoArgs) -> Result<()> {
    // Without --dir: a fresh private directory (random name, 0700), removed
    // at the end or on a signal.
    let (work, _guard) = if let Some(d) = &a.dir {
        (d.clone(), None)
    } else {
        let d = sluice_engine::cleanup::private_dir(&std::env::temp_dir(), "sluice-demo-").context("creating the demo directory")?;
        (d.path().to_path_buf(), Some(d))
    };
    let src = work.join("datadir");
    let dest = work.join("copy");
    if dest.exists() {
        bail!("{} already exists; remove it or pick another --dir", dest.display());
    }
    let t = Instant::now();
    sample::datadir(&src, a.size).with_context(|| format!("generating the sample datadir in {}", src.display()))?;
    eprintln!("sluice demo: generated a {} MiB sample datadir in {} ({:.1} s)", a.size, src.display(), t.elapsed().as_secs_f64());
    let none = TransformArgs { compress: Some(Compression::None), adapt_after: 8.0, rate_limit: None, encrypt_key_file: None };
    let control = ControlArgs::default();
    let scfg = send_config(a.io.io, a.streams, 1 << 20, &none, &control)?;
    let s = copy(&src, &dest, &scfg, recv_config(a.io.io, SinkOptions::default(), &control), report::Mode::Off)?;
    let n = sluice_engine::diff::compare(&src, &dest).map_err(|d| anyhow::anyhow!("the copy differs from the source: {d}"))?;
    eprintln!(
        "sluice demo: copied {} files ({:.1} MiB) to {} in {:.2} s ({:.0} MiB/s, fsynced); independent check: {n} entries identical",
        s.files,
        s.bytes as f64 / 1_048_576.0,
        dest.display(),
        s.elapsed.as_secs_f64(),
        s.mib_per_sec()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("12Q").unwrap_err().contains("12Q"));
        assert!(engine_value::<Compression>("zstd:3").is_ok());
        assert!(engine_value::<Compression>("brotli").unwrap_err().contains("brotli"));
    }
}
