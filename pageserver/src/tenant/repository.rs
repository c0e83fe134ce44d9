//! The repository: tenants and their timelines on local disk, under
//! `<workdir>/tenants/<tenant_id>/timelines/<timeline_id>/`, each timeline
//! directory holding its index file (`index.json`, see
//! [`crate::storage::index`]) and its layer files; each tenant directory
//! holds its settings (`config.json`, see [`crate::tenant::config`]).
//!
//! Owns: the in-memory registry of tenants (with their live settings and
//! background loop) and timelines (and of timelines that failed to load,
//! with the reason), the shared WAL redo manager, and the on-disk layout.
//!
//! Invariants:
//! * A timeline is what its index says: startup loads the index, not a
//!   directory scan. Layer files the index does not name, and temporary
//!   files, are crash leftovers and are deleted (each logged). An index
//!   naming a short file, a missing file that remote storage does not hold
//!   (see [`crate::tenant::attach`]; with remote storage a missing file is
//!   a remote layer, downloaded on demand), or a damaged index, fails that
//!   timeline's load (and its branches'); the other timelines are served
//!   and [`Repository::get_timeline`] reports the reason.
//! * A timeline directory with neither index nor `metadata` is an
//!   unfinished creation and is ignored (and reported).
//! * Migration: a directory from before the index (a `metadata` file) is
//!   scanned once — temporary files and layers above `disk_consistent_lsn`
//!   removed, the rest kept under their old names as generation 1 — then
//!   the index is written and only then `metadata` removed.
//! * Ancestors are loaded before their branches (and learn their branch
//!   points, GC's retain LSNs); a timeline with branches cannot be deleted;
//!   a branch cannot start below its ancestor's GC cutoff.
//! * A tenant's timelines read the tenant's effective settings (its
//!   overrides over [`PageServerConf::timeline`]); a tenant whose
//!   `config.json` cannot be read loads none of its timelines (each is
//!   reported broken with the reason) rather than run them with settings
//!   the operator did not choose.
//! * One background loop per tenant ([`crate::tenant::tasks`]: compaction
//!   every `compaction_period`, GC every `gc_period`), aborted at shutdown.
//!
//! Cancellation: the async methods do their file work in `spawn_blocking`;
//! dropping one part-way leaves at worst an unfinished timeline directory
//! without an index, ignored on the next load.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::storage::file::LayerFile;
use crate::storage::index::{self, IndexError, IndexLayer, IndexPart};
use crate::storage::layer_map::LayerMap;
use crate::storage::{LayerDesc, FIRST_GENERATION};
use crate::tenant::config::{self as tenant_config, ConfigError, TenantConf, TenantConfOverrides};
use crate::tenant::timeline::{PageReconstructError, Timeline, TimelineConf};
use crate::tenant::attach::SHUTDOWN_UPLOAD_WAIT;
use crate::walredo::{PostgresRedoManager, WalRedoConfig, WalRedoError};

pub use crate::storage::index::TimelineMetadata;

/// The per-timeline metadata file of repositories from before the index;
/// read only to migrate them.
const METADATA_FILE: &str = "metadata";

/// Errors of repository operations.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("tenant {0} not found")]
    TenantNotFound(TenantId),
    #[error("timeline {1} of tenant {0} not found")]
    TimelineNotFound(TenantId, TimelineId),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid branch point: {0}")]
    InvalidBranchLsn(String),
    #[error("branch point {lsn} is below the GC cutoff {cutoff} of timeline {timeline_id}")]
    BelowGcCutoff { lsn: Lsn, cutoff: Lsn, timeline_id: TimelineId },
    #[error("timeline {0} has branches: {1:?}")]
    HasChildren(TimelineId, Vec<TimelineId>),
    #[error("import failed: {0}")]
    Import(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("metadata file {path} is corrupt: {reason}")]
    CorruptMetadata { path: PathBuf, reason: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("timeline {1} of tenant {0} failed to load: {2}")]
    TimelineBroken(TenantId, TimelineId, String),
    #[error(transparent)]
    Page(#[from] PageReconstructError),
    #[error("WAL redo manager: {0}")]
    WalRedo(#[from] WalRedoError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("remote storage: {0}")]
    Remote(String),
    #[error("no remote storage is configured for this pageserver")]
    NoRemoteStorage,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io { path: path.to_path_buf(), source }
}

/// fsync a directory (after creating or renaming a file in it).

/// Write `md` to `<dir>/metadata` atomically (the format before the index;
/// kept to test migration).
pub fn save_metadata(dir: &Path, md: &TimelineMetadata) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(md).map_err(std::io::Error::other)?;
    let mut contents = crc32c::crc32c(&body).to_le_bytes().to_vec();
    contents.extend_from_slice(&body);
    utils::fs::write_atomic(&dir.join(METADATA_FILE), &contents)
}

