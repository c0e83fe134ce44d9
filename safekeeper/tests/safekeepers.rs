//! Safekeepers with a real PostgreSQL 15 compute: quorum-durable commits,
//! byte-identical WAL, crash recovery, term changes, and bad input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{http_call, wait_until, Env};
use serde_json::json;
use utils::lsn::Lsn;

const LOAD_SQL: &str = "CREATE TABLE IF NOT EXISTS t(id serial primary key, v text);
INSERT INTO t(v) SELECT repeat('x', 200) FROM generate_series(1, 2000);";

#[test]
fn one_safekeeper_holds_the_computes_wal_byte_for_byte() -> anyhow::Result<()> {
    let env = Env::new(1, 1, &[])?;
    env.pg.sql(LOAD_SQL)?;
    // A large record spanning pages, then more commits.
    env.pg.sql("SELECT pg_logical_emit_message(true, 'p', repeat('y', 100000)); INSERT INTO t(v) VALUES ('last');")?;
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    env.wait_commit(0, end)?;
    env.assert_wal_equal(0, env.start_lsn, end)?;
    let status = env.sks[0].status(env.tenant, env.timeline)?;
    assert_eq!(status["acceptor"]["connected"], json!(true), "{status}");
    let system_id = env.pg.sql("SELECT system_identifier FROM pg_control_system()")?;
    assert_eq!(status["system_id"].as_u64().unwrap().to_string(), system_id);
    Ok(())
}

#[test]
fn commit_needs_a_quorum_of_three_safekeepers() -> anyhow::Result<()> {
    let mut env = Env::new(3, 2, &[])?;
    env.pg.sql(LOAD_SQL)?;
    let end = env.compute_flush_lsn()?;
    for i in 0..3 {
        env.wait_flush(i, end)?;
    }
    // commit_lsn learnt through the broker covers the quorum's WAL.
    env.wait_commit(0, end)?;

    env.sks[1].kill9();
    env.sks[2].kill9();
    let mut blocked = env.psql_background("INSERT INTO t(v) VALUES ('needs two')")?;
    // The backend waits for synchronous replication, and keeps waiting.
    wait_until(Duration::from_secs(30), || {
        Ok(env.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")? == "1")
    })?;
    assert!(blocked.try_wait()?.is_none(), "commit returned with only one safekeeper");

    env.sks[2].start()?;
    let status = wait_for_exit(&mut blocked, Duration::from_secs(60))?;
    assert!(status.success(), "commit failed after the quorum came back");
    assert_eq!(env.pg.sql("SELECT count(*) FROM t WHERE v = 'needs two'")?, "1");
    let end = env.compute_flush_lsn()?;
    env.wait_flush(2, end)?;
    env.assert_wal_equal(2, env.start_lsn, end)?;
    env.assert_wal_equal(0, env.start_lsn, end)?;
    Ok(())
}

#[test]
fn pg_receivewal_gets_the_computes_wal() -> anyhow::Result<()> {
    let env = Env::new(1, 1, &[])?;
    env.pg.sql(LOAD_SQL)?;
    let end = env.compute_flush_lsn()?;
    env.wait_commit(0, end)?;
    let dir = tempfile::tempdir()?;
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres options='-c tenant_id={} -c timeline_id={}'",
        env.sks[0].pg_port, env.tenant, env.timeline
    );
    let out = Command::new(pg_harness::pg_bin("pg_receivewal"))
        .args(["-d", &conn, "-D"])
        .arg(dir.path())
        .args(["--no-loop", "--no-sync", "-E", &end.to_string()])
        .output()?;
    assert!(out.status.success(), "pg_receivewal: {}", String::from_utf8_lossy(&out.stderr));
    let received = common::read_range(dir.path(), env.start_lsn, end)?;
    assert_eq!(received, common::read_range(&env.pg.wal_dir(), env.start_lsn, end)?, "pg_receivewal got different bytes");
    Ok(())
}

#[test]
fn kill9_under_load_loses_nothing_and_never_overstates_flush() -> anyhow::Result<()> {
    let mut env = Env::new(1, 1, &[])?;
    env.pg.sql("CREATE TABLE t(id serial primary key, v text)")?;
    let script = "INSERT INTO t(v) SELECT repeat('z', 100) FROM generate_series(1, 50);\n".repeat(400);
    let mut load = env.psql_background(&script)?;
    wait_until(Duration::from_secs(30), || Ok(env.pg.sql("SELECT count(*) FROM t")?.parse::<u64>()? > 1000))?;
    env.sks[0].kill9();

    // What the compute was told is flushed (the slot follows flush reports)
    // must be on disk, in complete records, as the restarted safekeeper finds.
    let reported: Lsn = env.pg.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'sk_1'")?.parse()?;
    let control = safekeeper::control_file::load(&env.sks[0].timeline_dir(env.tenant, env.timeline))?;
    assert!(control.flush_lsn <= reported, "control file flush {} beyond reported {reported}", control.flush_lsn);
    env.sks[0].start()?;
    let recovered = env.sks[0].lsn(env.tenant, env.timeline, "flush_lsn")?;
    assert!(recovered >= reported, "reported flush {reported}, but only {recovered} survived the kill");

    let status = wait_for_exit(&mut load, Duration::from_secs(120))?;
    assert!(status.success(), "load failed");
    assert_eq!(env.pg.sql("SELECT count(*) FROM t")?, "20000");
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    // No gap and no duplicate: the safekeeper's bytes are the compute's bytes.
    env.assert_wal_equal(0, env.start_lsn, end)?;
    Ok(())
}

