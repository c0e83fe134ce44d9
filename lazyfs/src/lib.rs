//! lazyfs: the filesystem process of one lazy compute. It mounts the
//! endpoint's data directory with FUSE; everything that is not a relation
//! file was unpacked locally from a sizes-only basebackup, and relation
//! files (listed in its manifest, created locally only when first used)
//! show their exact sizes at the start LSN while their blocks are fetched
//! from the pageserver (GetPage@start_lsn) on first read.
//!
//! Modules: [`manifest`] (which files are remote), [`unmade`] (listed
//! files not created in the backing directory yet), [`blockmap`] (which
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
pub mod unmade;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::blockmap::{RemoteBlocks, BLOCK_BYTES};

/// What the manifest of an unpacked sizes-only basebackup says.
pub struct Prepared {
    /// Every relation file's remote blocks, by path relative to the backing root.
    pub remote: Vec<(PathBuf, RemoteBlocks)>,
    /// The listed files not in the backing directory (path, size in bytes):
    /// made on first use ([`unmade`]).
    pub unmade: Vec<(PathBuf, u64)>,
}

/// Read and remove the manifest of the unpacked basebackup in `backing`
/// and return the remote maps. A listed file the archive did hold (an
/// empty file, from an older pageserver) is sized to its blocks (sparse)
/// here; the others are left to [`unmade::Unmade`].
pub fn prepare_backing(backing: &Path) -> anyhow::Result<Prepared> {
    let manifest_path = backing.join(manifest::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("read {} (was the basebackup taken with relations=sizes?)", manifest_path.display()))?;
    let entries = manifest::parse(&text).with_context(|| format!("parse {}", manifest_path.display()))?;
    let mut prepared = Prepared { remote: Vec::with_capacity(entries.len()), unmade: Vec::with_capacity(entries.len()) };
    for e in entries {
        let path = backing.join(&e.path);
        let size_bytes = e.blocks as u64 * BLOCK_BYTES;
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => file.set_len(size_bytes).with_context(|| format!("size {}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => prepared.unmade.push((e.path.clone(), size_bytes)),
            Err(err) => return Err(err).with_context(|| format!("open {}", path.display())),
        }
        prepared.remote.push((e.path, RemoteBlocks::new(e.tag, e.first_block, e.blocks)));
    }
    std::fs::remove_file(&manifest_path).with_context(|| format!("remove {}", manifest_path.display()))?;
    Ok(prepared)
}
