//! Ingest: how WAL and data directories become key/value writes on a
//! timeline. Data flows one way: [`walreceiver`] streams WAL from a
//! safekeeper (or a primary) → [`walingest`] interprets each record →
//! [`datadir`] turns PostgreSQL-level changes into writes on the timeline
//! ([`crate::tenant::timeline`]). [`import`] does the same for a shut-down
//! data directory, as the first state of a root timeline.
//!
//! Nothing in `tenant` depends on this module: the tenant layer starts and
//! stops ingestion through [`walreceiver::WalReceivers`], which it owns.
pub mod datadir;
pub mod import;
pub mod walingest;
pub mod walreceiver;
