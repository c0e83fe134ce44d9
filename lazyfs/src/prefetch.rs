//! The background prefetcher: after the mount, it makes every remote block
//! of the relation files local, so the endpoint becomes wholly local and
//! later reads never wait for the pageserver.
//!
//! Owns one thread and its own page-stream
//! connection (so its batches never queue in front of a foreground fetch
//! on the shared one). Order: catalogs first (files under `global/` and
//! relations below PostgreSQL's first user OID), then the others, smallest
//! first, each in batches of [`BATCH_BLOCKS`] pending blocks.
//!
//! Invariants: it goes through [`Overlay::prefetch`], the same
//! fetch-then-write-if-still-pending path as reads, so a block the compute
//! wrote or truncated away meanwhile is never overwritten; foreground
//! reads win for user relations: before each of their batches it waits
//! while a foreground fetch is in flight or ended less than [`QUIET_MS`] ago
//! ([`Overlay::foreground_busy`]), so a burst of reads (a scan) runs alone.
//! Catalogs are warmed at once, at normal priority and without yielding:
//! they are small, and the compute's start and first connections read them
//! (the relation cache is built from them), so fetching them in batches on
//! the second connection while PostgreSQL starts saves those connections
//! one round trip per catalog block. The thread drops to the lowest CPU
//! priority after the catalogs. A failed batch is retried after a
//! pause, up to [`MAX_FAILURES`] in a row, then the prefetcher gives up
//! (reads still fetch on demand). A file is opened when its turn comes,
//! by its node's current path ([`Opener`], which makes an unmade file
//! first), and held open while it is warmed, so a rename meanwhile does
//! not lose it; one the compute unlinked before its turn is skipped.
//!
//! Cancellation: the thread ends when every file is local or when the stop
//! flag is set (checked between batches); dropping the handle does not wait.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::overlay::{FileState, Overlay};

/// Pending blocks fetched per batch (1 MiB).
pub const BATCH_BLOCKS: u32 = 128;
/// The prefetcher waits until foreground fetches have been quiet this long.
pub const QUIET_MS: u64 = 100;
/// Consecutive failed batches before the prefetcher gives up.
pub const MAX_FAILURES: u32 = 10;
/// Relations below this OID are PostgreSQL's catalogs (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// One file to warm.
pub struct Target {
    pub path: PathBuf,
    pub state: Arc<FileState>,
    pub catalog: bool,
}

/// Opens a target's backing file when its turn comes (`None`: the compute
/// unlinked it). [`crate::fs::Opener::open`] in lazyfs.
pub type Open = dyn Fn(&Arc<FileState>) -> io::Result<Option<File>> + Send + Sync;

impl Target {
    /// Whether `rel_node` (of a file at `path`) is a catalog.
    pub fn is_catalog(path: &std::path::Path, rel_node: u32) -> bool {
        path.starts_with("global") || rel_node < FIRST_NORMAL_OID
    }
}

/// Catalogs first, then smallest first.
pub fn order(targets: &mut [Target]) {
    targets.sort_by_key(|t| (!t.catalog, t.state.pending_count(), t.path.clone()));
}

/// Run the prefetcher on its own thread; `overlay` is made there (its
/// connection is opened after the mount, off the start's path).
pub fn spawn(
    overlay: impl FnOnce() -> anyhow::Result<Overlay> + Send + 'static,
    mut targets: Vec<Target>,
    open: Box<Open>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let span = tracing::Span::current();
    std::thread::Builder::new().name("lazyfs-prefetch".into()).spawn(move || {
        let _enter = span.enter();
        let overlay = match overlay() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("prefetch: not started, blocks are fetched on demand only: {e:#}");
                return;
            }
        };
        order(&mut targets);
        run(&overlay, &targets, &*open, &stop);
    })
}

/// This thread at nice 19: the compute's own work (and the FUSE threads)
/// come first.
fn lowest_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc != 0 {
        tracing::debug!("setpriority: {}", std::io::Error::last_os_error());
    }
}

