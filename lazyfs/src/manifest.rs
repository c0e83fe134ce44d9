//! The manifest of a sizes-only basebackup (`strata_lazy_manifest`, written
//! by the pageserver's `basebackup?relations=sizes`): which relation segment
//! files of the data directory were written empty, where their blocks come
//! from and how many there are at the start LSN.
//!
//! Invariants: every entry names a relative path inside the data directory
//! (no `..`, not absolute) and a size that fits a 1 GiB segment; a line that
//! is not exactly that is an error naming its line number.

use std::path::{Component, PathBuf};

use pageclient::RelTag;

/// Blocks per relation segment file (`RELSEG_SIZE`).
pub const RELSEG_BLOCKS: u32 = 131072;
/// File name of the manifest at the root of the unpacked basebackup.
pub const MANIFEST_FILE: &str = "strata_lazy_manifest";

/// One relation segment file whose blocks are remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data directory.
    pub path: PathBuf,
    pub tag: RelTag,
    /// Fork block number of the file's block 0.
    pub first_block: u32,
    /// Blocks of the file at the start LSN.
    pub blocks: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("manifest line {line}: {reason}")]
pub struct ManifestError {
    pub line: usize,
    pub reason: String,
}

pub fn parse(text: &str) -> Result<Vec<Entry>, ManifestError> {
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| parse_line(l).map_err(|reason| ManifestError { line: i + 1, reason })).collect()
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let [path, spc, db, rel, fork, first, blocks] = fields[..] else {
        return Err(format!("expected 7 fields, got {}: {line:?}", fields.len()));
    };
    let num = |name: &str, v: &str| v.parse::<u32>().map_err(|e| format!("{name} {v:?}: {e}"));
    let fork = u8::try_from(num("fork", fork)?).map_err(|_| format!("fork {fork} out of range"))?;
    let tag = RelTag { spc: num("spcnode", spc)?, db: num("dbnode", db)?, rel: num("relnode", rel)?, fork };
    let (first_block, blocks) = (num("first block", first)?, num("blocks", blocks)?);
    if blocks > RELSEG_BLOCKS || first_block % RELSEG_BLOCKS != 0 {
        return Err(format!("segment at block {first_block} with {blocks} blocks is not a 1 GiB segment"));
    }
    let path = PathBuf::from(path);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("path {path:?} is not a plain relative path"));
    }
    Ok(Entry { path, tag, first_block, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let text = "base/5/16384 1663 5 16384 0 0 12\nbase/5/16384.1 1663 5 16384 0 131072 7\nglobal/1262_vm 1664 0 1262 2 0 1\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].first_block, 131072);
        assert_eq!(entries[2].tag, RelTag { spc: 1664, db: 0, rel: 1262, fork: 2 });
        assert_eq!(entries[0].path, PathBuf::from("base/5/16384"));
    }

    #[test]
    fn rejects_bad_lines_by_number() {
        let err = parse("base/5/1 1663 5 1 0 0 1\nbase/5/2 1663 5 x 0 0 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.contains("relnode"), "{err}");
        assert!(parse("../etc/passwd 1663 5 1 0 0 1").is_err());
        assert!(parse("/abs 1663 5 1 0 0 1").is_err());
        assert!(parse("base/5/1 1663 5 1 0 0 131073").is_err());
        assert!(parse("base/5/1 1663 5 1 0 5 1").is_err());
        assert!(parse("base/5/1 1663 5 1 0").is_err());
    }
}
