//! `kill -9` of the pageserver at the worst moments of compaction, GC and
//! uploads, made deterministic by failpoints (`utils::failpoint`,
//! `STRATA_FAILPOINTS=NAME=kill`): the real `pageserver` binary dies with
//! SIGKILL at the named point, and is then restarted on the same work
//! directory. After the restart the index loads, names only files that
//! exist (and the leftovers it does not name are gone), every block of the
//! primary's data directory reads back through GetPage@LSN as before, and
//! nothing flushed before the crash is lost. With remote storage the
//! remote index converges (the restarted upload queue reconciles: every
//! object the index names exists, and the layer objects a crash left
//! unreferenced are deleted), and a second pageserver attaching from
//! object storage reads every block the same.
//!
//! The workload is written in-process (a stock PostgreSQL 15 primary
//! streamed into a timeline with small layers, then stopped), so that the
//! crashed binary only has to run the pass under test.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mask::Am;
use common::ps::*;
use pageserver::remote::{download, layout};
use pageserver::storage::compaction::is_level0;
use pageserver::storage::index::{self, IndexPart};
use pageserver::storage::LayerDesc;
use pageserver::tenant::repository::Repository;
use pageserver::tenant::timeline::{Timeline, TimelineConf};
use pg_harness::PgCluster;
use remote_storage::{GenericRemoteStorage, RemoteStorageConfig};
use tokio_util::sync::CancellationToken;
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

/// Small layers; nothing runs in the background, images only when asked.
fn small(t: &mut TimelineConf) {
    t.checkpoint_distance = 256 << 10;
    t.compaction_threshold = 1000;
    t.compaction_period = Duration::ZERO;
    t.image_creation_threshold = 1000;
    t.image_creation_delta_percent = 0;
    t.gc_period = Duration::ZERO;
    t.pitr_interval = Duration::ZERO;
    t.gc_horizon_bytes = 0;
}

/// A timeline written from a stopped primary: its data directory is what
/// every block must read back as at `lsn`.
struct Fixture {
    dir: tempfile::TempDir,
    pg: PgCluster,
    ams: HashMap<(u32, u32), Am>,
    lsn: Lsn,
    tenant: TenantId,
    timeline: TimelineId,
    remote: Option<(tempfile::TempDir, GenericRemoteStorage)>,
}

impl Fixture {
    fn timeline_dir(&self) -> PathBuf {
        self.dir.path().join(format!("tenants/{}/timelines/{}", self.tenant, self.timeline))
    }

    fn remote_root(&self) -> Option<&Path> {
        self.remote.as_ref().map(|(d, _)| d.path())
    }

    async fn open(&self, dir: &Path) -> anyhow::Result<Arc<Repository>> {
        let mut c = conf(dir, small);
        c.remote_storage = self.remote.as_ref().map(|(_, s)| s.clone());
        Ok(Repository::open(c).await?)
    }
}

fn local_storage(root: &Path) -> anyhow::Result<GenericRemoteStorage> {
    Ok(GenericRemoteStorage::new(&RemoteStorageConfig::parse_location(root.to_str().unwrap())?)?)
}

/// Import a primary, rewrite a table in `rounds` flushed rounds (one L0
/// file or more each), then stop the primary and flush everything.
/// `images`: create image layers after each round (so GC has work).
async fn fixture(rounds: u32, images: bool, remote: bool) -> anyhow::Result<Fixture> {
    let dir = workdir();
    let remote = match remote {
        true => {
            let root = tempfile::tempdir()?;
            let storage = local_storage(root.path())?;
            Some((root, storage))
        }
        false => None,
    };
    let mut c = conf(dir.path(), |t| {
        small(t);
        if images {
            t.image_creation_threshold = 1;
        }
    });
    c.remote_storage = remote.as_ref().map(|(_, s)| s.clone());
    let repo = Repository::open(c).await?;
    let (mut pg, tl) = imported_primary(&repo).await?;
    pg.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 8000) g;")?;
    for i in 0..rounds {
        pg.sql(&format!("UPDATE t SET v = repeat('{}', 100) WHERE id % 2 = {}; VACUUM t;", i % 10, i % 2))?;
        catch_up(&tl, &pg).await?;
        tl.freeze_and_flush().await?;
        if images {
            tl.create_image_layers_where_needed(tl.disk_consistent_lsn()).await?;
        }
    }
    let ams = relation_ams(&pg)?;
    pg.checkpoint()?;
    let lsn = stop_and_catch_up(&tl, &mut pg).await?;
    tl.freeze_and_flush().await?;
    if images {
        tl.create_image_layers_where_needed(tl.disk_consistent_lsn()).await?;
    }
    if let Some(r) = tl.remote() {
        tokio::time::timeout(Duration::from_secs(120), r.wait_uploaded()).await?;
    }
    let (tenant, timeline) = (tl.tenant_id, tl.timeline_id);
    drop(tl);
    repo.shutdown(false).await;
    Ok(Fixture { dir, pg, ams, lsn, tenant, timeline, remote })
}

