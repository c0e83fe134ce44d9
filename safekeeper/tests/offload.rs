//! WAL offload with three safekeepers and a real PostgreSQL 15 compute: one
//! safekeeper uploads every completed, committed segment to remote storage
//! (a local directory), byte for byte; all of them learn `backup_lsn`; when
//! the offloader dies another one takes over, and it takes its role back
//! once it has caught up.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use common::{http_get_text, wait_until, Env, SEG_SIZE};
use serde_json::json;
use utils::lsn::Lsn;

/// `n` segments of WAL: rows, then a segment switch, `n` times; returns the
/// compute's flush LSN at the end (the start of a fresh segment).
fn write_segments(env: &Env, n: usize) -> anyhow::Result<Lsn> {
    for _ in 0..n {
        env.pg.sql("INSERT INTO t(v) SELECT repeat('w', 100) FROM generate_series(1, 500); SELECT pg_switch_wal();")?;
    }
    env.pg.sql("INSERT INTO t(v) VALUES ('after the switches')")?;
    env.compute_flush_lsn()
}

fn segment_file(dir: &Path, start: Lsn) -> PathBuf {
    dir.join(start.segment_file_name(1, SEG_SIZE))
}

fn remote_dir(remote: &Path, env: &Env) -> PathBuf {
    remote.join("wal").join(env.tenant.to_string()).join(env.timeline.to_string())
}

/// Every safekeeper listed has `backup_lsn` at or above `lsn`.
fn wait_backup(env: &Env, sks: &[usize], lsn: Lsn) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(90), || {
        for &i in sks {
            if env.sks[i].lsn(env.tenant, env.timeline, "backup_lsn")? < lsn {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .with_context(|| {
        let got: Vec<String> = sks.iter().map(|&i| format!("{:?}", env.sks[i].status(env.tenant, env.timeline).map(|s| s["backup_lsn"].clone()))).collect();
        format!("backup_lsn did not reach {lsn}: {got:?}; sk log: {}", env.sks[sks[0]].log_tail())
    })
}

/// The offloaded segments `[from, to)` are the same bytes as safekeeper `i`'s.
fn assert_offloaded_identical(env: &Env, remote: &Path, i: usize, from: Lsn, to: Lsn) -> anyhow::Result<usize> {
    let (dir, objects) = (env.sks[i].timeline_dir(env.tenant, env.timeline), remote_dir(remote, env));
    let mut n = 0;
    let mut pos = from;
    while pos < to {
        let object = std::fs::read(segment_file(&objects, pos)).with_context(|| format!("segment {pos} not offloaded"))?;
        let local = std::fs::read(segment_file(&dir, pos))?;
        if object != local {
            bail!("offloaded segment at {pos} differs from safekeeper {}'s", env.sks[i].id);
        }
        n += 1;
        pos += SEG_SIZE;
    }
    Ok(n)
}

/// The names of the timeline's objects in a local-directory remote storage.
fn remote_names(remote: &Path, env: &Env) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(remote_dir(remote, env))?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

fn metric(env: &Env, i: usize, name: &str) -> anyhow::Result<f64> {
    let text = http_get_text(&env.sks[i].url("/metrics"))?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0))
}

fn offloader_seen_by(env: &Env, i: usize) -> anyhow::Result<serde_json::Value> {
    Ok(env.sks[i].status(env.tenant, env.timeline)?["backup"]["offloader"].clone())
}