#[test]
fn new_term_truncates_and_the_old_compute_is_not_followed() -> anyhow::Result<()> {
    let mut env = Env::new(1, 1, &[])?;
    env.pg.sql(LOAD_SQL)?;
    // A record boundary (the flush position may be mid-record).
    let cut = env.pg.current_wal_insert_lsn()?;
    env.pg.sql(LOAD_SQL)?;
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    let (tenant, timeline) = (env.tenant, env.timeline);
    let url = format!("{}/compute", env.sks[0].timeline_url(tenant, timeline));

    // Term 2: a compute that is not up yet, starting at `cut`.
    let dead_port = pg_harness::free_port()?;
    let body = json!({ "conninfo": format!("host=127.0.0.1 port={dead_port} user=postgres"), "term": 2, "start_lsn": cut });
    let (code, resp) = http_call("PUT", &url, &body)?;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(env.sks[0].lsn(tenant, timeline, "flush_lsn")?, cut);
    let on_disk = common::read_range(&env.sks[0].timeline_dir(tenant, timeline), cut, end)?;
    assert!(on_disk.iter().all(|&b| b == 0), "WAL past the cut is still on disk");

    // The old compute keeps writing (without waiting for its standbys, which
    // have left it); none of it reaches the safekeeper.
    wait_until(Duration::from_secs(30), || Ok(env.pg.sql("SELECT count(*) FROM pg_stat_replication")? == "0"))?;
    env.pg.sql(&format!("SET synchronous_commit = local; {LOAD_SQL}"))?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.sks[0].lsn(tenant, timeline, "flush_lsn")?, cut);

    // An older term is refused.
    let old = json!({ "conninfo": env.conninfo(), "term": 1, "start_lsn": cut });
    let (code, resp) = http_call("PUT", &url, &old)?;
    assert_eq!(code, 409, "{resp}");

    // Term 3 follows the compute again from the cut: the same bytes come back.
    env.term = 2;
    env.set_compute(cut)?;
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    env.assert_wal_equal(0, env.start_lsn, end)?;
    Ok(())
}

#[test]
fn garbage_and_malformed_feedback_close_only_that_connection() -> anyhow::Result<()> {
    let env = Env::new(1, 1, &[])?;
    env.pg.sql(LOAD_SQL)?;
    let end = env.compute_flush_lsn()?;
    env.wait_commit(0, end)?;
    let port = env.sks[0].pg_port;

    // Garbage instead of a startup packet.
    let mut garbage = TcpStream::connect(("127.0.0.1", port))?;
    garbage.write_all(&[0xff; 64])?;
    assert_closed(&mut garbage)?;

    // A proper replication connection that then sends malformed feedback.
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    let options = format!("-c tenant_id={} -c timeline_id={}", env.tenant, env.timeline);
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "postgres"), ("replication", "true"), ("options", options.as_str())],
        &mut buf,
    )?;
    conn.write_all(&buf)?;
    read_until_tag(&mut conn, b'Z')?;
    buf.clear();
    postgres_protocol::message::frontend::query(&format!("START_REPLICATION PHYSICAL {}", env.start_lsn), &mut buf)?;
    conn.write_all(&buf)?;
    read_until_tag(&mut conn, b'W')?;
    buf.clear();
    postgres_protocol::message::frontend::CopyData::new(&b"r-not-a-status-update"[..])?.write(&mut buf);
    conn.write_all(&buf)?;
    assert_closed(&mut conn)?;

    // The safekeeper still serves: pg_receivewal streams fine.
    let dir = tempfile::tempdir()?;
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres options='{options}'");
    let out = Command::new(pg_harness::pg_bin("pg_receivewal"))
        .args(["-d", &conninfo, "-D"])
        .arg(dir.path())
        .args(["--no-loop", "--no-sync", "-E", &end.to_string()])
        .output()?;
    assert!(out.status.success(), "pg_receivewal after bad clients: {}", String::from_utf8_lossy(&out.stderr));
    let metrics = common::http_get_text(&env.sks[0].url("/metrics"))?;
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("safekeeper_protocol_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(errors >= 2.0, "protocol errors not counted: {errors}");
    Ok(())
}

