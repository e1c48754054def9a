//! The joiner: listen, print `ready`, receive the donor's backup straight
//! into `<datadir>/.sst`, `--prepare` it there, set the old datadir content
//! (what `cpat` selects) aside, `--move-back`, sync, delete the old content,
//! print the coordinates (shared/SST-PROTOCOL.md §3.4).
//!
//! The old data is never lost to a failed SST: nothing is touched before
//! the new backup is received and prepared, and if placing it fails the
//! old content is put back exactly as it was ([`crate::aside`]). Until the
//! very end nothing marks the datadir complete: a failed receive leaves the
//! staging directory with the engine's incomplete-marker, a failed prepare
//! or move-back keeps it for diagnosis, and mysqld gets a non-zero exit
//! with no coordinates line.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sluice_engine::progress::Progress;
use sluice_engine::recv::Vet;
use sluice_engine::{Error as EngineError, ReceiveConfig, Receiver};

use crate::args::{ArgsError, Role};
use crate::aside::{self, ASIDE_DIR, Aside};
use crate::backup::Context;
use crate::copy;
use crate::datadir::{self, KeepPattern};
use crate::error::{Result, SstError};
use crate::layout::{self, Binlog};
use crate::mysqld::{self, Protocol};
use crate::plan::{IST_MARKER, Mode, PREAMBLE_FILE, Plan, STATE_FILE};
use crate::preflight::{self, Preamble, Space, Target};
use crate::process::Helper;
use crate::report;
use crate::status::Stage;
use crate::transport;

/// Removes a marker file when the joiner exits, however it exits.
struct Marker<'a>(&'a Path);

impl Drop for Marker<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// Files of this SST's own in a cleaned directory, never set aside or
/// removed as old data: the aside directory, the status file, the
/// announcement's directory.
struct Ours {
    status: Option<PathBuf>,
}

impl Ours {
    fn keeps(&self, p: &Path) -> bool {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name == ASIDE_DIR || name.starts_with(PREAMBLE_DIR_PREFIX) || self.status.as_deref() == Some(p)
    }
}

const PREAMBLE_DIR_PREFIX: &str = ".sluice-preamble-";

/// What the joiner decided from the donor's announcement.
#[derive(Debug)]
struct Decision {
    preamble: Preamble,
    clean_first: Option<String>,
}

/// Why the announcement was refused, typed for the exit code.
#[derive(Debug, Clone)]
enum Refusal {
    Space(String),
    Other(String),
}

/// The facts the joiner checks an announcement against, gathered before
/// it listens.
struct Facts {
    mode: Mode,
    staging: PathBuf,
    datadir: PathBuf,
    layout: layout::Layout,
    /// The old data, with the bytes each entry holds and its device.
    old: Vec<(u64, u64)>,
    low_space: crate::plan::LowSpace,
    backup: Option<(PathBuf, String)>,
    opts: crate::options::SstOptions,
    token: Arc<OnceLock<Vec<u8>>>,
}

impl Facts {
    fn targets(&self, p: &Preamble) -> std::io::Result<Vec<Target>> {
        let mut by_dev: BTreeMap<u64, Target> = BTreeMap::new();
        let mut add = |path: &Path, label: String, need: u64| -> std::io::Result<u64> {
            let (dev, avail) = preflight::fs_facts(path)?;
            by_dev.entry(dev).or_insert(Target { label, dev, avail, need: 0, old: 0 }).need += need;
            Ok(dev)
        };
        let sdev = add(&self.staging, format!("the staging directory {}", self.staging.display()), p.bytes)?;
        let mut rest = p.bytes;
        for (kind, dir) in &self.layout.special {
            let part = p.parts.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
            rest = rest.saturating_sub(part);
            if preflight::fs_facts(dir)?.0 != sdev {
                add(dir, format!("the {} directory {}", kind.name(), dir.display()), part)?;
            }
        }
        if preflight::fs_facts(&self.datadir)?.0 != sdev {
            add(&self.datadir, format!("the datadir {}", self.datadir.display()), rest)?;
        }
        for (bytes, dev) in &self.old {
            if let Some(t) = by_dev.get_mut(dev) {
                t.old += bytes;
            }
        }
        Ok(by_dev.into_values().collect())
    }

