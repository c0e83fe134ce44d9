//! Strata's pageserver: ingests a timeline's WAL into layered storage and
//! serves page versions (GetPage@LSN), with O(1) branches.
//!
//! Folders, in data-flow order:
//! * [`ingest`]: WAL from a safekeeper (walreceiver) → records interpreted
//!   (walingest) → key/value writes (datadir); import of a data directory.
//! * [`tenant`]: the repository of tenants and timelines; a timeline's
//!   LSNs, writes, layer walk, flush, compaction and GC passes.
//! * [`storage`]: the formats and rules underneath — key space, values,
//!   in-memory and file layers, the layer map, the index file, key
//!   partitions, the compaction merge and the GC rule.
//! * [`remote`]: object storage — the upload queue, generations, attach
//!   and layer downloads.
//! * [`walredo`]: rebuilds page versions (stock PostgreSQL + Rust-applied).
//! * [`read`]: basebackup and the page service.
//! * [`http`]: the management API; [`metrics`].
//!
//! Dependencies point down this list's data flow: `ingest` and `read` use
//! `tenant`; `tenant` uses `storage` and `walredo`; `storage` uses only
//! `walredo`'s record types. The one place `tenant` reaches ingest is the
//! walreceiver registry it owns ([`ingest::walreceiver::WalReceivers`]).
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod ingest;
pub mod malloc;
pub mod metrics;
pub mod read;
pub mod remote;
pub mod storage;
pub mod tenant;
pub mod walredo;