/// Consecutive failures (opens and batches); a batch that works resets them.
struct Failures(u32);

impl Failures {
    /// Count a failure of `what` on `path`; true when the prefetcher must
    /// give up (reads still fetch on demand).
    fn give_up(&mut self, path: &std::path::Path, what: &str, e: &dyn std::fmt::Display, done: u64) -> bool {
        self.0 += 1;
        tracing::warn!(path = %path.display(), failures = self.0, "prefetch: {what}: {e}");
        let give_up = self.0 >= MAX_FAILURES;
        if give_up {
            tracing::error!(done, "prefetch: giving up; blocks are still fetched on demand");
        }
        give_up
    }
}

/// Warm every target in order; returns the blocks made local.
pub fn run(overlay: &Overlay, targets: &[Target], open: &Open, stop: &AtomicBool) -> u64 {
    let total: u64 = targets.iter().map(|t| t.state.pending_count() as u64).sum();
    tracing::info!(files = targets.len(), blocks = total, "prefetch: starting");
    let (mut done, mut failures) = (0u64, Failures(0));
    let mut niced = false;
    for t in targets {
        if !t.catalog && !niced {
            tracing::info!(done, "prefetch: catalogs are local");
            lowest_priority();
            niced = true;
        }
        if t.state.first_pending().is_none() || stop.load(Ordering::Relaxed) {
            continue;
        }
        let file = match open(&t.state) {
            Ok(Some(file)) => file,
            Ok(None) => continue,
            Err(e) if failures.give_up(&t.path, "cannot open the file", &e, done) => return done,
            Err(_) => continue,
        };
        while !stop.load(Ordering::Relaxed) {
            while !t.catalog && overlay.foreground_busy(QUIET_MS) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.state.first_pending().is_none() {
                break;
            }
            match overlay.prefetch(&t.state, &file, BATCH_BLOCKS) {
                Ok(n) => {
                    done += n as u64;
                    failures.0 = 0;
                }
                Err(e) if failures.give_up(&t.path, "batch failed", &e, done) => return done,
                Err(_) => std::thread::sleep(Duration::from_millis(200 * failures.0 as u64)),
            }
        }
    }
    tracing::info!(done, "prefetch: every relation block is local");
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockmap::{RemoteBlocks, BLOCK_BYTES};
    use crate::metrics::Metrics;
    use crate::overlay::BlockSource;
    use bytes::Bytes;
    use pageclient::RelTag;
    use std::os::unix::fs::FileExt;
    use std::sync::Mutex;

    /// Block n of relation r is 8 KiB of byte (r + n) % 251 + 1; logs the order of fetches.
    #[derive(Default)]
    struct Fake {
        fetched: Mutex<Vec<(u32, u32)>>,
    }

    fn page_of(rel: u32, blkno: u32) -> Vec<u8> {
        vec![((rel + blkno) % 251 + 1) as u8; BLOCK_BYTES as usize]
    }

    impl BlockSource for Fake {
        fn fetch(&self, rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, String> {
            self.fetched.lock().unwrap().extend(blknos.iter().map(|&b| (rel.rel, b)));
            Ok(blknos.iter().map(|&b| Bytes::from(page_of(rel.rel, b))).collect())
        }
    }

    /// A target and its backing file.
    fn target(dir: &std::path::Path, path: &str, rel: u32, blocks: u32, metrics: &Metrics) -> (Target, File) {
        let full = dir.join(path.replace('/', "_"));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&full).unwrap();
        file.set_len(blocks as u64 * BLOCK_BYTES).unwrap();
        let tag = RelTag { spc: 1663, db: 5, rel, fork: 0 };
        let state = FileState::new(Some(RemoteBlocks::new(tag, 0, blocks)), metrics.clone());
        (Target { catalog: Target::is_catalog(std::path::Path::new(path), rel), path: path.into(), state }, file)
    }

    /// Opens the files of `made` by state; the others are "unlinked".
    fn opener(made: Vec<(Arc<FileState>, File)>) -> impl Fn(&Arc<FileState>) -> io::Result<Option<File>> {
        move |state| made.iter().find(|(s, _)| Arc::ptr_eq(s, state)).map(|(_, f)| f.try_clone()).transpose()
    }

    #[test]
    fn every_block_becomes_local_catalogs_first_and_writes_win() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let fake = Arc::new(Fake::default());
        let foreground = Overlay::new(fake.clone(), metrics.clone(), 0);
        let overlay = foreground.for_prefetch(fake.clone());
        let (mut targets, files): (Vec<Target>, Vec<File>) = [
            target(dir.path(), "base/5/16400", 16400, 300, &metrics),
            target(dir.path(), "base/5/16390", 16390, 5, &metrics),
            target(dir.path(), "base/5/1259", 1259, 10, &metrics),
        ]
        .into_iter()
        .unzip();
        // The compute wrote block 7 of the big table before the prefetcher got there.
        let mine = vec![0xEEu8; BLOCK_BYTES as usize];
        foreground.write(&targets[0].state, &files[0], 7 * BLOCK_BYTES, &mine).unwrap();
        let big = files[0].try_clone().unwrap();
        let open = opener(targets.iter().map(|t| t.state.clone()).zip(files).collect());
        order(&mut targets);
        assert_eq!(targets.iter().map(|t| t.path.to_str().unwrap()).collect::<Vec<_>>(), ["base/5/1259", "base/5/16390", "base/5/16400"]);
        assert_eq!(metrics.pending_blocks.get(), 314);

        let done = run(&overlay, &targets, &open, &AtomicBool::new(false));
        assert_eq!(done, 314);
        assert_eq!(metrics.pending_blocks.get(), 0);
        assert_eq!(metrics.blocks_prefetched.get(), 314);
        let fetched = fake.fetched.lock().unwrap().clone();
        assert_eq!(fetched.len(), 314, "block 7 was written, not fetched");
        assert_eq!(fetched[0], (1259, 0), "the catalog first");
        assert!(targets.iter().all(|t| t.state.first_pending().is_none()), "every block is local");
        let mut buf = vec![0u8; BLOCK_BYTES as usize];
        big.read_exact_at(&mut buf, 7 * BLOCK_BYTES).unwrap();
        assert_eq!(buf, mine, "the compute's write was kept");
        big.read_exact_at(&mut buf, 299 * BLOCK_BYTES).unwrap();
        assert_eq!(buf, page_of(16400, 299));
    }

    /// A scratch directory, metrics, the fake source and an overlay on it.
    fn setup() -> (tempfile::TempDir, Metrics, Arc<Fake>, Overlay) {
        let metrics = Metrics::new();
        let fake = Arc::new(Fake::default());
        let overlay = Overlay::new(fake.clone(), metrics.clone(), 0);
        (tempfile::tempdir().unwrap(), metrics, fake, overlay)
    }

    #[test]
    fn a_file_unlinked_before_its_turn_is_skipped() {
        let (dir, metrics, fake, overlay) = setup();
        let (gone, _) = target(dir.path(), "base/5/16400", 16400, 10, &metrics);
        let (kept, file) = target(dir.path(), "base/5/16401", 16401, 3, &metrics);
        let open = opener(vec![(kept.state.clone(), file)]);
        assert_eq!(run(&overlay, &[gone, kept], &open, &AtomicBool::new(false)), 3);
        assert!(fake.fetched.lock().unwrap().iter().all(|&(rel, _)| rel == 16401), "nothing fetched for the unlinked file");
    }

    #[test]
    fn a_set_stop_flag_stops_before_the_first_batch() {
        let (dir, metrics, _fake, overlay) = setup();
        let (t, file) = target(dir.path(), "base/5/16400", 16400, 10, &metrics);
        let open = opener(vec![(t.state.clone(), file)]);
        assert_eq!(run(&overlay, &[t], &open, &AtomicBool::new(true)), 0);
        assert_eq!(metrics.pending_blocks.get(), 10);
    }
}