/// Read and check `<dir>/metadata`.
pub fn load_metadata(dir: &Path) -> Result<TimelineMetadata, RepoError> {
    let path = dir.join(METADATA_FILE);
    let buf = fs::read(&path).map_err(io_err(&path))?;
    let corrupt = |reason: String| RepoError::CorruptMetadata { path: path.clone(), reason };
    if buf.len() < 4 {
        return Err(corrupt("too short".into()));
    }
    let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if crc32c::crc32c(&buf[4..]) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    serde_json::from_slice(&buf[4..]).map_err(|e| corrupt(e.to_string()))
}

/// Settings of a pageserver.
#[derive(Clone, Debug)]
pub struct PageServerConf {
    pub workdir: PathBuf,
    /// The defaults of every tenant (each may override some, see
    /// [`crate::tenant::config`]).
    pub timeline: TimelineConf,
    pub walredo: WalRedoConfig,
    /// Object storage for layers and indexes (none: local disk only).
    pub remote_storage: Option<remote_storage::GenericRemoteStorage>,
    /// Budget of the layer files on local disk, all timelines together
    /// (none: unlimited); see [`crate::tenant::eviction`]. Needs remote
    /// storage to evict anything.
    pub resident_limit_bytes: Option<u64>,
}

impl PageServerConf {
    pub fn new(workdir: impl Into<PathBuf>) -> PageServerConf {
        let workdir = workdir.into();
        let walredo = WalRedoConfig::new(workdir.join("walredo"));
        PageServerConf { workdir, timeline: TimelineConf::default(), walredo, remote_storage: None, resident_limit_bytes: None }
    }
}

pub struct Tenant {
    pub tenant_id: TenantId,
    pub path: PathBuf,
    /// The tenant's settings (overrides, effective values, live updates).
    pub conf: Arc<TenantConf>,
    timelines: Mutex<HashMap<TimelineId, Arc<Timeline>>>,
    /// Timelines that failed to load, with the reason.
    broken: Mutex<HashMap<TimelineId, String>>,
    /// The background loop (see [`crate::tenant::tasks`]).
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Generation of this attachment: new timelines' indexes carry it (the
    /// highest of the loaded indexes', or the one given at attach).
    pub generation: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("tenant_id", &self.tenant_id)
            .field("generation", &self.generation())
            .field("overrides", &self.conf.overrides().to_map())
            .field("timelines", &self.timelines().len())
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// Generation of this attachment.
    pub fn generation(&self) -> u32 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn timelines(&self) -> Vec<Arc<Timeline>> {
        let mut v: Vec<_> = self.timelines.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        v.sort_by_key(|t| t.timeline_id);
        v
    }

    fn get(&self, id: TimelineId) -> Option<Arc<Timeline>> {
        self.timelines.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Why a timeline failed to load, if it did.
    pub fn broken_reason(&self, id: TimelineId) -> Option<String> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn set_broken(&self, id: TimelineId, reason: String) {
        warn!(tenant_id = %self.tenant_id, timeline_id = %id, "timeline not loaded: {reason}");
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).insert(id, reason);
    }
}

