//! `sluice check`: run on a node, reads the option files as the SST would
//! and reports everything that would make an SST fail, each with its fix —
//! mariadb-backup missing or of another version than the server, SST
//! credentials that cannot log in or lack privileges (on a running server),
//! TLS files that do not load or a certificate the peer would reject (tried
//! with a real TLS session over loopback), the SST port taken, too little
//! disk for old and new data side by side, and the encryption-at-rest
//! configuration (with key fingerprints to compare across nodes).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use sluice_engine::send::SendConfig;
use sluice_engine::{ReceiveConfig, Receiver};

use crate::args::Role;
use crate::options::SstOptions;
use crate::preflight;
use crate::status::json_string;

/// The privileges mariadb-backup needs on a donor (MariaDB 10.5 and later).
pub const PRIVILEGES: [&str; 4] = ["RELOAD", "PROCESS", "LOCK TABLES", "BINLOG MONITOR"];

/// The context of fingerprints that `sluice check` prints: fixed, so
/// nodes can be compared by eye.
const CHECK_CONTEXT: &[u8] = b"sluice check key fingerprint v1";

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked, e.g. "mariadb-backup".
    pub check: &'static str,
    /// `None` when the check could not run (reported, not failed).
    pub ok: Option<bool>,
    pub detail: String,
    /// What to do (failures only).
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Self { check, ok: Some(true), detail: detail.into(), fix: None }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { check, ok: Some(false), detail: detail.into(), fix: Some(fix.into()) }
    }
    fn skip(check: &'static str, detail: impl Into<String>) -> Self {
        Self { check, ok: None, detail: detail.into(), fix: None }
    }

    /// One human line (and a fix line).
    pub fn human(&self) -> String {
        let tag = match self.ok {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "skip",
        };
        let mut s = format!("{tag} {:<14} {}", self.check, self.detail);
        if let Some(f) = &self.fix {
            let _ = write!(s, "\n     {:<14} fix: {f}", "");
        }
        s
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"check\":{},\"ok\":{},\"detail\":{},\"fix\":{}}}",
            json_string(self.check),
            self.ok.map_or("null", |b| if b { "true" } else { "false" }),
            json_string(&self.detail),
            self.fix.as_deref().map_or_else(|| "null".to_string(), json_string)
        )
    }
}

/// Where to look besides the option files.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The datadir (default: the option files' `datadir`).
    pub datadir: Option<PathBuf>,
    /// The server's socket (default: the option files' `socket`).
    pub socket: Option<PathBuf>,
}

/// Runs every check.
pub fn run(o: &SstOptions, inputs: &Inputs) -> Vec<Finding> {
    let mut out = vec![backup_version(o)];
    out.push(credentials(o, inputs));
    out.extend(tls(o));
    out.push(port(o));
    out.push(disk(o, inputs));
    out.extend(encryption(o));
    out
}

fn find(name: &str, also: &[&str]) -> Option<PathBuf> {
    crate::process::find_program(name).ok().or_else(|| also.iter().map(PathBuf::from).find(|p| p.is_file()))
}

