//! Durable file replacement and directory creation, shared by every
//! component that keeps state in small files (control files, indexes,
//! recorded WAL sources) or creates tenant and timeline directories.
//!
//! Invariants: after [`write_atomic`] returns `Ok`, a crash leaves either
//! the old or the new contents under the final name, never a mix; when it
//! fails (a full disk, an I/O error) the old contents are untouched and the
//! temporary (`<name>.tmp`) is removed, so it holds no space. After
//! [`create_dir_all_durable`] returns `Ok`, every directory it created
//! survives a crash (each is fsynced into its parent).
//! [`write_atomic_private`] files (secrets) are mode 0600 from their
//! creation on: their contents are never readable by others, not even
//! under the temporary name.
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// fsync a directory so a rename or file creation in it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `contents`: write `<path>.tmp`, fsync it, rename it
/// over `path`, fsync the directory. Blocking.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, contents, None)
}

/// [`write_atomic`] for a file only its owner may read or write (mode 0600).
pub fn write_atomic_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, contents, Some(0o600))
}

fn write_atomic_mode(path: &Path, contents: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().ok_or_else(|| std::io::Error::other("write_atomic: path has no file name"))?.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&tmp)?;
        if let Some(mode) = mode {
            // A temporary left behind by a crash keeps its old mode otherwise.
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// `create_dir_all`, with every directory it creates fsynced into its
/// parent, so a crash cannot lose a directory that files were then made
/// durable in. Blocking.
pub fn create_dir_all_durable(path: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = path;
    while !cur.exists() {
        missing.push(cur);
        match cur.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => cur = parent,
            _ => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let parent = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fsync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_contents_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_failed_replace_keeps_the_old_contents_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        // The rename fails: a directory is in the way of the temporary name.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let blocked = dir.path().join("sub");
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_atomic(&blocked, b"two").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert!(!dir.path().join("sub.tmp").exists());
    }

    #[test]
    fn creates_every_missing_level() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(create_dir_all_durable(&file.join("x")).is_err(), "a file in the way is an error");
    }

    #[test]
    fn private_files_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(dir.path().join("secret.tmp"), b"left by a crash").unwrap();
        write_atomic_private(&path, b"s3cret").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"s3cret");
    }
}
