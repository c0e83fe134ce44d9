//! Connection strings: libpq's `key=value` form and `postgresql://` URIs.
//!
//! Owns [`ConnConfig`]. Supported keys: `host`/`hostaddr`, `port`, `user`,
//! `password`, `dbname`, `application_name`, `options`, `sslmode`
//! (`disable`, `allow` or `prefer`: this crate speaks plain TCP only) and
//! `connect_timeout` (accepted, ignored). Unknown keys are errors, as in
//! libpq, so a typo does not silently change the connection.
//!
//! Invariants: one host only; defaults are host `localhost`, port 5432,
//! user `postgres`, dbname = user. Values in `key=value` form may be
//! single-quoted with `\` escapes; URI parts are percent-decoded.
//!
//! [`redact_password`] gives a connection string fit for logs and status
//! output: the same settings with any password replaced.
//!
//! Cancellation: synchronous code only.

use std::str::FromStr;

use crate::error::{ProtocolError, Result};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    pub options: Option<String>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: None,
            application_name: None,
            options: None,
        }
    }
}

fn err(detail: impl Into<String>) -> ProtocolError {
    ProtocolError::Config(detail.into())
}

impl FromStr for ConnConfig {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let pairs = match s.split_once("://") {
            Some(("postgresql" | "postgres", rest)) => parse_uri(rest)?,
            Some((scheme, _)) => return Err(err(format!("unsupported URI scheme {scheme:?}"))),
            None => parse_key_values(s)?,
        };
        let mut config = ConnConfig::default();
        for (key, value) in pairs {
            config.set(&key, value)?;
        }
        Ok(config)
    }
}

impl ConnConfig {
    /// The database to ask for: `dbname`, else the user name.
    pub fn database(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.user)
    }

    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "host" | "hostaddr" if value.contains(',') => {
                return Err(err("multiple hosts are not supported"))
            }
            "host" | "hostaddr" if value.starts_with('/') => {
                return Err(err("Unix-domain sockets are not supported"))
            }
            "host" | "hostaddr" => self.host = value,
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| err(format!("invalid port {value:?}")))?
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "application_name" => self.application_name = Some(value),
            "options" => self.options = Some(value),
            "sslmode" if matches!(value.as_str(), "disable" | "allow" | "prefer") => {}
            "sslmode" => {
                return Err(err(format!(
                    "sslmode={value} needs TLS, which is not supported"
                )))
            }
            "connect_timeout" => {}
            other => return Err(err(format!("invalid connection option {other:?}"))),
        }
        Ok(())
    }
}

/// What stands for a password in [`redact_password`]'s output.
pub const REDACTED: &str = "********";

/// `conninfo` for logs and status output: in `key=value` form, with the
/// password (if any) replaced by [`REDACTED`]. A string that does not parse
/// is not shown at all (it might hold a password this parser cannot find).
pub fn redact_password(conninfo: &str) -> String {
    let s = conninfo.trim();
    let pairs = match s.split_once("://") {
        Some((_, rest)) => parse_uri(rest),
        None => parse_key_values(s),
    };
    let Ok(pairs) = pairs else { return "<unparsable connection string>".to_string() };
    let render = |(key, value): (String, String)| {
        let value = if key == "password" { REDACTED.to_string() } else { value };
        if !value.is_empty() && !value.contains([' ', '\\', '\'']) {
            format!("{key}={value}")
        } else {
            format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
        }
    };
    pairs.into_iter().map(render).collect::<Vec<_>>().join(" ")
}

/// `key = value key2='quoted \' value'` pairs.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(err(format!("missing \"=\" after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = if chars.next_if_eq(&'\'').is_some() {
            quoted_value(&mut chars)?
        } else {
            unquoted_value(&mut chars)
        };
        pairs.push((key, value));
    }
}

fn quoted_value(chars: &mut impl Iterator<Item = char>) -> Result<String> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(err("unterminated quoted value")),
            Some('\'') => return Ok(value),
            Some('\\') => value.push(chars.next().ok_or_else(|| err("dangling backslash"))?),
            Some(c) => value.push(c),
        }
    }
}

