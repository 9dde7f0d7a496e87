//! Where a `mysql` or `sqlite` connection points, and the rules that keep a
//! tenant from reaching the server's own sockets and files (docs/connections-and-keys.md).
//!
//! - `mysql`: a `mysql://user:password@host[:port][/database]` URI
//!   (`mariadb://` too). TCP only: no socket, no URI parameters, and for
//!   anyone but a superuser a non-empty password.
//! - `sqlite`: a path to a file under the directory a superuser set
//!   (`dbrag.sqlite_dir`): relative paths resolve inside it, no `..`
//!   component, and the file's canonical path (symlinks resolved) must stay
//!   inside the directory's canonical path.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A parsed MySQL URI. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

/// Why a MySQL URI is refused. `Display` never includes the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlUriError {
    /// Not `mysql://…` or malformed (22023).
    Syntax(String),
    /// A Unix socket or named pipe (42501).
    Socket,
    /// No password, or an empty one (42501 for non-superusers).
    NoPassword,
    /// A URI parameter (22023, or 42501 for `socket`).
    Parameter(String),
}

impl fmt::Display for MysqlUriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MysqlUriError::Syntax(m) => write!(f, "{m}"),
            MysqlUriError::Socket => write!(
                f,
                "a MySQL connection must use TCP (host and port), never a socket on this server"
            ),
            MysqlUriError::NoPassword => write!(f, "the MySQL URI must carry a password"),
            MysqlUriError::Parameter(p) => write!(
                f,
                "URI parameter \"{p}\" is not supported: write mysql://user:password@host:port/database"
            ),
        }
    }
}

impl std::error::Error for MysqlUriError {}

fn percent_decode(s: &str, what: &str) -> Result<String, MysqlUriError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(MysqlUriError::Syntax(format!(
                        "bad percent-encoding in the URI's {what}"
                    )))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out)
        .map_err(|_| MysqlUriError::Syntax(format!("the URI's {what} is not UTF-8")))?;
    if s.contains('\0') {
        return Err(MysqlUriError::Syntax(format!(
            "the URI's {what} contains a NUL byte"
        )));
    }
    Ok(s)
}

/// Parse `mysql://user[:password]@host[:port][/database]`.
pub fn parse_mysql_uri(uri: &str) -> Result<MysqlTarget, MysqlUriError> {
    let syntax = || {
        MysqlUriError::Syntax(
            "a MySQL conninfo is a URI: mysql://user:password@host:port/database".to_string(),
        )
    };
    let uri = uri.trim();
    let rest = uri
        .strip_prefix("mysql://")
        .or_else(|| uri.strip_prefix("mariadb://"))
        .ok_or_else(syntax)?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if let Some(q) = query {
        if let Some(param) = q
            .split('&')
            .map(|kv| kv.split('=').next().unwrap_or(""))
            .find(|k| !k.is_empty())
        {
            let param = percent_decode(param, "parameters")?;
            if matches!(
                param.to_ascii_lowercase().as_str(),
                "socket" | "pipe" | "named_pipe" | "prefer_socket"
            ) {
                return Err(MysqlUriError::Socket);
            }
            return Err(MysqlUriError::Parameter(param));
        }
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if authority.contains('#') {
        return Err(syntax());
    }
    // The last '@' separates userinfo (a password may hold an encoded '@').
    let (userinfo, hostport) = authority.rsplit_once('@').ok_or_else(|| {
        MysqlUriError::Syntax("the MySQL URI names no user: mysql://user:password@host".to_string())
    })?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let user = percent_decode(user, "user")?;
    if user.is_empty() {
        return Err(MysqlUriError::Syntax(
            "the MySQL URI names no user".to_string(),
        ));
    }
    let password = password
        .map(|p| percent_decode(p, "password"))
        .transpose()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(syntax)?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(MysqlUriError::Socket);
    }
    if host.starts_with('/')
        || host.starts_with('.')
        || host.starts_with('@')
        || host.contains('%')
        || host.contains('\\')
    {
        return Err(MysqlUriError::Socket);
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(MysqlUriError::Syntax(format!(
            "\"{host}\" is not a host name or address"
        )));
    }
    let port = match port {
        None | Some("") => 3306,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(MysqlUriError::Syntax(
                    "port must be a number between 1 and 65535".to_string(),
                ))
            }
        },
    };
    if path.is_some_and(|p| p.contains('#') || p.contains('/')) {
        return Err(syntax());
    }
    let database = match path {
        None | Some("") => None,
        Some(p) => Some(percent_decode(p, "database")?),
    };
    Ok(MysqlTarget {
        host,
        port,
        user,
        password,
        database,
    })
}