/// The real pageserver binary on the fixture's work directory, with
/// `STRATA_FAILPOINTS` set.
struct Pageserver {
    child: Child,
    http_port: u16,
    stderr: PathBuf,
    _logs: tempfile::TempDir,
}

impl Pageserver {
    fn start(fx: &Fixture, failpoints: &str) -> anyhow::Result<Pageserver> {
        let (http_port, pg_port) = (pg_harness::free_port()?, pg_harness::free_port()?);
        let logs = tempfile::tempdir()?;
        let stderr = logs.path().join("stderr");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pageserver"));
        cmd.args(["--workdir", &fx.dir.path().display().to_string()])
            .args(["--listen-http", &format!("127.0.0.1:{http_port}")])
            .args(["--listen-pg", &format!("127.0.0.1:{pg_port}")])
            .args(["--walredo-lib", &common::walredo_lib().display().to_string()])
            .args(["--compaction-threshold", "1000", "--compaction-period", "0s", "--gc-period", "0s"])
            .args(["--image-creation-threshold", "1000", "--gc-horizon-mb", "0", "--pitr-interval", "0s"])
            .env(utils::failpoint::ENV_VAR, failpoints)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?);
        if let Some(root) = fx.remote_root() {
            cmd.args(["--remote-storage", &root.display().to_string()]);
        }
        let child = cmd.spawn()?;
        Ok(Pageserver { child, http_port, stderr, _logs: logs })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Wait until the HTTP API answers (or the process died at start).
    async fn ready(&mut self) -> anyhow::Result<bool> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            if reqwest::get(self.url("/v1/status")).await.is_ok() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the pageserver did not start")
    }

    /// Wait for the process to die at failpoint `name`, by SIGKILL.
    async fn killed_at(mut self, name: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                anyhow::bail!("the pageserver did not reach failpoint {name}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stderr = std::fs::read_to_string(&self.stderr)?;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "not killed: {status}; stderr: {stderr}");
        assert!(stderr.contains(&format!("failpoint {name}: SIGKILL")), "killed elsewhere: {stderr}");
        Ok(())
    }
}

/// Start the binary armed at `failpoint`, `POST` `path` (if any) and wait
/// for the process to die there.
async fn crash_at(fx: &Fixture, failpoint: &str, post: Option<&str>) -> anyhow::Result<()> {
    let mut ps = Pageserver::start(fx, &format!("{failpoint}=kill"))?;
    if ps.ready().await? {
        if let Some(path) = post {
            let url = ps.url(&format!("/v1/tenant/{}/timeline/{}{path}", fx.tenant, fx.timeline));
            // The connection breaks when the process dies; its answer does not matter.
            let _ = reqwest::Client::new().post(url).timeout(Duration::from_secs(120)).send().await;
        }
    }
    ps.killed_at(failpoint).await
}

/// Layer files on disk in the timeline directory.
fn layer_files_on_disk(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if LayerDesc::parse_file_name(&name).is_some() {
            out.insert(name);
        }
    }
    Ok(out)
}

fn index_names(index: &IndexPart) -> BTreeSet<String> {
    index.layers.iter().map(|l| l.name.clone()).collect()
}

/// After a restart: the index names exactly the layer files on disk, and
/// every block reads back as the primary wrote it.
async fn assert_restart_consistent(fx: &Fixture, tl: &Timeline) -> anyhow::Result<()> {
    let index = index::load(&fx.timeline_dir())?;
    index::check_layer_files(&fx.timeline_dir(), &index)?;
    assert_eq!(layer_files_on_disk(&fx.timeline_dir())?, index_names(&index), "leftovers not removed, or files missing");
    assert!(tl.disk_consistent_lsn() >= fx.lsn, "flushed WAL lost: {} < {}", tl.disk_consistent_lsn(), fx.lsn);
    assert_every_block(fx, tl).await
}

