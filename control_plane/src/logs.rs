//! `strata logs`: where each component's and endpoint's log is, its last
//! lines, and following it as it grows.
//!
//! Components log to `<repo>/<component>/log`; an endpoint's postmaster logs
//! beside its data directory (see [`crate::endpoint`]). Following polls the
//! file; it ends when the reader stops it (Ctrl-C) and survives the file
//! being truncated or replaced by a restart.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::Cluster;
use crate::endpoint::Endpoint;

/// The log file of component or endpoint `name`.
pub fn log_file(cluster: &Cluster, name: &str) -> anyhow::Result<PathBuf> {
    let components = cluster.components()?;
    if let Some(c) = components.iter().find(|c| c.name == name) {
        return Ok(crate::background::log_path(&c.dir));
    }
    if let Some(ep) = Endpoint::load(&cluster.repo, name)? {
        return Ok(ep.log_path());
    }
    let mut names: Vec<String> = components.into_iter().map(|c| c.name).collect();
    names.extend(Endpoint::list(&cluster.repo)?.into_iter().map(|e| format!("{} (endpoint)", e.name)));
    bail!("no component or endpoint named {name:?}; known: {}", names.join(", "))
}

/// The last `n` lines of `path`.
pub fn tail(path: &Path, n: usize) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// Print what is appended to `path` from its current end, for ever.
pub fn follow(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let mut pos = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // truncated or replaced
        }
        if len > pos {
            let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            file.seek(SeekFrom::Start(pos))?;
            buf.clear();
            file.take(len - pos).read_to_end(&mut buf)?;
            out.write_all(&buf)?;
            out.flush()?;
            pos = len;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
