//! Rules for a libpq connection string a tenant hands to the server (docs/connections-and-keys.md).
//!
//! The server connects on the tenant's behalf, so the tenant must not borrow
//! the server's own identity: on Debian `local all postgres peer` lets every
//! backend log in as superuser over the Unix socket. For anyone but a
//! superuser a conninfo must name TCP hosts only, carry a password, and not
//! point libpq at files on the server. (After connecting, the caller also
//! checks that the server really used the password.)
//!
//! Input is the keyword/value list libpq's `PQconninfoParse` produced (only
//! the options that were given), so keyword and URI forms are treated alike.

use std::fmt;

/// Options that make libpq read a file on the server, or look up settings
/// in one: refused for non-superusers.
pub const FILE_OPTIONS: &[&str] = &[
    "passfile",
    "service",
    "servicefile",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
];

/// Why a conninfo is refused. `Display` never includes the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConninfoError {
    /// No host and no hostaddr: libpq would use the server's Unix socket.
    NoHost,
    /// A host that names a Unix-socket directory (`/…`) or abstract socket (`@…`).
    SocketHost(String),
    /// No password, or an empty one.
    NoPassword,
    /// An option that reads a file on the server.
    FileOption(String),
    /// A port that is not a number in 1..=65535.
    BadPort,
}

impl fmt::Display for ConninfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConninfoError::NoHost => write!(
                f,
                "the connection string names no host, so it would use this server's Unix socket"
            ),
            ConninfoError::SocketHost(h) => write!(
                f,
                "host \"{h}\" is a Unix-socket path on this server; only TCP hosts are allowed"
            ),
            ConninfoError::NoPassword => {
                write!(f, "the connection string must carry a password")
            }
            ConninfoError::FileOption(k) => write!(
                f,
                "option \"{k}\" reads a file on this server and is not allowed"
            ),
            ConninfoError::BadPort => write!(f, "port must be a number between 1 and 65535"),
        }
    }
}

impl std::error::Error for ConninfoError {}

/// The readable parts of a conninfo (what the connections table keeps in clear).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub host: Option<String>,
    pub port: Option<i32>,
    pub database: Option<String>,
    pub user: Option<String>,
    /// Only so callers can redact it from messages; never store or show it.
    pub password: Option<String>,
}

fn value<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
    options
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn non_empty<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
    value(options, key).filter(|v| !v.trim().is_empty())
}

/// Host, port, database, user and password of a parsed conninfo.
/// `port` is the first port of a list; a non-numeric port is an error.
pub fn summarize(options: &[(String, String)]) -> Result<Summary, ConninfoError> {
    let port = match non_empty(options, "port") {
        None => None,
        Some(p) => {
            let first = p.split(',').next().unwrap_or("").trim();
            match first.parse::<i32>() {
                Ok(n) if (1..=65535).contains(&n) => Some(n),
                _ => return Err(ConninfoError::BadPort),
            }
        }
    };
    let host = non_empty(options, "host")
        .or_else(|| non_empty(options, "hostaddr"))
        .map(str::to_string);
    Ok(Summary {
        host,
        port,
        database: non_empty(options, "dbname").map(str::to_string),
        user: non_empty(options, "user").map(str::to_string),
        password: non_empty(options, "password").map(str::to_string),
    })
}

/// Whether one host entry would make libpq use a Unix socket.
pub fn is_socket_host(host: &str) -> bool {
    let h = host.trim();
    h.is_empty() || h.starts_with('/') || h.starts_with('@')
}

/// The checks for a non-superuser's conninfo, before any connection is made.
pub fn check_unprivileged(options: &[(String, String)]) -> Result<Summary, ConninfoError> {
    for (k, _) in options {
        if FILE_OPTIONS.contains(&k.as_str()) {
            return Err(ConninfoError::FileOption(k.clone()));
        }
    }
    let hosts: Vec<&str> = value(options, "host")
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let addrs: Vec<&str> = value(options, "hostaddr")
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let positions = hosts.len().max(addrs.len());
    if positions == 0 {
        return Err(ConninfoError::NoHost);
    }
    for i in 0..positions {
        // A numeric hostaddr at this position means TCP whatever the host says.
        let addr = addrs.get(i).map(|a| a.trim()).unwrap_or("");
        if !addr.is_empty() {
            continue;
        }
        let host = hosts.get(i).copied().unwrap_or("");
        if host.trim().is_empty() {
            return Err(ConninfoError::NoHost);
        }
        if is_socket_host(host) {
            return Err(ConninfoError::SocketHost(host.trim().to_string()));
        }
    }
    let summary = summarize(options)?;
    if summary.password.is_none() {
        return Err(ConninfoError::NoPassword);
    }
    Ok(summary)
}

