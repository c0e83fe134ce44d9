//! Strata's pageserver. So far it holds the WAL redo manager ([`walredo`]),
//! which rebuilds page versions from a base image and WAL records, and its
//! metrics ([`metrics`]).
pub mod basebackup;
pub mod metrics;
pub mod walredo;