pub struct Repository {
    pub conf: PageServerConf,
    pub(crate) tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
    pub walredo: Arc<PostgresRedoManager>,
    /// Wakes the eviction task (timelines do after each download).
    pub(crate) evictor: Arc<tokio::sync::Notify>,
    pub(crate) eviction_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Eviction passes run one at a time.
    pub(crate) eviction_lock: tokio::sync::Mutex<()>,
}

impl Repository {

    /// Open (or create) the repository in `conf.workdir` and load every
    /// tenant and timeline found there.
    pub async fn open(conf: PageServerConf) -> Result<Arc<Repository>, RepoError> {
        let tenants_dir = conf.workdir.join("tenants");
        fs::create_dir_all(&tenants_dir).map_err(io_err(&tenants_dir))?;
        let walredo = Arc::new(PostgresRedoManager::new(conf.walredo.clone())?);
        let repo = Arc::new(Repository {
            conf,
            tenants: RwLock::new(HashMap::new()),
            walredo,
            evictor: Arc::new(tokio::sync::Notify::new()),
            eviction_task: Mutex::new(None),
            eviction_lock: tokio::sync::Mutex::new(()),
        });
        let dir = tenants_dir.clone();
        let found = tokio::task::spawn_blocking(move || scan_tenants(&dir))
            .await
            .map_err(|e| RepoError::Import(e.to_string()))??;
        for (tenant_id, timelines) in found {
            repo.load_tenant(tenant_id, timelines).await?;
        }
        repo.start_eviction_task();
        Ok(repo)
    }

    /// Load a tenant from its directory: its settings, then its timelines
    /// (a tenant whose settings are unreadable has every timeline broken).
    pub(crate) async fn load_tenant(&self, tenant_id: TenantId, timelines: Vec<TimelineId>) -> Result<Arc<Tenant>, RepoError> {
        let dir = self.tenant_dir(tenant_id);
        let overrides = tokio::task::spawn_blocking(move || tenant_config::load(&dir))
            .await
            .map_err(|e| RepoError::Import(e.to_string()))?;
        let (overrides, config_error) = match overrides {
            Ok(o) => (o, None),
            Err(e) => (TenantConfOverrides::default(), Some(e.to_string())),
        };
        let tenant = self.insert_tenant(tenant_id, overrides);
        if let Some(reason) = config_error {
            for id in timelines {
                tenant.set_broken(id, reason.clone());
            }
            return Ok(tenant);
        }
        let mut loaded = Vec::new();
        for id in timelines {
            let d = self.timeline_dir(tenant_id, id);
            let result = tokio::task::spawn_blocking(move || load_timeline_dir_lazy(&d))
                .await
                .map_err(|e| RepoError::Import(e.to_string()))?;
            match result {
                Ok(Some(dir)) => match self.check_remote_only_layers(tenant_id, id, &dir).await {
                    Ok(()) => {
                        tenant.generation.fetch_max(dir.index.generation, std::sync::atomic::Ordering::AcqRel);
                        loaded.push((id, dir.index, dir.layers));
                    }
                    Err(e) => tenant.set_broken(id, e.to_string()),
                },
                Ok(None) => {}
                Err(e) => tenant.set_broken(id, e.to_string()),
            }
        }
        self.load_in_ancestor_order(&tenant, loaded).await?;
        Ok(tenant)
    }

