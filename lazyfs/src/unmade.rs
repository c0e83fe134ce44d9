//! Relation files the compute sees but the backing directory does not hold
//! yet. A sizes-only basebackup carries no relation files, only the
//! manifest's list of them: creating the ~1000 files of even an empty
//! cluster costs ~0.3 ms each on this machine's disks, a third of a lazy
//! start, and most of them are never opened.
//!
//! A listed file is *made* — created in the backing directory, sparse at
//! its size, mode 0600 — the first time anything names it: a lookup, a
//! getattr, an open, a create, a rename or unlink, or the prefetcher.
//! Invariants:
//!
//! * a file is made at most once: the entry leaves the list under the lock
//!   in the same step that creates the file, so a file the compute then
//!   unlinks or renames never comes back;
//! * a made file is, to the overlay, exactly what an unpacked empty file
//!   sized to its blocks was before: all its blocks are remote;
//! * a failure to make a file (a full disk) leaves it listed and is
//!   returned as the I/O error; nothing is half made (a created file whose
//!   sizing failed is removed again).
//!
//! Blocking: makes files under a mutex; called from FUSE worker threads and
//! the prefetcher, never from async code.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The listed files not made yet, by directory (relative to the backing root).
pub struct Unmade {
    root: PathBuf,
    by_dir: Mutex<HashMap<PathBuf, BTreeMap<OsString, u64>>>,
}

impl Unmade {
    /// `files`: (path relative to `root`, size in bytes).
    pub fn new(root: PathBuf, files: impl IntoIterator<Item = (PathBuf, u64)>) -> Unmade {
        let mut by_dir: HashMap<PathBuf, BTreeMap<OsString, u64>> = HashMap::new();
        for (path, size) in files {
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                by_dir.entry(dir.to_path_buf()).or_default().insert(name.to_os_string(), size);
            }
        }
        Unmade { root, by_dir: Mutex::new(by_dir) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, BTreeMap<OsString, u64>>> {
        self.by_dir.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many listed files are not made yet.
    pub fn len(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make `rel` in the backing directory if it is listed and not made
    /// yet; returns whether it made it now.
    pub fn make(&self, rel: &Path) -> io::Result<bool> {
        let (Some(dir), Some(name)) = (rel.parent(), rel.file_name()) else { return Ok(false) };
        let mut by_dir = self.lock();
        let Some(names) = by_dir.get_mut(dir) else { return Ok(false) };
        let Some(&size) = names.get(name) else { return Ok(false) };
        make_file(&self.root.join(rel), size)?;
        names.remove(name);
        if names.is_empty() {
            by_dir.remove(dir);
        }
        Ok(true)
    }

    /// Make every listed file at or under `rel` (a directory about to be
    /// renamed, whose entries would otherwise stay behind at the old path).
    pub fn make_under(&self, rel: &Path) -> io::Result<()> {
        let mut by_dir = self.lock();
        let dirs: Vec<PathBuf> = by_dir.keys().filter(|d| d.starts_with(rel)).cloned().collect();
        for dir in dirs {
            let Some(names) = by_dir.get_mut(&dir) else { continue };
            while let Some((name, &size)) = names.iter().next() {
                let name = name.clone();
                make_file(&self.root.join(&dir).join(&name), size)?;
                names.remove(&name);
            }
            by_dir.remove(&dir);
        }
        Ok(())
    }

    /// Names of the unmade files directly in directory `rel`.
    pub fn names_in(&self, rel: &Path) -> Vec<OsString> {
        self.lock().get(rel).map(|names| names.keys().cloned().collect()).unwrap_or_default()
    }

    /// Whether directory `rel` still has unmade files (it is not empty).
    pub fn any_in(&self, rel: &Path) -> bool {
        self.lock().get(rel).is_some_and(|names| !names.is_empty())
    }
}

/// Create `path` (which must not exist), sparse at `size` bytes.
fn make_file(path: &Path, size: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    if let Err(e) = file.set_len(size) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_made_once_at_their_size_and_listed_until_then() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        let unmade = Unmade::new(dir.path().into(), [("base/5/1259".into(), 3 * 8192), ("base/5/16384".into(), 0), ("global/1262".into(), 8192)]);
        assert_eq!(unmade.len(), 3);
        assert_eq!(unmade.names_in(Path::new("base/5")), ["1259", "16384"]);
        assert!(unmade.any_in(Path::new("base/5")));

        assert!(unmade.make(Path::new("base/5/1259")).unwrap());
        let md = std::fs::metadata(dir.path().join("base/5/1259")).unwrap();
        assert_eq!(md.len(), 3 * 8192);
        assert_eq!(unmade.names_in(Path::new("base/5")), ["16384"]);
        // The compute unlinks it: it never comes back.
        std::fs::remove_file(dir.path().join("base/5/1259")).unwrap();
        assert!(!unmade.make(Path::new("base/5/1259")).unwrap());
        assert!(!dir.path().join("base/5/1259").exists());
        // Names not listed are left alone.
        unmade.make(Path::new("base/5/99999")).unwrap();
        assert!(!dir.path().join("base/5/99999").exists());
    }

    #[test]
    fn a_failed_make_keeps_the_file_listed() {
        let dir = tempfile::tempdir().unwrap();
        let unmade = Unmade::new(dir.path().into(), [("global/1262".into(), 8192)]);
        // Its directory is missing: the create fails with ENOENT.
        let err = unmade.make(Path::new("global/1262")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(unmade.len(), 1);
        std::fs::create_dir(dir.path().join("global")).unwrap();
        unmade.make(Path::new("global/1262")).unwrap();
        assert!(unmade.is_empty());
        assert_eq!(std::fs::metadata(dir.path().join("global/1262")).unwrap().len(), 8192);
    }

    #[test]
    fn make_under_makes_a_whole_subtree() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["base/5", "base/6", "global"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let unmade = Unmade::new(dir.path().into(), [("base/5/1".into(), 0), ("base/6/2".into(), 8192), ("global/3".into(), 0)]);
        unmade.make_under(Path::new("base")).unwrap();
        assert!(dir.path().join("base/5/1").exists() && dir.path().join("base/6/2").exists());
        assert_eq!(unmade.names_in(Path::new("global")), ["3"]);
        assert!(!unmade.any_in(Path::new("base/5")));
    }
}
