//! Differential test: `sluice print-defaults` must print exactly what the
//! real `my_print_defaults` (package mariadb-client-core, installed by
//! .ci/run) prints, for a corpus of option files written here.

use std::path::Path;
use std::process::Command;

fn run(bin: &str, pre: &[&str], args: &[String], home: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(pre)
        .args(args)
        .env("HOME", home)
        .env_remove("MYSQL_HOME")
        .env_remove("MARIADB_HOME")
        .env_remove("MYSQL_GROUP_SUFFIX")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn print_defaults_matches_my_print_defaults() {
    if Command::new("my_print_defaults").arg("--help").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "my_print_defaults is missing in CI: .ci/run must install mariadb-client-core"
        );
        eprintln!("SKIPPED: my_print_defaults is not installed (apt-get install mariadb-client-core)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    w("conf.d/b.cnf", "[sst]\nfrom_dir_b=1\n[mysqld]\ninnodb_log_group_home_dir=/logs\n");
    w("conf.d/a.cnf", "[SST]\nfrom_dir_a = 'x y'\n");
    w("conf.d/ignored.txt", "[sst]\nignored=1\n");
    w("inc.cnf", "[sst]\nincluded=yes\n[client]\nsocket=/run/mysqld.sock\n");
    let inc = d.join("inc.cnf").display().to_string();
    let dir = d.join("conf.d").display().to_string();
    let corpus = [
        ("basic", "[mysqld]\ndatadir=/var/lib/mysql\nuser=mysql\n[sst]\nstreams=4\n".to_string()),
        (
            "comments and whitespace",
            "# top\n; semicolon\n[sst]\n  k = v # trailing\n\tt\t=\t tab \t\nj=b#c\nl=b ;c\n   # indented\n".into(),
        ),
        (
            "quotes and escapes",
            "[sst]\ncompressor=\"lz4 -z\"\nq='a # b'\nmixed=\"a\" b\nun=\"open\ne=\"a\\tb\\\\c\\\"d\"\nn=a\\nb\nx=\\x41\ns=a\\sb\n".into(),
        ),
        (
            "bare keys, empty values, dashes",
            "[sst]\nbare\nempty=\ninno-backup-opts=--x\ninno_apply_opts=--y\nloose-sst-special-dirs=1\n--dashed=1\nspace key=v\n".into(),
        ),
        ("duplicates and group order", "[sst]\na=1\n[mysqld]\nb=2\n[sst]\na=3\n[other]\nc=4\n".into()),
        ("case-insensitive groups", "[SST]\nA=1\n[Sst]\nb=2\n[ sst ]\nc=3\n[sst] # comment\nd=4\n".into()),
        ("includes", format!("[sst]\nbefore=1\n!include {inc}\n!includedir {dir}\n!include /nonexistent/file.cnf\nafter=1\n")),
        ("suffix", "[sst]\nbase=1\n[sst.node2]\nsuffixed=1\n[mysqld.node2]\nm=1\n".into()),
        ("crlf", "[sst]\r\nk=v\r\nbare\r\n".into()),
        ("unicode", "[sst]\nname=données é\n".into()),
        ("empty", String::new()),
        ("option before group", "k=1\n[sst]\nj=2\n".into()),
        ("missing includedir", "[sst]\n!includedir /nonexistent/dir\n".into()),
    ];
    let groups = ["sst", "mysqld", "xtrabackup", "mariabackup", "client"];
    let mut compared = 0;
    let mut substantive = 0;
    for (name, text) in &corpus {
        let f = d.join(format!("{}.cnf", name.replace(' ', "_")));
        std::fs::write(&f, text).unwrap();
        let variants: Vec<Vec<String>> = vec![
            vec![format!("--defaults-file={}", f.display()), "sst".into()],
            [vec![format!("--defaults-file={}", f.display())], groups.iter().map(|g| (*g).to_string()).collect()].concat(),
            vec![format!("--defaults-file={}", f.display()), "--defaults-group-suffix=.node2".into(), "sst".into(), "mysqld".into()],
            vec![format!("--defaults-extra-file={}", f.display()), "sst".into()],
        ];
        for args in variants {
            let (ok_m, out_m) = run("my_print_defaults", &[], &args, d);
            let (ok_s, out_s) = run(env!("CARGO_BIN_EXE_sluice"), &["print-defaults"], &args, d);
            assert_eq!(ok_s, ok_m, "{name} {args:?}: exit status differs (my_print_defaults ok={ok_m})");
            assert_eq!(out_s, out_m, "{name} {args:?}: output differs");
            compared += 1;
            substantive += usize::from(ok_m && !out_m.is_empty());
        }
    }
    let (ok_m, _) = run("my_print_defaults", &[], &["--defaults-file=/nonexistent.cnf".into(), "sst".into()], d);
    let (ok_s, _) = run(env!("CARGO_BIN_EXE_sluice"), &["print-defaults"], &["--defaults-file=/nonexistent.cnf".into(), "sst".into()], d);
    assert_eq!((ok_m, ok_s), (false, false));
    assert_eq!(compared, corpus.len() * 4);
    // Not a vacuous pass: most comparisons printed real options.
    assert!(substantive >= 35, "only {substantive} comparisons had output");

    // World-writable option files are ignored, directly and through
    // !includedir, exactly as mysys ignores them (SECURITY.md F7).
    let ww = d.join("ww");
    std::fs::create_dir_all(&ww).unwrap();
    std::fs::write(
        ww.join("evil.cnf"),
        "[sst]
compressor=\"id > pwned; cat\"\n",
    )
    .unwrap();
    std::fs::set_permissions(ww.join("evil.cnf"), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    std::fs::write(d.join("ww-main.cnf"), format!("[sst]\nsafe=1\n!includedir {}\n", ww.display())).unwrap();
    for args in [
        vec![format!("--defaults-file={}", ww.join("evil.cnf").display()), "sst".into()],
        vec![format!("--defaults-file={}", d.join("ww-main.cnf").display()), "sst".into()],
    ] {
        let (ok_m, out_m) = run("my_print_defaults", &[], &args, d);
        let (ok_s, out_s) = run(env!("CARGO_BIN_EXE_sluice"), &["print-defaults"], &args, d);
        assert_eq!((ok_s, out_s.as_str()), (ok_m, out_m.as_str()), "{args:?}");
        assert!(!out_s.contains("compressor"), "a world-writable file was obeyed: {out_s}");
    }
    let (_, safe) = run(
        env!("CARGO_BIN_EXE_sluice"),
        &["print-defaults"],
        &[format!("--defaults-file={}", d.join("ww-main.cnf").display()), "sst".into()],
        d,
    );
    assert_eq!(safe, "--safe=1\n", "the private file still counts");
}
