//! The donor: check that the joiner runs sluice, stream `mariadb-backup
//! --backup --stream=mbstream` to it over N streams as it is produced, and
//! print `done` only once the joiner has verified and synced everything
//! (shared/SST-PROTOCOL.md §3.2, without the stock 10 s sleep). Before any
//! data, the donor announces sizes, versions and key fingerprints
//! ([`crate::preflight`]) in a session of its own; a joiner that cannot
//! take the SST refuses it there, and this donor fails with its reason.
//! With `--bypass` (IST) only the state and the IST marker travel.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_engine::progress::Progress;
use sluice_engine::send::{SendConfig, default_streams, send_streamed};
use sluice_engine::{Error as EngineError, Token};

use crate::args::{ArgsError, Role};
use crate::backup::Context;
use crate::error::{Result, SstError};
use crate::mysqld::{self, Gtid, Protocol};
use crate::plan::{IST_MARKER, Mode, PREAMBLE_FILE, Plan, STATE_FILE};
use crate::preflight::{self, Preamble};
use crate::process::{Helper, find_program};
use crate::report;
use crate::status::Stage;
use crate::transport;

pub fn run(s: &Plan, proto: &mut Protocol<impl Write>) -> Result<()> {
    let addr = s.args.address.clone().ok_or(ArgsError::Missing { option: "--address" })?;
    let module = addr.module.clone().unwrap_or_default();
    let (copy_mode, token) = match (mysqld::token_in(&module), mysqld::copy_token_in(&module)) {
        (Some(t), _) => (false, t),
        (None, Some(t)) => (true, t),
        (None, None) if mysqld::legacy_token_in(&module) => {
            return Err(SstError::Incompatible(format!(
                "the joiner at {} runs an older sluice that does not take this donor's announcement of sizes, versions and keys; \
                 upgrade sluice on the joiner (every node should run the same sluice)",
                addr.host
            )));
        }
        (None, None) => {
            return Err(SstError::Incompatible(format!(
                "the joiner at {} asked for SST module '{module}', which is not sluice's: the joiner runs a different SST method; set wsrep_sst_method=sluice on every node",
                addr.host
            )));
        }
    };
    let token: Token = token.parse()?;
    if let Some(v) = mysqld::version_in(&module) {
        tracing::info!("the joiner runs sluice {v}; this donor runs {}", crate::version_line());
    }
    let mode = if copy_mode { Mode::Copy } else { Mode::Backup };
    if s.mode != mode {
        tracing::warn!("the joiner runs [sst] mode={} and this donor mode={}; following the joiner", mode.name(), s.mode.name());
    }
    let gtid_text = s.args.gtid.clone().ok_or(ArgsError::Missing { option: "--gtid" })?;
    let gtid: Gtid = gtid_text.parse().map_err(|_| ArgsError::Invalid { option: "--gtid", value: gtid_text.clone() })?;
    let state = mysqld::coordinates_line(&gtid, s.args.gtid_domain_id) + "\n";
    let target = format!("{}:{}", addr.host, addr.port_or_default());
    let t = transport::logged(&s.opts, Role::Donor, addr.host_unbracketed())?;
    if t.compress == sluice_engine::codec::Compression::Auto {
        tracing::info!(
            "no compressor in [sst]: lz4 on chunks that shrink, while the link is slower than the codec (compressor=none turns it off)"
        );
    }
    let progress = Arc::new(Progress::default());
    let cfg = SendConfig {
        progress: Some(Arc::clone(&progress)),
        streams: s.opts.streams.unwrap_or_else(default_streams),
        max_streams: streams_bound(s.opts.streams, s.opts.max_streams),
        compress: t.compress,
        seal_key: t.seal_key,
        filter: t.filter,
        tls: t.tls,
        rate_limit: t.rate_limit,
        sockopt: t.sockopt,
        resume_window: std::time::Duration::from_secs(s.opts.resume_window),
        ..SendConfig::default()
    };

    if s.args.bypass {
        tracing::info!("IST: sending only the state to {target}");
        let p = Preamble { sluice: crate::version_line(), mode: mode.name().to_string(), ist: true, ..Preamble::default() };
        send_announcement(&target, &token, &cfg, &p)?;
        proto.continue_()?;
        let fixed = SendConfig { max_streams: None, ..cfg.clone() };
        send_streamed(&target, &token, &fixed, |f| {
            f.file_bytes(STATE_FILE.as_bytes(), state.as_bytes())?;
            f.file_bytes(IST_MARKER.as_bytes(), b"1\n")
        })?;
        return proto.done(&gtid);
    }

    let (estimate, protocol) = announce(s, &target, &token, &cfg, mode)?;
    // A delta, unless turned off, the joiner's sluice predates it (it
    // would refuse the request, or in backup mode not grant it), or
    // (auto) the joiner is on this host: there, hashing both copies costs
    // more than sending them (perf/RESULTS.md).
    let wanted = s.opts.delta.unwrap_or_else(|| {
        let local = crate::transport::is_this_host(&target);
        if local {
            tracing::info!("delta off: the joiner at {target} is on this host, where sending costs less than comparing ([sst] delta=on compares anyway)");
        }
        !local
    });
    let delta = wanted && protocol >= sluice_engine::wire::since::DELTA;
    if wanted && !delta {
        tracing::info!("the joiner's sluice speaks protocol {protocol}, without delta transfers: sending everything");
    }
    let cfg = SendConfig { delta, ..cfg };
    if copy_mode {
        progress.set_total(estimate);
        s.monitor.stage(Stage::Sending, Some(Arc::clone(&progress)), estimate);
        return crate::copy::donor(s, proto, &target, &token, &cfg, &s.layout);
    }
    let program = find_program("mariadb-backup")?;
    let base = s.opts.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    // Fresh private directories (random names, 0700, never an existing
    // one), removed when the donor exits or is signalled.
    let private =
        |prefix: &str| sluice_engine::cleanup::private_dir(&base, prefix).map_err(|e| SstError::io("creating a temporary directory", e));
    let (xtmp_dir, itmp_dir) = (private("sluice-sst-tmp-")?, private("sluice-sst-target-")?);
    let (xtmp, itmp) = (xtmp_dir.path().to_path_buf(), itmp_dir.path().to_path_buf());
    let ctx = Context { args: &s.args, opts: &s.opts, mysqld: s.mysqld.clone(), user: s.creds.user.as_deref() };
    let helper = Helper {
        program: &program,
        args: ctx.backup(&xtmp, &itmp),
        cwd: &s.args.datadir,
        password: s.creds.password.as_deref(),
        what: "mariadb-backup --backup",
    };
    if s.opts.backup_threads.is_none() {
        tracing::info!("mariadb-backup copies {} files at once ([sst] backup-threads sets how many)", ctx.backup_threads());
    }
    let log = s.args.datadir.join("mariabackup.backup.log");
    progress.set_total(estimate);
    s.monitor.stage(Stage::Sending, Some(Arc::clone(&progress)), estimate);
    // The engine says whether (and why not) it adds streams as it goes.
    tracing::info!("streaming a backup to {target} over {} streams", cfg.streams);
    let summary = crate::backup::send_backup_stream(&target, &token, &cfg, &helper, &log, &s.children, &[(STATE_FILE, state.as_bytes())])?;
    report::note_time(&s.opts, "streaming the backup", summary.elapsed);
    tracing::info!("{}", report::summary_line("sent", &summary));
    proto.done(&gtid)
}

