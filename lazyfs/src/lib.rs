//! lazyfs: the filesystem process of one lazy compute. It mounts the
//! endpoint's data directory with FUSE; everything that is not a relation
//! file was unpacked locally from a sizes-only basebackup, and relation
//! files show their exact sizes at the start LSN while their blocks are
//! fetched from the pageserver (GetPage@start_lsn) on first read.
//!
//! Modules: [`manifest`] (which files are remote), [`blockmap`] (which
//! blocks of a file are still remote), [`overlay`] (block semantics:
//! fetch-on-read, copy-on-write, truncation), [`fs`] (the FUSE layer),
//! [`fetch`] (the page-stream client), [`prefetch`] (the background warm-up), [`metrics`].
//!
//! Correctness rests on one fact: the compute starts from a shutdown
//! checkpoint at the start LSN, so any block it has not written equals
//! GetPage@start_lsn. Which blocks were fetched never changes what it reads.
pub mod blockmap;
pub mod fetch;
pub mod fs;
pub mod manifest;
pub mod metrics;
pub mod overlay;
pub mod prefetch;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::blockmap::{RemoteBlocks, BLOCK_BYTES};

/// Read and remove the manifest of the unpacked basebackup in `backing`,
/// size each listed file to its blocks (sparse), and return the remote maps.
pub fn prepare_backing(backing: &Path) -> anyhow::Result<Vec<(PathBuf, RemoteBlocks)>> {
    let manifest_path = backing.join(manifest::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("read {} (was the basebackup taken with relations=sizes?)", manifest_path.display()))?;
    let entries = manifest::parse(&text).with_context(|| format!("parse {}", manifest_path.display()))?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let path = backing.join(&e.path);
        let file = std::fs::OpenOptions::new().write(true).open(&path).with_context(|| format!("open {}", path.display()))?;
        file.set_len(e.blocks as u64 * BLOCK_BYTES).with_context(|| format!("size {}", path.display()))?;
        out.push((e.path, RemoteBlocks::new(e.tag, e.first_block, e.blocks)));
    }
    std::fs::remove_file(&manifest_path).with_context(|| format!("remove {}", manifest_path.display()))?;
    Ok(out)
}