fn backup_version(o: &SstOptions) -> Finding {
    const C: &str = "mariadb-backup";
    if o.mode == "copy" {
        return Finding::skip(C, "[sst] mode=copy does not run mariadb-backup");
    }
    let Some(mb) = o.prepare_binary.clone().or_else(|| find("mariadb-backup", &["/usr/bin/mariadb-backup"])) else {
        return Finding::fail(C, "mariadb-backup is not installed", "apt-get install mariadb-backup (the package of the server's version)");
    };
    let Some(mine) = preflight::program_version(&mb).and_then(|v| preflight::parse_version(&v)) else {
        return Finding::fail(C, format!("{} does not say its version", mb.display()), "reinstall mariadb-backup");
    };
    let server = find("mariadbd", &["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]).and_then(|p| preflight::program_version(&p));
    match server.as_deref().and_then(preflight::parse_version) {
        Some(s) if (s.major, s.minor) != (mine.major, mine.minor) => Finding::fail(
            C,
            format!("{} is {mine} but the server is {s}", mb.display()),
            format!("install mariadb-backup {}.{} (it must match the server's major version)", s.major, s.minor),
        ),
        Some(s) => Finding::pass(C, format!("{} {mine} matches the server {s}", mb.display())),
        None => Finding::pass(C, format!("{} {mine} (server binary not found to compare)", mb.display())),
    }
}

fn credentials(o: &SstOptions, inputs: &Inputs) -> Finding {
    const C: &str = "credentials";
    let Some(auth) = o.server_sst_auth.clone().or_else(|| o.wsrep_sst_auth.clone()).filter(|a| !a.is_empty()) else {
        return Finding::skip(C, "wsrep_sst_auth is not set (mariadb-backup logs in as the OS user over the socket)");
    };
    let (user, password) = auth.split_once(':').map_or((auth.clone(), String::new()), |(u, p)| (u.to_string(), p.to_string()));
    let Some(socket) = inputs.socket.clone().or_else(|| o.server_socket.clone()) else {
        return Finding::skip(C, "no socket configured to reach the server");
    };
    if !socket.exists() {
        return Finding::skip(C, format!("the server is not running ({} is absent); checked on a running donor", socket.display()));
    }
    let Some(client) = find("mariadb", &["/usr/bin/mariadb", "/usr/bin/mysql"]) else {
        return Finding::skip(C, "the mariadb client is not installed");
    };
    let out = Command::new(client)
        .args(["--no-defaults", &format!("--socket={}", socket.display()), &format!("--user={user}"), "-N", "-B", "-e", "SHOW GRANTS"])
        .env("MYSQL_PWD", &password)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Finding::skip(C, format!("cannot run the mariadb client: {e}")),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("").to_string();
        return Finding::fail(
            C,
            format!("wsrep_sst_auth user '{user}' cannot log in: {err}"),
            format!("CREATE USER '{user}'@'localhost' IDENTIFIED BY '…' with the password of wsrep_sst_auth, or correct wsrep_sst_auth"),
        );
    }
    let grants = String::from_utf8_lossy(&out.stdout).to_uppercase();
    if grants.contains("ALL PRIVILEGES ON *.*") {
        return Finding::pass(C, format!("'{user}' logs in and has ALL PRIVILEGES"));
    }
    let global: String = grants.lines().filter(|l| l.contains(" ON *.* ")).collect::<Vec<_>>().join("\n");
    let missing: Vec<&str> = PRIVILEGES.iter().copied().filter(|p| !global.contains(p)).collect();
    if missing.is_empty() {
        Finding::pass(C, format!("'{user}' logs in and has {}", PRIVILEGES.join(", ")))
    } else {
        Finding::fail(
            C,
            format!("'{user}' lacks {} (mariadb-backup needs {})", missing.join(", "), PRIVILEGES.join(", ")),
            format!("GRANT {} ON *.* TO '{user}'@'localhost'", PRIVILEGES.join(", ")),
        )
    }
}

/// This node's address as a donor would name it.
fn node_host(o: &SstOptions) -> String {
    let a = o.wsrep_sst_receive_address.clone().or_else(|| o.wsrep_node_address.clone()).unwrap_or_else(|| "127.0.0.1".into());
    crate::args::SstAddress::parse(&a).map(|a| a.host_unbracketed().to_string()).unwrap_or(a)
}

fn tls(o: &SstOptions) -> Vec<Finding> {
    const C: &str = "tls";
    let host = node_host(o);
    let (joiner, donor) =
        match (crate::transport::from_options(o, Role::Joiner, &host), crate::transport::from_options(o, Role::Donor, &host)) {
            (Ok(j), Ok(d)) => (j, d),
            (Err(e), _) | (_, Err(e)) => return vec![Finding::fail(C, e.to_string(), "set the [sst] TLS keys the message names")],
        };
    if !joiner.tls.enabled() {
        return vec![Finding::skip(C, "TLS is off (encrypt=0/1, no ssl-mode)")];
    }
    // A real session over loopback, this node's joiner configuration
    // against a donor's that checks the name it would check.
    let mut donor_tls = donor.tls.clone();
    if donor_tls.name.is_none() && donor_tls.mode == sluice_engine::net::tls::TlsMode::VerifyIdentity {
        donor_tls.name = Some(host.clone());
    }
    let cfg = ReceiveConfig {
        tls: joiner.tls.clone(),
        first_connect_timeout: Some(std::time::Duration::from_secs(20)),
        ..ReceiveConfig::default()
    };
    let receiver = match Receiver::bind("127.0.0.1:0", cfg) {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::fail(
                C,
                format!("this node's certificate or key does not load: {e}"),
                "check tcert/tkey (or ssl-cert/ssl-key): readable, PEM, and the key of that certificate",
            )];
        }
    };
    let addr = match receiver.local_addr() {
        Ok(a) => a,
        Err(e) => return vec![Finding::skip(C, e.to_string())],
    };
    let token = receiver.token().clone();
    let cancel = receiver.cancel_handle();
    let dir = match sluice_engine::cleanup::private_dir(&std::env::temp_dir(), "sluice-check-") {
        Ok(d) => d,
        Err(e) => return vec![Finding::skip(C, format!("no temporary directory: {e}"))],
    };
    let dest = dir.path().join("r");
    let handle = std::thread::spawn(move || receiver.run(&dest));
    let send_cfg =
        SendConfig { tls: donor_tls.clone(), streams: 1, connect_timeout: std::time::Duration::from_secs(10), ..SendConfig::default() };
    let sent = sluice_engine::send::send_streamed(&addr.to_string(), &token, &send_cfg, |f| f.file_bytes(b"probe", b"1"));
    if sent.is_err() {
        // The receiver may still wait for a sender that gave up.
        cancel.store(true, std::sync::atomic::Ordering::Release);
    }
    let received = handle.join().unwrap_or_else(|_| Err(sluice_engine::Error::Aborted("the receiver panicked".into())));
    let what = format!("{:?}", joiner.tls.mode);
    match (sent, received) {
        (Ok(_), Ok(_)) => vec![Finding::pass(
            C,
            format!(
                "a donor's TLS session ({what}{}) to this node succeeds over loopback",
                donor_tls.name.as_deref().map(|n| format!(", name {n}")).unwrap_or_default()
            ),
        )],
        (Err(e), _) | (_, Err(e)) => vec![Finding::fail(
            C,
            format!("a donor's TLS session to this node fails: {e}"),
            format!(
                "the certificate must chain to the CA (tca) and, with encrypt=3 or VERIFY_IDENTITY, name {host} (or localhost for a loopback joiner) in its subjectAltName; the key must be the certificate's"
            ),
        )],
    }
}

