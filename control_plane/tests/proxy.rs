//! The proxy with real clients (psql, pgbench, raw sockets): one port
//! routes to the endpoints of two branches, in plain text and with TLS
//! (`sslmode=require`, `verify-full` against the generated CA, routing by
//! the SNI name); an unknown, missing or stopped endpoint and a malformed
//! startup packet each get a PostgreSQL error; tokio-postgres's extended
//! protocol and query cancellation work through it; an
//! endpoint with a suspend timeout is suspended when idle and woken by the
//! next connection with all committed data, once for 20 clients at once.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::failover::wait_for;
use common::{metric, psql, started_cluster, Repo};
use control_plane::config::Config;

const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";

/// `strata endpoint start ARGS…`; the endpoint's URL through the proxy,
/// with its password.
fn start(repo: &Repo, args: &[&str]) -> String {
    let mut full = vec!["endpoint", "start"];
    full.extend_from_slice(args);
    repo.ok(&full);
    common::proxy_url(repo, args[0])
}

fn proxy_ports(repo: &Repo) -> (u16, u16) {
    let conf = Config::load(&repo.path).unwrap();
    let proxy = conf.proxy.expect("a proxy configured");
    (proxy.pg_port, proxy.http_port)
}

fn proxy_metric(repo: &Repo, name: &str) -> f64 {
    metric(&common::http_get(proxy_ports(repo).1, "/metrics"), name).unwrap_or(0.0)
}

/// psql's stderr for a connection that must fail.
fn psql_error(url: &str) -> String {
    let out = Command::new(PSQL).args(["-X", "-At", url, "-c", "SELECT 1"]).output().unwrap();
    assert!(!out.status.success(), "connected to {url}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn endpoint_status(repo: &Repo, name: &str) -> String {
    let list = repo.ok(&["endpoint", "list"]);
    let line = list.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name} not in {list}"));
    line.split_whitespace().last().unwrap().to_string()
}

#[test]
fn one_port_routes_to_two_branches_and_refuses_what_it_cannot_route() {
    let repo = started_cluster(1);
    let main = start(&repo, &["main"]);
    psql(&main, "CREATE TABLE t(v text); INSERT INTO t VALUES ('before the branch')");
    repo.ok(&["timeline", "branch", "--branch-name", "dev"]);
    let dev = start(&repo, &["dev", "--branch-name", "dev"]);
    psql(&main, "INSERT INTO t VALUES ('main only')");
    psql(&dev, "INSERT INTO t VALUES ('dev only')");
    assert_eq!(psql(&main, "SELECT string_agg(v, ',' ORDER BY v) FROM t"), "before the branch,main only");
    assert_eq!(psql(&dev, "SELECT string_agg(v, ',' ORDER BY v) FROM t"), "before the branch,dev only");
    // Other options still reach the compute.
    let with_option = main.replace("options=endpoint%3Dmain", "options=endpoint%3Dmain%20-c%20work_mem%3D7MB");
    assert_eq!(psql(&with_option, "SHOW work_mem"), "7MB");
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench").args(["-i", "-s", "1", "-q", &dev]).output().unwrap();
    assert!(out.status.success(), "pgbench -i through the proxy: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench").args(["-S", "-c", "4", "-t", "50", &dev]).output().unwrap();
    assert!(out.status.success(), "pgbench -S through the proxy: {}", String::from_utf8_lossy(&out.stderr));

    let (port, _) = proxy_ports(&repo);
    // TLS with the certificate `strata init` made: required, verified
    // against the repository's CA, and routed by the SNI name alone.
    let conninfo = psql(&format!("{main}&sslmode=require"), "\\conninfo");
    assert!(conninfo.contains("SSL connection"), "{conninfo}");
    let ca = repo.path.join("tls/ca.crt");
    let (main_pw, dev_pw) = (common::password_of(&repo, "main"), common::password_of(&repo, "dev"));
    let verified = format!("postgresql://strata_owner:{main_pw}@localhost:{port}/postgres?options=endpoint%3Dmain&sslmode=verify-full&sslrootcert={}", ca.display());
    assert_eq!(psql(&verified, "SELECT count(*) FROM t"), "2");
    let by_sni = format!("host=dev.localhost hostaddr=127.0.0.1 port={port} user=strata_owner password={dev_pw} dbname=postgres sslmode=verify-full sslrootcert={}", ca.display());
    assert_eq!(psql(&by_sni, "SELECT string_agg(v, ',' ORDER BY v) FROM t"), "before the branch,dev only");
    let wrong_name = psql_error(&format!("host=main.example.com hostaddr=127.0.0.1 port={port} user=strata_owner sslmode=verify-full sslrootcert={}", ca.display()));
    assert!(wrong_name.contains("does not match host name"), "{wrong_name}");

    let unknown = psql_error(&format!("postgresql://strata_owner@127.0.0.1:{port}/postgres?options=endpoint%3Dnope"));
    assert!(unknown.contains("endpoint \"nope\" does not exist"), "{unknown}");
    // No endpoint named: the proxy asks for the password form, and refuses
    // any other password with what to do.
    let missing = psql_error(&format!("postgresql://strata_owner:not-the-form@127.0.0.1:{port}/postgres"));
    assert!(missing.contains("no endpoint given") && missing.contains("options=endpoint"), "{missing}");
    let hostile = psql_error(&format!("postgresql://strata_owner@127.0.0.1:{port}/postgres?options=endpoint%3D..%2Fx"));
    assert!(hostile.contains("is not valid"), "{hostile}");
    repo.ok(&["endpoint", "stop", "dev"]);
    let stopped = psql_error(&dev);
    assert!(stopped.contains("is stopped") && stopped.contains("strata endpoint start dev"), "{stopped}");

    // A startup packet with an impossible length: an ErrorResponse, then close.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(&[0, 0, 0, 3, 0, 3, 0, 0]).unwrap();
    let mut reply = Vec::new();
    let _ = sock.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "no ErrorResponse: {reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("invalid startup packet"), "{}", String::from_utf8_lossy(&reply));
    // The proxy still serves.
    assert_eq!(psql(&main, "SELECT count(*) FROM t"), "2");
    assert!(proxy_metric(&repo, "proxy_connections_total") >= 8.0);
}