/// `message` with every occurrence of `secret` replaced by `********`.
pub fn redact(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if s.len() >= 2 => message.replace(s, "********"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tcp_with_password_passes() {
        let s = check_unprivileged(&opts(&[
            ("host", "127.0.0.1"),
            ("port", "5433"),
            ("dbname", "shop"),
            ("user", "reader"),
            ("password", "pw"),
        ]))
        .unwrap();
        assert_eq!(s.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.port, Some(5433));
        assert_eq!(s.database.as_deref(), Some("shop"));
        assert_eq!(s.user.as_deref(), Some("reader"));
    }

    #[test]
    fn sockets_are_refused() {
        let e = check_unprivileged(&opts(&[
            ("host", "/var/run/postgresql"),
            ("user", "postgres"),
        ]));
        assert_eq!(
            e,
            Err(ConninfoError::SocketHost("/var/run/postgresql".into()))
        );
        let e = check_unprivileged(&opts(&[("host", "@abstract"), ("password", "x")]));
        assert!(matches!(e, Err(ConninfoError::SocketHost(_))));
        assert_eq!(
            check_unprivileged(&opts(&[("user", "postgres"), ("password", "x")])),
            Err(ConninfoError::NoHost)
        );
        assert_eq!(
            check_unprivileged(&opts(&[("host", ""), ("password", "x")])),
            Err(ConninfoError::NoHost)
        );
        // A socket hidden in a multi-host list.
        assert!(matches!(
            check_unprivileged(&opts(&[("host", "db1,/tmp"), ("password", "x")])),
            Err(ConninfoError::SocketHost(_))
        ));
        assert_eq!(
            check_unprivileged(&opts(&[("host", "db1,"), ("password", "x")])),
            Err(ConninfoError::NoHost)
        );
    }

    #[test]
    fn hostaddr_is_tcp() {
        assert!(check_unprivileged(&opts(&[("hostaddr", "127.0.0.1"), ("password", "x")])).is_ok());
        assert!(check_unprivileged(&opts(&[
            ("host", "/tmp"),
            ("hostaddr", "127.0.0.1"),
            ("password", "x")
        ]))
        .is_ok());
        assert!(check_unprivileged(&opts(&[
            ("host", "db1,/tmp"),
            ("hostaddr", "10.0.0.1,"),
            ("password", "x")
        ]))
        .is_err());
    }

    #[test]
    fn password_and_files() {
        assert_eq!(
            check_unprivileged(&opts(&[("host", "db")])),
            Err(ConninfoError::NoPassword)
        );
        assert_eq!(
            check_unprivileged(&opts(&[("host", "db"), ("password", "")])),
            Err(ConninfoError::NoPassword)
        );
        for k in FILE_OPTIONS {
            assert_eq!(
                check_unprivileged(&opts(&[("host", "db"), ("password", "x"), (k, "/etc/x")])),
                Err(ConninfoError::FileOption(k.to_string()))
            );
        }
        assert_eq!(
            check_unprivileged(&opts(&[("host", "db"), ("password", "x"), ("port", "abc")])),
            Err(ConninfoError::BadPort)
        );
    }

    #[test]
    fn errors_and_redaction_hide_the_password() {
        let secret = "hunter2-very-secret";
        for e in [
            ConninfoError::NoHost,
            ConninfoError::NoPassword,
            ConninfoError::BadPort,
            ConninfoError::SocketHost("/tmp".into()),
            ConninfoError::FileOption("sslkey".into()),
        ] {
            assert!(!e.to_string().contains(secret));
        }
        assert_eq!(
            redact(&format!("failed: password {secret} rejected"), Some(secret)),
            "failed: password ******** rejected"
        );
        assert_eq!(redact("x", None), "x");
    }

    proptest! {
        #[test]
        fn never_panics(pairs in proptest::collection::vec(("[a-z]{1,10}", ".{0,20}"), 0..8)) {
            let _ = check_unprivileged(&pairs);
            let _ = summarize(&pairs);
        }

        #[test]
        fn slash_hosts_never_pass(dir in "/[ -~]{0,30}", pw in "[a-z]{1,8}") {
            let o = vec![("host".to_string(), dir), ("password".to_string(), pw)];
            prop_assert!(check_unprivileged(&o).is_err());
        }
    }
}