    /// Examines the announcement in `dir`.
    fn examine(&self, dir: &Path) -> std::result::Result<Decision, Refusal> {
        let other = Refusal::Other;
        let entries: Vec<_> = fs::read_dir(dir).map_err(|e| other(format!("reading the announcement: {e}")))?.flatten().collect();
        if entries.len() != 1 || entries[0].file_name() != PREAMBLE_FILE {
            return Err(other(
                "the donor sent no announcement (sizes, versions, keys) before its data: it runs an older sluice; upgrade sluice on the donor".into(),
            ));
        }
        let path = entries[0].path();
        if fs::symlink_metadata(&path).map_or(true, |m| !m.is_file() || m.len() > preflight::MAX_PREAMBLE) {
            return Err(other(format!("the donor's announcement is not a file of at most {} bytes", preflight::MAX_PREAMBLE)));
        }
        let text = fs::read_to_string(&path).map_err(|e| other(format!("reading the donor's announcement: {e}")))?;
        let p = Preamble::parse(&text).map_err(other)?;
        tracing::info!(
            "the donor runs {}; it announces {:.1} MiB in {} mode{}",
            p.sluice,
            p.bytes as f64 / 1_048_576.0,
            p.mode,
            p.server.as_deref().map(|v| format!(" from {}", v.trim())).unwrap_or_default()
        );
        if p.ist {
            return Ok(Decision { preamble: p, clean_first: None });
        }
        if p.mode != self.mode.name() {
            return Err(other(format!("the donor announces {} mode but this joiner asked for {} mode", p.mode, self.mode.name())));
        }
        if let Some((path, version)) = &self.backup {
            if let Some(w) = preflight::check_versions(&p, version, path).map_err(other)? {
                tracing::warn!("{w}");
            }
        }
        let token = self.token.get().map(Vec::as_slice).unwrap_or_default();
        let context = [preflight::KEY_CONTEXT, token].concat();
        let mine = preflight::gather_keyring(&self.opts, &context);
        if let Some(w) = preflight::check_keys(p.keys.as_ref(), mine, self.opts.file_key_management_filename.as_deref()).map_err(other)? {
            tracing::warn!("{w}");
        }
        let targets = self.targets(&p).map_err(|e| Refusal::Space(format!("cannot tell the free space of a target filesystem: {e}")))?;
        for t in &targets {
            tracing::info!(
                "space on {}: {:.1} MiB free, {:.1} MiB needed, {:.1} MiB of old data",
                t.label,
                t.avail as f64 / 1_048_576.0,
                t.need as f64 / 1_048_576.0,
                t.old as f64 / 1_048_576.0
            );
        }
        let clean_first = match preflight::decide_space(&targets, self.low_space).map_err(Refusal::Space)? {
            Space::Fits => None,
            Space::CleanFirst(w) => Some(w),
        };
        Ok(Decision { preamble: p, clean_first })
    }
}