async fn assert_every_block(fx: &Fixture, tl: &Timeline) -> anyhow::Result<()> {
    // Nothing was written after `lsn`: at a GC cutoff above it (the
    // horizon is 0) the pages are the same.
    let lsn = fx.lsn.max(tl.gc_cutoff_lsn());
    let cmp = compare_all_blocks(tl, fx.pg.data_dir(), lsn, &fx.ams).await?;
    assert!(cmp.mismatches.is_empty(), "{} mismatches: {:?}", cmp.mismatches.len(), &cmp.mismatches[..cmp.mismatches.len().min(5)]);
    assert!(cmp.blocks > 100, "compared only {} blocks", cmp.blocks);
    Ok(())
}

fn level0_count(index: &IndexPart) -> usize {
    index.layers.iter().filter_map(|l| LayerDesc::parse_file_name(&l.name)).filter(is_level0).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_compaction_before_and_after_the_index_write() -> anyhow::Result<()> {
    let fx = fixture(4, false, false).await?;
    let before = index::load(&fx.timeline_dir())?;
    assert!(level0_count(&before) >= 4, "{} L0 files", level0_count(&before));

    // Killed with the L1 files written, the index still naming the L0s.
    crash_at(&fx, "compaction-before-index", Some("/compact?force=true")).await?;
    let on_disk = layer_files_on_disk(&fx.timeline_dir())?;
    assert_eq!(index::load(&fx.timeline_dir())?, before, "the index changed before its failpoint");
    assert!(on_disk.len() > before.layers.len(), "no L1 file was written before the kill");
    let repo = fx.open(fx.dir.path()).await?;
    let tl = repo.get_timeline(fx.tenant, fx.timeline)?;
    assert_restart_consistent(&fx, &tl).await?;
    assert_eq!(index_names(&index::load(&fx.timeline_dir())?), index_names(&before), "the unnamed L1 files were not adopted");
    drop(tl);
    repo.shutdown(false).await;

    // Killed with the index naming the L1s, the L0 files still on disk.
    crash_at(&fx, "compaction-before-delete", Some("/compact?force=true")).await?;
    let after = index::load(&fx.timeline_dir())?;
    assert_eq!(level0_count(&after), 0, "the index still names L0 files");
    let on_disk = layer_files_on_disk(&fx.timeline_dir())?;
    assert!(before.layers.iter().any(|l| on_disk.contains(&l.name)), "the L0 files were deleted before the kill");
    let repo = fx.open(fx.dir.path()).await?;
    let tl = repo.get_timeline(fx.tenant, fx.timeline)?;
    assert_restart_consistent(&fx, &tl).await?;
    drop(tl);
    repo.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_gc_after_the_index_write() -> anyhow::Result<()> {
    let fx = fixture(4, true, false).await?;
    let before = index::load(&fx.timeline_dir())?;

    // Before the index write: nothing changes.
    crash_at(&fx, "gc-before-index", Some("/gc")).await?;
    assert_eq!(index::load(&fx.timeline_dir())?, before);

    crash_at(&fx, "gc-before-delete", Some("/gc")).await?;
    let after = index::load(&fx.timeline_dir())?;
    let removed: Vec<_> = index_names(&before).difference(&index_names(&after)).cloned().collect();
    assert!(!removed.is_empty(), "GC chose nothing to remove: the crash proves nothing");
    assert!(after.gc_cutoff_lsn > before.gc_cutoff_lsn, "the index does not carry the new cutoff");
    let on_disk = layer_files_on_disk(&fx.timeline_dir())?;
    assert!(removed.iter().all(|n| on_disk.contains(n)), "files deleted before the kill");

    let repo = fx.open(fx.dir.path()).await?;
    let tl = repo.get_timeline(fx.tenant, fx.timeline)?;
    assert_eq!(tl.gc_cutoff_lsn(), after.gc_cutoff_lsn);
    assert_restart_consistent(&fx, &tl).await?;
    drop(tl);
    repo.shutdown(false).await;
    Ok(())
}

/// The remote index, the layer objects of the timeline, and whether every
/// object the index names exists.
async fn remote_state(fx: &Fixture, generation: u32) -> anyhow::Result<(Option<IndexPart>, BTreeSet<String>)> {
    let (_, storage) = fx.remote.as_ref().expect("remote storage");
    let cancel = CancellationToken::new();
    let index = download::newest_index(storage, fx.tenant, fx.timeline, generation, &cancel).await?.map(|(_, i)| i);
    let prefix = layout::timeline_prefix(fx.tenant, fx.timeline);
    let objects = storage.list(Some(&prefix), &cancel).await?;
    let layers = objects
        .into_iter()
        .map(|(p, _)| p.object_name().to_string())
        .filter(|n| LayerDesc::parse_file_name(n).is_some())
        .collect();
    Ok((index, layers))
}

/// Restart with remote storage: the queue reconciles, the remote index
/// names exactly the layer objects there are (no orphan, none missing),
/// every block reads back; then attach on an empty pageserver and read
/// every block there too.
async fn restart_converge_and_attach(fx: &Fixture) -> anyhow::Result<()> {
    let repo = fx.open(fx.dir.path()).await?;
    let tl = repo.get_timeline(fx.tenant, fx.timeline)?;
    let remote = tl.remote().expect("remote client").clone();
    tokio::time::timeout(Duration::from_secs(120), remote.wait_uploaded()).await?;
    assert_eq!(tl.remote_consistent_lsn(), tl.disk_consistent_lsn(), "uploads did not resume");
    let (index, objects) = remote_state(fx, 1).await?;
    let index = index.expect("a remote index");
    assert_eq!(index_names(&index), objects, "remote index and layer objects differ (missing objects or orphans)");
    assert_eq!(index_names(&index), index_names(&index::load(&fx.timeline_dir())?), "remote index is not the local one");
    assert_restart_consistent(fx, &tl).await?;
    drop((tl, remote));
    repo.shutdown(false).await;

    let other = workdir();
    let repo_b = fx.open(other.path()).await?;
    repo_b.attach_tenant(fx.tenant, 2).await?;
    let tl_b = repo_b.get_timeline(fx.tenant, fx.timeline)?;
    assert!(tl_b.disk_consistent_lsn() >= fx.lsn);
    assert_every_block(fx, &tl_b).await?;
    drop(tl_b);
    repo_b.shutdown(false).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_uploads_then_uploads_resume_and_attach_works() -> anyhow::Result<()> {
    // Written without remote storage: the binary's first reconcile uploads
    // every layer, and dies with two of them uploaded, before any index.
    let mut fx = fixture(3, false, false).await?;
    let root = tempfile::tempdir()?;
    let storage = local_storage(root.path())?;
    fx.remote = Some((root, storage));
    let local = index::load(&fx.timeline_dir())?;
    assert!(local.layers.len() > 2, "{} layers", local.layers.len());
    let mut ps = Pageserver::start(&fx, "upload-layer-done=kill@2")?;
    let _ = ps.ready().await?;
    ps.killed_at("upload-layer-done").await?;
    let (index, objects) = remote_state(&fx, 1).await?;
    assert!(index.is_none(), "an index was uploaded before the kill");
    assert!(objects.len() >= 2 && objects.len() < local.layers.len(), "{} of {} layers uploaded", objects.len(), local.layers.len());

    restart_converge_and_attach(&fx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_a_compaction_index_upload_and_its_remote_deletions() -> anyhow::Result<()> {
    let fx = fixture(4, false, true).await?;
    let (index, objects) = remote_state(&fx, 1).await?;
    let before = index.expect("uploaded by the fixture");
    assert_eq!(index_names(&before), objects);
    assert!(level0_count(&before) >= 4);

    // The compaction commits locally; its queued index upload (naming the
    // L1 files) goes through; the process dies before deleting the L0s.
    crash_at(&fx, "upload-before-deletions", Some("/compact?force=true")).await?;
    let (index, objects) = remote_state(&fx, 1).await?;
    let index = index.expect("remote index");
    assert_eq!(level0_count(&index), 0, "the uploaded index still names L0 files");
    assert!(index_names(&index).is_subset(&objects), "the remote index names a missing object");
    let orphans = objects.difference(&index_names(&index)).count();
    assert!(orphans > 0, "the L0 objects were deleted before the kill");

    restart_converge_and_attach(&fx).await
}
