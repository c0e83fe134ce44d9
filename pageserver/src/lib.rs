//! Strata's pageserver: ingests a timeline's WAL into layered storage and
//! serves page versions (GetPage@LSN), with O(1) branches.
//!
//! Modules, in data-flow order:
//! * [`walreceiver`]: streams WAL from a safekeeper or a primary.
//! * [`walingest`]: interprets records; [`datadir`] turns PostgreSQL-level
//!   changes into key/value writes; [`key`] and [`value`] define the key
//!   space and what is stored.
//! * [`commit_ts`]: the last commit's time per LSN, LSN for a timestamp.
//! * [`import`]: imports a shut-down data directory as a timeline's start.
//! * [`timeline`]: LSNs, writes, the layer walk of GetPage@LSN, flushing,
//!   image layer creation per key partition and GC; [`layers`]: in-memory,
//!   delta and image layers, the layer map, key partitions, the GC rule.
//! * [`walredo`]: rebuilds page versions (stock PostgreSQL + Rust-applied).
//! * [`repository`]: tenants and timelines on disk, branching.
//! * [`basebackup`]: a data directory for (timeline, LSN) as a tar archive.
//! * [`http`]: the management API; [`page_service`]: the page protocol;
//!   [`metrics`].
pub mod basebackup;
pub mod commit_ts;
pub mod datadir;
pub mod http;
pub mod import;
pub mod key;
pub mod layers;
pub mod metrics;
pub mod page_service;
pub mod repository;
pub mod timeline;
pub mod value;
pub mod walingest;
pub mod walreceiver;
pub mod walredo;