pub fn run(s: &Plan, proto: &mut Protocol<impl Write>) -> Result<()> {
    let datadir = &s.args.datadir;
    fs::create_dir_all(datadir).map_err(|e| SstError::io(format!("creating the datadir {}", datadir.display()), e))?;
    let addr = s.args.address.clone().ok_or(ArgsError::Missing { option: "--address" })?;
    let in_progress = datadir.join("sst_in_progress");
    if in_progress.exists() {
        tracing::warn!("stale sst_in_progress file in {}", datadir.display());
    }
    crate::fresh::write(&in_progress, b"", 0o644).map_err(|e| SstError::io(format!("creating {}", in_progress.display()), e))?;
    let _marker = Marker(&in_progress);
    let staging_base = s.args.tmpdir.clone().unwrap_or_else(|| datadir.clone());
    let staging = staging_base.join(".sst");
    if staging.exists() {
        tracing::warn!("removing the stale staging directory {}", staging.display());
        fs::remove_dir_all(&staging).map_err(|e| SstError::io(format!("removing {}", staging.display()), e))?;
    }

    let keep = match &s.opts.cpat {
        Some(p) => KeepPattern::parse(p).map_err(|e| SstError::Incompatible(format!("[sst] cpat {p:?} is not a valid pattern: {e}")))?,
        None => KeepPattern::stock_default(),
    };
    // The cleanup runs while the backup sits in the staging directory: a
    // pattern that would delete it is refused before anything starts.
    if staging.parent() == Some(datadir.as_path()) && !keep.keeps(&staging.to_string_lossy()) {
        return Err(SstError::Incompatible(format!(
            "[sst] cpat {:?} would delete the staging directory {}; add \\.sst to the pattern (the default keeps it)",
            keep.source(),
            staging.display()
        )));
    }
    for w in keep.check(datadir) {
        tracing::warn!("{w}");
    }
    let layout = &s.layout;
    let mut dirs = vec![datadir.clone()];
    for (_, d) in &layout.special {
        fs::create_dir_all(d).map_err(|e| SstError::io(format!("creating {}", d.display()), e))?;
        dirs.push(d.clone());
    }
    let ours = Ours { status: s.monitor.path().map(Path::to_path_buf) };
    // An SST killed while the old data was set aside left it in .sst-old:
    // put it back before anything else.
    let recovered =
        aside::recover(&aside_dirs(&dirs, layout.binlog.as_ref()), |d| placed_in(d, &dirs, &keep, datadir, layout.binlog.as_ref(), &ours))
            .map_err(|e| SstError::io("putting back the old data an interrupted SST had set aside", e))?;
    if recovered > 0 {
        tracing::warn!("an earlier SST was interrupted with the old data set aside: put {recovered} old entries back");
    }
    let copy_mode = s.mode == Mode::Copy;
    let program = if copy_mode { None } else { Some(s.prepare_program()?) };
    let old = old_data(&dirs, &keep, datadir, layout.binlog.as_ref(), &ours)?;

    let port = addr.port_or_default();
    let timeout = s.opts.sst_initial_timeout;
    let t = transport::logged(&s.opts, Role::Joiner, addr.host_unbracketed())?;
    let token_slot = Arc::new(OnceLock::new());
    let old_allocated: Vec<(u64, u64)> = old.iter().map(|p| preflight::allocated(p)).collect();
    let old_bytes: u64 = old_allocated.iter().map(|(b, _)| b).sum();
    let facts = Facts {
        mode: s.mode,
        staging: staging.clone(),
        datadir: datadir.clone(),
        layout: layout.clone(),
        old: old_allocated,
        low_space: s.low_space,
        backup: program.as_ref().map(|p| (p.clone(), preflight::program_version(p).unwrap_or_default())),
        opts: s.opts.clone(),
        token: Arc::clone(&token_slot),
    };
    let decided: Arc<Mutex<Option<std::result::Result<Decision, Refusal>>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&decided);
    let failing = s.monitor.failing_now();
    let vet = Vet(Arc::new(move |dir: &Path| {
        let d = facts.examine(dir);
        let answer = match &d {
            Ok(_) => Ok(()),
            Err(Refusal::Space(why) | Refusal::Other(why)) => {
                // Said and recorded before the donor hears it: the donor
                // then fails, and this node's mysqld, told by the cluster,
                // may end this process before it returns.
                tracing::error!("refusing the donor's SST: {why}");
                failing(why);
                Err(why.clone())
            }
        };
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(d);
        answer
    }));
    let base = ReceiveConfig {
        first_connect_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
        seal_key: t.seal_key,
        unfilter: t.unfilter,
        tls: t.tls,
        sockopt: t.sockopt,
        resume_window: Duration::from_secs(s.opts.resume_window),
        ..ReceiveConfig::default()
    };
    // The announcement: one small file, examined before the verdict.
    let announce_cfg = ReceiveConfig { max_entries: 4, vet: Some(vet), ..base.clone() };
    let receiver = Receiver::bind(&format!("{}:{port}", addr.host), announce_cfg)?;
    let _ = token_slot.set(receiver.token().as_bytes().to_vec());
    let token = receiver.token().to_hex();
    let module = if copy_mode { mysqld::copy_module_for(&token) } else { mysqld::module_for(&token) };
    proto.ready(&addr.host, port, &module)?;
    tracing::info!("listening on {}:{port}; waiting for the donor", addr.host);

    let progress = Arc::new(Progress::default());
    // A copy-mode donor may send only what the old datadir lacks: its
    // files are the base it compares with (read only; the new data goes
    // to the staging directory, and the old stays until it is placed).
    let delta = (s.opts.delta != Some(false)).then(|| sluice_engine::delta::Base::Dir(datadir.clone()));
    let data_cfg = ReceiveConfig { progress: Some(Arc::clone(&progress)), delta, ..base };
    let announce_dir = sluice_engine::cleanup::private_dir(&staging_base, PREAMBLE_DIR_PREFIX)
        .map_err(|e| SstError::io(format!("creating a private directory in {}", staging_base.display()), e))?;
    let first = receiver.run_then(announce_dir.path(), data_cfg);
    drop(announce_dir);
    let decision = decided.lock().unwrap_or_else(PoisonError::into_inner).take();
    let receiver = match (first, decision) {
        (Ok((_, r)), Some(Ok(d))) => {
            let mut r = r;
            if let Some(w) = &d.clean_first {
                tracing::warn!("{w}");
                let removed = clean_old(&old)?;
                tracing::warn!("deleted {removed} old entries before receiving");
                r = r.without_delta();
            } else if s.opts.delta.is_none() && old_bytes < d.preamble.bytes / 10 {
                // Little old data (a fresh node): the SST runs as a full one.
                tracing::info!(
                    "delta off: the old datadir holds {:.1} MiB, less than a tenth of the {:.1} MiB announced",
                    old_bytes as f64 / 1_048_576.0,
                    d.preamble.bytes as f64 / 1_048_576.0
                );
                r = r.without_delta();
            }
            s.monitor.stage(Stage::Receiving, Some(Arc::clone(&progress)), d.preamble.bytes);
            progress.set_total(d.preamble.bytes);
            r
        }
        (_, Some(Err(Refusal::Space(why)))) => return Err(SstError::NoSpace(why)),
        (_, Some(Err(Refusal::Other(why)))) | (Err(EngineError::Refused(why)), _) => return Err(SstError::Incompatible(why)),
        (Err(e), _) => return Err(e.into()),
        (Ok(_), None) => unreachable!("the vet runs on every successful session"),
    };
    let summary = receiver.run(&staging)?;
    report::note_time(&s.opts, "receiving the backup", summary.elapsed);
    tracing::info!("{}", report::summary_line("received", &summary));

    let state_path = staging.join(STATE_FILE);
    let state = fs::read_to_string(&state_path)
        .map_err(|e| SstError::BadBackup(format!("the donor sent no {STATE_FILE} ({e}); is it an older or foreign sluice?")))?;
    let (gtid, domain) =
        mysqld::parse_galera_info(&state).map_err(|e| SstError::BadBackup(format!("the donor's state is invalid: {e}")))?;
    fs::remove_file(&state_path).map_err(|e| SstError::io(format!("removing {}", state_path.display()), e))?;

    if staging.join(IST_MARKER).exists() {
        tracing::info!("'{IST_MARKER}' received from donor: running IST");
        fs::remove_dir_all(&staging).map_err(|e| SstError::io(format!("removing {}", staging.display()), e))?;
        return proto.coordinates(&gtid, domain);
    }
    let checkpoints =
        ["mariadb_backup_checkpoints", "xtrabackup_checkpoints"].iter().any(|n| fs::metadata(staging.join(n)).is_ok_and(|m| m.len() > 0));
    if !copy_mode && !checkpoints {
        return Err(SstError::BadBackup(format!(
            "the backup in {} has no mariadb_backup_checkpoints: the donor's mariadb-backup did not finish",
            staging.display()
        )));
    }

    let ctx = Context { args: &s.args, opts: &s.opts, mysqld: s.mysqld.clone(), user: None };
    if let Some(program) = &program {
        // Prepared in staging while the old data is still in place: a
        // failed prepare (a redo format this mariadb-backup cannot read, a
        // missing encryption key) costs nothing but time.
        s.monitor.stage(Stage::Preparing, None, 0);
        let prepare = Helper { program, args: ctx.prepare(&staging), cwd: &staging, password: None, what: "mariadb-backup --prepare" };
        let t = Instant::now();
        if let Err(e) = prepare.run_logged(&datadir.join("mariabackup.prepare.log"), &s.children) {
            tracing::error!("the old data is intact: {} was not touched", datadir.display());
            return Err(e);
        }
        s.monitor.helper_done();
        tracing::info!("mariadb-backup --prepare took {:.1} s", t.elapsed().as_secs_f64());
        report::note_time(&s.opts, "mariadb-backup --prepare", t.elapsed());
    }

    // Set the old content aside (renames on its own filesystem) rather than
    // deleting it, until the new content is in place and synced.
    s.monitor.stage(Stage::Moving, None, 0);
    let victims = old_data(&dirs, &keep, datadir, layout.binlog.as_ref(), &ours)?;
    let mut old = Aside::set(&victims).map_err(|e| SstError::io("setting the old datadir content aside (nothing was lost)", e))?;
    tracing::info!(
        "set {} old entries aside in {}",
        old.len(),
        aside_dirs(&dirs, layout.binlog.as_ref()).iter().map(|d| d.join(ASIDE_DIR).display().to_string()).collect::<Vec<_>>().join(", ")
    );
    let placed = place_new(s, &staging, datadir, layout, program.as_deref(), &ctx, copy_mode).and_then(|()| sync_dirs(&dirs));
    if let Err(e) = placed {
        let new =
            dirs.iter().map(|d| placed_in(d, &dirs, &keep, datadir, layout.binlog.as_ref(), &ours)).collect::<std::io::Result<Vec<_>>>();
        let back = new.and_then(|n| old.put_back(&n.concat()));
        match back {
            Ok(()) => tracing::error!("the old data was put back: {} is as it was before this SST", datadir.display()),
            Err(b) => {
                tracing::error!("could not put all the old data back ({b}); what remains of it is in {}/{ASIDE_DIR}", datadir.display());
            }
        }
        return Err(e);
    }
    s.monitor.helper_done();
    old.discard().map_err(|e| SstError::io("removing the old data set aside", e))?;
    fs::remove_dir_all(&staging).map_err(|e| SstError::io(format!("removing {}", staging.display()), e))?;
    proto.coordinates(&gtid, domain)
}