/// The extra rule for anyone but a superuser: a password is required.
pub fn check_mysql_unprivileged(target: &MysqlTarget) -> Result<(), MysqlUriError> {
    match &target.password {
        Some(p) if !p.is_empty() => Ok(()),
        _ => Err(MysqlUriError::NoPassword),
    }
}

/// The schema name of the only database a SQLite connection reaches.
pub const SQLITE_SCHEMA: &str = "main";

/// Why a SQLite path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlitePathError {
    /// Outside the directory, through `..`, an absolute path or a symlink (42501).
    Outside(String),
    /// Inside, but no such regular file (42704).
    Missing(String),
    /// The directory itself cannot be resolved (55000).
    BadDirectory(String),
    /// Empty or not a plain path (22023).
    Invalid(String),
}

impl fmt::Display for SqlitePathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlitePathError::Outside(p) => write!(
                f,
                "SQLite path \"{p}\" is outside dbrag.sqlite_dir: only files under that directory may be opened"
            ),
            SqlitePathError::Missing(p) => {
                write!(f, "SQLite file \"{p}\" does not exist under dbrag.sqlite_dir")
            }
            SqlitePathError::BadDirectory(m) => write!(f, "dbrag.sqlite_dir cannot be used: {m}"),
            SqlitePathError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for SqlitePathError {}

