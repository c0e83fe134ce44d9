//! The per-timeline index (`index.json`): written after every flush and
//! image-layer creation, the source of truth at startup (restart in
//! process), crash leftovers removed, a missing layer failing only its
//! timeline, and migration of directories from before the index.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::ps::*;
use pageserver::storage::file::LayerFileWriter;
use pageserver::storage::index::{self, IndexPart, LayerKind, INDEX_FILE};
use pageserver::storage::LayerDesc;
use pageserver::tenant::repository::{RepoError, Repository};
use pageserver::tenant::timeline::Timeline;
use pageserver::storage::value::Value;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

fn names_in_index(index: &IndexPart) -> Vec<String> {
    let mut v: Vec<String> = index.layers.iter().map(|l| l.name.clone()).collect();
    v.sort();
    v
}

fn names_in_map(tl: &Timeline) -> Vec<String> {
    let mut v: Vec<String> =
        tl.layer_files().iter().map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A new repository with one imported timeline (initdb output).
async fn imported(dir: &Path) -> anyhow::Result<(Arc<Repository>, Arc<Timeline>, pg_harness::PgCluster)> {
    let repo = Repository::open(conf(dir, |_| {})).await?;
    let pg = pg_harness::PgCluster::init()?;
    let tenant = repo.create_tenant(None)?;
    let tl = repo.import_timeline(tenant, None, pg.data_dir()).await?;
    Ok((repo, tl, pg))
}

async fn restart(repo: Arc<Repository>, dir: &Path) -> anyhow::Result<Arc<Repository>> {
    repo.shutdown(false).await;
    drop(repo);
    Ok(Repository::open(conf(dir, |_| {})).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_is_written_after_flush_and_image_creation_and_reloaded_after_restart() -> anyhow::Result<()> {
    let dir = workdir();
    let (repo, tl, _pg) = imported(dir.path()).await?;
    let lsn = tl.last_record_lsn();
    let (ids, path) = ((tl.tenant_id, tl.timeline_id), tl.path.clone());
    let index = index::load(&path)?;
    assert_eq!(index.version, 1);
    assert_eq!(index.generation, 1);
    assert_eq!(index.gc_cutoff_lsn, Lsn(0));
    assert_eq!(index.metadata.disk_consistent_lsn, tl.disk_consistent_lsn());
    assert_eq!(index.metadata.ancestor_timeline, None);
    assert_eq!(names_in_index(&index), names_in_map(&tl), "the import wrote the index");
    assert_eq!(index.layers.len(), 1);
    let layer = &index.layers[0];
    assert_eq!(layer.kind, LayerKind::Image, "an import writes image layers");
    assert!(layer.name.ends_with("-g00000001"), "{}", layer.name);
    assert_eq!(layer.size_bytes, std::fs::metadata(path.join(&layer.name))?.len());

    let created = tl.create_image_layers(lsn).await?;
    assert!(created >= 1);
    let index = index::load(&path)?;
    assert_eq!(index.layers.iter().filter(|l| l.kind == LayerKind::Image).count(), created + 1, "the import's and the new");
    assert_eq!(names_in_index(&index), names_in_map(&tl));
    let control = tl.control_file(lsn).await?;
    let dbs = tl.list_dbs(lsn).await?;
    drop(tl);

    let repo = restart(repo, dir.path()).await?;
    let tl = repo.get_timeline(ids.0, ids.1)?;
    assert_eq!(names_in_map(&tl), names_in_index(&index), "loaded from the index");
    assert_eq!(tl.disk_consistent_lsn(), index.metadata.disk_consistent_lsn);
    assert_eq!(tl.control_file(lsn).await?, control);
    assert_eq!(tl.list_dbs(lsn).await?, dbs);
    repo.shutdown(false).await;
    Ok(())
}

/// A crash between writing a layer file and writing the index leaves a
/// complete file the index does not name (and maybe a temporary file):
/// both are removed at startup and the timeline is what the index says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_not_in_the_index_are_removed_at_startup() -> anyhow::Result<()> {
    let dir = workdir();
    let (repo, tl, _pg) = imported(dir.path()).await?;
    let (ids, path, lsn) = ((tl.tenant_id, tl.timeline_id), tl.path.clone(), tl.last_record_lsn());
    let before = index::load(&path)?;
    let control = tl.control_file(lsn).await?;
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);

    // The flush that "crashed": a complete delta file above the index's
    // disk_consistent_lsn, holding a different control file.
    let desc = LayerDesc {
        key_range: pageserver::storage::key::CONTROLFILE_KEY..pageserver::storage::key::CONTROLFILE_KEY.next(),
        lsn_range: lsn + 1..lsn + 100,
        is_image: false,
        generation: 1,
    };
    let mut w = LayerFileWriter::new(&path, desc.clone())?;
    w.put(desc.key_range.start, lsn + 50, &Value::Image(bytes::Bytes::from_static(b"not the control file")))?;
    let stray = w.finish()?.path;
    let tmp = path.join(format!("{}.tmp", LayerDesc { lsn_range: lsn + 100..lsn + 200, ..desc }.file_name()));
    std::fs::write(&tmp, b"half a layer")?;
    let keep = path.join("wal_source.json.unrelated");
    std::fs::write(&keep, b"not a layer")?;

    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let tl = repo.get_timeline(ids.0, ids.1)?;
    assert!(!stray.exists(), "leftover layer removed");
    assert!(!tmp.exists(), "temporary file removed");
    assert!(keep.exists(), "files that are not layers are left alone");
    assert_eq!(names_in_map(&tl), names_in_index(&before));
    assert_eq!(index::load(&path)?.layers, before.layers);
    assert_eq!(tl.control_file(lsn + 60).await?, control, "the unindexed file is not read");
    repo.shutdown(false).await;
    Ok(())
}

fn broken_reason(repo: &Repository, tenant: TenantId, timeline: TimelineId) -> String {
    match repo.get_timeline(tenant, timeline) {
        Err(e @ RepoError::TimelineBroken(..)) => e.to_string(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("timeline {timeline} loaded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_naming_a_missing_layer_fails_only_that_timeline() -> anyhow::Result<()> {
    let dir = workdir();
    let (repo, broken, pg) = imported(dir.path()).await?;
    let other_tenant = repo.create_tenant(None)?;
    let healthy = repo.import_timeline(other_tenant, None, pg.data_dir()).await?;
    let branch = repo.branch_timeline(broken.tenant_id, broken.timeline_id, None, None).await?;
    let lsn = healthy.last_record_lsn();
    let control = healthy.control_file(lsn).await?;
    let b = (broken.tenant_id, broken.timeline_id, branch.timeline_id, broken.path.clone());
    let h = (healthy.tenant_id, healthy.timeline_id, healthy.path.clone());
    drop((broken, branch, healthy));

    let layer: PathBuf = b.3.join(&index::load(&b.3)?.layers[0].name);
    let name = layer.file_name().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(&layer)?;
    std::fs::remove_file(&layer)?;
    let repo = restart(repo, dir.path()).await?;
    let err = broken_reason(&repo, b.0, b.1);
    assert!(err.contains(&name) && err.contains("missing") && err.contains(INDEX_FILE), "{err}");
    let err = broken_reason(&repo, b.0, b.2);
    assert!(err.contains("ancestor"), "the branch of a broken timeline: {err}");
    let tl = repo.get_timeline(h.0, h.1)?;
    assert_eq!(tl.control_file(lsn).await?, control, "the other tenant is served");
    drop(tl);

    // A file shorter than the index says (not fully written) fails too.
    std::fs::write(&layer, &bytes[..bytes.len() - 1])?;
    let repo = restart(repo, dir.path()).await?;
    let err = broken_reason(&repo, b.0, b.1);
    assert!(err.contains(&name) && err.contains("bytes"), "{err}");
    assert!(repo.get_timeline(h.0, h.1).is_ok());

    // Restored: it loads again.
    std::fs::write(&layer, &bytes)?;
    let repo = restart(repo, dir.path()).await?;
    assert_eq!(repo.get_timeline(b.0, b.1)?.control_file(lsn).await?, control);
    assert!(repo.get_timeline(b.0, b.2).is_ok());
    repo.shutdown(false).await;
    Ok(())
}

/// A timeline directory from before the index: `metadata` and layer files
/// named without generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_index_timeline_is_migrated_once() -> anyhow::Result<()> {
    let dir = workdir();
    let (repo, tl, _pg) = imported(dir.path()).await?;
    let (ids, path, lsn) = ((tl.tenant_id, tl.timeline_id), tl.path.clone(), tl.last_record_lsn());
    let control = tl.control_file(lsn).await?;
    drop(tl);
    repo.shutdown(false).await;
    drop(repo);

    let index = index::load(&path)?;
    pageserver::tenant::repository::save_metadata(&path, &index.metadata)?;
    std::fs::remove_file(path.join(INDEX_FILE))?;
    let new_name = &index.layers[0].name;
    let legacy = new_name.strip_suffix("-g00000001").expect("generation suffix").to_string();
    std::fs::rename(path.join(new_name), path.join(&legacy))?;

    let repo = Repository::open(conf(dir.path(), |_| {})).await?;
    let tl = repo.get_timeline(ids.0, ids.1)?;
    assert_eq!(tl.control_file(lsn).await?, control);
    assert!(!path.join("metadata").exists(), "metadata folded into the index");
    let migrated = index::load(&path)?;
    assert_eq!(migrated.metadata, index.metadata);
    assert_eq!(names_in_index(&migrated), vec![legacy.clone()], "old names kept, as generation 1");
    assert_eq!(migrated.layers[0].generation, 1);
    drop(tl);
    let repo = restart(repo, dir.path()).await?;
    assert_eq!(repo.get_timeline(ids.0, ids.1)?.control_file(lsn).await?, control);
    assert!(path.join(&legacy).exists());
    repo.shutdown(false).await;
    Ok(())
}