/// The most streams the donor may run: `max-streams` if set; else, when
/// `streams` is not set either, the engine's default bound; else fixed.
fn streams_bound(streams: Option<u16>, max: Option<u16>) -> Option<u16> {
    match (streams, max) {
        (_, Some(m)) => Some(m),
        (None, None) => Some(sluice_engine::gears::default_max(default_streams())),
        (Some(_), None) => None,
    }
}

/// Sends `p` in a session of its own; the joiner's refusal is this
/// donor's error.
/// Sends the announcement; returns the protocol version the joiner speaks.
fn send_announcement(target: &str, token: &Token, cfg: &SendConfig, p: &Preamble) -> Result<u16> {
    let one = SendConfig { streams: 1, max_streams: None, progress: None, ..cfg.clone() };
    let s =
        send_streamed(target, token, &one, |f| f.file_bytes(PREAMBLE_FILE.as_bytes(), p.to_text().as_bytes())).map_err(|e| match e {
            EngineError::ReceiverFailed(why) => {
                SstError::Incompatible(format!("the joiner refused this SST before any data was sent: {why}"))
            }
            e => SstError::Transfer(e),
        })?;
    Ok(s.protocol)
}

/// The donor's directories: the datadir, then its special directories.
fn donor_dirs(s: &Plan) -> Vec<PathBuf> {
    let mut dirs = vec![s.args.datadir.clone()];
    dirs.extend(s.layout.special.iter().map(|(_, d)| d.clone()));
    dirs
}

/// The server's version, from the running mysqld's own binary (only when
/// the parent is one: a test harness's parent must not be run).
fn server_version(parent: Option<u32>) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{}/exe", parent?)).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    if !(name.starts_with("mariadbd") || name.starts_with("mysqld")) {
        return None;
    }
    preflight::program_version(&exe)
}

/// Sends the announcement and waits for the joiner's answer; returns the
/// payload estimate and the protocol version the joiner speaks.
fn announce(s: &Plan, target: &str, token: &Token, cfg: &SendConfig, mode: Mode) -> Result<(u64, u16)> {
    let (bytes, parts) = preflight::payload(&donor_dirs(s));
    let context = [preflight::KEY_CONTEXT, token.as_bytes()].concat();
    let keys = match preflight::gather_keyring(&s.opts, &context) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("the joiner cannot check its encryption keys against this donor's: {e}");
            None
        }
    };
    let backup = if mode == Mode::Backup { find_program("mariadb-backup").ok().and_then(|p| preflight::program_version(&p)) } else { None };
    let p = Preamble {
        sluice: crate::version_line(),
        mode: mode.name().to_string(),
        bytes,
        parts,
        server: server_version(s.args.parent),
        backup,
        keys,
        ist: false,
    };
    let protocol = send_announcement(target, token, cfg, &p)?;
    tracing::info!(
        "the joiner accepted the SST: about {:.1} MiB to send{}",
        bytes as f64 / 1_048_576.0,
        p.server.as_deref().map(|v| format!(" from {}", v.trim())).unwrap_or_default()
    );
    Ok((bytes, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_shift_only_when_the_operator_did_not_fix_them() {
        let start = default_streams();
        assert_eq!(streams_bound(None, None), Some(sluice_engine::gears::default_max(start)));
        assert_eq!(streams_bound(Some(4), None), None, "streams set alone: fixed");
        assert_eq!(streams_bound(Some(4), Some(12)), Some(12));
        assert_eq!(streams_bound(None, Some(6)), Some(6));
    }
}
