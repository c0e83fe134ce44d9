//! A tar archive unpacked straight from an HTTP body as it arrives (the
//! basebackup of a compute start): no copy of the archive in memory or on
//! disk, with progress lines on stderr for large ones.
//!
//! Owns the hand-off between the async body reader and a blocking unpacker
//! thread: a bounded channel of at most [`CHUNKS_IN_FLIGHT`] body chunks, so
//! memory stays a few chunks whatever the archive's size. Invariants: the
//! destination directory is replaced (removed, then created) before the
//! first entry is written; a body that breaks off is an error even if the
//! archive read so far happens to end on an entry boundary (the body's
//! error wins over the unpacker's); an archive the unpacker rejects stops
//! the download.
//!
//! Cancellation: dropping [`unpack_from`] drops the channel's sender, the
//! unpacker sees the end of its input and finishes or fails on its own
//! thread; the destination may be left partly written (the next start
//! replaces it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Body chunks buffered between the download and the unpacker.
const CHUNKS_IN_FLIGHT: usize = 32;
/// A progress line at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(3);

/// The unpacker's input: chunks from the channel, end of input when the
/// sender is gone.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn unpack_blocking(rx: mpsc::Receiver<Bytes>, dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("remove old {}", dest.display()))?;
    }
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, ChannelReader { rx, current: Bytes::new() });
    tar::Archive::new(reader).unpack(dest).with_context(|| format!("unpack into {}", dest.display()))
}

/// What [`unpack_from`] moved.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Transfer {
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// Unpack the tar body of `resp` (a successful response to `what`, for
/// messages) into `dest` (replaced) while it arrives; prints a progress
/// line labelled `label` to stderr every [`PROGRESS_INTERVAL`].
pub async fn unpack_from(mut resp: reqwest::Response, what: &str, dest: &Path, label: &str) -> anyhow::Result<Transfer> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let target: PathBuf = dest.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || unpack_blocking(rx, &target));
    let received = async {
        let (mut bytes, mut next_report) = (0u64, started + PROGRESS_INTERVAL);
        while let Some(chunk) = resp.chunk().await.with_context(|| format!("{what}: reading the body"))? {
            bytes += chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                // The unpacker stopped: its error says why.
                break;
            }
            if Instant::now() >= next_report {
                let so_far = Transfer { bytes, elapsed: started.elapsed() };
                eprintln!("strata: {label}: {} so far, {:.1} MiB/s", crate::ops::human_bytes(bytes), so_far.mib_per_s());
                next_report += PROGRESS_INTERVAL;
            }
        }
        drop(tx);
        anyhow::Ok(bytes)
    }
    .await;
    let unpacked = unpacker.await.context("the unpacker thread")?;
    let bytes = received?;
    unpacked?;
    Ok(Transfer { bytes, elapsed: started.elapsed() })
}
