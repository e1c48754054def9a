//! A real Galera cluster on loopback for tests and the SST benchmark:
//! mariadbd processes started by this harness (own datadirs, option files,
//! ports and sockets), stopped by PID, with the SST method found through a
//! PATH entry that holds `wsrep_sst_sluice`. Pitfalls it handles are listed
//! in shared/GALERA-TESTING.md: a fixed `env -i` environment, `user=root`,
//! explicit gcomm/IST/SST ports, zombie-aware liveness, logs kept on failure.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod netns;

pub const MARIADBD: &str = "/usr/sbin/mariadbd";
pub const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

/// Why the cluster tests cannot run here, if they cannot. Under `CI=true`
/// a missing prerequisite fails the test instead (CI proves it ran
/// everything); only an explicit `SLUICE_SKIP_CLUSTER` skips there.
pub fn unavailable() -> Option<String> {
    let why = missing()?;
    assert!(
        std::env::var("CI").as_deref() != Ok("true") || std::env::var_os("SLUICE_SKIP_CLUSTER").is_some(),
        "a cluster-test prerequisite is missing in CI: {why}"
    );
    Some(why)
}

fn missing() -> Option<String> {
    if std::env::var_os("SLUICE_SKIP_CLUSTER").is_some() {
        return Some("SLUICE_SKIP_CLUSTER is set".into());
    }
    // The effective uid, from /proc.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("needs root (mariadbd runs as user=root in the harness)".into());
    }
    for p in [MARIADBD, GALERA, "/usr/bin/mariadb-backup", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing (apt-get install mariadb-server galera-4 mariadb-backup; .ci/run does)"));
        }
    }
    None
}

/// One node.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub cnf: PathBuf,
    pub error_log: PathBuf,
    pub sql_port: u16,
    pub gcomm_port: u16,
    pub ist_port: u16,
    pub sst_port: u16,
    /// The address Galera, IST and SST use (127.0.0.1 unless the node has
    /// a namespace of its own).
    pub addr: String,
    /// The address the node receives an SST on (a link of its own when
    /// the node has a namespace).
    pub sst_addr: String,
    /// The network namespace mariadbd runs in, if not this one.
    pub ns: Option<String>,
    child: Option<Child>,
    install_args: Vec<String>,
}

impl Node {
    /// The pid of this node's mariadbd, if started.
    pub fn child_id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Options for a cluster. In `mysqld` and `install_args`, `{node}` stands
/// for the node's directory; in `mysqld`, `{idx}` for its number (1, 2).
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: usize,
    /// First of a block of ports reserved for this cluster (SQL, gcomm,
    /// IST and SST ports are derived from it).
    pub base_port: u16,
    pub sst_method: String,
    /// Extra `[mysqld]` lines for every node.
    pub mysqld: String,
    /// Galera's `gcache.size` (a node that was down while more was
    /// written needs an SST instead of an IST).
    pub gcache: String,
    /// `[sst]` lines for every node.
    pub sst: String,
    /// `wsrep_sst_auth` per node (index 0 is the donor in these tests).
    pub auth: Vec<String>,
    /// Extra `mariadb-install-db` arguments (InnoDB layout options).
    pub install_args: Vec<String>,
    /// Extra environment for mariadbd (and so for the SST scripts).
    pub env: Vec<(String, String)>,
    /// Run mariadbd as this OS user instead of root (the stock rsync
    /// method needs it: its daemon drops to `nobody` as root).
    pub os_user: Option<String>,
    /// RLIMIT_NOFILE (soft and hard) for mariadbd and so for its SST
    /// scripts.
    pub nofile: Option<u64>,
    /// Two hosts: node 1 and node 2 each in a network namespace of their
    /// own, joined by a veth pair on `10.<net>.0.0/24` (see [`netns`]);
    /// Galera, IST and SST traffic crosses the veth, SQL stays on each
    /// namespace's loopback and the harness's client uses the sockets.
    pub netns: Option<u8>,
}

impl Spec {
    pub fn new(base_port: u16) -> Self {
        Self {
            nodes: 2,
            base_port,
            sst_method: "sluice".into(),
            mysqld: String::new(),
            sst: String::new(),
            auth: vec!["sstuser:sstpass".into(); 2],
            install_args: Vec::new(),
            env: Vec::new(),
            os_user: None,
            nofile: None,
            netns: None,
            gcache: "128M".into(),
        }
    }
}