    /// Register loaded timelines, ancestors first; a timeline whose
    /// ancestor is broken or missing is broken too.
    async fn load_in_ancestor_order(&self, tenant: &Arc<Tenant>, mut pending: Vec<LoadedTimeline>) -> Result<(), RepoError> {
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (id, index, layers) in pending {
                let ancestor = match index.metadata.ancestor_timeline {
                    Some(a) => match (tenant.get(a), tenant.broken_reason(a)) {
                        (Some(a), _) => Some(a),
                        (None, Some(_)) => {
                            tenant.set_broken(id, format!("its ancestor timeline {a} failed to load"));
                            continue;
                        }
                        (None, None) => {
                            rest.push((id, index, layers));
                            continue;
                        }
                    },
                    None => None,
                };
                let tl = self.load_timeline(tenant, id, &index, layers, ancestor).await;
                info!(tenant_id = %tenant.tenant_id, timeline_id = %id, disk_consistent_lsn = %tl.disk_consistent_lsn(), "loaded timeline");
            }
            if rest.len() == before {
                for (id, index, _) in &rest {
                    let reason = format!("ancestor {:?} missing", index.metadata.ancestor_timeline);
                    tenant.set_broken(*id, reason);
                }
                break;
            }
            pending = rest;
        }
        Ok(())
    }

    /// Register a tenant (if it is not) with `overrides`, and start its
    /// background loop when a runtime is there to run it.
    pub(crate) fn insert_tenant(&self, tenant_id: TenantId, overrides: TenantConfOverrides) -> Arc<Tenant> {
        let mut tenants = self.tenants.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get(&tenant_id) {
            return Arc::clone(t);
        }
        let path = self.tenant_dir(tenant_id);
        let conf = Arc::new(TenantConf::new(path.clone(), self.conf.timeline.clone(), overrides));
        let tenant = Arc::new(Tenant {
            tenant_id,
            path,
            conf,
            timelines: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashMap::new()),
            background: Mutex::new(None),
            generation: std::sync::atomic::AtomicU32::new(FIRST_GENERATION),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&tenant);
            let handle = crate::tenant::tasks::spawn(tenant_id, tenant.conf.subscribe(), move || {
                weak.upgrade().map(|t| t.timelines())
            });
            *tenant.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        tenants.insert(tenant_id, Arc::clone(&tenant));
        tenant
    }

    fn tenant_dir(&self, tenant_id: TenantId) -> PathBuf {
        self.conf.workdir.join("tenants").join(tenant_id.to_string())
    }

    pub(crate) fn timeline_dir(&self, tenant_id: TenantId, timeline_id: TimelineId) -> PathBuf {
        self.conf.workdir.join("tenants").join(tenant_id.to_string()).join("timelines").join(timeline_id.to_string())
    }

    async fn load_timeline(
        &self,
        tenant: &Arc<Tenant>,
        timeline_id: TimelineId,
        index: &IndexPart,
        layers: LayerMap,
        ancestor: Option<Arc<Timeline>>,
    ) -> Arc<Timeline> {
        let dir = self.timeline_dir(tenant.tenant_id, timeline_id);
        let tl = Arc::new(Timeline::new(
            tenant.tenant_id,
            timeline_id,
            dir,
            tenant.conf.subscribe(),
            ancestor,
            index,
            layers,
            Arc::clone(&self.walredo),
        ));
        tenant.timelines.lock().unwrap_or_else(|e| e.into_inner()).insert(timeline_id, Arc::clone(&tl));
        if let Some(ancestor) = &tl.ancestor {
            ancestor.add_branch_point(timeline_id, tl.ancestor_lsn);
        }
        self.start_uploads(&tl, index);
        tl.update_physical_size_metric();
        if let Some(source) = crate::ingest::walreceiver::persisted_source(&tl) {
            crate::ingest::walreceiver::start(&tl, source).await;
        }
        tl
    }

    /// Create a tenant (no timelines yet) with the default settings.
    /// Blocking (small file operations); see [`Repository::create_tenant_with_conf`].
    pub fn create_tenant(&self, tenant_id: Option<TenantId>) -> Result<TenantId, RepoError> {
        let id = tenant_id.unwrap_or_else(TenantId::generate);
        self.check_new_tenant(id)?;
        create_tenant_dir(&self.tenant_dir(id), &TenantConfOverrides::default())?;
        self.insert_tenant(id, TenantConfOverrides::default());
        info!(tenant_id = %id, "created tenant");
        Ok(id)
    }

    /// Create a tenant (no timelines yet) with settings `overrides`: its
    /// `config.json` is durable before the tenant exists.
    pub async fn create_tenant_with_conf(
        &self,
        tenant_id: Option<TenantId>,
        overrides: TenantConfOverrides,
    ) -> Result<TenantId, RepoError> {
        let id = tenant_id.unwrap_or_else(TenantId::generate);
        self.check_new_tenant(id)?;
        let (dir, o) = (self.tenant_dir(id), overrides.clone());
        tokio::task::spawn_blocking(move || create_tenant_dir(&dir, &o))
            .await
            .map_err(|e| RepoError::Import(e.to_string()))??;
        self.insert_tenant(id, overrides.clone());
        info!(tenant_id = %id, overrides = ?overrides.to_map(), "created tenant");
        if !overrides.is_empty() {
            self.upload_tenant_config(id, &overrides).await?;
        }
        Ok(id)
    }

    fn check_new_tenant(&self, id: TenantId) -> Result<(), RepoError> {
        if self.tenants.read().unwrap_or_else(|e| e.into_inner()).contains_key(&id) {
            return Err(RepoError::AlreadyExists(format!("tenant {id}")));
        }
        Ok(())
    }

    /// Replace a tenant's overrides (durably, then live for its timelines).
    pub async fn set_tenant_config(&self, tenant_id: TenantId, overrides: TenantConfOverrides) -> Result<(), RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        tenant.conf.replace(overrides.clone()).await?;
        info!(%tenant_id, overrides = ?overrides.to_map(), "tenant settings replaced");
        self.upload_tenant_config(tenant_id, &overrides).await
    }

    pub fn list_tenants(&self) -> Vec<TenantId> {
        let mut v: Vec<_> = self.tenants.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        v.sort();
        v
    }

    pub fn get_tenant(&self, tenant_id: TenantId) -> Result<Arc<Tenant>, RepoError> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&tenant_id)
            .cloned()
            .ok_or(RepoError::TenantNotFound(tenant_id))
    }

    pub fn get_timeline(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Result<Arc<Timeline>, RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        if let Some(tl) = tenant.get(timeline_id) {
            return Ok(tl);
        }
        match tenant.broken_reason(timeline_id) {
            Some(reason) => Err(RepoError::TimelineBroken(tenant_id, timeline_id, reason)),
            None => Err(RepoError::TimelineNotFound(tenant_id, timeline_id)),
        }
    }

    fn check_new_timeline(&self, tenant: &Tenant, id: TimelineId) -> Result<PathBuf, RepoError> {
        let dir = self.timeline_dir(tenant.tenant_id, id);
        if tenant.get(id).is_some() || tenant.broken_reason(id).is_some() || dir.exists() {
            return Err(RepoError::AlreadyExists(format!("timeline {id}")));
        }
        Ok(dir)
    }

    /// Create a branch of `ancestor_id` at `lsn` (default: its last record
    /// LSN). O(1): only an index without layers is written.
    pub async fn branch_timeline(
        &self,
        tenant_id: TenantId,
        ancestor_id: TimelineId,
        new_id: Option<TimelineId>,
        lsn: Option<Lsn>,
    ) -> Result<Arc<Timeline>, RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        let ancestor = tenant.get(ancestor_id).ok_or(RepoError::TimelineNotFound(tenant_id, ancestor_id))?;
        let new_id = new_id.unwrap_or_else(TimelineId::generate);
        let dir = self.check_new_timeline(&tenant, new_id)?;
        let ancestor_for_lock = Arc::clone(&ancestor);
        let _gc = ancestor_for_lock.gc_lock.lock().await;
        let lsn = lsn.unwrap_or_else(|| ancestor.last_record_lsn());
        if let Err(PageReconstructError::BelowGcCutoff { lsn, cutoff, timeline_id }) =
            crate::tenant::timeline::check_branch_lsn(&ancestor, lsn)
        {
            return Err(RepoError::BelowGcCutoff { lsn, cutoff, timeline_id });
        }
        let range = ancestor.branchable_range();
        if !range.contains(&lsn) {
            return Err(RepoError::InvalidBranchLsn(format!(
                "{lsn} is outside [{}, {}] of timeline {ancestor_id}",
                range.start,
                range.end - 1
            )));
        }
        let md = TimelineMetadata {
            disk_consistent_lsn: lsn,
            ancestor_timeline: Some(ancestor_id),
            ancestor_lsn: lsn,
            pg_version: ancestor.pg_version,
            system_id: ancestor.system_id,
            initdb_lsn: ancestor.initdb_lsn,
            wal_seg_size: ancestor.wal_seg_size,
        };
        let index = IndexPart::new(tenant.generation(), md, Vec::new());
        let (d, i) = (dir.clone(), index.clone());
        tokio::task::spawn_blocking(move || {
            utils::fs::create_dir_all_durable(&d)?;
            index::save(&d, &i)
        })
        .await
        .map_err(|e| RepoError::Import(e.to_string()))?
        .map_err(io_err(&dir))?;
        info!(%tenant_id, timeline_id = %new_id, %ancestor_id, %lsn, "created branch");
        Ok(self.load_timeline(&tenant, new_id, &index, LayerMap::default(), Some(ancestor)).await)
    }

    /// Create a root timeline by importing a cleanly shut down PostgreSQL
    /// 15 data directory (see [`crate::ingest::import`]).
    pub async fn import_timeline(
        &self,
        tenant_id: TenantId,
        new_id: Option<TimelineId>,
        pgdata: &Path,
    ) -> Result<Arc<Timeline>, RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        let new_id = new_id.unwrap_or_else(TimelineId::generate);
        let dir = self.check_new_timeline(&tenant, new_id)?;
        let pg = pgdata.to_path_buf();
        let control = tokio::task::spawn_blocking(move || crate::ingest::import::read_control_info(&pg))
            .await
            .map_err(|e| RepoError::Import(e.to_string()))?
            .map_err(|e| RepoError::Import(e.to_string()))?;
        utils::fs::create_dir_all_durable(&dir).map_err(io_err(&dir))?;
        let md = TimelineMetadata {
            disk_consistent_lsn: Lsn(0),
            ancestor_timeline: None,
            ancestor_lsn: Lsn(0),
            pg_version: 15,
            system_id: control.system_id,
            initdb_lsn: control.checkpoint_end,
            wal_seg_size: control.wal_seg_size,
        };
        let tl = Arc::new(Timeline::new(
            tenant_id,
            new_id,
            dir.clone(),
            tenant.conf.subscribe(),
            None,
            &IndexPart::new(tenant.generation(), md, Vec::new()),
            LayerMap::default(),
            Arc::clone(&self.walredo),
        ));
        let result = crate::ingest::import::import_datadir(&tl, pgdata, &control).await;
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&dir);
            return Err(RepoError::Import(e.to_string()));
        }
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || index::load(&d)).await {
            Ok(Ok(index)) => self.start_uploads(&tl, &index),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(RepoError::Import(e.to_string())),
        }
        tenant.timelines.lock().unwrap_or_else(|e| e.into_inner()).insert(new_id, Arc::clone(&tl));
        info!(%tenant_id, timeline_id = %new_id, lsn = %tl.last_record_lsn(), "imported timeline");
        Ok(tl)
    }

    /// Delete a timeline without branches: stop its walreceiver, remove its
    /// directory.
    pub async fn delete_timeline(&self, tenant_id: TenantId, timeline_id: TimelineId) -> Result<(), RepoError> {
        let tenant = self.get_tenant(tenant_id)?;
        let tl = tenant.get(timeline_id).ok_or(RepoError::TimelineNotFound(tenant_id, timeline_id))?;
        let children: Vec<TimelineId> = tenant
            .timelines()
            .iter()
            .filter(|t| t.ancestor.as_ref().is_some_and(|a| a.timeline_id == timeline_id))
            .map(|t| t.timeline_id)
            .collect();
        if !children.is_empty() {
            return Err(RepoError::HasChildren(timeline_id, children));
        }
        crate::ingest::walreceiver::remove(&tl).await;
        tl.shutdown();
        tl.remove_metrics();
        if let Some(remote) = tl.remote() {
            remote.delete_everything().await.map_err(|e| RepoError::Remote(e.to_string()))?;
        }
        tenant.timelines.lock().unwrap_or_else(|e| e.into_inner()).remove(&timeline_id);
        if let Some(ancestor) = &tl.ancestor {
            ancestor.remove_branch_point(timeline_id);
        }
        let dir = tl.path.clone();
        tokio::task::spawn_blocking(move || fs::remove_dir_all(&dir))
            .await
            .map_err(|e| RepoError::Import(e.to_string()))?
            .map_err(io_err(&tl.path))?;
        info!(%tenant_id, %timeline_id, "deleted timeline");
        Ok(())
    }

    /// Every timeline of every tenant.
    pub fn all_timelines(&self) -> Vec<Arc<Timeline>> {
        let tenants: Vec<_> = self.tenants.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        tenants.iter().flat_map(|t| t.timelines()).collect()
    }

    /// Stop walreceivers, flush in-memory layers if `flush`, stop redo.
    pub async fn shutdown(&self, flush: bool) {
        self.stop_eviction_task();
        let tenants: Vec<_> = self.tenants.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for tenant in tenants {
            if let Some(task) = tenant.background.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
        for tl in self.all_timelines() {
            crate::ingest::walreceiver::stop(&tl).await;
            if flush {
                if let Err(e) = tl.freeze_and_flush().await {
                    warn!(tenant_id = %tl.tenant_id, timeline_id = %tl.timeline_id, "flush at shutdown: {e}");
                }
            }
            tl.shutdown();
        }
        // A graceful stop uploads what was just flushed; a crash-like one
        // (tests) leaves the queue to the next start's reconcile.
        self.finish_uploads(if flush { SHUTDOWN_UPLOAD_WAIT } else { std::time::Duration::ZERO }).await;
        self.walredo.shutdown().await;
    }
}

