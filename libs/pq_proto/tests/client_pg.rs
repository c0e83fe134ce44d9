//! `ReplicationClient` against a real PostgreSQL 15 walsender.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pg_harness::PgCluster;
use pq_proto::{
    pg_now_us, HotStandbyFeedback, ProtocolError, ReplicationClient, ReplicationMessage,
    ReplicationStream, StandbyStatusUpdate,
};
use utils::lsn::Lsn;

const SEG_SIZE: u64 = 16 << 20;
/// Guards against hangs only; nothing asserts on durations.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn lsn(pg: &PgCluster, sql: &str) -> Lsn {
    pg.sql(sql).unwrap().parse().unwrap()
}

fn keyvalue_conninfo(pg: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_system_matches_control_data() {
    let pg = PgCluster::start(&[]).unwrap();
    let before = lsn(&pg, "SELECT pg_current_wal_flush_lsn()");
    let mut client = ReplicationClient::connect(&pg.connstr("postgres"), "pq_proto_test")
        .await
        .unwrap();
    let version = client.parameter("server_version").unwrap().to_string();
    assert!(version.starts_with("15"), "{version}");
    assert!(client.backend_key().is_some());
    let ident = client.identify_system().await.unwrap();
    let after = lsn(&pg, "SELECT pg_current_wal_flush_lsn()");
    let sysid: u64 = pg
        .sql("SELECT system_identifier FROM pg_control_system()")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ident.system_id, sysid);
    assert_eq!(ident.timeline, 1);
    assert!(
        before <= ident.xlogpos && ident.xlogpos <= after,
        "{before} {} {after}",
        ident.xlogpos
    );
    assert_eq!(ident.dbname, None);

    let mut kv = ReplicationClient::connect(&keyvalue_conninfo(&pg), "")
        .await
        .unwrap();
    assert_eq!(kv.identify_system().await.unwrap().system_id, sysid);
    let rows = kv.simple_query("SHOW wal_segment_size;").await.unwrap();
    assert_eq!(rows, vec![vec![Some("16MB".to_string())]]);
    kv.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_on_physical_connection_is_server_error_and_client_survives() {
    let pg = PgCluster::start(&[]).unwrap();
    let mut client = ReplicationClient::connect(&keyvalue_conninfo(&pg), "t")
        .await
        .unwrap();
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    let ProtocolError::ServerError { code, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(code.len(), 5, "{err}");
    assert!(message.contains("WAL sender"), "{err}");
    let err = client
        .simple_query("START_REPLICATION 0/0 TIMELINE 9")
        .await
        .unwrap_err();
    assert!(err.sqlstate().is_some(), "{err}");
    assert_eq!(client.identify_system().await.unwrap().timeline, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_slot_twice_is_ok() {
    let pg = PgCluster::start(&[]).unwrap();
    let mut client = ReplicationClient::connect(&pg.connstr("postgres"), "slots")
        .await
        .unwrap();
    client
        .create_physical_slot_if_missing("strata_ps")
        .await
        .unwrap();
    client
        .create_physical_slot_if_missing("strata_ps")
        .await
        .unwrap();
    let row = pg
        .sql("SELECT slot_type, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'strata_ps'")
        .unwrap();
    assert_eq!(row, "physical|t");
    let err = client
        .create_physical_slot_if_missing("Bad-Name")
        .await
        .unwrap_err();
    assert!(matches!(err, ProtocolError::Config(_)), "{err}");
    // The connection is still usable after the duplicate_object error.
    client.identify_system().await.unwrap();
}

/// Pump the stream until `target`, checking contiguity; `next()` runs in
/// `select!` against a very short timer so it is dropped mid-read often.
async fn receive_until(stream: &mut ReplicationStream, start: Lsn, target: Lsn) -> (BytesMut, Lsn) {
    let mut received = BytesMut::new();
    let mut pos = start;
    while pos < target {
        tokio::select! {
            msg = stream.next() => match msg.unwrap().expect("stream ended early") {
                ReplicationMessage::XLogData(x) => {
                    assert_eq!(x.wal_start, pos, "gap or overlap in XLogData");
                    received.extend_from_slice(&x.data);
                    pos = x.end_lsn();
                }
                ReplicationMessage::PrimaryKeepalive(k) => {
                    if k.reply_requested {
                        stream.send(status(pos)).await.unwrap();
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_micros(50)) => {}
        }
    }
    (received, pos)
}

fn status(pos: Lsn) -> StandbyStatusUpdate {
    StandbyStatusUpdate {
        write_lsn: pos,
        flush_lsn: pos,
        apply_lsn: pos,
        send_time_us: pg_now_us(),
        reply_requested: false,
    }
}

/// The bytes of `[start, end)` from the segment files in pg_wal.
fn wal_from_files(pg: &PgCluster, tli: u32, start: Lsn, end: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        let path = pg.wal_dir().join(pos.segment_file_name(tli, SEG_SIZE));
        let file = std::fs::read(&path).unwrap();
        let from = pos.segment_offset(SEG_SIZE) as usize;
        let to = (from as u64 + (end.0 - pos.0)).min(SEG_SIZE) as usize;
        out.extend_from_slice(&file[from..to]);
        pos = Lsn(pos.0 + (to - from) as u64);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_wal_matches_segment_files() {
    let pg = PgCluster::start(&[]).unwrap();
    let mut client = ReplicationClient::connect(&pg.connstr("postgres"), "wal_compare")
        .await
        .unwrap();
    let ident = client.identify_system().await.unwrap();
    client.create_physical_slot_if_missing("cmp").await.unwrap();
    let start = pg.current_wal_insert_lsn().unwrap().segment_start(SEG_SIZE);
    let mut stream = client
        .start_replication(Some("cmp"), start, ident.timeline)
        .await
        .unwrap();
    // A large non-transactional message (its function returns the record's
    // end LSN). It is not flushed by itself, and walsenders only send flushed
    // WAL: flush_wal() commits a WAL-writing transaction after it.
    let target = lsn(
        &pg,
        "SELECT pg_logical_emit_message(false, 'x', repeat('y', 100000))",
    );
    assert!(target.0 - start.0 > 100_000);
    let flushed = pg.flush_wal().unwrap();
    assert!(flushed >= target, "flush {flushed} behind the message end {target}");
    let (received, end) =
        tokio::time::timeout(HANG_GUARD, receive_until(&mut stream, start, target))
            .await
            .unwrap();
    pg.checkpoint().unwrap();
    let on_disk = wal_from_files(&pg, ident.timeline, start, end);
    assert_eq!(received.len(), on_disk.len());
    assert!(
        received[..] == on_disk[..],
        "streamed WAL differs from pg_wal"
    );
    assert!(received.windows(1000).any(|w| w.iter().all(|&b| b == b'y')));
    // CopyDone ends streaming; the connection takes commands again.
    let mut client = stream.finish().await.unwrap();
    assert_eq!(
        client.identify_system().await.unwrap().system_id,
        ident.system_id
    );
}

/// Poll `pg_stat_replication` (blocking, off the runtime) until `sql`
/// returns `want`; gives up after a bounded number of tries.
fn poll_sql(pg: Arc<PgCluster>, sql: String, want: String) -> tokio::task::JoinHandle<String> {
    tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..600 {
            last = pg.sql(&sql).unwrap();
            if last == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        last
    })
}

/// Keep the stream alive (answering reply requests with `pos`) until
/// `task` finishes.
async fn pump_while(
    stream: &mut ReplicationStream,
    pos: Lsn,
    mut task: tokio::task::JoinHandle<String>,
) -> String {
    loop {
        tokio::select! {
            out = &mut task => return out.unwrap(),
            msg = stream.next() => {
                if let ReplicationMessage::PrimaryKeepalive(k) = msg.unwrap().expect("stream ended") {
                    if k.reply_requested {
                        stream.send(status(pos)).await.unwrap();
                    }
                }
            }
        }
    }
}

/// Read until a keepalive with `reply_requested` (sent once
/// wal_sender_timeout/2 passes without a reply); returns the WAL end seen.
async fn wait_for_reply_request(stream: &mut ReplicationStream, start: Lsn) -> Lsn {
    let mut pos = start;
    loop {
        match stream.next().await.unwrap().expect("stream ended") {
            ReplicationMessage::XLogData(x) => pos = x.end_lsn(),
            ReplicationMessage::PrimaryKeepalive(k) if k.reply_requested => {
                assert!(k.wal_end >= pos, "{} < {pos}", k.wal_end);
                assert!(k.send_time_us > 0);
                return pos;
            }
            ReplicationMessage::PrimaryKeepalive(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_feedback_reach_pg_stat_replication() {
    let pg = Arc::new(PgCluster::start(&[("wal_sender_timeout", "2s")]).unwrap());
    let client = ReplicationClient::connect(&pg.connstr("postgres"), "ka_test")
        .await
        .unwrap();
    let start = pg.current_wal_insert_lsn().unwrap().segment_start(SEG_SIZE);
    let mut stream = client.start_replication(None, start, 1).await.unwrap();
    let pos = tokio::time::timeout(HANG_GUARD, wait_for_reply_request(&mut stream, start))
        .await
        .unwrap();
    assert!(pos > start);
    stream.send(status(pos)).await.unwrap();
    let sql =
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'ka_test'".to_string();
    let seen = pump_while(&mut stream, pos, poll_sql(pg.clone(), sql, pos.to_string())).await;
    assert_eq!(seen, pos.to_string());

    let txid: u64 = pg.sql("SELECT txid_current()").unwrap().parse().unwrap();
    let (xmin, epoch) = (txid as u32, (txid >> 32) as u32);
    stream
        .send(HotStandbyFeedback {
            send_time_us: pg_now_us(),
            xmin,
            xmin_epoch: epoch,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        })
        .await
        .unwrap();
    let sql = "SELECT backend_xmin FROM pg_stat_replication WHERE application_name = 'ka_test'"
        .to_string();
    let seen = pump_while(
        &mut stream,
        pos,
        poll_sql(pg.clone(), sql, xmin.to_string()),
    )
    .await;
    assert_eq!(seen, xmin.to_string());
}
