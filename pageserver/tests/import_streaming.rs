//! Issue 14, bounded import: a pgbench data directory imported with a small
//! `checkpoint_distance` streams into many image layer files of about that
//! size (no in-memory layer, no delta), every block of every relation file
//! reads back exactly from them, also after a restart; an import that fails
//! halfway (a damaged relation file) leaves no timeline behind, on disk or
//! after a restart.
mod common;

use common::ps::*;
use pageserver::tenant::repository::Repository;
use pg_harness::PgCluster;

const DISTANCE: usize = 2 << 20;

fn small(t: &mut pageserver::tenant::timeline::TimelineConf) {
    t.checkpoint_distance = DISTANCE;
}

fn relation_bytes(pgdata: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for dir in std::fs::read_dir(pgdata.join("base"))?.chain(std::fs::read_dir(pgdata)?.filter(|e| {
        e.as_ref().is_ok_and(|e| e.file_name() == "global")
    })) {
        for f in std::fs::read_dir(dir?.path())? {
            total += f?.metadata()?.len();
        }
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_streams_into_bounded_image_layers_and_every_block_matches() -> anyhow::Result<()> {
    let mut pg = PgCluster::start(&primary_settings())?;
    tokio::task::block_in_place(|| pgbench(&pg, 3, 50))?;
    let ams = relation_ams(&pg)?;
    tokio::task::block_in_place(|| pg.stop())?;
    let data_bytes = relation_bytes(pg.data_dir())?;

    let dir = workdir();
    let repo = Repository::open(conf(dir.path(), small)).await?;
    let tenant = repo.create_tenant(None)?;
    let tl = repo.import_timeline(tenant, None, pg.data_dir()).await?;
    let lsn = tl.last_record_lsn();
    assert_eq!(tl.disk_consistent_lsn(), lsn);
    let (deltas, images, in_memory, bytes) = tl.layer_stats();
    eprintln!("imported {data_bytes} bytes of relation files: {images} image files, {bytes} bytes");
    assert_eq!((deltas, in_memory), (0, 0), "the import writes image layers only, nothing stays in memory");
    assert!(images as u64 >= data_bytes / DISTANCE as u64 / 2, "{images} files for {data_bytes} bytes");
    for (desc, path) in tl.layer_files() {
        let size = std::fs::metadata(&path)?.len();
        // One value and the index tail past the cut, at most.
        assert!(size <= DISTANCE as u64 + (64 << 10), "{desc} is {size} bytes");
        assert!(desc.is_image && desc.lsn_range.start == lsn, "{desc}");
    }
    let cmp = compare_all_blocks(&tl, pg.data_dir(), lsn, &ams).await?;
    assert!(cmp.blocks > 5_000, "only {} blocks", cmp.blocks);
    assert!(cmp.mismatches.is_empty(), "{} mismatches:\n{}", cmp.mismatches.len(), cmp.mismatches.join("\n"));

    // Restart: the index names the files.
    let id = tl.timeline_id;
    let timelines_dir = tl.path.parent().expect("timelines dir").to_path_buf();
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), small)).await?;
    let tl = repo.get_timeline(tenant, id)?;
    let cmp = compare_all_blocks(&tl, pg.data_dir(), lsn, &ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches after restart", cmp.mismatches.len());

    // A relation file that is not a whole number of blocks: pgbench_accounts
    // is read after the catalogs, so layer files were written before it fails.
    let db = std::fs::read_dir(pg.data_dir().join("base"))?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0))
        .expect("a database");
    let biggest = std::fs::read_dir(db.path())?
        .filter_map(|e| e.ok())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a relation file");
    let mut f = std::fs::OpenOptions::new().append(true).open(biggest.path())?;
    std::io::Write::write_all(&mut f, b"x")?;
    drop(f);
    let err = repo.import_timeline(tenant, None, pg.data_dir()).await.expect_err("a damaged relation file");
    assert!(err.to_string().contains("not a multiple"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&timelines_dir)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from(id.to_string())], "only the first timeline is on disk");
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), small)).await?;
    assert_eq!(repo.get_tenant(tenant)?.timelines().len(), 1);
    repo.shutdown(false).await;
    Ok(())
}
