//! Man pages and shell completions generated from the clap definitions
//! (clap_mangen, clap_complete), for the Debian package: `sluice(1)`, one
//! page per subcommand, `wsrep_sst_sluice(1)` with every `[sst]` key (taken
//! from the README's table, the one place they are described), and bash,
//! zsh and fish completions. `sluice gen-docs --out DIR` writes them.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use clap::Command;

/// The README, whose `[sst]` table is the SST page's key list.
const README: &str = include_str!("../README.md");

/// The rows of the README's `[sst]` options table: (keys, what they do).
pub fn sst_keys() -> Vec<(String, String)> {
    let Some(start) = README.find("### `[sst]` options") else { return Vec::new() };
    let plain = |s: &str| s.replace('`', "").replace("\\|", "|").trim().to_string();
    README[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| key"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            let (k, v) = l.split_once(" | ")?;
            Some((plain(k), plain(v)))
        })
        .collect()
}

/// The `wsrep_sst_sluice` command as mysqld runs it.
fn sst_command() -> Command {
    let mut keys = String::from(
        "mysqld reads [sst] from its option files; an [sst] section written for wsrep_sst_method=mariabackup keeps working. \
         What each key does under sluice:\n\n",
    );
    for (k, v) in sst_keys() {
        let _ = write!(keys, "{k}\n    {v}\n\n");
    }
    keys.push_str(
        "Exit codes follow the stock scripts: 2 (bad backup or I/O), 22 (incompatible configuration or peer), 28 (not enough \
         disk space), 32 (transfer failed or mysqld gone), 42 (mariadb-backup missing), 110 (no progress for sst-idle-timeout), \
         114 (another SST runs). `sluice check` reports what would make an SST fail.",
    );
    Command::new("wsrep_sst_sluice")
        .about("Galera State Snapshot Transfer method (wsrep_sst_method=sluice)")
        .long_about(
            "mysqld runs wsrep_sst_sluice on the donor and on the joiner of a State Snapshot Transfer. The joiner announces a \
             one-time token, the donor announces the expected size, its versions and key fingerprints, and the joiner refuses \
             what it cannot take before touching its old data; then the donor streams mariadb-backup's backup (or, with \
             mode=copy, the datadir's files under a short lock) over parallel, verified TCP streams. The joiner prepares the \
             backup beside its old data, sets the old data aside, moves the new data in and deletes the old only after a sync: \
             a failed SST leaves the old data as it was. It is the sluice binary under the name mysqld looks up; `sluice sst` \
             runs the same code.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .arg(clap::Arg::new("role").long("role").value_name("joiner|donor").help("Which side of the SST this is"))
        .arg(clap::Arg::new("address").long("address").value_name("HOST:PORT[/MODULE]").help("The joiner's address"))
        .arg(clap::Arg::new("datadir").long("datadir").value_name("DIR").help("The datadir"))
        .arg(clap::Arg::new("defaults-file").long("defaults-file").value_name("FILE").help("mysqld's option file"))
        .arg(clap::Arg::new("parent").long("parent").value_name("PID").help("mysqld's pid (the SST stops if it dies)"))
        .arg(clap::Arg::new("mysqld-args").long("mysqld-args").value_name("ARGS").help("mysqld's own arguments (the rest of the line)"))
        .after_long_help(keys)
}

/// Writes `man/*.1` and `completions/{sluice.bash,_sluice,sluice.fish}`
/// under `out`.
pub fn generate(cli: &Command, out: &Path) -> io::Result<()> {
    let man = out.join("man");
    let comp = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&comp)?;
    let mut cli = cli.clone().version(env!("CARGO_PKG_VERSION"));
    cli.build();
    let page = |cmd: Command, name: &str| -> io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        fs::write(man.join(format!("{name}.1")), buf)
    };
    page(cli.clone(), "sluice")?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("sluice-{}", sub.get_name());
        page(sub.clone().name(name.clone()).version(env!("CARGO_PKG_VERSION")), &name)?;
    }
    page(sst_command(), "wsrep_sst_sluice")?;
    for (shell, file) in
        [(clap_complete::Shell::Bash, "sluice.bash"), (clap_complete::Shell::Zsh, "_sluice"), (clap_complete::Shell::Fish, "sluice.fish")]
    {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cli, "sluice", &mut buf);
        fs::write(comp.join(file), buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sst_key_row_of_the_readme_reaches_the_sst_page() {
        let keys = sst_keys();
        assert!(keys.len() >= 20, "{keys:?}");
        for k in ["streams", "delta", "low-space", "sst-idle-timeout", "prepare-binary", "status-file", "cpat", "rlimit"] {
            assert!(keys.iter().any(|(names, _)| names.split([',', ' ']).any(|n| n == k)), "{k} missing from {keys:?}");
        }
        assert!(keys.iter().all(|(k, v)| !k.contains('`') && !v.is_empty()));
    }
}
