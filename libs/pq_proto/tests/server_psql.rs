//! `PostgresBackend` serving the real `psql` and this crate's client.

use std::process::Output;

use bytes::BytesMut;
use pg_harness::pg_bin;
use pq_proto::messages::oid;
use pq_proto::{
    ColumnDesc, FeMessage, PostgresBackend, ProtocolError, ReplicationClient, ReplicationCommand,
    ReplicationMode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SYSTEM_ID: &str = "7000000000000000001";
const XLOGPOS: &str = "0/16B3748";
const PARAMS: &[(&str, &str)] = &[
    ("server_version", "15.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// What the test server saw in the startup phase.
#[derive(Debug)]
enum Seen {
    Startup {
        user: Option<String>,
        replication: ReplicationMode,
        app: Option<String>,
    },
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
}

/// Answer one query (buffered).
fn answer(pgb: &mut PostgresBackend<TcpStream>, query: &str) -> Result<(), ProtocolError> {
    match ReplicationCommand::parse(query) {
        Ok(ReplicationCommand::IdentifySystem) => {
            let cols = [
                ColumnDesc::text("systemid"),
                ColumnDesc::int4("timeline"),
                ColumnDesc::text("xlogpos"),
                ColumnDesc::text("dbname"),
            ];
            let row = vec![
                Some(SYSTEM_ID.to_string()),
                Some("1".to_string()),
                Some(XLOGPOS.to_string()),
                None,
            ];
            pgb.send_row_set(&cols, &[row])
        }
        Ok(ReplicationCommand::Show(name)) => pgb.send_row_set(
            &[ColumnDesc::text(&name)],
            &[vec![Some(format!("value of {name}"))]],
        ),
        Ok(ReplicationCommand::Other(sql)) if sql.to_ascii_lowercase().starts_with("select") => {
            let cols = [
                ColumnDesc {
                    name: "n",
                    type_oid: oid::INT4,
                },
                ColumnDesc::text("word"),
            ];
            let rows = vec![
                vec![Some("1".into()), Some("hello".into())],
                vec![Some("2".into()), None],
            ];
            pgb.send_row_set(&cols, &rows)
        }
        Ok(other) => pgb.send_error("0A000", &format!("not supported: {other:?}")),
        Err(e) => pgb.send_error("42601", &e.to_string()),
    }
}

async fn serve_one(
    stream: TcpStream,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<(), ProtocolError> {
    let mut pgb = PostgresBackend::new(stream);
    match pgb.read_startup().await? {
        Some(FeMessage::StartupMessage(s)) => {
            let app = s.application_name().map(String::from);
            let _ = seen.send(Seen::Startup {
                user: s.user().map(String::from),
                replication: s.replication,
                app,
            });
        }
        Some(FeMessage::CancelRequest {
            process_id,
            secret_key,
        }) => {
            let _ = seen.send(Seen::Cancel {
                process_id,
                secret_key,
            });
            return Ok(());
        }
        _ => return Ok(()),
    }
    pgb.authenticate_trust(PARAMS, 42, 4242).await?;
    while let Some(msg) = pgb.read_message().await? {
        match msg {
            FeMessage::Query(q) => answer(&mut pgb, &q)?,
            FeMessage::Terminate => break,
            other => pgb.send_error("08P01", &format!("unexpected {other:?}"))?,
        }
        pgb.ready_for_query().await?;
    }
    Ok(())
}

/// A server on a loopback port, one task per connection.
async fn start_server() -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, tx).await {
                    eprintln!("test server: {e}");
                }
            });
        }
    });
    (port, rx)
}

async fn psql(port: u16, extra_conn: &str, args: &[&str]) -> Output {
    let conn = format!("host=127.0.0.1 port={port} user=x replication=true {extra_conn}");
    tokio::process::Command::new(pg_bin("psql"))
        .arg("-X")
        .args(args)
        .arg(conn)
        .env_remove("PGSSLMODE")
        .output()
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn psql_identify_system() {
    let (port, mut seen) = start_server().await;
    let out = psql(
        port,
        "application_name=walrcv",
        &["-At", "-c", "IDENTIFY_SYSTEM"],
    )
    .await;
    assert_eq!(stdout(&out), format!("{SYSTEM_ID}|1|{XLOGPOS}|\n"));
    match seen.recv().await.unwrap() {
        Seen::Startup {
            user,
            replication,
            app,
        } => {
            assert_eq!(user.as_deref(), Some("x"));
            assert_eq!(replication, ReplicationMode::Physical);
            assert_eq!(app.as_deref(), Some("walrcv"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn psql_select_row_set_and_errors() {
    let (port, _seen) = start_server().await;
    let out = psql(port, "", &["-c", "SELECT n, word FROM t"]).await;
    let text = stdout(&out);
    assert!(text.contains(" n | word"), "{text}");
    assert!(text.contains(" 1 | hello"), "{text}");
    assert!(text.contains("(2 rows)"), "{text}");
    let out = psql(port, "", &["-c", "START_REPLICATION nonsense"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR:") && err.contains("replication command"),
        "{err}"
    );
    let out = psql(port, "sslmode=require", &["-c", "IDENTIFY_SYSTEM"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSL"), "{err}");
}

#[tokio::test]
async fn own_client_against_own_server() {
    let (port, _seen) = start_server().await;
    let conninfo = format!("postgresql://x@127.0.0.1:{port}/db");
    let mut client = ReplicationClient::connect(&conninfo, "self").await.unwrap();
    assert_eq!(client.parameter("server_version"), Some("15.0"));
    assert_eq!(client.backend_key(), Some((42, 4242)));
    let ident = client.identify_system().await.unwrap();
    assert_eq!(ident.system_id, SYSTEM_ID.parse::<u64>().unwrap());
    assert_eq!(ident.xlogpos.to_string(), XLOGPOS);
    let rows = client.simple_query("select 1").await.unwrap();
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), Some("hello".into())],
            vec![Some("2".into()), None]
        ]
    );
    let err = client
        .simple_query("TIMELINE_HISTORY zero")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42601"), "{err}");
    let err = client
        .create_physical_slot_if_missing("s")
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("0A000"), "{err}");
    client.close().await.unwrap();
}

#[tokio::test]
async fn cancel_request_is_returned_by_read_startup() {
    let (port, mut seen) = start_server().await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(42, 4242, &mut buf);
    stream.write_all(&buf).await.unwrap();
    match seen.recv().await.unwrap() {
        Seen::Cancel {
            process_id,
            secret_key,
        } => assert_eq!((process_id, secret_key), (42, 4242)),
        other => panic!("{other:?}"),
    }
}