#[test]
fn one_safekeeper_offloads_and_another_takes_over_when_it_dies() -> anyhow::Result<()> {
    let remote = tempfile::tempdir()?;
    let args = ["--remote-storage".to_string(), remote.path().display().to_string()];
    let mut env = Env::with_args(3, 2, &[], &args)?;
    env.pg.sql("CREATE TABLE t(id serial primary key, v text)")?;
    let end = write_segments(&env, 4)?;
    let done = end.segment_start(SEG_SIZE);
    assert!(done >= env.start_lsn + 4 * SEG_SIZE, "the switches made no segments: {} .. {end}", env.start_lsn);

    // Every completed segment is offloaded and all three know it.
    wait_backup(&env, &[0, 1, 2], done)?;
    let uploaded = assert_offloaded_identical(&env, remote.path(), 0, env.start_lsn, done)?;
    assert_offloaded_identical(&env, remote.path(), 2, env.start_lsn, done)?;
    // Safekeeper 1 (the lowest id) did it, alone.
    for i in 0..3 {
        wait_until(Duration::from_secs(10), || Ok(offloader_seen_by(&env, i)? == json!(1)))
            .with_context(|| format!("safekeeper {} sees another offloader", i + 1))?;
    }
    assert_eq!(metric(&env, 0, "safekeeper_wal_backup_segments_total")?, uploaded as f64);
    assert_eq!(metric(&env, 1, "safekeeper_wal_backup_segments_total")?, 0.0);
    assert_eq!(metric(&env, 2, "safekeeper_wal_backup_segments_total")?, 0.0);
    assert_eq!(metric(&env, 0, "safekeeper_wal_backup_errors_total")?, 0.0);

    // The offloader dies: commits go on with two, and safekeeper 2 takes over.
    env.sks[0].kill9();
    let end2 = write_segments(&env, 3)?;
    let done2 = end2.segment_start(SEG_SIZE);
    wait_backup(&env, &[1, 2], done2)?;
    assert_offloaded_identical(&env, remote.path(), 1, done, done2)?;
    assert_eq!(offloader_seen_by(&env, 1)?, json!(2));
    assert_eq!(offloader_seen_by(&env, 2)?, json!(2));
    assert!(metric(&env, 1, "safekeeper_wal_backup_segments_total")? >= 3.0);

    // Back and caught up, safekeeper 1 knows what was offloaded without it
    // and offloads again.
    env.sks[0].start()?;
    env.wait_flush(0, end2)?;
    wait_backup(&env, &[0], done2)?;
    wait_until(Duration::from_secs(30), || Ok(offloader_seen_by(&env, 1)? == json!(1) && offloader_seen_by(&env, 0)? == json!(1)))
        .context("safekeeper 1 did not take the offload back")?;
    let end3 = write_segments(&env, 2)?;
    let done3 = end3.segment_start(SEG_SIZE);
    wait_backup(&env, &[0, 1, 2], done3)?;
    assert_offloaded_identical(&env, remote.path(), 0, env.start_lsn, done3)?;
    assert!(metric(&env, 0, "safekeeper_wal_backup_segments_total")? >= 1.0);
    // Nothing but whole segments in the timeline's prefix, and at most one
    // partial one (of an idle moment).
    let (partials, names): (Vec<String>, Vec<String>) = remote_names(remote.path(), &env)?.into_iter().partition(|n| n.ends_with(".partial"));
    assert_eq!(names.len() as u64, (done3.0 - env.start_lsn.0) / SEG_SIZE, "{names:?}");
    assert!(names.iter().all(|n| n.len() == 24), "{names:?}");
    assert!(partials.len() <= 1, "{partials:?}");
    // The offloader of the second phase wrote backup_lsn to its control
    // file (before publishing it).
    let control = safekeeper::control_file::load(&env.sks[1].timeline_dir(env.tenant, env.timeline))?;
    assert!(control.backup_lsn >= done2, "control file backup_lsn {} < {done2}", control.backup_lsn);
    Ok(())
}

/// One safekeeper with `args`, a table, and `segments` segments of WAL
/// offloaded; returns the compute's flush LSN and the end of the last
/// whole segment.
fn offloaded(args: &[String], segments: usize) -> anyhow::Result<(Env, Lsn, Lsn)> {
    let env = Env::with_args(1, 1, &[], args)?;
    env.pg.sql("CREATE TABLE t(id serial primary key, v text)")?;
    let end = write_segments(&env, segments)?;
    let done = end.segment_start(SEG_SIZE);
    wait_backup(&env, &[0], done)?;
    Ok((env, end, done))
}

/// A replication connection to safekeeper `i` of `env`'s timeline.
async fn connect(env: &Env, i: usize) -> anyhow::Result<pq_proto::ReplicationClient> {
    let mut conf: pq_proto::ConnConfig = format!("postgresql://test@127.0.0.1:{}/postgres", env.sks[i].pg_port).parse()?;
    conf.options = Some(format!("-c tenant_id={} -c timeline_id={}", env.tenant, env.timeline));
    Ok(pq_proto::ReplicationClient::connect_config(&conf).await?)
}

/// WAL `[start, start + len)` streamed by safekeeper `i`.
async fn stream_wal(env: &Env, i: usize, start: Lsn, len: u64) -> anyhow::Result<Vec<u8>> {
    let mut stream = connect(env, i).await?.start_replication(None, start, 1).await?;
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.context("no WAL for 30 s")?? {
            Some(pq_proto::ReplicationMessage::XLogData(x)) => {
                anyhow::ensure!(x.wal_start == start + out.len() as u64, "gap in the stream at {}", x.wal_start);
                out.extend_from_slice(&x.data);
            }
            Some(_) => {}
            None => bail!("stream ended"),
        }
    }
    out.truncate(len as usize);
    Ok(out)
}