/// Write a new tenant's `config.json`, then its `timelines` directory.
/// Blocking.
fn create_tenant_dir(dir: &Path, overrides: &TenantConfOverrides) -> Result<(), RepoError> {
    utils::fs::create_dir_all_durable(dir).map_err(io_err(dir))?;
    tenant_config::save(dir, overrides).map_err(io_err(&dir.join(tenant_config::CONFIG_FILE)))?;
    let timelines = dir.join("timelines");
    utils::fs::create_dir_all_durable(&timelines).map_err(io_err(&timelines))
}

type ScannedTenants = Vec<(TenantId, Vec<TimelineId>)>;
type LoadedTimeline = (TimelineId, IndexPart, LayerMap);

/// The tenants and their timeline directories.
fn scan_tenants(dir: &Path) -> Result<ScannedTenants, RepoError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(tenant_id) = entry.file_name().to_str().and_then(|n| n.parse::<TenantId>().ok()) else {
            continue;
        };
        let tl_dir = entry.path().join("timelines");
        let mut timelines = Vec::new();
        if tl_dir.exists() {
            for tl in fs::read_dir(&tl_dir).map_err(io_err(&tl_dir))? {
                let tl = tl.map_err(io_err(&tl_dir))?;
                if let Some(id) = tl.file_name().to_str().and_then(|n| n.parse::<TimelineId>().ok()) {
                    timelines.push(id);
                }
            }
        }
        timelines.sort();
        out.push((tenant_id, timelines));
    }
    Ok(out)
}

