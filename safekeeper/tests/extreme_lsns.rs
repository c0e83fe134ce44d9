//! LSNs at the edges of their range from the network — `FFFFFFFF/FFFFFFFF`,
//! `FFFFFFFF/FFFFFFF8`, `0/0` — in the safekeeper's HTTP bodies (timeline
//! `start_lsn`, the compute's `start_lsn`) and in the walsender's
//! `START_REPLICATION`: each is refused (400, or a PostgreSQL error on the
//! replication connection), nothing wraps, and the safekeeper goes on
//! serving — the compute's commits (which wait for it) still complete and a
//! valid `START_REPLICATION` streams them.
mod common;

use std::time::Duration;

use anyhow::Context;
use common::*;
use serde_json::json;
use utils::id::TimelineId;
use utils::lsn::Lsn;

const EXTREMES: [&str; 3] = ["FFFFFFFF/FFFFFFFF", "FFFFFFFF/FFFFFFF8", "FFFFFFFF/FF000000"];

async fn connect(env: &Env) -> anyhow::Result<pq_proto::ReplicationClient> {
    let mut conf: pq_proto::ConnConfig = format!("postgresql://test@127.0.0.1:{}/postgres", env.sks[0].pg_port).parse()?;
    conf.options = Some(format!("-c tenant_id={} -c timeline_id={}", env.tenant, env.timeline));
    Ok(pq_proto::ReplicationClient::connect_config(&conf).await?)
}

#[test]
fn extreme_lsns_are_refused_and_the_safekeeper_goes_on() -> anyhow::Result<()> {
    let env = Env::new(1, 1, &[])?;
    let sk_url = env.sks[0].url(&format!("/v1/tenant/{}/timeline", env.tenant));
    let compute_url = format!("{}/compute", env.sks[0].timeline_url(env.tenant, env.timeline));
    let commit = |env: &Env, n: u32| -> anyhow::Result<()> {
        env.pg.sql(&format!("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES ({n})"))?;
        let flushed = env.compute_flush_lsn()?;
        env.wait_flush(0, flushed)
    };
    commit(&env, 0)?;

    // Timeline creation: no room for WAL past the start.
    for (i, bad) in EXTREMES.iter().enumerate() {
        let body = json!({ "timeline_id": TimelineId::generate(), "start_lsn": bad });
        let (status, resp) = http_call("POST", &sk_url, &body)?;
        assert_eq!(status, 400, "start_lsn {bad}: {resp}");
        commit(&env, i as u32 + 1)?;
    }
    // The compute's start LSN (checked before the term).
    for bad in EXTREMES.iter().copied().chain(["0/0"]) {
        let body = json!({ "conninfo": env.conninfo(), "term": env.term + 1, "start_lsn": bad });
        let (status, resp) = http_call("PUT", &compute_url, &body)?;
        assert_eq!(status, 400, "compute start_lsn {bad}: {resp}");
    }
    assert_eq!(env.sks[0].status(env.tenant, env.timeline)?["term"], env.term, "no new term taken");
    commit(&env, 10)?;

    // START_REPLICATION outside the WAL: an error, then the walsender
    // serves the next connection from the timeline's start.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        for bad in [Lsn(u64::MAX), Lsn(u64::MAX - 7), Lsn(0xFFFF_FFFF_FF00_0000), Lsn(0)] {
            let err = connect(&env).await?.start_replication(None, bad, 1).await.err().context("streaming at an extreme LSN")?;
            assert_eq!(err.sqlstate(), Some("58P01"), "{bad}: {err}");
        }
        let mut stream = connect(&env).await?.start_replication(None, env.start_lsn, 1).await?;
        let first = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.context("no WAL for 30 s")??;
        match first {
            Some(pq_proto::ReplicationMessage::XLogData(x)) => assert_eq!(x.wal_start, env.start_lsn),
            other => anyhow::bail!("expected WAL, got {other:?}"),
        }
        anyhow::Ok(())
    })?;
    commit(&env, 11)?;
    Ok(())
}
