//! PostgreSQL 15 formats, as Strata reads and writes them.
//!
//! * [`xlog_page`]: WAL page headers.
//! * [`waldecoder`]: the streaming decoder that turns WAL bytes into records.
//! * [`record`]: decoding one record into header, block references and data.
//! * [`wal_files`]: reading WAL segment files from a directory.
//! * [`controlfile`]: `pg_control` and the `CheckPoint` struct.
//! * [`walgen`]: writing a checkpoint record into a segment (basebackup).
//! * [`rmgr`], [`pg_constants`], [`relfile`]: ids, names and constants.
//!
//! Only the byte layouts of Debian's PostgreSQL 15 builds (x86-64, little
//! endian, 8 KiB pages) are supported.
pub mod controlfile;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod page_mask;
pub mod pg_constants;
pub mod record;
pub mod relfile;
pub mod rmgr;
pub mod wal_files;
pub mod walgen;
pub mod waldecoder;
pub mod xlog_page;

pub use record::{BlockImage, BlockRef, DecodedRecord, RecordDecodeError, XLogRecordHeader};
pub use relfile::RelFileNode;
pub use waldecoder::{RawRecord, WalDecodeError, WalStreamDecoder};
