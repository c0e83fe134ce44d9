//! Tenants and timelines: [`repository`] (the registry and the on-disk
//! layout, branching), [`timeline`] (LSNs, writes, the layer walk of
//! GetPage@LSN, flush, image creation, compaction and GC passes),
//! [`config`] (per-tenant settings over the pageserver defaults),
//! [`tasks`] (a tenant's background compaction and GC loop),
//! [`commit_ts`] (commit times per LSN, the LSN for a timestamp) and
//! [`attach`] (a tenant's link to remote storage: upload queues, attach
//! from and detach to object storage) and [`eviction`] (the resident-size
//! limit: least recently used layers back to remote-only).
//!
//! Storage formats live in [`crate::storage`]; this module decides *when*
//! layers are written, merged and removed.
pub mod attach;
pub mod commit_ts;
pub mod config;
pub mod eviction;
pub mod repository;
pub(crate) mod tasks;
pub mod timeline;