/// A running (or startable) cluster; every mariadbd is stopped on drop.
#[derive(Debug)]
pub struct Cluster {
    pub root: PathBuf,
    env: Vec<(String, String)>,
    os_user: Option<String>,
    nofile: Option<u64>,
    pub nodes: Vec<Node>,
    pub bin_dir: PathBuf,
    keep: bool,
    /// The namespaces of a two-host cluster; declared last, so it is
    /// removed after `drop` has stopped every node.
    pub rig: Option<netns::Rig>,
}

impl Cluster {
    /// Lays out the nodes under `root` (created empty).
    pub fn new(root: &Path, spec: &Spec, sluice: &Path) -> Self {
        let _ = fs::remove_dir_all(root);
        let bin_dir = root.join("sst-bin");
        fs::create_dir_all(&bin_dir).unwrap();
        std::os::unix::fs::symlink(sluice, bin_dir.join("wsrep_sst_sluice")).unwrap();
        let b = spec.base_port;
        let n = spec.nodes as u16;
        let rig = spec.netns.map(|net| {
            assert_eq!(n, 2, "a cluster in network namespaces has two nodes");
            let mut rig = netns::Rig::new(&format!("c{b}"), net);
            // The SST gets a link of its own: taking it down (a fault
            // test) must not partition a two-node cluster, which would
            // leave the donor without quorum; with a third node that is
            // what a shared link does too.
            rig.add_link(&format!("t{b}"), net + 1);
            rig
        });
        let addr = |i: u16| rig.as_ref().map_or_else(|| "127.0.0.1".to_string(), |r| r.addr[usize::from(i)].clone());
        let sst_addr = |i: u16| {
            rig.as_ref().and_then(|r| r.second.as_ref()).map_or_else(|| "127.0.0.1".to_string(), |l| l.addr[usize::from(i)].clone())
        };
        let gcomm: Vec<String> = (0..n).map(|i| format!("{}:{}", addr(i), b + 10 + i)).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = root.join(format!("node{}", i + 1));
            let datadir = dir.join("data");
            fs::create_dir_all(&datadir).unwrap();
            let node = Node {
                name: format!("node{}", i + 1),
                socket: dir.join("mysqld.sock"),
                cnf: dir.join("my.cnf"),
                error_log: dir.join("error.log"),
                sql_port: b + i,
                gcomm_port: b + 10 + i,
                ist_port: b + 20 + i,
                sst_port: b + 30 + i,
                addr: addr(i),
                sst_addr: sst_addr(i),
                ns: rig.as_ref().map(|r| r.ns[usize::from(i)].clone()),
                install_args: spec.install_args.iter().map(|a| a.replace("{node}", &dir.to_string_lossy())).collect(),
                dir,
                datadir,
                child: None,
            };
            let auth = spec.auth.get(i as usize).cloned().unwrap_or_default();
            let cnf = format!(
                "[mysqld]\nuser={user}\ndatadir={data}\nsocket={sock}\nport={port}\npid-file={dir}/mysqld.pid\nlog-error={log}\n\
                 bind-address=127.0.0.1\nskip-name-resolve\nbinlog_format=ROW\ndefault_storage_engine=InnoDB\n\
                 innodb_autoinc_lock_mode=2\ninnodb_buffer_pool_size=256M\ninnodb_log_file_size=96M\n\
                 innodb_flush_log_at_trx_commit=2\nwsrep_on=ON\nwsrep_provider={GALERA}\nwsrep_cluster_name=sluice_test\n\
                 wsrep_cluster_address=gcomm://{gcomm}\nwsrep_node_address={a}\nwsrep_node_name={name}\n\
                 wsrep_provider_options=\"gmcast.listen_addr=tcp://{a}:{gp};ist.recv_addr={a}:{ip};gcache.size={gcache}\"\n\
                 wsrep_sst_method={method}\nwsrep_sst_receive_address={sa}:{sp}\nwsrep_sst_auth={auth}\n{extra}\n\
                 [sst]\nsst-log-archive-dir={dir}/sst_log_archive\n{sst}\n",
                user = spec.os_user.as_deref().unwrap_or("root"),
                data = node.datadir.display(),
                sock = node.socket.display(),
                port = node.sql_port,
                dir = node.dir.display(),
                log = node.error_log.display(),
                gcomm = gcomm.join(","),
                name = node.name,
                a = node.addr,
                sa = node.sst_addr,
                gp = node.gcomm_port,
                ip = node.ist_port,
                method = spec.sst_method,
                sp = node.sst_port,
                extra = spec.mysqld.replace("{node}", &node.dir.to_string_lossy()).replace("{idx}", &(i + 1).to_string()),
                sst = spec.sst,
                gcache = spec.gcache,
            );
            fs::write(&node.cnf, cnf).unwrap();
            nodes.push(node);
        }
        let c = Self {
            root: root.to_path_buf(),
            env: spec.env.clone(),
            os_user: spec.os_user.clone(),
            nofile: spec.nofile,
            nodes,
            bin_dir,
            keep: std::env::var_os("SLUICE_KEEP_CLUSTER").is_some(),
            rig,
        };
        c.give_to_os_user(&c.root);
        c
    }

    /// Hands `path` (recursively) to the OS user mariadbd runs as, if not root.
    fn give_to_os_user(&self, path: &Path) {
        if let Some(u) = &self.os_user {
            let ok = Command::new("chown").args(["-R", &format!("{u}:{u}")]).arg(path).status().is_ok_and(|s| s.success());
            assert!(ok, "chown {} to {u} failed", path.display());
        }
    }

    /// Switches node `i` to another SST method (takes effect at its next
    /// start; the joiner's method decides which script both nodes run).
    pub fn set_sst_method(&self, i: usize, method: &str) {
        let cnf = fs::read_to_string(&self.nodes[i].cnf).unwrap();
        let out: Vec<String> = cnf
            .lines()
            .map(|l| if l.starts_with("wsrep_sst_method=") { format!("wsrep_sst_method={method}") } else { l.to_string() })
            .collect();
        fs::write(&self.nodes[i].cnf, out.join("\n") + "\n").unwrap();
    }

    /// Sets `key=value` in node `i`'s `[sst]` section, replacing the line
    /// that sets `key` (takes effect at its next SST).
    pub fn set_sst_option(&self, i: usize, key: &str, value: &str) {
        let cnf = fs::read_to_string(&self.nodes[i].cnf).unwrap();
        let prefix = format!("{key}=");
        let mut out: Vec<String> = cnf.lines().filter(|l| !l.starts_with(&prefix)).map(str::to_string).collect();
        let at = out.iter().position(|l| l == "[sst]").expect("an [sst] section") + 1;
        out.insert(at, format!("{key}={value}"));
        fs::write(&self.nodes[i].cnf, out.join("\n") + "\n").unwrap();
    }

    /// Empties node `i`'s datadir (a joiner that needs a full SST).
    pub fn wipe(&self, i: usize) {
        let d = &self.nodes[i].datadir;
        let _ = fs::remove_dir_all(d);
        fs::create_dir_all(d).unwrap();
        self.give_to_os_user(d);
    }

    /// Initialises node `i`'s datadir (the bootstrap node only; joiners
    /// get theirs by SST).
    pub fn install(&self, i: usize) {
        let n = &self.nodes[i];
        // Its own temporary directory: the bootstrap's temporary Aria
        // tables in a /tmp shared with other clusters of the suite were
        // seen to vanish under it ("Error on delete of '/tmp/#sql-temptable-…'").
        let tmp = n.dir.join("install-tmp");
        fs::create_dir_all(&tmp).unwrap();
        self.give_to_os_user(&tmp);
        let run = || {
            Command::new("mariadb-install-db")
                .args(["--no-defaults", "--skip-test-db", "--auth-root-authentication-method=socket"])
                .arg(format!("--user={}", self.os_user.as_deref().unwrap_or("root")))
                .arg(format!("--datadir={}", n.datadir.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .args(&n.install_args)
                .output()
                .unwrap()
        };
        let mut out = run();
        if !out.status.success() {
            // Say so, and try once more on clean directories: the datadir
            // and the special directories the install arguments name (an
            // undo tablespace left there makes the retry fail).
            eprintln!("mariadb-install-db failed once, retrying: {}", String::from_utf8_lossy(&out.stderr));
            let special =
                n.install_args.iter().filter_map(|a| a.split_once('=')).map(|(_, v)| PathBuf::from(v)).filter(|p| p.starts_with(&n.dir));
            for d in std::iter::once(n.datadir.clone()).chain(special) {
                let _ = fs::remove_dir_all(&d);
                fs::create_dir_all(&d).unwrap();
                self.give_to_os_user(&d);
            }
            out = run();
        }
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Starts mariadbd for node `i` (bootstrapping a new cluster if asked).
    pub fn start(&mut self, i: usize, bootstrap: bool) -> Instant {
        let n = &mut self.nodes[i];
        let console = fs::File::create(n.dir.join("console.log")).unwrap();
        // `ip netns exec` and prlimit exec what follows: the child's pid
        // is mariadbd's.
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &n.ns {
            argv.extend(["/usr/bin/ip", "netns", "exec", ns].map(String::from));
        }
        if let Some(n) = self.nofile {
            argv.extend(["/usr/bin/prlimit".to_string(), format!("--nofile={n}:{n}"), "--".into()]);
        }
        argv.push(MARIADBD.into());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c.env_clear()
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin_dir.display()))
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("TZ", "UTC")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg(format!("--defaults-file={}", n.cnf.display()));
        if bootstrap {
            c.arg("--wsrep-new-cluster");
        }
        let started = Instant::now();
        n.child = Some(c.stdin(Stdio::null()).stdout(console.try_clone().unwrap()).stderr(console).spawn().unwrap());
        started
    }

    /// Whether node `i`'s mariadbd still runs (an exited child is reaped).
    pub fn running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs SQL on node `i` as root over its socket; returns the output
    /// (tab-separated, no headers).
    pub fn sql(&self, i: usize, q: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.nodes[i].socket.display()))
            .arg("-e")
            .arg(q)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
        }
    }

    /// Runs a script of SQL statements on node `i` through the client's
    /// standard input (for scripts larger than an argument may be).
    pub fn sql_script(&self, i: usize, script: &str) -> Result<(), String> {
        let mut child = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.nodes[i].socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), script.as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string()) }
    }

    /// Waits until node `i` reports `Synced`; on failure the error carries
    /// the tail of its error log.
    pub fn wait_synced(&mut self, i: usize, timeout: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if !self.running(i) {
                return Err(format!("{} exited; error log tail:\n{}", self.nodes[i].name, self.log_tail(i, 40)));
            }
            if let Ok(v) =
                self.sql(i, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='wsrep_local_state_comment'")
            {
                if v == "Synced" {
                    return Ok(t.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{} not Synced within {timeout:?}; error log tail:\n{}", self.nodes[i].name, self.log_tail(i, 40)))
    }

    /// Waits until node `i`'s mariadbd has exited after a failed SST. A
    /// joiner whose state transfer failed aborts; galera-4's abort now and
    /// then hangs with two threads closing gcomm at once (seen on 10.11.19),
    /// so once the log says the node must abort and 20 s have passed, the
    /// process is killed: the SST's outcome is what these tests check.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let t = Instant::now();
        let mut doomed_at = None;
        while t.elapsed() < timeout {
            if !self.running(i) {
                return true;
            }
            let log = self.error_log(i);
            // Only the latest SST counts (a node's log spans its restarts).
            let latest = log.rfind("SST started on joiner").map_or("", |at| &log[at..]);
            if doomed_at.is_none() && latest.contains("Need to abort") {
                doomed_at = Some(Instant::now());
            }
            if doomed_at.is_some_and(|d| d.elapsed() > Duration::from_secs(20)) {
                eprintln!("{}: mariadbd hung in its abort; killing it", self.nodes[i].name);
                if let Some(mut c) = self.nodes[i].child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = fs::read_to_string(&self.nodes[i].error_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn error_log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].error_log).unwrap_or_default()
    }

    /// Node `i`'s error log once it contains `needle`, or as it is after
    /// `timeout`: the two nodes' SST processes end independently, so a
    /// donor may log its own failure after the joiner has already exited.
    pub fn error_log_with(&self, i: usize, needle: &str, timeout: Duration) -> String {
        let t = Instant::now();
        loop {
            let log = self.error_log(i);
            if log.contains(needle) || t.elapsed() > timeout {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops node `i`: SIGTERM, then SIGKILL after 60 s.
    pub fn stop(&mut self, i: usize) {
        let Some(mut c) = self.nodes[i].child.take() else { return };
        if !matches!(c.try_wait(), Ok(None)) {
            return;
        }
        let _ = sluice_engine::backend::sys::kill(c.id(), libc::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// CPU seconds (user + system) of node `i`'s reaped children so far:
    /// the SST scripts and everything they waited for (mariadb-backup,
    /// socat, compressors, sluice).
    pub fn children_cpu(&self, i: usize) -> f64 {
        let Some(pid) = self.nodes[i].child_id() else { return 0.0 };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command; cutime and cstime are
        // the 16th and 17th of the whole line.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        // rest starts at field 3 (state, not a number, skipped by the parse).
        let ticks = f.get(12).copied().unwrap_or(0.0) + f.get(13).copied().unwrap_or(0.0);
        ticks / 100.0
    }

    /// Runs `program` in node `i`'s network namespace (or here).
    pub fn on_node(&self, i: usize, program: &str) -> Command {
        match (&self.rig, &self.nodes[i].ns) {
            (Some(r), Some(_)) => r.exec(i, program),
            _ => Command::new(program),
        }
    }

    /// Creates the SST user on node `i` with what mariadb-backup needs.
    pub fn create_sst_user(&self, i: usize) {
        self.sql(
            i,
            "CREATE USER 'sstuser'@'localhost' IDENTIFIED BY 'sstpass'; \
             GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'sstuser'@'localhost'; \
             CREATE USER 'sstuser'@'127.0.0.1' IDENTIFIED BY 'sstpass'; \
             GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'sstuser'@'127.0.0.1';",
        )
        .unwrap();
    }

    /// Loads about `mib` MiB into `sb`: a BLOB table of random bytes
    /// (incompressible), a text table (compressible), both with a secondary
    /// index, and a table of small rows.
    pub fn load(&self, i: usize, mib: u64) {
        self.sql(
            i,
            "CREATE DATABASE sb; \
             CREATE TABLE sb.blobs (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, b LONGBLOB, KEY (k)) ENGINE=InnoDB; \
             CREATE TABLE sb.texts (id INT AUTO_INCREMENT PRIMARY KEY, k INT NOT NULL, t MEDIUMTEXT, KEY (k)) ENGINE=InnoDB; \
             CREATE TABLE sb.small (id INT AUTO_INCREMENT PRIMARY KEY, a INT NOT NULL, s VARCHAR(64), KEY (a, s)) ENGINE=InnoDB;",
        )
        .unwrap();
        // 4 KiB rows (stored in-page, two per 16 KiB page), 4,096 rows
        // (16 MiB) per transaction; half random bytes, half repetitive text.
        let batches = (mib / 2 / 16).max(1);
        let rand4k = (0..4).map(|_| "RANDOM_BYTES(1024)").collect::<Vec<_>>().join(",");
        for _ in 0..batches {
            self.sql(i, &format!("INSERT INTO sb.blobs (k, b) SELECT seq % 997, CONCAT({rand4k}) FROM sb.seq_1_to_4096")).unwrap();
            self.sql(
                i,
                "INSERT INTO sb.texts (k, t) SELECT seq % 991, REPEAT(CONCAT('row ', seq, ' lorem ipsum dolor sit amet '), 115) FROM sb.seq_1_to_4096",
            )
            .unwrap();
        }
        self.sql(i, "INSERT INTO sb.small (a, s) SELECT seq % 1009, MD5(seq) FROM sb.seq_1_to_100000").unwrap();
    }

    /// `CHECKSUM TABLE` of every table in `sb`, as "table checksum" lines.
    pub fn checksums(&self, i: usize) -> String {
        self.sql(i, "CHECKSUM TABLE sb.blobs, sb.texts, sb.small EXTENDED").unwrap()
    }

    /// Copies logs somewhere that outlives the cluster (for CI output).
    pub fn keep_logs(&self, to: &Path) {
        let _ = fs::create_dir_all(to);
        for n in &self.nodes {
            for f in ["error.log", "console.log"] {
                let _ = fs::copy(n.dir.join(f), to.join(format!("{}-{f}", n.name)));
            }
            for f in ["mariabackup.backup.log", "mariabackup.prepare.log", "mariabackup.move.log"] {
                let _ = fs::copy(n.datadir.join(f), to.join(format!("{}-{f}", n.name)));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}