/// S3 (moto) as remote storage: conditional puts, downloads to files. A
/// replication client that sends the pageserver's feedback stands in for a
/// pageserver that has uploaded everything (`remote_consistent_lsn`).
#[test]
fn offloaded_wal_in_s3_is_served_after_local_removal() -> anyhow::Result<()> {
    let moto = remote_storage::testing::MotoServer::start();
    let args: Vec<String> = ["--remote-storage", &format!("s3://{}/sk", moto.bucket()), "--s3-endpoint", &moto.endpoint(), "--s3-region", "us-east-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (env, end, done) = offloaded(&args, 3)?;

    // Each object is the safekeeper's segment, byte for byte.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let storage = remote_storage::GenericRemoteStorage::new(&moto.config("sk"))?;
    let cancel = remote_storage::CancellationToken::new();
    let mut copies = Vec::new();
    let mut pos = env.start_lsn;
    while pos < done {
        let key = safekeeper::wal_backup::segment_key(env.tenant, env.timeline, pos, SEG_SIZE);
        let object = rt.block_on(storage.download_bytes(&key, &cancel))?;
        let local = std::fs::read(segment_file(&env.sks[0].timeline_dir(env.tenant, env.timeline), pos))?;
        anyhow::ensure!(object[..] == local[..], "{key} differs from the local segment");
        copies.push(local);
        pos += SEG_SIZE;
    }
    // Below min(remote_consistent_lsn, backup_lsn) the local WAL goes.
    let feedback = rt.block_on(pageserver_feedback(&env, 0, end, end))?;
    wait_until(Duration::from_secs(60), || Ok(env.sks[0].lsn(env.tenant, env.timeline, "timeline_start_lsn")? >= done))
        .context("old WAL not removed")?;
    drop(feedback);
    let dir = env.sks[0].timeline_dir(env.tenant, env.timeline);
    assert!(!segment_file(&dir, env.start_lsn).exists() && !segment_file(&dir, done - SEG_SIZE).exists());
    // Still served, from S3: two whole segments from the first one.
    let streamed = rt.block_on(stream_wal(&env, 0, env.start_lsn, 2 * SEG_SIZE))?;
    anyhow::ensure!(streamed[..SEG_SIZE as usize] == copies[0][..] && streamed[SEG_SIZE as usize..] == copies[1][..], "streamed WAL differs");
    assert!(metric(&env, 0, "safekeeper_wal_backup_downloads_total")? >= 2.0);
    // Nothing left behind by the reader.
    wait_until(Duration::from_secs(10), || Ok(std::fs::read_dir(dir.join("remote_read")).map_or(true, |mut d| d.next().is_none())))?;
    Ok(())
}

/// Send the feedback of a pageserver that has uploaded everything below
/// `remote_consistent` to safekeeper `i`; keep the returned stream open
/// until the safekeeper has taken it.
async fn pageserver_feedback(env: &Env, i: usize, at: Lsn, remote_consistent: Lsn) -> anyhow::Result<pq_proto::ReplicationStream> {
    let mut stream = connect(env, i).await?.start_replication(None, at, 1).await?;
    let update = pq_proto::StrataFeedback { write_lsn: at, disk_consistent_lsn: at, remote_consistent_lsn: remote_consistent, timeline_size_bytes: 0, send_time_us: 0 };
    stream.send(update).await?;
    Ok(stream)
}

/// An idle timeline's last, incomplete segment goes to remote storage as a
/// partial object holding exactly the committed WAL (zeros after it); the
/// whole segment replaces it once complete, and a newer partial the older.
#[test]
fn an_idle_timelines_last_segment_is_offloaded_as_a_partial_object() -> anyhow::Result<()> {
    let remote = tempfile::tempdir()?;
    let args: Vec<String> = ["--remote-storage", &remote.path().display().to_string(), "--wal-partial-offload-after-idle", "1s"].iter().map(|s| s.to_string()).collect();
    let env = Env::with_args(1, 1, &[], &args)?;
    env.pg.sql("CREATE TABLE t(id serial primary key, v text); INSERT INTO t(v) SELECT 'tail' FROM generate_series(1, 200)")?;
    let committed = env.compute_flush_lsn()?;
    let partial_after = |lsn: Lsn| -> anyhow::Result<Option<(String, Lsn)>> {
        let found = remote_names(remote.path(), &env)?.into_iter().filter_map(|n| {
            let end = n.strip_suffix(".partial")?.split_once('.')?.1;
            Some((n.clone(), Lsn(u64::from_str_radix(end, 16).ok()?)))
        });
        Ok(found.filter(|(_, end)| *end >= lsn).last())
    };
    wait_until(Duration::from_secs(60), || Ok(partial_after(committed)?.is_some()))
        .with_context(|| format!("no partial segment up to {committed}: {:?}; log {}", remote_names(remote.path(), &env), env.sks[0].log_tail()))?;
    let (name, end) = partial_after(committed)?.context("partial vanished")?;
    assert_eq!(&name[..24], committed.segment_file_name(1, SEG_SIZE), "partial of the wrong segment");
    let object = std::fs::read(remote_dir(remote.path(), &env).join(&name))?;
    let local = std::fs::read(segment_file(&env.sks[0].timeline_dir(env.tenant, env.timeline), end))?;
    let valid = end.segment_offset(SEG_SIZE) as usize;
    assert_eq!(object.len() as u64, SEG_SIZE, "a partial object is a full-size segment");
    assert!(object[..valid] == local[..valid], "partial object differs from the committed WAL");
    assert!(object[valid..].iter().all(|b| *b == 0), "bytes after the committed end are not zero");
    assert_eq!(env.sks[0].status(env.tenant, env.timeline)?["backup"]["partial_end_lsn"], json!(end.to_string()));

    // The segment completes: offloaded whole, its partial goes; the next
    // segment's partial follows once idle again.
    env.pg.sql("SELECT pg_switch_wal(); INSERT INTO t(v) VALUES ('next segment')")?;
    let next = env.compute_flush_lsn()?;
    wait_backup(&env, &[0], next.segment_start(SEG_SIZE))?;
    wait_until(Duration::from_secs(60), || Ok(partial_after(next)?.is_some() && !remote_names(remote.path(), &env)?.contains(&name)))
        .with_context(|| format!("partial not replaced: {:?}", remote_names(remote.path(), &env)))?;
    let partials: Vec<String> = remote_names(remote.path(), &env)?.into_iter().filter(|n| n.ends_with(".partial")).collect();
    assert_eq!(partials.len(), 1, "older partials left: {partials:?}");
    assert!(metric(&env, 0, "safekeeper_wal_partial_uploads_total")? >= 2.0);
    Ok(())
}

/// Remote GC deletes offloaded segments wholly below what the pageserver
/// uploaded (here with no retention), and nothing at or above it.
#[test]
fn offloaded_wal_below_the_pageservers_upload_is_deleted() -> anyhow::Result<()> {
    let remote = tempfile::tempdir()?;
    let args: Vec<String> = ["--remote-storage", &remote.path().display().to_string(), "--remote-wal-retention", "0s", "--remote-wal-gc-interval", "1s", "--wal-partial-offload-after-idle", "0s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (env, end, done) = offloaded(&args, 4)?;
    let first = env.start_lsn.segment_start(SEG_SIZE);
    let all = remote_names(remote.path(), &env)?;
    // No pageserver has uploaded anything yet: a GC pass deletes nothing.
    wait_until(Duration::from_secs(30), || Ok(!env.sks[0].status(env.tenant, env.timeline)?["backup"]["remote_gc_horizon"].is_null()))?;
    assert_eq!(remote_names(remote.path(), &env)?, all);

    let cut = first + 2 * SEG_SIZE;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let feedback = rt.block_on(pageserver_feedback(&env, 0, end, cut))?;
    // Both segments below the cut go (the second ends exactly at it).
    let below = [first.segment_file_name(1, SEG_SIZE), (first + SEG_SIZE).segment_file_name(1, SEG_SIZE)];
    wait_until(Duration::from_secs(60), || Ok(!remote_names(remote.path(), &env)?.iter().any(|n| below.contains(n))))
        .with_context(|| format!("not deleted: {:?}; {}", remote_names(remote.path(), &env), env.sks[0].log_tail()))?;
    drop(feedback);
    let left = remote_names(remote.path(), &env)?;
    let mut pos = cut;
    while pos < done {
        assert!(left.contains(&pos.segment_file_name(1, SEG_SIZE)), "segment at {pos} (above the cut) deleted: {left:?}");
        pos += SEG_SIZE;
    }
    assert_eq!(metric(&env, 0, "safekeeper_remote_wal_deleted_objects_total")?, 2.0);
    Ok(())
}
