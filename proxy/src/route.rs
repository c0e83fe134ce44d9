//! Which endpoint a client asks for, read from its startup packet: the
//! `endpoint=NAME` token in the `options` parameter (what
//! `?options=endpoint%3DNAME` in a URL sends), else the first label of the
//! TLS SNI host name (`NAME.example.com`) when there is one; failing both,
//! the `endpoint=NAME;PASSWORD` password form ([`split_password_form`]).
//!
//! Invariants: a returned name is 1–63 characters of `[A-Za-z0-9_-]`, so it
//! can name a directory and never walks out of one; the parameters handed
//! on to the compute are the client's without the routing token (PostgreSQL
//! would refuse `endpoint` as an unknown setting).

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error(
        "no endpoint given: add options=endpoint=NAME to the connection (in a URL: \
         ?options=endpoint%3DNAME), connect with TLS to NAME.<proxy host>, or give \
         the password as endpoint=NAME;PASSWORD"
    )]
    Missing,
    #[error("endpoint name {0:?} is not valid (1-63 letters, digits, '-' or '_')")]
    Invalid(String),
    #[error("two different endpoints asked for: {0:?} and {1:?}")]
    Conflict(String, String),
    #[error("replication connections are not accepted through the proxy (only the cluster's safekeepers replicate, directly)")]
    Replication,
}

/// A startup packet asking for a walsender (`replication` other than off):
/// refused, whatever the role — a superuser could otherwise stream WAL
/// with `replication=database`, which pg_hba.conf cannot tell apart.
pub fn refuse_replication(params: &HashMap<String, String>) -> Result<(), RouteError> {
    match params.get("replication").map(|v| v.to_ascii_lowercase()) {
        None => Ok(()),
        Some(v) if matches!(v.as_str(), "false" | "off" | "no" | "0") => Ok(()),
        Some(_) => Err(RouteError::Replication),
    }
}

/// Where a connection goes and what to send the compute.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub endpoint: String,
    /// The startup parameters for the compute.
    pub params: Vec<(String, String)>,
}

pub fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Route a startup packet's parameters (and SNI name, if TLS gave one).
pub fn route(params: &HashMap<String, String>, sni: Option<&str>) -> Result<Route, RouteError> {
    let (from_options, forwarded) = split_params(params);
    let from_sni = sni.and_then(|host| host.split('.').next()).filter(|label| !label.is_empty() && host_has_domain(sni));
    let endpoint = match (from_options, from_sni) {
        (Some(a), Some(b)) if a != b => return Err(RouteError::Conflict(a, b.to_string())),
        (Some(a), _) => a,
        (None, Some(b)) => b.to_string(),
        (None, None) => return Err(RouteError::Missing),
    };
    route_to(endpoint, forwarded)
}

/// Route to `endpoint` (named by the password form) a startup packet that
/// named none.
pub fn route_named(params: &HashMap<String, String>, endpoint: &str) -> Result<Route, RouteError> {
    route_to(endpoint.to_string(), split_params(params).1)
}

fn route_to(endpoint: String, mut forwarded: Vec<(String, String)>) -> Result<Route, RouteError> {
    if !is_valid_name(&endpoint) {
        return Err(RouteError::Invalid(endpoint));
    }
    forwarded.sort();
    Ok(Route { endpoint, params: forwarded })
}

/// The endpoint named in `options`, and the parameters without it.
fn split_params(params: &HashMap<String, String>) -> (Option<String>, Vec<(String, String)>) {
    let mut from_options = None;
    let mut forwarded = Vec::new();
    for (key, value) in params {
        if key == "options" {
            let (name, rest) = split_endpoint_option(value);
            from_options = name;
            if !rest.is_empty() {
                forwarded.push((key.clone(), rest));
            }
        } else {
            forwarded.push((key.clone(), value.clone()));
        }
    }
    (from_options, forwarded)
}

/// `endpoint=NAME;PASSWORD` → (`NAME`, `PASSWORD`); `None` for any other
/// password. The password may itself contain `;`.
pub fn split_password_form(password: &str) -> Option<(&str, &str)> {
    password.strip_prefix("endpoint=")?.split_once(';')
}

