//! Branches: a branch at LSN X reads the ancestor's pages at X; WAL
//! ingested into the branch does not change the ancestor and WAL ingested
//! into the ancestor does not change the branch; reads below the branch
//! point are errors; the structure survives a restart. Plus bad input:
//! unknown tenant/timeline/relation, bad LSNs, corrupt files.
mod common;

use std::time::Duration;

use common::ps::*;
use pageserver::tenant::repository::{RepoError, Repository};
use pageserver::tenant::timeline::PageReconstructError;
use pageserver::ingest::walreceiver;
use postgres_ffi::RelFileNode;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_are_isolated_copy_on_write() -> anyhow::Result<()> {
    let dir = workdir();
    let short_wait = |t: &mut pageserver::tenant::timeline::TimelineConf| t.wait_lsn_timeout = Duration::from_secs(1);
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let (mut pg, main) = imported_primary(&repo).await?;
    let tenant = main.tenant_id;
    pg.sql("CREATE TABLE b (id int, v text); INSERT INTO b SELECT g, 'one' FROM generate_series(1, 100) g;")?;
    let node: u32 = pg.sql("SELECT pg_relation_filenode('b')")?.parse()?;
    let db: u32 = pg.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")?.parse()?;
    let rel = RelFileNode { spc_node: 1663, db_node: db, rel_node: node };
    let x = catch_up(&main, &pg).await?;
    walreceiver::stop(&main).await;

    let branch = repo.branch_timeline(tenant, main.timeline_id, None, Some(x)).await?;
    let files: Vec<_> = std::fs::read_dir(&branch.path)?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(files, vec![std::ffi::OsString::from("index.json")], "a branch copies no data");
    let at_x = main.get_rel_page_at_lsn(rel, 0, 0, x).await?;
    assert_eq!(branch.get_rel_page_at_lsn(rel, 0, 0, x).await?, at_x);
    assert_eq!(branch.get_rel_size_at_lsn(rel, 0, x).await?, 1);

    // New WAL into the branch only.
    pg.sql("UPDATE b SET v = 'two';")?;
    stream_from(&branch, &pg).await;
    let y = catch_up(&branch, &pg).await?;
    walreceiver::stop(&branch).await;
    let branch_y = branch.get_rel_page_at_lsn(rel, 0, 0, y).await?;
    assert_ne!(branch_y, at_x, "the update changed the page on the branch");
    assert_eq!(main.last_record_lsn(), x, "the ancestor did not move");
    assert_eq!(main.get_rel_page_at_lsn(rel, 0, 0, x).await?, at_x);
    let err = main.get_rel_page_at_lsn(rel, 0, 0, y).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::WaitLsnTimeout { .. }), "{err}");
    assert_eq!(branch.get_rel_page_at_lsn(rel, 0, 0, x).await?, at_x, "the branch still has the X version");
    let err = branch.get_rel_page_at_lsn(rel, 0, 0, x - 8).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::BelowBranchPoint { .. }), "{err}");
    assert!(err.to_string().contains("below the branch point"), "{err}");

    // New WAL into the ancestor: the branch does not see it.
    stream_from(&main, &pg).await;
    pg.sql("UPDATE b SET v = 'three';")?;
    let z = catch_up(&main, &pg).await?;
    assert_eq!(main.get_rel_page_at_lsn(rel, 0, 0, y).await?, branch_y, "same WAL, same page");
    let main_z = main.get_rel_page_at_lsn(rel, 0, 0, z).await?;
    assert_ne!(main_z, branch_y);
    assert_eq!(branch.last_record_lsn(), y);
    let err = branch.get_rel_page_at_lsn(rel, 0, 0, z).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::WaitLsnTimeout { .. }), "{err}");

    // A branch of the branch reads through two ancestors.
    let nested = repo.branch_timeline(tenant, branch.timeline_id, None, None).await?;
    assert_eq!(nested.ancestor_lsn, y);
    assert_eq!(nested.get_rel_page_at_lsn(rel, 0, 0, y).await?, branch_y);
    let err = repo.branch_timeline(tenant, branch.timeline_id, None, Some(z)).await.unwrap_err();
    assert!(matches!(err, RepoError::InvalidBranchLsn(_)), "{err}");
    let err = repo.delete_timeline(tenant, branch.timeline_id).await.unwrap_err();
    assert!(matches!(err, RepoError::HasChildren(..)), "{err}");

    // Flush, restart: the same pages.
    walreceiver::stop(&main).await;
    for tl in [&main, &branch] {
        tl.freeze_and_flush().await?;
    }
    let ids = (main.timeline_id, branch.timeline_id, nested.timeline_id);
    drop((main, branch, nested));
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let main = repo.get_timeline(tenant, ids.0)?;
    let branch = repo.get_timeline(tenant, ids.1)?;
    let nested = repo.get_timeline(tenant, ids.2)?;
    assert_eq!(branch.ancestor.as_ref().map(|a| a.timeline_id), Some(ids.0));
    assert_eq!(main.get_rel_page_at_lsn(rel, 0, 0, x).await?, at_x);
    assert_eq!(main.get_rel_page_at_lsn(rel, 0, 0, z).await?, main_z);
    assert_eq!(branch.get_rel_page_at_lsn(rel, 0, 0, x).await?, at_x);
    assert_eq!(branch.get_rel_page_at_lsn(rel, 0, 0, y).await?, branch_y);
    assert_eq!(nested.get_rel_page_at_lsn(rel, 0, 0, y).await?, branch_y);
    repo.delete_timeline(tenant, ids.2).await?;
    assert!(matches!(repo.get_timeline(tenant, ids.2), Err(RepoError::TimelineNotFound(..))));
    repo.shutdown(false).await;
    pg.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors() -> anyhow::Result<()> {
    let dir = workdir();
    let short_wait = |t: &mut pageserver::tenant::timeline::TimelineConf| t.wait_lsn_timeout = Duration::from_millis(300);
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let pg = pg_harness::PgCluster::init()?;
    let tenant = repo.create_tenant(None)?;
    let tl = repo.import_timeline(tenant, None, pg.data_dir()).await?;
    let lsn = tl.last_record_lsn();

    let err = repo.get_timeline(TenantId::generate(), tl.timeline_id).unwrap_err();
    assert!(matches!(err, RepoError::TenantNotFound(_)) && err.to_string().contains("tenant"), "{err}");
    let err = repo.get_timeline(tenant, TimelineId::generate()).unwrap_err();
    assert!(matches!(err, RepoError::TimelineNotFound(..)), "{err}");
    assert!(matches!(repo.create_tenant(Some(tenant)), Err(RepoError::AlreadyExists(_))));

    let missing = RelFileNode { spc_node: 1663, db_node: 5, rel_node: 999_999 };
    let err = tl.get_rel_page_at_lsn(missing, 0, 0, lsn).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::RelationNotFound { .. }), "{err}");
    assert!(err.to_string().contains("1663/5/999999"), "{err}");
    assert!(!tl.get_rel_exists_at_lsn(missing, 0, lsn).await?);
    let mut found = None;
    for (rel_node, fork) in tl.list_rels(1663, 5, lsn).await? {
        let rel = RelFileNode { spc_node: 1663, db_node: 5, rel_node };
        let n = tl.get_rel_size_at_lsn(rel, fork, lsn).await?;
        if n > 0 {
            found = Some((rel, fork, n));
            break;
        }
    }
    let (rel, fork, n) = found.expect("a non-empty relation in db 5");
    let err = tl.get_rel_page_at_lsn(rel, fork, n + 10, lsn).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::BlockBeyondEnd { .. }), "{err}");
    let err = tl.get_rel_page_at_lsn(rel, fork, 0, lsn + 4096).await.unwrap_err();
    assert!(matches!(err, PageReconstructError::WaitLsnTimeout { .. }), "{err}");
    let err = repo.branch_timeline(tenant, tl.timeline_id, None, Some(Lsn(8))).await.unwrap_err();
    assert!(matches!(err, RepoError::InvalidBranchLsn(_)), "{err}");
    assert!(tl.get_db_size_at_lsn(1663, 5, lsn).await? > 0);

    // A data directory that is not shut down cleanly (or not PG) is refused.
    let err = repo.import_timeline(tenant, None, dir.path()).await.unwrap_err();
    assert!(matches!(err, RepoError::Import(_)), "{err}");

    // Corrupt the layer file: reads fail naming the file, never panic.
    let layers = tl.layer_files();
    assert_eq!(layers.len(), 1, "the import is one layer file");
    let path = layers[0].1.clone();
    let page = tl.get_rel_page_at_lsn(rel, fork, 0, lsn).await?;
    let tl_id = tl.timeline_id;
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let mut data = std::fs::read(&path)?;
    let at = data.len() - 40; // inside the index
    data[at] ^= 0xFF;
    std::fs::write(&path, &data)?;
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let tl = repo.get_timeline(tenant, tl_id)?;
    let err = tl.get_rel_page_at_lsn(rel, fork, 0, lsn).await.unwrap_err();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.to_string().contains(&name), "error does not name the file: {err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // Repaired index, damaged value: the value's checksum catches it.
    data[at] ^= 0xFF;
    let value_at = 72 + 100;
    data[value_at] ^= 0xFF;
    std::fs::write(&path, &data)?;
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let tl = repo.get_timeline(tenant, tl_id)?;
    let mut failures = 0;
    for (rel_node, fork) in tl.list_rels(1663, 5, lsn).await.into_iter().flatten().take(50) {
        let r = RelFileNode { spc_node: 1663, db_node: 5, rel_node };
        if let Err(e) = tl.get_rel_page_at_lsn(r, fork, 0, lsn).await {
            if matches!(e, PageReconstructError::BlockBeyondEnd { .. }) {
                continue;
            }
            assert!(e.to_string().contains(&name), "{e}");
            failures += 1;
        }
    }
    let _ = page;
    // Truncated file: clear error as well (the index records its size, so
    // the timeline's load fails naming the file).
    std::fs::write(&path, &data[..100])?;
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let err = repo.get_timeline(tenant, tl_id).unwrap_err();
    assert!(matches!(err, RepoError::TimelineBroken(..)), "{err}");
    assert!(err.to_string().contains(&name) && err.to_string().contains("100"), "{err}");
    eprintln!("value corruption was detected by {failures} reads");
    repo.shutdown(false).await;
    drop(repo);
    // Corrupt index: that timeline fails to load, naming the file.
    let index = path.parent().unwrap().join("index.json");
    let mut m = std::fs::read(&index)?;
    m[10] ^= 0xFF;
    std::fs::write(&index, &m)?;
    let repo = Repository::open(conf(dir.path(), short_wait)).await?;
    let err = repo.get_timeline(tenant, tl_id).unwrap_err();
    assert!(matches!(err, RepoError::TimelineBroken(..)), "{err}");
    assert!(err.to_string().contains("index.json") && err.to_string().contains("damaged"), "{err}");
    repo.shutdown(false).await;
    Ok(())
}
