//! A small disk for disk-full tests: a tmpfs of a given size mounted over a
//! component's directory (root only), which a test fills to the last byte
//! and frees again.
//!
//! Invariant: the mount goes with the value (a lazy unmount in `Drop`, also
//! while a failing test unwinds), so no test leaves a mount behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `size_mib` over `dir` (created if missing), holding
    /// what `dir` held; mode 0755 so the Postgres user can pass through.
    pub fn mount_over(dir: &Path, size_mib: u64) -> anyhow::Result<SmallDisk> {
        std::fs::create_dir_all(dir)?;
        let saved = tempfile::tempdir()?;
        run(Command::new("cp").arg("-a").arg(format!("{}/.", dir.display())).arg(saved.path()))?;
        let opts = format!("size={size_mib}m,mode=0755");
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(dir))?;
        let disk = SmallDisk { dir: dir.to_path_buf() };
        run(Command::new("cp").arg("-a").arg(format!("{}/.", saved.path().display())).arg(dir))?;
        Ok(disk)
    }

    /// Fill every free byte with a file; returns its path.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("filler");
        let out = Command::new("dd").args(["if=/dev/zero", "bs=1M"]).arg(format!("of={}", path.display())).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("No space left") {
            bail!("dd did not fill {}: {err}", self.dir.display());
        }
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