/// An SNI name routes only if it has a domain below the label (a bare host
/// name like `localhost` names no endpoint).
fn host_has_domain(sni: Option<&str>) -> bool {
    sni.is_some_and(|h| h.contains('.') && h.parse::<std::net::IpAddr>().is_err())
}

/// The endpoint named by an `endpoint=NAME` (or `--endpoint=NAME`) token of
/// an `options` string, and the string without it. Tokens are separated by
/// unescaped spaces; backslash escapes are kept as they are.
fn split_endpoint_option(options: &str) -> (Option<String>, String) {
    let mut name = None;
    let mut kept: Vec<&str> = Vec::new();
    for token in split_tokens(options) {
        match token.strip_prefix("--endpoint=").or_else(|| token.strip_prefix("endpoint=")) {
            Some(value) => name = Some(value.to_string()),
            None => kept.push(token),
        }
    }
    (name, kept.join(" "))
}

fn split_tokens(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut escaped) = (Vec::new(), None, false);
    for (i, c) in s.char_indices() {
        match (c, escaped) {
            (' ', false) => {
                if let Some(st) = start.take() {
                    out.push(&s[st..i]);
                }
            }
            ('\\', false) => {
                escaped = true;
                start.get_or_insert(i);
            }
            _ => {
                escaped = false;
                start.get_or_insert(i);
            }
        }
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_endpoint_option_routes_and_is_removed() {
        let r = route(&params(&[("user", "u"), ("options", "endpoint=dev")]), None).unwrap();
        assert_eq!(r.endpoint, "dev");
        assert_eq!(r.params, vec![("user".to_string(), "u".to_string())]);
        let r = route(&params(&[("options", "-c work_mem=64MB --endpoint=b-2 -c a\\ b=1")]), None).unwrap();
        assert_eq!(r.endpoint, "b-2");
        assert_eq!(r.params, vec![("options".to_string(), "-c work_mem=64MB -c a\\ b=1".to_string())]);
    }

    #[test]
    fn sni_routes_by_its_first_label() {
        assert_eq!(route(&params(&[]), Some("dev.strata.local")).unwrap().endpoint, "dev");
        assert_eq!(route(&params(&[]), Some("localhost")), Err(RouteError::Missing));
        assert_eq!(route(&params(&[]), Some("127.0.0.1")), Err(RouteError::Missing));
        assert_eq!(route(&params(&[("options", "endpoint=dev")]), Some("dev.x.y")).unwrap().endpoint, "dev");
        assert_eq!(
            route(&params(&[("options", "endpoint=a")]), Some("b.x.y")),
            Err(RouteError::Conflict("a".into(), "b".into()))
        );
    }

    #[test]
    fn walsender_connections_are_refused() {
        for mode in ["true", "database", "on", "1"] {
            assert_eq!(refuse_replication(&params(&[("replication", mode)])), Err(RouteError::Replication), "{mode}");
        }
        assert_eq!(refuse_replication(&params(&[("replication", "false")])), Ok(()));
        assert_eq!(refuse_replication(&params(&[("user", "u")])), Ok(()));
    }

    #[test]
    fn the_password_form_names_the_endpoint() {
        assert_eq!(split_password_form("endpoint=dev;pa;ss"), Some(("dev", "pa;ss")));
        assert_eq!(split_password_form("endpoint=dev;"), Some(("dev", "")));
        assert_eq!(split_password_form("endpoint=dev"), None);
        assert_eq!(split_password_form("secret"), None);
        let r = route_named(&params(&[("user", "u"), ("options", "-c a=b")]), "dev").unwrap();
        assert_eq!(r.endpoint, "dev");
        assert_eq!(r.params, vec![("options".to_string(), "-c a=b".to_string()), ("user".to_string(), "u".to_string())]);
        assert_eq!(route_named(&params(&[]), "../x"), Err(RouteError::Invalid("../x".into())));
    }

    #[test]
    fn missing_or_hostile_names_are_refused() {
        assert_eq!(route(&params(&[("user", "u")]), None), Err(RouteError::Missing));
        for bad in ["../x", "a/b", "", "a.b", &"a".repeat(64)] {
            let options = format!("endpoint={bad}");
            assert!(route(&params(&[("options", &options)]), None).is_err(), "{bad:?} accepted");
        }
    }
}
