//! Hostile and odd input: random bytes never panic, lengths are limited,
//! and reads survive being cancelled.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use pq_proto::messages::MAX_MESSAGE_LEN;
use pq_proto::{
    ConnConfig, FeMessage, PostgresBackend, ProtocolError, ReplicationCommand, ReplicationFeedback,
    ReplicationMessage,
};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

/// Parse until the buffer is exhausted, incomplete, or an error.
fn drain(mut buf: BytesMut, startup: bool) {
    loop {
        let parsed = if startup {
            FeMessage::parse_startup(&mut buf)
        } else {
            FeMessage::parse(&mut buf)
        };
        match parsed {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        drain(BytesMut::from(&bytes[..]), false);
        drain(BytesMut::from(&bytes[..]), true);
        let _ = ReplicationMessage::parse(&bytes);
        let _ = ReplicationFeedback::parse(&bytes);
        let _ = ReplicationMessage::parse_bytes(bytes.clone().into());
    }

    #[test]
    fn tagged_random_bodies_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_u32(body.len() as u32 + 4);
        buf.put_slice(&body);
        drain(buf, false);
        let mut payload = vec![tag];
        payload.extend_from_slice(&body);
        let _ = ReplicationMessage::parse(&payload);
        let _ = ReplicationFeedback::parse(&payload);
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,80}") {
        let _ = ReplicationCommand::parse(&text);
        let _ = text.parse::<ConnConfig>();
    }

    #[test]
    fn command_like_text_never_panics(
        words in proptest::collection::vec(
            prop_oneof![
                Just("START_REPLICATION"), Just("SLOT"), Just("PHYSICAL"), Just("TIMELINE"),
                Just("0/0"), Just("FF/FFFFFFFF"), Just("\"q\""), Just(";"), Just("x"), Just("1"),
            ],
            0..8,
        )
    ) {
        let _ = ReplicationCommand::parse(&words.join(" "));
    }
}

#[test]
fn truncated_valid_messages_are_incomplete_or_errors() {
    let mut full = BytesMut::new();
    frontend::startup_message([("user", "u"), ("replication", "database")], &mut full).unwrap();
    for cut in 0..full.len() {
        let mut part = BytesMut::from(&full[..cut]);
        assert!(matches!(
            FeMessage::parse_startup(&mut part),
            Ok(None) | Err(_)
        ));
    }
    // A NUL-less startup parameter list is malformed, not a panic.
    let mut broken = BytesMut::new();
    broken.put_u32(12);
    broken.put_i32(196_608);
    broken.put_slice(b"user");
    assert!(matches!(
        FeMessage::parse_startup(&mut broken),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[tokio::test]
async fn backend_rejects_too_long_message() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut pgb = PostgresBackend::new(server);
    let mut header = BytesMut::new();
    header.put_u8(b'd');
    header.put_u32((MAX_MESSAGE_LEN + 4 + 1) as u32);
    client.write_all(&header).await.unwrap();
    let err = pgb.read_message().await.unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");

    let (mut client, server) = tokio::io::duplex(1024);
    let mut pgb = PostgresBackend::new(server).with_max_message_len(16);
    let mut buf = BytesMut::new();
    frontend::query("SELECT 'a much longer query than sixteen bytes'", &mut buf).unwrap();
    client.write_all(&buf).await.unwrap();
    assert!(matches!(
        pgb.read_message().await,
        Err(ProtocolError::Malformed { .. })
    ));
}

#[tokio::test]
async fn backend_garbage_startup_is_error_and_eof_is_none() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut pgb = PostgresBackend::new(server);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(pgb.read_startup().await.is_err());

    let (client, server) = tokio::io::duplex(1024);
    drop(client);
    let mut pgb = PostgresBackend::new(server);
    assert_eq!(pgb.read_startup().await.unwrap(), None);

    let (mut client, server) = tokio::io::duplex(1024);
    client.write_all(&[0, 0]).await.unwrap();
    drop(client);
    let mut pgb = PostgresBackend::new(server);
    assert!(matches!(
        pgb.read_startup().await,
        Err(ProtocolError::ConnectionClosed)
    ));
}

#[tokio::test]
async fn ssl_request_is_refused_then_startup_read() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    frontend::startup_message([("user", "u")], &mut buf).unwrap();
    client.write_all(&buf).await.unwrap();
    let mut pgb = PostgresBackend::new(server);
    let Some(FeMessage::StartupMessage(s)) = pgb.read_startup().await.unwrap() else {
        panic!()
    };
    assert_eq!(s.user(), Some("u"));
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut client, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
}

/// Messages trickled in one byte at a time while the reader is cancelled
/// by a tiny timeout over and over arrive complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_reads_lose_nothing() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut wire = BytesMut::new();
    let queries: Vec<String> = (0..50)
        .map(|i| format!("SELECT {i}, '{}'", "z".repeat(i * 7)))
        .collect();
    for q in &queries {
        frontend::query(q, &mut wire).unwrap();
    }
    frontend::terminate(&mut wire);
    let writer = tokio::spawn(async move {
        for byte in wire {
            client.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let mut pgb = PostgresBackend::new(server);
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_micros(10), pgb.read_message()).await {
            Err(_elapsed) => continue,
            Ok(msg) => match msg.unwrap().unwrap() {
                FeMessage::Query(q) => got.push(q),
                FeMessage::Terminate => break,
                other => panic!("{other:?}"),
            },
        }
    }
    assert_eq!(got, queries);
    drop(writer.await.unwrap());
}

/// A client that sends half a message and stalls gets an error after the
/// partial-message timeout (also when the reader is polled in a loop of
/// short, dropped reads); an idle connection between messages does not,
/// and a message trickled in within the bound is read whole.
#[tokio::test(start_paused = true)]
async fn half_a_message_times_out_but_idle_and_slow_whole_messages_do_not() {
    let limit = Duration::from_millis(500);
    let mut wire = BytesMut::new();
    frontend::query("SELECT 1", &mut wire).unwrap();

    let (mut client, server) = tokio::io::duplex(1024);
    let mut pgb = PostgresBackend::new(server).with_partial_message_timeout(limit);
    client.write_all(&wire[..3]).await.unwrap();
    let started = tokio::time::Instant::now();
    let err = loop {
        match tokio::time::timeout(Duration::from_millis(50), pgb.read_message()).await {
            Err(_elapsed) => continue,
            Ok(r) => break r.unwrap_err(),
        }
    };
    assert!(matches!(err, ProtocolError::PartialMessageTimeout { have_bytes: 3, .. }), "{err}");
    assert!(started.elapsed() >= limit && started.elapsed() < limit * 2, "{:?}", started.elapsed());

    let (mut client, server) = tokio::io::duplex(1024);
    let mut pgb = PostgresBackend::new(server).with_partial_message_timeout(limit);
    let idle = tokio::time::timeout(limit * 10, pgb.read_message()).await;
    assert!(idle.is_err(), "an idle connection is not a partial message");
    let trickle = async {
        for chunk in wire.chunks(2) {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(limit / 10).await;
        }
    };
    let (_, msg) = tokio::join!(trickle, pgb.read_message());
    assert_eq!(msg.unwrap(), Some(FeMessage::Query("SELECT 1".into())));
}
