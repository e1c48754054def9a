//! SST credentials (shared/SST-PROTOCOL.md §1.6): the environment
//! (`WSREP_SST_OPT_AUTH`, what 10.11 passes), `sst_user=`/`sst_password=`
//! lines on stdin (newer servers, donor only), and `wsrep-sst-auth` from
//! `[sst]` as the fallback. The password reaches mariadb-backup only through
//! `MYSQL_PWD`; `Debug` never shows it and no message carries it.

/// A user and password for mariadb-backup.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &self.password.as_ref().map(|_| "<redacted>")).finish()
    }
}

/// Where credentials may come from, in the stock order of precedence.
#[derive(Clone, Default)]
pub struct Inputs<'a> {
    /// `WSREP_SST_OPT_AUTH` (`user:password`).
    pub env_auth: Option<&'a str>,
    /// `WSREP_SST_OPT_USER` / `WSREP_SST_OPT_PSWD` (or the legacy `--user`
    /// / `--password` arguments).
    pub env_user: Option<&'a str>,
    pub env_password: Option<&'a str>,
    /// `wsrep-sst-auth` from `[sst]`.
    pub config_auth: Option<&'a str>,
    /// What mysqld wrote on stdin (donor, newer servers).
    pub stdin: Option<&'a str>,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which sources are present, never their values.
        f.debug_struct("Inputs")
            .field("env_auth", &self.env_auth.is_some())
            .field("env_user", &self.env_user.is_some())
            .field("env_password", &self.env_password.is_some())
            .field("config_auth", &self.config_auth.is_some())
            .field("stdin", &self.stdin.is_some())
            .finish()
    }
}

fn clean(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty() && *s != "(null)").map(str::to_string)
}

/// Resolves the credentials; also returns the stdin keys it did not know
/// (for a warning that names the key, never the value).
pub fn resolve(i: &Inputs<'_>) -> (Credentials, Vec<String>) {
    let explicit_user = clean(i.env_user);
    let mut c = Credentials { user: explicit_user.clone(), password: clean(i.env_password) };
    if let Some(auth) = clean(i.env_auth).or_else(|| clean(i.config_auth)) {
        let (u, p) = match auth.split_once(':') {
            Some((u, p)) => (clean(Some(u)), clean(Some(p))),
            None => (clean(Some(&auth)), None),
        };
        match &explicit_user {
            None => c = Credentials { user: u, password: p },
            Some(e) if u.as_ref() == Some(e) => c.password = c.password.or(p),
            Some(_) => {}
        }
    }
    let mut unknown = Vec::new();
    for line in i.stdin.unwrap_or("").lines() {
        let Some((k, v)) = line.split_once('=') else {
            if !line.trim().is_empty() {
                unknown.push("<line without =>".to_string());
            }
            continue;
        };
        match k.trim() {
            "sst_user" => c.user = clean(Some(v)),
            "sst_password" => c.password = clean(Some(v)),
            // Remote credentials belong to the stock joiner handshake; sluice
            // authenticates with its session token instead.
            "sst_remote_user" | "sst_remote_password" => {}
            other => unknown.push(other.to_string()),
        }
    }
    (c, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(u: &str, p: &str) -> Credentials {
        Credentials { user: Some(u.into()), password: Some(p.into()) }
    }

    #[test]
    fn environment_beats_config_and_stdin_beats_both() {
        let (c, _) = resolve(&Inputs { env_auth: Some("sstuser:s3cr:et"), config_auth: Some("cfg:x"), ..Inputs::default() });
        assert_eq!(c, pair("sstuser", "s3cr:et"), "split at the first colon only");
        let (c, _) = resolve(&Inputs { env_auth: Some("(null)"), config_auth: Some("cfg:x"), ..Inputs::default() });
        assert_eq!(c, pair("cfg", "x"), "(null) counts as unset");
        let (c, unknown) = resolve(&Inputs {
            env_auth: Some("a:b"),
            stdin: Some("sst_user=wsrep.sst.1\nsst_password=pw=with=eq\nsst_remote_user=r\nbogus=1\n"),
            ..Inputs::default()
        });
        assert_eq!(c, pair("wsrep.sst.1", "pw=with=eq"));
        assert_eq!(unknown, vec!["bogus".to_string()]);
    }

    #[test]
    fn explicit_user_keeps_its_password_or_borrows_a_matching_one() {
        let (c, _) = resolve(&Inputs { env_user: Some("u"), env_auth: Some("u:p"), ..Inputs::default() });
        assert_eq!(c, pair("u", "p"));
        let (c, _) = resolve(&Inputs { env_user: Some("u"), env_password: Some("mine"), env_auth: Some("other:p"), ..Inputs::default() });
        assert_eq!(c, pair("u", "mine"));
        let (c, _) = resolve(&Inputs { env_auth: Some("lonely"), ..Inputs::default() });
        assert_eq!(c, Credentials { user: Some("lonely".into()), password: None });
        assert_eq!(resolve(&Inputs::default()).0, Credentials::default());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", pair("u", "hunter2"));
        assert!(!shown.contains("hunter2") && shown.contains("redacted"), "{shown}");
    }
}