/// The old data: what the cleanup selects in `dirs` and the binary logs,
/// without this SST's own files.
fn old_data(dirs: &[PathBuf], keep: &KeepPattern, datadir: &Path, binlog: Option<&Binlog>, ours: &Ours) -> Result<Vec<PathBuf>> {
    let mut victims = datadir::doomed(dirs, keep).map_err(|e| SstError::io("listing the datadir", e))?;
    if let Some(b) = binlog {
        victims.extend(binlog_files(datadir, b));
    }
    victims.retain(|v| !ours.keeps(v));
    victims.sort();
    victims.dedup();
    Ok(victims)
}

/// Deletes the old data (`[sst] low-space=clean`), as the stock joiner does.
fn clean_old(old: &[PathBuf]) -> Result<usize> {
    for p in old {
        let r = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(_) => continue,
        };
        r.map_err(|e| SstError::io(format!("removing {}", p.display()), e))?;
    }
    Ok(old.len())
}

/// Puts the received (and, in backup mode, prepared) data in place.
fn place_new(
    s: &Plan,
    staging: &Path,
    datadir: &Path,
    layout: &layout::Layout,
    program: Option<&Path>,
    ctx: &Context<'_>,
    copy_mode: bool,
) -> Result<()> {
    if copy_mode {
        let t = Instant::now();
        let moved = copy::move_into_place(staging, datadir, layout)?;
        tracing::info!("moved {moved} entries into place in {:.1} s", t.elapsed().as_secs_f64());
        return Ok(());
    }
    let program = program.expect("backup mode found mariadb-backup");
    if let Some(b) = &layout.binlog {
        move_binlogs(staging, b)?;
    }
    let move_back = Helper { program, args: ctx.move_back(staging), cwd: datadir, password: None, what: "mariadb-backup --move-back" };
    let t = Instant::now();
    move_back.run_logged(&datadir.join("mariabackup.move.log"), &s.children)?;
    tracing::info!("mariadb-backup --move-back took {:.1} s", t.elapsed().as_secs_f64());
    report::note_time(&s.opts, "mariadb-backup --move-back", t.elapsed());
    Ok(())
}

