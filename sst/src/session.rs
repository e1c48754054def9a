//! One SST run from mysqld's point of view: parse the arguments, read the
//! option files and credentials, watch the parent, run the donor or joiner
//! flow, and map the outcome to the stock exit codes. stdout carries only
//! protocol lines; everything else is logged (the binary formats log events
//! as `WSREP_SST:` lines on stderr, which mysqld appends to its error log).

use std::io::Read as _;
use std::time::{Duration, Instant};

use sluice_engine::backend::sys;

use crate::args::{self, Role};
use crate::auth;
use crate::error::{Result, SstError};
use crate::mycnf::{Disk, Sources};
use crate::mysqld::Protocol;
use crate::options;
use crate::plan::Plan;
use crate::process;
use crate::{donor, joiner, logs, report};

/// Runs an SST as mysqld invoked it (`argv` without the program name) and
/// returns the exit status.
pub fn main(argv: &[String]) -> i32 {
    let started = Instant::now();
    // Nothing this process starts may inherit grastate.dat or mysqld's
    // duplicated pipe ends (MARIADB-OBSERVED.md §2).
    if let Err(e) = sys::cloexec_inherited() {
        tracing::warn!("cannot mark inherited descriptors close-on-exec: {e}");
    }
    let role = argv.windows(2).find(|w| w[0] == "--role").map_or("donor", |w| w[1].as_str()).to_string();
    match run(argv) {
        Ok(()) => {
            tracing::info!("sluice SST finished on {role} in {:.1} s", started.elapsed().as_secs_f64());
            0
        }
        Err(e) => {
            tracing::error!("sluice SST failed on {role}: {e}");
            e.exit_code()
        }
    }
}

fn run(argv: &[String]) -> Result<()> {
    let args = args::parse(argv)?;
    if !args.ignored.is_empty() {
        tracing::debug!("ignoring unknown arguments {:?}", args.ignored);
    }
    let role = args.role();
    // The first line says which build runs on this node.
    tracing::info!("sluice SST started on {}: {}", if role == Role::Joiner { "joiner" } else { "donor" }, crate::version_line());
    let sources = Sources::from_env(args.defaults_file.clone(), args.defaults_extra_file.clone(), args.defaults_group_suffix.clone());
    let opts = options::load(&Disk, &sources)?;
    let stdin = if role == Role::Donor { read_stdin() } else { None };
    let env = |k: &str| std::env::var(k).ok();
    let (env_auth, env_user, env_pw) = (env("WSREP_SST_OPT_AUTH"), env("WSREP_SST_OPT_USER"), env("WSREP_SST_OPT_PSWD"));
    let (creds, unknown) = auth::resolve(&auth::Inputs {
        env_auth: env_auth.as_deref(),
        env_user: args.user.as_deref().or(env_user.as_deref()),
        env_password: args.password.as_deref().or(env_pw.as_deref()),
        config_auth: opts.wsrep_sst_auth.as_deref(),
        stdin: stdin.as_deref(),
    });
    for k in unknown {
        tracing::warn!("unrecognized input from mysqld on stdin: {k}");
    }
    if crate::syslog::enable(&opts, if role == Role::Joiner { "joiner" } else { "donor" }) {
        tracing::info!("logging to syslog as well");
    }
    std::fs::create_dir_all(&args.datadir).map_err(|e| SstError::io(format!("creating the datadir {}", args.datadir.display()), e))?;
    let _pid = logs::acquire_pid_file(&args.datadir, Duration::from_secs(30))?;
    for a in logs::archive(&args.datadir, &opts) {
        tracing::info!("archived the previous SST log as {}", a.display());
    }
    let plan = Plan::new(args, opts, creds)?;
    if let Some(pid) = plan.args.parent {
        process::watch_parent(pid, plan.children.clone());
    }
    // Not a held lock: the monitor writes `complete` lines from its own
    // thread, and each line is written (and flushed) under the stdout lock
    // on its own.
    let mut proto = Protocol::new(std::io::stdout());
    let t = Instant::now();
    let r = match role {
        Role::Joiner => joiner::run(&plan, &mut proto),
        Role::Donor => donor::run(&plan, &mut proto),
    };
    // The watchdog's reason beats the error it caused (a killed helper).
    let r = match (r, plan.monitor.expiry()) {
        (Err(_), Some(why)) => Err(SstError::Stalled(why)),
        (r, _) => r,
    };
    plan.monitor.finish(r.as_ref().err().map(ToString::to_string).as_deref());
    report::remove_fifo(&plan.progress);
    report::note_time(&plan.opts, "the SST", t.elapsed());
    r
}

/// What a newer mysqld writes to the donor's stdin (credentials), read only
/// when stdin is a pipe or file; an inherited terminal or /dev/null is left
/// alone. A writer that never closes the pipe costs at most 10 s.
fn read_stdin() -> Option<String> {
    if !sys::is_pipe_or_file(std::io::stdin()) {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::stdin().read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).ok();
    if got.is_none() {
        tracing::warn!("stdin stayed open for 10 s; continuing without credentials from it");
    }
    got
}