/// Load one timeline directory: from its index, or by migrating a
/// directory from before the index; `None` for an unfinished creation.
/// Every layer the index names must be on local disk. Blocking.
pub fn load_timeline_dir(dir: &Path) -> Result<Option<(IndexPart, LayerMap)>, RepoError> {
    match load_timeline_dir_lazy(dir)? {
        Some(loaded) => match loaded.missing.first() {
            Some(layer) => Err(IndexError::MissingLayer { path: dir.join(index::INDEX_FILE), name: layer.name.clone() }.into()),
            None => Ok(Some((loaded.index, loaded.layers))),
        },
        None => Ok(None),
    }
}

/// A timeline directory as [`load_timeline_dir_lazy`] found it.
pub struct LoadedDir {
    pub index: IndexPart,
    /// Every layer the index names; those whose file is missing are remote.
    pub layers: LayerMap,
    /// The layers whose file is missing (the caller checks that remote
    /// storage holds them).
    pub missing: Vec<IndexLayer>,
}

/// [`load_timeline_dir`], except that layers whose file is missing are
/// registered as remote and listed. Blocking.
pub fn load_timeline_dir_lazy(dir: &Path) -> Result<Option<LoadedDir>, RepoError> {
    if index::exists(dir) {
        let index = index::load(dir)?;
        let missing = index::missing_layer_files(dir, &index)?;
        remove_leftovers(dir, &index)?;
        let layers = layer_map_of(dir, &index, &missing)?;
        return Ok(Some(LoadedDir { index, layers, missing }));
    }
    if dir.join(METADATA_FILE).exists() {
        return migrate(dir).map(|(index, layers)| Some(LoadedDir { index, layers, missing: Vec::new() }));
    }
    warn!(dir = %dir.display(), "timeline directory without index (unfinished creation); skipped");
    Ok(None)
}