#[test]
fn an_idle_endpoint_is_suspended_and_woken_once_by_twenty_clients() {
    let repo = started_cluster(1);
    let url = start(&repo, &["main", "--suspend-after", "2s"]);
    psql(&url, "CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 1000)");
    wait_for("the endpoint to be suspended", Duration::from_secs(60), || endpoint_status(&repo, "main") == "suspended");
    assert_eq!(proxy_metric(&repo, "proxy_suspends_total"), 1.0);

    // The next connection wakes it on the latest LSN.
    assert_eq!(psql(&url, "SELECT count(*) FROM t"), "1000");
    assert_eq!(endpoint_status(&repo, "main"), "running");
    psql(&url, "INSERT INTO t VALUES (1001)");
    wait_for("the endpoint to be suspended again", Duration::from_secs(60), || endpoint_status(&repo, "main") == "suspended");

    // 20 clients at once: all get through, one compute start.
    let wakeups_before = proxy_metric(&repo, "proxy_wakeups_total");
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Command::new(PSQL).args(["-X", "-At", &url, "-c", "SELECT count(*) FROM t"]).output().unwrap())
        })
        .collect();
    for c in clients {
        let out = c.join().unwrap();
        assert!(out.status.success(), "a client failed during the wake: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1001");
    }
    assert_eq!(proxy_metric(&repo, "proxy_wakeups_total") - wakeups_before, 1.0, "more than one compute start");
    // A user's stop is not a suspension: the proxy does not wake it.
    repo.ok(&["endpoint", "stop", "main"]);
    assert_eq!(endpoint_status(&repo, "main"), "stopped");
    assert!(psql_error(&url).contains("is stopped"));
}

/// tokio-postgres through the proxy: prepared statements with parameters
/// (the extended protocol), and a cancel request that reaches the compute.
#[test]
fn tokio_postgres_queries_and_cancels_through_the_proxy() {
    let repo = started_cluster(1);
    let url = start(&repo, &["main"]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect through the proxy");
        tokio::spawn(connection);
        client.batch_execute("CREATE TABLE kv(k int primary key, v text)").await.unwrap();
        let insert = client.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
        for k in 0..20i32 {
            client.execute(&insert, &[&k, &format!("value {k}")]).await.unwrap();
        }
        let row = client.query_one("SELECT v FROM kv WHERE k = $1", &[&7i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "value 7");

        let cancel = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel_query(tokio_postgres::NoTls).await
        });
        let err = client.batch_execute("SELECT pg_sleep(60)").await.expect_err("the sleep was not cancelled");
        canceller.await.unwrap().expect("cancel request sent");
        assert!(err.to_string().contains("canceling statement due to user request") || format!("{err:?}").contains("57014"), "{err:?}");
        // The session goes on after the cancel.
        let n: i64 = client.query_one("SELECT count(*) FROM kv", &[]).await.unwrap().get(0);
        assert_eq!(n, 20);
    });
}
