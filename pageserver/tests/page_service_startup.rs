//! The page service's start-up is bounded (`startup_timeout_ms`): a client
//! that sends half a startup packet and stalls, and one that sends its
//! startup packet but never answers the password request (auth on), are
//! disconnected (and counted), while other clients are served throughout.
//!
//! One test function: the metrics are process-wide.
mod common;

use std::time::Duration;

use anyhow::Context;
use auth::{Claims, Scope, Signer};
use common::ps::*;
use pageserver::metrics::PAGE_SERVICE_STARTUP_TIMEOUTS;
use pageserver::read::page_service::{serve_with, PageServiceConf};
use pageserver::tenant::repository::Repository;
use pq_proto::{ConnConfig, ReplicationClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closes `conn` (EOF or reset) before `deadline`.
async fn closed_by_server(conn: &mut TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the password request; keep not answering
        }
    }
}

/// A startup packet (protocol 3.0, `user=u`).
fn startup_packet() -> Vec<u8> {
    let mut body = 196608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0u\0\0");
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// A client that logs in with `password` and runs a text command: the
/// server answers (an unknown tenant is an error, which is an answer).
async fn served(port: u16, password: Option<String>) -> anyhow::Result<()> {
    let conf = ConnConfig { host: "127.0.0.1".into(), port, user: "u".into(), password, ..ConnConfig::default() };
    let mut client = ReplicationClient::connect_config(&conf).await.context("login")?;
    let tenant = utils::id::TenantId::generate();
    let err = client.simple_query(&format!("db_size {tenant} {tenant} latest 1663 5")).await.err().context("an answer")?;
    anyhow::ensure!(err.sqlstate().is_some(), "a server error, got {err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_startups_are_disconnected_and_others_are_served() -> anyhow::Result<()> {
    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let keys_dir = tempfile::tempdir()?;
    let (private, public) = (keys_dir.path().join("k.pem"), keys_dir.path().join("k.pub.pem"));
    auth::generate_key_pair(&private, &public)?;
    let token = Signer::from_pem_file(&private)?.sign(&Claims::new(Scope::PageServerApi))?;
    let startup_timeout = Duration::from_millis(2000);
    let mut ports = Vec::new();
    for auth in [None, Some(std::sync::Arc::new(auth::KeySet::load(&public)?))] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        let conf = PageServiceConf { auth, startup_timeout_ms: startup_timeout.as_millis() as u64, ..Default::default() };
        tokio::spawn(serve_with(listener, repo.clone(), conf));
    }
    let (trust, with_auth) = (ports[0], ports[1]);
    let before = PAGE_SERVICE_STARTUP_TIMEOUTS.get();

    // Half a startup packet, then nothing.
    let mut half = TcpStream::connect(("127.0.0.1", trust)).await?;
    half.write_all(&startup_packet()[..6]).await?;
    // A whole startup packet to the auth listener, the password never sent.
    let mut no_password = TcpStream::connect(("127.0.0.1", with_auth)).await?;
    no_password.write_all(&startup_packet()).await?;
    // Others are served meanwhile, on both listeners.
    served(trust, None).await?;
    served(with_auth, Some(token.clone())).await?;

    let deadline = startup_timeout * 20;
    assert!(closed_by_server(&mut half, deadline).await, "half a startup packet holds the connection");
    assert!(closed_by_server(&mut no_password, deadline).await, "an unanswered password request holds the connection");
    assert_eq!(PAGE_SERVICE_STARTUP_TIMEOUTS.get() - before, 2);
    served(trust, None).await?;
    served(with_auth, Some(token)).await?;
    Ok(())
}
