//! A safekeeper whose disk fills up: it stops acknowledging (the commit
//! waits, it is not lost), says why in its status and log, keeps serving,
//! and resumes by itself once space is back, with WAL byte-identical to the
//! compute's.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{wait_until, Env};
use pg_harness::small_disk::SmallDisk;

#[test]
fn a_full_disk_holds_back_acknowledgement_and_writing_resumes_when_space_returns() -> anyhow::Result<()> {
    let mut env = Env::new(1, 1, &[])?;
    env.pg.sql("CREATE TABLE t(id int, v text); INSERT INTO t VALUES (0, 'before')")?;
    let before = env.compute_flush_lsn()?;
    env.wait_flush(0, before)?;

    // Move the safekeeper onto a 40 MiB disk and fill it.
    env.sks[0].stop();
    let disk = SmallDisk::mount_over(env.sks[0].data_dir.path(), 40)?;
    env.sks[0].start()?;
    env.wait_flush(0, before)?;
    let filler = disk.fill()?;

    // About 24 MB of WAL: more than the rest of the current segment, so
    // the safekeeper needs a new segment file it has no room for.
    let mut load = env.psql_background("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g")?;
    let (tenant, timeline) = (env.tenant, env.timeline);
    wait_until(Duration::from_secs(60), || {
        let status = env.sks[0].status(tenant, timeline)?;
        Ok(status["acceptor"]["last_error"].as_str().is_some_and(|e| e.contains("No space left")))
    })
    .with_context(|| format!("no ENOSPC reported: {}", env.sks[0].log_tail()))?;
    // Still serving, not acknowledging what it could not make durable.
    assert!(load.try_wait()?.is_none(), "the commit returned while the safekeeper's disk was full");
    let compute_end: utils::lsn::Lsn = env.pg.sql("SELECT pg_current_wal_insert_lsn()")?.parse()?;
    let sk_flush = env.sks[0].lsn(tenant, timeline, "flush_lsn")?;
    assert!(sk_flush < compute_end, "safekeeper reports {sk_flush} flushed, the compute is at {compute_end}");
    let log = std::fs::read_to_string(env.sks[0].data_dir.path().join("safekeeper.log"))?;
    assert!(log.contains("No space left on device"), "the log does not say why: {}", env.sks[0].log_tail());

    // No short segment and no half-allocated one holding space.
    for entry in std::fs::read_dir(env.sks[0].timeline_dir(tenant, timeline))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".alloc") && !name.ends_with(".tmp"), "{name} left behind");
        if name.len() == 24 {
            assert_eq!(entry.metadata()?.len(), common::SEG_SIZE, "segment {name} is not whole");
        }
    }
    std::fs::remove_file(&filler)?;
    let status = wait_until(Duration::from_secs(60), || Ok(load.try_wait()?.is_some()));
    status.with_context(|| format!("the commit did not go through once space returned: {}", env.sks[0].log_tail()))?;
    let out = load.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let end = env.compute_flush_lsn()?;
    env.wait_flush(0, end)?;
    env.assert_wal_equal(0, env.start_lsn, end)?;
    assert_eq!(env.pg.sql("SELECT count(*) FROM t")?, "100001");
    // The safekeeper restarted on this disk finds the same WAL.
    env.sks[0].stop();
    env.sks[0].start()?;
    env.set_compute(end)?;
    env.pg.sql("INSERT INTO t VALUES (-1, 'after')")?;
    let after = env.compute_flush_lsn()?;
    env.wait_flush(0, after)?;
    env.assert_wal_equal(0, env.start_lsn, after)?;
    env.sks[0].stop();
    drop(disk);
    Ok(())
}