fn unquoted_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut value = String::new();
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        match c {
            '\\' => value.extend(chars.next()),
            c => value.push(c),
        }
    }
    value
}

/// The part of a URI after `scheme://`.
fn parse_uri(rest: &str) -> Result<Vec<(String, String)>> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let mut pairs = Vec::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            push_nonempty(&mut pairs, "user", user)?;
            if userinfo.contains(':') {
                pairs.push(("password".into(), percent_decode(password)?));
            }
            hostport
        }
        None => authority,
    };
    parse_hostport(hostport, &mut pairs)?;
    push_nonempty(&mut pairs, "dbname", path)?;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| err(format!("bad URI parameter {param:?}")))?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

fn parse_hostport(hostport: &str, pairs: &mut Vec<(String, String)>) -> Result<()> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| err("unterminated [IPv6] host"))?;
        (host, after.strip_prefix(':').unwrap_or(after))
    } else {
        hostport.split_once(':').unwrap_or((hostport, ""))
    };
    push_nonempty(pairs, "host", host)?;
    push_nonempty(pairs, "port", port)
}

fn push_nonempty(pairs: &mut Vec<(String, String)>, key: &str, raw: &str) -> Result<()> {
    if !raw.is_empty() {
        pairs.push((key.to_string(), percent_decode(raw)?));
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| err(format!("bad percent-escape in {s:?}")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err(format!("percent-escapes in {s:?} are not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnConfig {
        s.parse().unwrap()
    }

    #[test]
    fn redacted_strings_keep_everything_but_the_password() {
        let r = redact_password("host=h port=1 user=u password='it\\'s me' options='-c a=b'");
        assert_eq!(r, "host=h port=1 user=u password=******** options='-c a=b'");
        assert_eq!(parse(&r).options.as_deref(), Some("-c a=b"));
        let r = redact_password("postgresql://u:p%40ss@h:5/db");
        assert!(!r.contains("p@ss") && r.contains("password=********") && r.contains("host=h"), "{r}");
        assert_eq!(redact_password("host=h user=u"), "host=h user=u");
        assert_eq!(redact_password("host='unterminated password=x"), "<unparsable connection string>");
    }

    #[test]
    fn key_value_form() {
        let c = parse("host=127.0.0.1 port=5433 user=bob dbname=db application_name = x");
        assert_eq!(c.application_name.as_deref(), Some("x"));
        let c2 = parse(
            r"host=127.0.0.1  port = 5433 user=bob dbname=db password='it\'s me' sslmode=disable",
        );
        assert_eq!(
            c2,
            ConnConfig {
                host: "127.0.0.1".into(),
                port: 5433,
                user: "bob".into(),
                password: Some("it's me".into()),
                dbname: Some("db".into()),
                application_name: None,
                options: None,
            }
        );
        assert_eq!(c.database(), "db");
        assert_eq!(parse("user=u").database(), "u");
    }

    #[test]
    fn uri_form() {
        let c = parse(
            "postgresql://al%40x:p%3Ass@[::1]:6000/my%20db?application_name=walrcv&sslmode=prefer",
        );
        assert_eq!(c.user, "al@x");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 6000);
        assert_eq!(c.dbname.as_deref(), Some("my db"));
        assert_eq!(c.application_name.as_deref(), Some("walrcv"));
        let d = parse("postgres://postgres@127.0.0.1:5999/postgres");
        assert_eq!(
            (d.host.as_str(), d.port, d.user.as_str()),
            ("127.0.0.1", 5999, "postgres")
        );
        let e = parse("postgresql://");
        assert_eq!(e, ConnConfig::default());
    }

    #[test]
    fn errors() {
        for bad in [
            "host",
            "host=a port=x",
            "password='open",
            "bogus=1",
            "sslmode=require",
            "host=/tmp",
            "host=a,b",
            "mysql://x",
            "postgresql://h/db?x",
            "postgresql://h/%zz",
            "postgresql://[::1/db",
        ] {
            assert!(bad.parse::<ConnConfig>().is_err(), "{bad}");
        }
    }
}