/// Resolve `given` against `dir`: the canonical path of an existing regular
/// file under `dir`'s canonical path. Lexical checks come first, so a path
/// that names anything outside the directory is refused without touching
/// the file system (no existence oracle for other files).
pub fn resolve_sqlite_path(dir: &Path, given: &str) -> Result<PathBuf, SqlitePathError> {
    if given.trim().is_empty() || given.contains('\0') {
        return Err(SqlitePathError::Invalid(
            "the SQLite path must be a non-empty file path".into(),
        ));
    }
    if given.starts_with("file:")
        || given == ":memory:"
        || given.contains('?') && given.starts_with("file")
    {
        return Err(SqlitePathError::Invalid(
            "give the SQLite database as a plain file path (no file: URI, no :memory:)".into(),
        ));
    }
    if !dir.is_absolute() {
        return Err(SqlitePathError::BadDirectory(
            "it must be an absolute path".into(),
        ));
    }
    let given_path = Path::new(given);
    if given_path
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(SqlitePathError::Outside(given.to_string()));
    }
    let joined = if given_path.is_absolute() {
        if !given_path.starts_with(dir) {
            return Err(SqlitePathError::Outside(given.to_string()));
        }
        given_path.to_path_buf()
    } else {
        dir.join(given_path)
    };
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| SqlitePathError::BadDirectory(e.kind().to_string()))?;
    let canon = joined
        .canonicalize()
        .map_err(|_| SqlitePathError::Missing(given.to_string()))?;
    if !canon.starts_with(&canon_dir) || canon == canon_dir {
        return Err(SqlitePathError::Outside(given.to_string()));
    }
    match std::fs::metadata(&canon) {
        Ok(m) if m.is_file() => Ok(canon),
        _ => Err(SqlitePathError::Missing(given.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mysql_uris() {
        let t = parse_mysql_uri("mysql://shop:p%40ss:w@127.0.0.1:3307/shopdb").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 3307);
        assert_eq!(t.user, "shop");
        assert_eq!(t.password.as_deref(), Some("p@ss:w"));
        assert_eq!(t.database.as_deref(), Some("shopdb"));
        assert!(!format!("{t:?}").contains("p@ss"));
        let t = parse_mysql_uri("mariadb://u:pw@db.example.com").unwrap();
        assert_eq!((t.port, t.database), (3306, None));
        let t = parse_mysql_uri("mysql://u:pw@[::1]:3306/d").unwrap();
        assert_eq!(t.host, "::1");
        let t = parse_mysql_uri("mysql://u:a@b@h/d").unwrap();
        assert_eq!((t.password.as_deref(), t.host.as_str()), (Some("a@b"), "h"));
    }

    #[test]
    fn mysql_refusals() {
        for (uri, want) in [
            ("mysql://root@/db", MysqlUriError::Socket),
            (
                "mysql://root:x@%2Fvar%2Frun%2Fmysqld%2Fmysqld.sock/db",
                MysqlUriError::Socket,
            ),
            (
                "mysql://root:x@/var/run/mysqld/mysqld.sock",
                MysqlUriError::Socket,
            ),
            (
                "mysql://root:x@localhost/db?socket=/run/mysqld/mysqld.sock",
                MysqlUriError::Socket,
            ),
            (
                "mysql://root:x@h/db?prefer_socket=true",
                MysqlUriError::Socket,
            ),
            (
                "mysql://root:x@h/db?ssl-key=/etc/ssl/private/x.key",
                MysqlUriError::Parameter("ssl-key".into()),
            ),
        ] {
            assert_eq!(parse_mysql_uri(uri), Err(want), "{uri}");
        }
        for uri in [
            "postgresql://u:p@h/d",
            "mysql://h/d",
            "mysql://:p@h/d",
            "mysql://u:p@h:0/d",
            "mysql://u:p@h:99999/d",
            "mysql://u:p@h/d/e",
            "mysql://u:p@h%zz/d",
            "host=h user=u",
        ] {
            assert!(
                matches!(
                    parse_mysql_uri(uri),
                    Err(MysqlUriError::Syntax(_)) | Err(MysqlUriError::Socket)
                ),
                "{uri}"
            );
        }
        let no_pw = parse_mysql_uri("mysql://root@127.0.0.1/db").unwrap();
        assert_eq!(
            check_mysql_unprivileged(&no_pw),
            Err(MysqlUriError::NoPassword)
        );
        let empty = parse_mysql_uri("mysql://root:@127.0.0.1/db").unwrap();
        assert_eq!(
            check_mysql_unprivileged(&empty),
            Err(MysqlUriError::NoPassword)
        );
        let e = parse_mysql_uri("mysql://u:sekr1t@h:bad/d").unwrap_err();
        assert!(!e.to_string().contains("sekr1t"));
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dbrag_core_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("inner")).unwrap();
        d
    }

    #[test]
    fn sqlite_paths() {
        let base = tempdir("sqlite");
        let dir = base.join("inner");
        std::fs::write(dir.join("shop.db"), b"x").unwrap();
        std::fs::write(base.join("outside.db"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.db"), b"x").unwrap();
        let canon = dir.canonicalize().unwrap();
        assert_eq!(
            resolve_sqlite_path(&dir, "shop.db").unwrap(),
            canon.join("shop.db")
        );
        assert_eq!(
            resolve_sqlite_path(&dir, "sub/a.db").unwrap(),
            canon.join("sub/a.db")
        );
        assert_eq!(
            resolve_sqlite_path(&dir, "./sub/./a.db").unwrap(),
            canon.join("sub/a.db")
        );
        let abs = dir.join("shop.db");
        assert!(resolve_sqlite_path(&dir, abs.to_str().unwrap()).is_ok());
        let outside = |p: &str| {
            matches!(
                resolve_sqlite_path(&dir, p),
                Err(SqlitePathError::Outside(_))
            )
        };
        assert!(outside("../outside.db"));
        assert!(outside("sub/../../outside.db"));
        assert!(outside("/etc/passwd"));
        assert!(outside(base.join("outside.db").to_str().unwrap()));
        assert!(
            outside("/etc/does-not-exist"),
            "no existence oracle outside"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("outside.db"), dir.join("link.db")).unwrap();
            std::os::unix::fs::symlink(&base, dir.join("up")).unwrap();
            std::os::unix::fs::symlink(dir.join("shop.db"), dir.join("inside_link.db")).unwrap();
            assert!(outside("link.db"));
            assert!(outside("up/outside.db"));
            assert_eq!(
                resolve_sqlite_path(&dir, "inside_link.db").unwrap(),
                canon.join("shop.db")
            );
        }
        assert!(matches!(
            resolve_sqlite_path(&dir, "nope.db"),
            Err(SqlitePathError::Missing(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(&dir, "sub"),
            Err(SqlitePathError::Missing(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(&dir, "."),
            Err(SqlitePathError::Outside(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(&dir, ""),
            Err(SqlitePathError::Invalid(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(&dir, "file:shop.db?vfs=unix"),
            Err(SqlitePathError::Invalid(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(&dir, ":memory:"),
            Err(SqlitePathError::Invalid(_))
        ));
        assert!(matches!(
            resolve_sqlite_path(Path::new("rel"), "x.db"),
            Err(SqlitePathError::BadDirectory(_))
        ));
        let _ = std::fs::remove_dir_all(&base);
    }

    proptest! {
        #[test]
        fn mysql_parse_never_panics_nor_leaks(s in ".{0,80}", pw in "[a-zA-Z0-9]{8,12}") {
            let _ = parse_mysql_uri(&s);
            let uri = format!("mysql://u:{pw}@{s}");
            if let Err(e) = parse_mysql_uri(&uri) {
                prop_assert!(!e.to_string().contains(&pw));
            }
        }

        #[test]
        fn dotdot_never_resolves(parts in prop::collection::vec(prop::sample::select(vec!["a", "..", ".", "b.db", "x"]), 1..6)) {
            let dir = std::env::temp_dir().join("dbrag_core_prop_nodir");
            let p = parts.join("/");
            if parts.contains(&"..") {
                let outside = matches!(resolve_sqlite_path(&dir, &p), Err(SqlitePathError::Outside(_)));
                prop_assert!(outside);
            }
        }
    }
}