fn port(o: &SstOptions) -> Finding {
    const C: &str = "sst port";
    let addr = o.wsrep_sst_receive_address.clone().unwrap_or_else(|| format!("{}:4444", node_host(o)));
    let Ok(a) = crate::args::SstAddress::parse(&addr) else {
        return Finding::fail(
            C,
            format!("wsrep_sst_receive_address {addr:?} is not host[:port]"),
            "set wsrep_sst_receive_address=<ip>:<port>",
        );
    };
    let bind = format!("{}:{}", a.host, a.port_or_default());
    match std::net::TcpListener::bind(&bind) {
        Ok(_) => Finding::pass(C, format!("{bind} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(
            C,
            format!("{bind} is in use by another process"),
            format!(
                "find it with `ss -ltnp 'sport = :{}'` and stop it, or move the SST to a free port with wsrep_sst_receive_address",
                a.port_or_default()
            ),
        ),
        Err(e) => Finding::fail(C, format!("cannot listen on {bind}: {e}"), "set wsrep_sst_receive_address to an address of this host"),
    }
}

fn disk(o: &SstOptions, inputs: &Inputs) -> Finding {
    const C: &str = "disk";
    let Some(datadir) = inputs.datadir.clone().or_else(|| o.server_datadir.clone()) else {
        return Finding::skip(C, "no datadir configured");
    };
    let (bytes, _) = preflight::payload(std::slice::from_ref(&datadir));
    let staging = o.tmpdir.clone().unwrap_or_else(|| datadir.clone());
    let (_, avail) = match preflight::fs_facts(&staging) {
        Ok(f) => f,
        Err(e) => return Finding::fail(C, format!("cannot read the free space of {}: {e}", staging.display()), "create the datadir"),
    };
    let want = bytes + preflight::headroom(bytes);
    let mib = |b: u64| b as f64 / 1_048_576.0;
    if avail >= want {
        Finding::pass(
            C,
            format!(
                "{:.0} MiB free on the filesystem of {} for about {:.0} MiB of new data beside the old",
                mib(avail),
                staging.display(),
                mib(bytes)
            ),
        )
    } else {
        Finding::fail(
            C,
            format!(
                "{:.0} MiB free on the filesystem of {}, but an SST of a datadir this size needs about {:.0} MiB beside the old data",
                mib(avail),
                staging.display(),
                mib(want)
            ),
            "free space or grow the filesystem; or set [sst] low-space=clean to delete the old data first (a failed SST then leaves no data)",
        )
    }
}

fn on(v: Option<&String>) -> bool {
    v.is_some_and(|v| !matches!(v.to_ascii_uppercase().as_str(), "OFF" | "0" | "NO" | "FALSE"))
}

fn encryption(o: &SstOptions) -> Vec<Finding> {
    const C: &str = "encryption";
    let wants = on(o.innodb_encrypt_tables.as_ref()) || on(o.innodb_encrypt_log.as_ref());
    match preflight::gather_keyring(o, CHECK_CONTEXT) {
        Ok(None) if wants => vec![Finding::fail(
            C,
            "innodb_encrypt_tables or innodb_encrypt_log is on but no key management plugin is loaded",
            "plugin_load_add=file_key_management and file_key_management_filename=<key file> in [mysqld]",
        )],
        Ok(None) => vec![Finding::skip(C, "no data-at-rest encryption configured")],
        Ok(Some(k)) if k.prints.is_empty() => {
            vec![Finding::pass(C, format!("{} (keys on a key server; every node must reach it)", k.plugin))]
        }
        Ok(Some(k)) => {
            let prints: Vec<String> = k.prints.iter().map(|(id, p)| format!("{id}:{}", &p[..12])).collect();
            vec![Finding::pass(
                C,
                format!("{} with {} key(s); fingerprints {} (every node must show the same)", k.plugin, k.prints.len(), prints.join(" ")),
            )]
        }
        Err(e) => vec![Finding::fail(C, e, "fix the key file (lines `<id>;<hex key>`) or file_key_management_filekey")],
    }
}

/// The report, human or JSON, and whether every check passed or was
/// skipped.
pub fn report(findings: &[Finding], json: bool) -> (String, bool) {
    let ok = findings.iter().all(|f| f.ok != Some(false));
    let text = if json {
        format!("{{\"ok\":{ok},\"checks\":[{}]}}\n", findings.iter().map(Finding::json).collect::<Vec<_>>().join(","))
    } else {
        let mut s: String = findings.iter().map(|f| f.human() + "\n").collect();
        let failed = findings.iter().filter(|f| f.ok == Some(false)).count();
        if ok {
            s.push_str("no problem found\n");
        } else {
            let _ = writeln!(s, "{failed} problem(s) would make an SST fail");
        }
        s
    };
    (text, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_render_for_humans_and_scripts() {
        let f = vec![Finding::pass("disk", "plenty"), Finding::fail("tls", "bad \"cert\"", "fix it"), Finding::skip("port", "n/a")];
        let (text, ok) = report(&f, false);
        assert!(!ok && text.contains("FAIL tls") && text.contains("fix: fix it") && text.contains("1 problem(s)"), "{text}");
        let (json, _) = report(&f, true);
        assert!(
            json.starts_with("{\"ok\":false,") && json.contains(r#""detail":"bad \"cert\"""#) && json.contains(r#""ok":null"#),
            "{json}"
        );
        assert!(report(&f[..1], false).1);
    }

    #[test]
    fn encryption_without_a_key_plugin_is_a_failure() {
        let o = SstOptions::from_cnf("[mysqld]\ninnodb_encrypt_tables=ON\n").unwrap();
        assert_eq!(encryption(&o)[0].ok, Some(false));
        let o = SstOptions::from_cnf("[mysqld]\ninnodb_encrypt_tables=OFF\n").unwrap();
        assert_eq!(encryption(&o)[0].ok, None);
    }
}
