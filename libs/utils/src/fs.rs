//! Durable file replacement, shared by every component that keeps state in
//! small files (control files, indexes, recorded WAL sources).
//!
//! Invariant: after [`write_atomic`] returns `Ok`, a crash leaves either the
//! old or the new contents under the final name, never a mix; the temporary
//! name (`<name>.tmp`) may be left behind and is the caller's to clean up.
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
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
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
