//! Passwords instead of trust, with real clients (psql, tokio-postgres):
//! an endpoint's password is made at its first start and shown once; the
//! compute refuses TCP clients without it (28P01 for a wrong one), directly
//! and through the proxy; the right one works by `options=`, by TLS SNI and
//! by the `endpoint=NAME;PASSWORD` password form; replication is for the
//! safekeepers' role only, the client role is no superuser (no walsender,
//! no programs, no way to the superuser), and no password shows in status,
//! the safekeeper API, logs or any other file of the cluster.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{password_of, psql, started_cluster, Repo};
use control_plane::config::Config;

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
const INVALID_PASSWORD: &str = "28P01";

/// psql's stderr for a connection that must fail (no password prompt: stdin
/// is not a terminal).
fn psql_error(conninfo: &str) -> String {
    let out = Command::new(PSQL).args(["-X", "-At", "-w", conninfo, "-c", "SELECT 1"]).env_remove("PGPASSWORD").output().unwrap();
    assert!(!out.status.success(), "connected to {conninfo}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The SQLSTATE a tokio-postgres connection to `conninfo` fails with.
fn sqlstate_of_login(conninfo: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = runtime.block_on(tokio_postgres::connect(conninfo, tokio_postgres::NoTls)).err().unwrap_or_else(|| panic!("logged in to {conninfo}"));
    err.code().map(|c| c.code().to_string()).unwrap_or_else(|| panic!("no SQLSTATE in {err:?}"))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn ports(repo: &Repo) -> (u16, u16, u16) {
    let conf = Config::load(&repo.path).unwrap();
    let ep = common::endpoint(repo, "main");
    (ep.port, conf.proxy.expect("a proxy").pg_port, conf.safekeepers[0].http_port)
}

#[test]
fn the_password_is_shown_once_and_only_the_right_one_gets_in() {
    let repo = started_cluster(1);
    let first = repo.ok(&["endpoint", "start", "main"]);
    let password = password_of(&repo, "main");
    let (compute, proxy, _) = ports(&repo);
    assert!(first.contains(&format!("psql \"postgresql://strata_owner:{password}@127.0.0.1:{proxy}/postgres?options=endpoint%3Dmain\"")), "{first}");
    assert_eq!(mode_of(&repo.path.join("endpoints/main/endpoint.toml")), 0o600);
    assert_eq!(mode_of(&repo.path.join("secrets/replication_password")), 0o600);
    assert_eq!(mode_of(&repo.path.join("secrets")), 0o700);
    repo.ok(&["endpoint", "stop", "main"]);
    let again = repo.ok(&["endpoint", "start", "main"]);
    assert!(!again.contains(&password) && again.contains("strata endpoint show-password main"), "{again}");
    assert_eq!(repo.ok(&["endpoint", "show-password", "main"]).trim(), password, "a restart changed the password");

    // No password, and a wrong one: refused directly and through the proxy.
    let direct = format!("host=127.0.0.1 port={compute} user=strata_owner dbname=postgres");
    let proxied = format!("host=127.0.0.1 port={proxy} user=strata_owner dbname=postgres options=endpoint=main");
    for conninfo in [&direct, &proxied] {
        assert!(psql_error(conninfo).contains("no password supplied"), "{conninfo} let a client in without a password");
        assert_eq!(sqlstate_of_login(&format!("{conninfo} password=wrong")), INVALID_PASSWORD, "{conninfo}");
    }
    let wrong_form = format!("host=127.0.0.1 port={proxy} user=strata_owner dbname=postgres password='endpoint=main;wrong'");
    assert_eq!(sqlstate_of_login(&wrong_form), INVALID_PASSWORD);

    // The right one: direct, by options=, by SNI over TLS, by the password form.
    assert_eq!(psql(&format!("{direct} password={password}"), "SELECT current_user"), "strata_owner");
    psql(&format!("{proxied} password={password}"), "CREATE TABLE t AS SELECT 1 AS v");
    assert_eq!(psql(&format!("{proxied} password={password}"), "SELECT count(*) FROM t"), "1");
    let by_sni = format!("host=main.localhost hostaddr=127.0.0.1 port={proxy} user=strata_owner dbname=postgres password={password} sslmode=require");
    assert_eq!(psql(&by_sni, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "f", "the compute leg is plain TCP");
    let conninfo = psql(&by_sni, "\\conninfo");
    assert!(conninfo.contains("SSL connection"), "{conninfo}");
    let form = format!("postgresql://strata_owner:endpoint%3Dmain%3B{password}@127.0.0.1:{proxy}/postgres");
    assert_eq!(psql(&form, "SELECT count(*) FROM t"), "1");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let form = format!("host=127.0.0.1 port={proxy} user=strata_owner dbname=postgres password='endpoint=main;{password}'");
        let (client, connection) = tokio_postgres::connect(&form, tokio_postgres::NoTls).await.expect("password form");
        tokio::spawn(connection);
        let v: i32 = client.query_one("SELECT v FROM t WHERE v = $1", &[&1i32]).await.unwrap().get(0);
        assert_eq!(v, 1);
    });
    // Another endpoint's password does not open this one.
    repo.ok(&["timeline", "branch", "--branch-name", "dev"]);
    repo.ok(&["endpoint", "start", "dev", "--branch-name", "dev"]);
    let dev_password = password_of(&repo, "dev");
    assert_ne!(dev_password, password);
    assert_eq!(sqlstate_of_login(&format!("{proxied} password={dev_password}")), INVALID_PASSWORD);
    assert_eq!(psql(&common::proxy_url(&repo, "dev"), "SELECT count(*) FROM t"), "1");
}

/// Every file under `dir` (recursively) that contains one of `secrets`,
/// but for `allowed` ones.
fn files_containing(dir: &Path, secrets: &[&str], allowed: &[&Path], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            files_containing(&path, secrets, allowed, found);
        } else if meta.is_file() && meta.len() < 64 << 20 && !allowed.contains(&path.as_path()) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if secrets.iter().any(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes())) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[test]
fn only_the_safekeepers_replicate_and_no_password_leaks() {
    let repo = started_cluster(1);
    repo.ok(&["endpoint", "start", "main"]);
    let url = common::endpoint_url(&repo, "main");
    let password = password_of(&repo, "main");
    let replication_password = std::fs::read_to_string(repo.path.join("secrets/replication_password")).unwrap();
    let (compute, proxy, sk_http) = ports(&repo);
    // Commits need the safekeeper's acknowledgement: it streams as its role.
    psql(&url, "CREATE TABLE t(id int); INSERT INTO t VALUES (1)");

    let physical = format!("host=127.0.0.1 port={compute} user=strata_owner password={password} dbname=postgres replication=true");
    let err = psql_error(&physical);
    assert!(err.contains("no pg_hba.conf entry for replication connection"), "physical replication as the client: {err}");
    // A logical walsender goes by the database lines of pg_hba.conf, so it
    // is the role that stops it: the client role may not replicate.
    let logical = format!("host=127.0.0.1 port={compute} user=strata_owner password={password} dbname=postgres replication=database");
    let err = psql_error(&logical);
    assert!(err.contains("must be superuser or replication role"), "replication=database as the client: {err}");
    // The superuser and the replication role are refused on TCP for databases.
    for user in ["postgres", "strata_replication"] {
        let err = psql_error(&format!("host=127.0.0.1 port={compute} user={user} password={password} dbname=postgres"));
        assert!(err.contains("pg_hba.conf rejects connection"), "{user} on TCP: {err}");
    }
    // The client owns its database but cannot become what the Postgres
    // user is (who owns every endpoint's files).
    assert_eq!(psql(&url, "SELECT rolsuper::text || rolcreaterole::text || rolreplication::text FROM pg_roles WHERE rolname = current_user"), "falsefalsefalse");
    psql(&url, "CREATE TABLE owned(v int); DROP TABLE owned");
    psql(&url, "CREATE DATABASE mine");
    for forbidden in ["COPY (SELECT 1) TO PROGRAM 'true'", "GRANT pg_execute_server_program TO strata_owner", "ALTER ROLE strata_owner SUPERUSER", "SELECT pg_read_file('postgresql.conf')"] {
        let out = Command::new(PSQL).args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", forbidden]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("ERROR:"), "{forbidden} as the client: {err}");
    }
    // Through the proxy no walsender at all.
    for mode in ["true", "database"] {
        let err = psql_error(&format!("host=127.0.0.1 port={proxy} user=strata_owner password={password} dbname=postgres options=endpoint=main replication={mode}"));
        assert!(err.contains("replication connections are not accepted through the proxy"), "replication={mode} through the proxy: {err}");
    }
    // Not even with the client role's password under the replication role.
    let as_role = format!("host=127.0.0.1 port={compute} user=strata_replication password={password} dbname=postgres replication=true");
    assert!(psql_error(&as_role).contains("password authentication failed"));
    psql(&url, "INSERT INTO t VALUES (2)");
    assert_eq!(psql(&url, "SELECT count(*) FROM t"), "2");
    let senders = psql(&url, "SELECT usename || ' ' || application_name || ' ' || (sync_state <> 'async') FROM pg_stat_replication");
    assert_eq!(senders, "strata_replication sk_1 true", "the safekeeper streams as the replication role, as a synchronous standby");

    let ep = common::endpoint(&repo, "main");
    let timeline = common::http_get(sk_http, &format!("/v1/tenant/{}/timeline/{}", ep.tenant_id, ep.timeline_id));
    let status: serde_json::Value = serde_json::from_str(&timeline).unwrap();
    assert_eq!(status["acceptor"]["connected"], true, "{timeline}");
    assert!(status["compute"]["conninfo"].as_str().unwrap().contains("user=strata_replication"), "{timeline}");
    let mut shown = vec![timeline, common::http_get(sk_http, "/v1/status"), repo.ok(&["status"]), repo.ok(&["endpoint", "list"])];
    for log in ["safekeeper_1", "pageserver", "proxy", "main"] {
        shown.push(repo.ok(&["logs", log, "-n", "100000"]));
    }
    for text in &shown {
        assert!(!text.contains(&password) && !text.contains(&replication_password), "a password shows in:\n{text}");
    }
    // Nowhere on disk but where it is kept.
    let (endpoint_toml, secret) = (repo.path.join("endpoints/main/endpoint.toml"), repo.path.join("secrets/replication_password"));
    let mut found = Vec::new();
    for dir in [repo.path.clone(), ep.runtime_dir()] {
        files_containing(&dir, &[&password, &replication_password], &[&endpoint_toml, &secret], &mut found);
    }
    assert!(found.is_empty(), "passwords found in {found:?}");
}