/// The layer map of the layers an (already checked) index names; those in
/// `missing` are remote.
fn layer_map_of(dir: &Path, index: &IndexPart, missing: &[IndexLayer]) -> Result<LayerMap, RepoError> {
    let descs = index.layer_descs().map_err(|reason| {
        RepoError::Index(IndexError::Corrupt { path: dir.join(index::INDEX_FILE), reason })
    })?;
    let remote: std::collections::HashSet<&str> = missing.iter().map(|l| l.name.as_str()).collect();
    let mut map = LayerMap::default();
    for (layer, desc) in index.layers.iter().zip(descs) {
        let (path, size) = (dir.join(&layer.name), layer.size_bytes);
        let file = if remote.contains(layer.name.as_str()) {
            LayerFile::new_remote(path, desc, size)
        } else {
            LayerFile::new(path, desc, size)
        };
        map.insert(Arc::new(file));
    }
    Ok(map)
}

/// Delete temporary files and layer files the index does not name.
fn remove_leftovers(dir: &Path, index: &IndexPart) -> Result<(), RepoError> {
    let named: std::collections::HashSet<&str> = index.layers.iter().map(|l| l.name.as_str()).collect();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let leftover = name.ends_with(".tmp")
            || (LayerDesc::parse_file_name(&name).is_some() && !named.contains(name.as_str()));
        if leftover {
            warn!(file = %entry.path().display(), "removing a file the index does not name (crash leftover)");
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
}

/// Turn a directory from before the index (`metadata` + layer files) into
/// an indexed one: scan once, write the index, then remove `metadata`.
fn migrate(dir: &Path) -> Result<(IndexPart, LayerMap), RepoError> {
    let md = load_metadata(dir)?;
    let map = scan_layers(dir, md.disk_consistent_lsn)?;
    let layers = map.historic().map(|l| IndexLayer::new(file_name_of(&l.path), &l.desc, l.size_bytes)).collect();
    let index = IndexPart::new(FIRST_GENERATION, md, layers);
    index::save(dir, &index).map_err(io_err(&dir.join(index::INDEX_FILE)))?;
    let md_path = dir.join(METADATA_FILE);
    fs::remove_file(&md_path).map_err(io_err(&md_path))?;
    utils::fs::fsync_dir(dir).map_err(io_err(dir))?;
    info!(dir = %dir.display(), layers = index.layers.len(), "migrated timeline to an index file");
    Ok((index, map))
}

fn file_name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The layer files of a timeline directory from before the index; removes
/// temporary files and layers above `disk_consistent_lsn`.
fn scan_layers(dir: &Path, disk_consistent_lsn: Lsn) -> Result<LayerMap, RepoError> {
    let mut map = LayerMap::default();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let Some(desc) = LayerDesc::parse_file_name(&name) else { continue };
        if desc.lsn_range.end > disk_consistent_lsn + 1 {
            info!(layer = %name, %disk_consistent_lsn, "removing layer above disk_consistent_lsn");
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let size = entry.metadata().map_err(io_err(&path))?.len();
        map.insert(Arc::new(LayerFile::new(path, desc, size)));
    }
    Ok(map)
}