/// Makes everything placed in `dirs` durable before the old data goes.
fn sync_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        let f = fs::File::open(d).map_err(|e| SstError::io(format!("opening {}", d.display()), e))?;
        sluice_engine::backend::sys::syncfs(&f).map_err(|e| SstError::io(format!("syncing {}", d.display()), e))?;
    }
    Ok(())
}

/// The directories that may hold a `.sst-old`: the datadir, the special
/// directories and the binary log directory.
fn aside_dirs(dirs: &[PathBuf], binlog: Option<&Binlog>) -> Vec<PathBuf> {
    let mut out = dirs.to_vec();
    if let Some(b) = binlog {
        out.push(b.dir().to_path_buf());
    }
    out.sort();
    out.dedup();
    out
}

/// What an SST placed in `dir` (everything the cleanup would select there,
/// and the binary logs), to remove before the old data comes back.
fn placed_in(
    dir: &Path,
    dirs: &[PathBuf],
    keep: &KeepPattern,
    datadir: &Path,
    binlog: Option<&Binlog>,
    ours: &Ours,
) -> std::io::Result<Vec<PathBuf>> {
    let mut out = if dirs.iter().any(|d| d == dir) { datadir::doomed(&[dir.to_path_buf()], keep)? } else { Vec::new() };
    if let Some(b) = binlog {
        out.extend(binlog_files(datadir, b).into_iter().filter(|f| f.parent() == Some(dir)));
    }
    out.retain(|p| !ours.keeps(p));
    Ok(out)
}