/// Read backend messages until one with `tag` arrives.
fn read_until_tag(conn: &mut TcpStream, tag: u8) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let mut head = [0u8; 5];
        conn.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        conn.read_exact(&mut body)?;
        anyhow::ensure!(head[0] != b'E', "server error: {}", String::from_utf8_lossy(&body));
        if head[0] == tag {
            return Ok(());
        }
    }
}

/// The server closes the connection (EOF or reset), possibly after an error message.
/// A client that connects and sends nothing, or half a startup packet, or
/// half a query, is disconnected after the partial-message timeout; the
/// safekeeper goes on serving.
#[test]
fn stalled_clients_are_disconnected() -> anyhow::Result<()> {
    let args = ["--partial-message-timeout-ms".to_string(), "500".to_string()];
    let env = Env::with_args(1, 1, &[], &args)?;
    let port = env.sks[0].pg_port;
    let mut silent = TcpStream::connect(("127.0.0.1", port))?;
    let mut half_startup = TcpStream::connect(("127.0.0.1", port))?;
    half_startup.write_all(&[0, 0, 0, 40, 0, 3])?;
    let mut half_query = TcpStream::connect(("127.0.0.1", port))?;
    let options = format!("-c tenant_id={} -c timeline_id={}", env.tenant, env.timeline);
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message([("user", "postgres"), ("options", options.as_str())], &mut buf)?;
    half_query.write_all(&buf)?;
    read_until_tag(&mut half_query, b'Z')?;
    half_query.write_all(&[b'Q', 0, 0, 0, 100, b'S'])?;
    for conn in [&mut silent, &mut half_startup, &mut half_query] {
        assert_closed(conn)?;
    }
    let log = std::fs::read_to_string(env.sks[0].data_dir.path().join("safekeeper.log"))?;
    assert!(log.contains("no startup packet within 500 ms"), "{}", env.sks[0].log_tail());
    assert!(log.contains("incomplete message"), "{}", env.sks[0].log_tail());
    env.pg.sql(LOAD_SQL)?;
    env.wait_commit(0, env.compute_flush_lsn()?)?;
    Ok(())
}

fn assert_closed(conn: &mut TcpStream) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut sink = [0u8; 4096];
    loop {
        match conn.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => anyhow::bail!("connection not closed: {e}"),
        }
    }
}

fn wait_for_exit(child: &mut std::process::Child, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait()?;
        Ok(status.is_some())
    })?;
    status.ok_or_else(|| anyhow::anyhow!("no exit status"))
}

#[test]
fn a_lagging_safekeeper_takes_the_new_term_and_recovers_from_a_peer() -> anyhow::Result<()> {
    let mut env = Env::new(3, 2, &[])?;
    env.pg.sql(LOAD_SQL)?;
    env.sks[2].kill9();
    env.pg.sql(LOAD_SQL)?;
    env.pg.sql(LOAD_SQL)?;
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    env.wait_flush(1, end)?;
    // A new term starting at the end of sk_1's last complete record.
    let start = env.sks[0].lsn(env.tenant, env.timeline, "last_record_lsn")?;
    env.sks[2].start()?;
    let (tenant, timeline) = (env.tenant, env.timeline);
    let body = json!({ "conninfo": env.conninfo(), "term": env.term + 1, "start_lsn": start });
    for sk in &env.sks {
        let (code, resp) = http_call("PUT", &format!("{}/compute", sk.timeline_url(tenant, timeline)), &body)?;
        assert_eq!(code, 200, "{resp}");
    }
    let donor = &env.sks[0];
    let target = json!({
        "peer_id": donor.id,
        "pg_addr": format!("127.0.0.1:{}", donor.pg_port),
        "http_addr": format!("127.0.0.1:{}", donor.http_port),
        "up_to": start,
    });
    let (code, resp) = http_call("POST", &format!("{}/recover", env.sks[2].timeline_url(tenant, timeline)), &target)?;
    assert_eq!(code, 200, "{resp}");
    let status = env.sks[2].status(tenant, timeline)?;
    assert_eq!(status["term"], json!(env.term + 1), "{status}");
    assert_eq!(status["last_log_term"], json!(env.term + 1), "{status}");
    assert_eq!(status["term_history"].as_array().map(Vec::len), Some(2), "{status}");
    env.assert_wal_equal(2, env.start_lsn, start)?;
    // It survives a restart with its history.
    env.sks[2].kill9();
    env.sks[2].start()?;
    assert_eq!(env.sks[2].status(tenant, timeline)?["term_history"], status["term_history"]);
    Ok(())
}
