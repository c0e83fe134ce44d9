//! Client authentication (cleartext, MD5, SCRAM-SHA-256) against a real
//! PostgreSQL 15. pg_hba.conf is written before the server starts, so no
//! reload races.

use pg_harness::PgCluster;
use pq_proto::{ProtocolError, ReplicationClient};

/// SQLSTATE `invalid_password`.
const INVALID_PASSWORD: &str = "28P01";

/// A cluster where `role` (password `password`, stored with `encryption`)
/// must log in for replication with `method`.
fn cluster_with_auth(role: &str, password: &str, encryption: &str, method: &str) -> PgCluster {
    let mut pg = PgCluster::init().unwrap();
    let hba_path = pg.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    let line = format!("host replication {role} 127.0.0.1/32 {method}\n");
    std::fs::write(&hba_path, line + &hba).unwrap();
    pg.start_postmaster().unwrap();
    pg.sql(&format!(
        "SET password_encryption = '{encryption}'; \
         CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{}';",
        password.replace('\'', "''")
    ))
    .unwrap();
    pg
}

fn conninfo(pg: &PgCluster, role: &str, password: Option<&str>) -> String {
    let mut s = format!(
        "host=127.0.0.1 port={} user={role} dbname=postgres",
        pg.port()
    );
    if let Some(pw) = password {
        s += &format!(
            " password='{}'",
            pw.replace('\\', "\\\\").replace('\'', "\\'")
        );
    }
    s
}

async fn check_auth(pg: &PgCluster, role: &str, password: &str) {
    let mut ok = ReplicationClient::connect(&conninfo(pg, role, Some(password)), "auth")
        .await
        .unwrap();
    assert_eq!(ok.identify_system().await.unwrap().timeline, 1);
    ok.close().await.unwrap();

    let err = ReplicationClient::connect(&conninfo(pg, role, Some("wrong")), "auth")
        .await
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), Some(INVALID_PASSWORD), "{err}");

    let err = ReplicationClient::connect(&conninfo(pg, role, None), "auth")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProtocolError::Auth(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_auth() {
    let pg = cluster_with_auth("md5user", "md5 pass'word", "md5", "md5");
    check_auth(&pg, "md5user", "md5 pass'word").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_auth() {
    let pg = cluster_with_auth("scramuser", "scr@m pw", "scram-sha-256", "scram-sha-256");
    check_auth(&pg, "scramuser", "scr@m pw").await;
    // The URI form with a percent-encoded password.
    let uri = format!(
        "postgresql://scramuser:scr%40m%20pw@127.0.0.1:{}/postgres",
        pg.port()
    );
    let mut client = ReplicationClient::connect(&uri, "uri").await.unwrap();
    client.identify_system().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_auth() {
    let pg = cluster_with_auth("clearuser", "plain", "scram-sha-256", "password");
    check_auth(&pg, "clearuser", "plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_method_with_scram_secret_uses_scram() {
    // pg_hba `md5` with a SCRAM-stored password makes PG15 ask for SCRAM.
    let pg = cluster_with_auth("mixeduser", "mixed", "scram-sha-256", "md5");
    check_auth(&pg, "mixeduser", "mixed").await;
}
