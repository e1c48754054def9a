//! The donor: check that the joiner runs sluice, stream `mariadb-backup
//! --backup --stream=mbstream` to it over N streams as it is produced, and
//! print `done` only once the joiner has verified and synced everything
//! (shared/SST-PROTOCOL.md §3.2, without the stock 10 s sleep). With
//! `--bypass` (IST) only the state and the IST marker travel.

use std::io::Write;

use sluice_engine::Token;
use sluice_engine::send::{SendConfig, default_streams, send_streamed};

use crate::args::{ArgsError, Role};
use crate::backup::{Context, split_mysqld_args};
use crate::error::{Result, SstError};
use crate::mysqld::{self, Gtid, Protocol};
use crate::process::{Helper, find_program};
use crate::report::{self, Reporter};
use crate::session::{IST_MARKER, STATE_FILE, Setup, stdout_err};
use crate::transport;
use sluice_engine::progress::Progress;
use std::sync::Arc;

pub fn run(s: &Setup, proto: &mut Protocol<impl Write>) -> Result<()> {
    let addr = s.args.address.clone().ok_or(ArgsError::Missing { option: "--address" })?;
    let module = addr.module.clone().unwrap_or_default();
    let (copy_mode, token) = match (mysqld::token_in(&module), mysqld::copy_token_in(&module)) {
        (Some(t), _) => (false, t),
        (None, Some(t)) => (true, t),
        (None, None) => {
            return Err(SstError::Incompatible(format!(
                "the joiner at {} asked for SST module '{module}', which is not sluice's: the joiner runs a different SST method; set wsrep_sst_method=sluice on every node",
                addr.host
            )));
        }
    };
    let token: Token = token.parse()?;
    let joiner_mode = if copy_mode { "copy" } else { "backup" };
    if s.opts.mode != joiner_mode {
        tracing::warn!("the joiner runs [sst] mode={joiner_mode} and this donor mode={}; following the joiner", s.opts.mode);
    }
    let gtid_text = s.args.gtid.clone().ok_or(ArgsError::Missing { option: "--gtid" })?;
    let gtid: Gtid = gtid_text.parse().map_err(|_| ArgsError::Invalid { option: "--gtid", value: gtid_text.clone() })?;
    let state = mysqld::coordinates_line(&gtid, s.args.gtid_domain_id) + "\n";
    let target = format!("{}:{}", addr.host, addr.port_or_default());
    let t = transport::logged(&s.opts, Role::Donor, addr.host_unbracketed())?;
    let progress = Arc::new(Progress::default());
    let cfg = SendConfig {
        progress: Some(Arc::clone(&progress)),
        streams: s.opts.streams.unwrap_or_else(default_streams),
        compress: t.compress,
        seal_key: t.seal_key,
        filter: t.filter,
        tls: t.tls,
        rate_limit: t.rate_limit,
        sockopt: t.sockopt,
        ..SendConfig::default()
    };

    if s.args.bypass {
        tracing::info!("IST: sending only the state to {target}");
        proto.continue_().map_err(stdout_err)?;
        send_streamed(&target, &token, &cfg, |f| {
            f.file_bytes(STATE_FILE.as_bytes(), state.as_bytes())?;
            f.file_bytes(IST_MARKER.as_bytes(), b"1\n")
        })?;
        return proto.done(&gtid).map_err(stdout_err);
    }

    if copy_mode {
        let layout = crate::layout::resolve(&s.args, &split_mysqld_args(&s.args.mysqld_args), &s.opts);
        return crate::copy::donor(s, proto, &target, &token, &cfg, &layout);
    }
    let program = find_program("mariadb-backup")?;
    let base = s.opts.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    // Fresh private directories (random names, 0700, never an existing
    // one), removed when the donor exits or is signalled.
    let private =
        |prefix: &str| sluice_engine::cleanup::private_dir(&base, prefix).map_err(|e| SstError::io("creating a temporary directory", e));
    let (xtmp_dir, itmp_dir) = (private("sluice-sst-tmp-")?, private("sluice-sst-target-")?);
    let (xtmp, itmp) = (xtmp_dir.path().to_path_buf(), itmp_dir.path().to_path_buf());
    let ctx = Context { args: &s.args, opts: &s.opts, mysqld: split_mysqld_args(&s.args.mysqld_args), user: s.creds.user.as_deref() };
    let helper = Helper {
        program: &program,
        args: ctx.backup(&xtmp, &itmp),
        cwd: &s.args.datadir,
        password: s.creds.password.as_deref(),
        what: "mariadb-backup --backup",
    };
    let log = s.args.datadir.join("mariabackup.backup.log");
    let estimate = report::footprint(&s.args.datadir);
    progress.set_total(estimate);
    if s.progress == report::Sink::Mysqld {
        proto.total(estimate).map_err(stdout_err)?;
    }
    let reporter = Reporter::start(s.progress.clone(), "donor", Arc::clone(&progress));
    tracing::info!("streaming a backup to {target} over {} streams", cfg.streams);
    let sent = crate::manual::send_backup_stream(&target, &token, &cfg, &helper, &log, &s.children, &[(STATE_FILE, state.as_bytes())]);
    reporter.stop();
    let summary = sent?;
    report::note_time(&s.opts, "streaming the backup", summary.elapsed);
    tracing::info!("{}", report::summary_line("sent", &summary));
    proto.done(&gtid).map_err(stdout_err)
}