/// The binary log files of `b` that exist: `<base>.state`, every file the
/// index lists, the index, and `<base>.NNNNNN` files.
fn binlog_files(datadir: &Path, b: &Binlog) -> Vec<PathBuf> {
    let mut state = b.base.clone().into_os_string();
    state.push(".state");
    let mut files = vec![PathBuf::from(state)];
    if let Ok(index) = fs::read_to_string(&b.index) {
        files.extend(index.lines().filter(|l| !l.trim().is_empty()).map(|l| {
            let p = Path::new(l.trim());
            if p.is_absolute() { p.to_path_buf() } else { datadir.join(p) }
        }));
    }
    files.push(b.index.clone());
    if let Ok(rd) = fs::read_dir(b.dir()) {
        files.extend(rd.flatten().filter(|e| b.is_log_file(&e.file_name().to_string_lossy())).map(|e| e.path()));
    }
    files.retain(|f| fs::symlink_metadata(f).is_ok());
    files.sort();
    files.dedup();
    files
}

/// Moves the binary logs that came with the backup to the binlog directory
/// and lists them in the index, as the stock joiner does after prepare.
fn move_binlogs(staging: &Path, b: &Binlog) -> Result<()> {
    let info = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"].iter().find_map(|n| fs::read_to_string(staging.join(n)).ok());
    let mut files: Vec<String> = match info {
        Some(text) => text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect(),
        None => Vec::new(),
    };
    if let Ok(rd) = fs::read_dir(staging) {
        files.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| b.is_log_file(n)));
    }
    files.sort();
    files.dedup();
    let present: Vec<String> = files.into_iter().filter(|f| !f.contains('/') && staging.join(f).is_file()).collect();
    if present.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(b.dir()).map_err(|e| SstError::io(format!("creating {}", b.dir().display()), e))?;
    if let Some(p) = b.index.parent() {
        fs::create_dir_all(p).map_err(|e| SstError::io(format!("creating {}", p.display()), e))?;
    }
    let mut index = crate::fresh::append(&b.index).map_err(|e| SstError::io(format!("opening {}", b.index.display()), e))?;
    for f in present {
        let (from, to) = (staging.join(&f), b.dir().join(&f));
        if fs::rename(&from, &to).is_err() {
            // Another filesystem: copy, then remove.
            crate::fresh::copy(&from, &to).map_err(|e| SstError::io(format!("copying {} to {}", from.display(), to.display()), e))?;
            fs::remove_file(&from).map_err(|e| SstError::io(format!("removing {}", from.display()), e))?;
        }
        writeln!(index, "{}", to.display()).map_err(|e| SstError::io(format!("writing {}", b.index.display()), e))?;
        tracing::info!("moved binary log {f} to {}", b.dir().display());
    }
    Ok(())
}
