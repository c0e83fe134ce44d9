//! Vectored reads: the values of many keys at one LSN in one walk down the
//! layers (issue 16, items 1 and 3). Every single-key read
//! ([`Timeline::get`]) is a vectored read of one key.
//!
//! Owns no state. A read proceeds in rounds: each round looks up, under one
//! short hold of the layer map's lock, the next layer of every key not yet
//! complete, groups the keys by layer, visits the in-memory layers in place
//! and all the layer files of the round in **one** blocking section (one
//! thread hop per round, not per key or layer), where each file is read
//! with [`LayerFile::visit_keys`]: index blocks through the block cache,
//! adjacent values in one `pread`, values decoded in place. A read of
//! pages from image layers takes one round; each delta layer above the
//! image adds one. Keys a timeline has no (more) layers for continue in the
//! ancestor at the branch point. Keys that need WAL redo are then rebuilt,
//! several requests at a time over the redo processes
//! ([`crate::walredo::PostgresRedoManager::request_redo_many`]).
//!
//! A large read may be split ([`Timeline::get_vectored_parallel`]): its
//! keys cut into up to `parallelism` contiguous parts of at least
//! [`MIN_KEYS_PER_PART`] keys, each walked as above, concurrently, so their
//! blocking sections run on several blocking threads at once (the page
//! stream's `--page-service-read-parallelism`). Each key's walk is
//! independent of the others', so the split changes no result.
//!
//! Invariants: the result for each key is what walking its layers one by
//! one gives (newest first, until an image or an initialising record, then
//! redo). A layer file is pinned (and made resident: on-demand download)
//! before the blocking section reads it; the pins are dropped after it.
//! Errors are per key: a layer that cannot be read fails the keys that
//! needed it, the others go on.
//!
//! Cancellation: cancel-safe. Dropping the read drops the pins' owners only
//! once the blocking section (which owns them) has finished on its own
//! thread; nothing else holds state.
use std::sync::Arc;

use bytes::Bytes;
use utils::lsn::Lsn;

use super::batch::duplicate;
use super::{other, PageReconstructError, Result, Timeline};
use crate::storage::file::{KeyVisit, LayerFile, LayerPin};
use crate::storage::inmemory::InMemoryLayer;
use crate::storage::key::Key;
use crate::storage::layer_map::SearchLayer;
use crate::storage::{ReconstructResult, ValueReconstructState};

/// Keys per part of a split read, at least: a part's blocking section
/// must be worth the thread hop.
pub const MIN_KEYS_PER_PART: usize = 16;

/// Where the walk of one key stands.
struct Walk {
    key: Key,
    /// The next layer visited must hold LSNs below this.
    cont_lsn: Lsn,
    state: ValueReconstructState,
    done: bool,
    error: Option<PageReconstructError>,
}

/// The keys (walk index, LSN range to collect) one layer is visited for.
type Visits = Vec<(usize, std::ops::Range<Lsn>)>;

impl Timeline {
    /// [`Timeline::get_vectored`] split into up to `parallelism` parts
    /// read concurrently (see the module documentation); the same results
    /// in the same order.
    pub async fn get_vectored_parallel(&self, keys: &[Key], lsn: Lsn, parallelism: usize) -> Vec<Result<Option<Bytes>>> {
        let parts = parallelism.min(keys.len() / MIN_KEYS_PER_PART).max(1);
        if parts == 1 {
            return self.get_vectored(keys, lsn).await;
        }
        let per_part = keys.len().div_ceil(parts);
        let reads = keys.chunks(per_part).map(|chunk| self.get_vectored(chunk, lsn));
        futures::future::join_all(reads).await.into_iter().flatten().collect()
    }

    /// The values of `keys` at `lsn` (no waiting, no scope check), in the
    /// order of `keys`: `Ok(None)` for a key without a value at `lsn`.
    pub async fn get_vectored(&self, keys: &[Key], lsn: Lsn) -> Vec<Result<Option<Bytes>>> {
        let mut walks: Vec<Walk> = keys
            .iter()
            .map(|&key| Walk { key, cont_lsn: lsn + 1, state: ValueReconstructState::default(), done: false, error: None })
            .collect();
        let mut tl: &Timeline = self;
        loop {
            tl.walk_layers(&mut walks).await;
            let Some(ancestor) = &tl.ancestor else { break };
            if walks.iter().all(|w| w.done) {
                break;
            }
            for w in walks.iter_mut().filter(|w| !w.done) {
                w.cont_lsn = w.cont_lsn.min(tl.ancestor_lsn + 1);
            }
            tl = ancestor;
        }
        self.reconstruct_walks(walks, lsn).await
    }

    /// Walk the keys not done through this timeline's layers, round by
    /// round, until each is complete or below this timeline's oldest layer.
    async fn walk_layers(&self, walks: &mut [Walk]) {
        let mut active: Vec<usize> = (0..walks.len()).filter(|&i| !walks[i].done).collect();
        while !active.is_empty() {
            let (in_memory, files) = self.plan_round(walks, &active);
            let mut next = Vec::with_capacity(active.len());
            for (layer, visits) in in_memory {
                for (i, range) in visits {
                    let w = &mut walks[i];
                    let r = layer.get_value_reconstruct_data(w.key, range.clone(), &mut w.state);
                    if advance(w, r, range.start) {
                        next.push(i);
                    }
                }
            }
            self.visit_files(walks, files, &mut next).await;
            next.sort_unstable();
            active = next;
        }
    }

    /// The next layer of each active key, grouped by layer (under one hold
    /// of the layer map's lock). Keys with no next layer here are left as
    /// they are (not done: the ancestor may have their older versions).
    #[allow(clippy::type_complexity)]
    fn plan_round(
        &self,
        walks: &[Walk],
        active: &[usize],
    ) -> (Vec<(Arc<InMemoryLayer>, Visits)>, Vec<(Arc<LayerFile>, Visits)>) {
        let mut in_memory: Vec<(Arc<InMemoryLayer>, Visits)> = Vec::new();
        let mut files: Vec<(Arc<LayerFile>, Visits)> = Vec::new();
        let map = self.read_layers();
        for &i in active {
            let w = &walks[i];
            let Some(found) = map.search(w.key, w.cont_lsn) else { continue };
            let visit = (i, found.lsn_floor..w.cont_lsn);
            match found.layer {
                SearchLayer::InMemory(layer) => match in_memory.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &layer)) {
                    Some((_, v)) => v.push(visit),
                    None => in_memory.push((layer, vec![visit])),
                },
                SearchLayer::File(layer) => match files.iter_mut().find(|(l, _)| Arc::ptr_eq(l, &layer)) {
                    Some((_, v)) => v.push(visit),
                    None => files.push((layer, vec![visit])),
                },
            }
        }
        (in_memory, files)
    }

    /// Visit the layer files of a round: pin each (downloading it if it is
    /// remote), then read all of them in one blocking section.
    async fn visit_files(&self, walks: &mut [Walk], files: Vec<(Arc<LayerFile>, Visits)>, next: &mut Vec<usize>) {
        if files.is_empty() {
            return;
        }
        let mut work: Vec<(LayerPin, Vec<KeyVisit>)> = Vec::with_capacity(files.len());
        let mut owners: Vec<Vec<usize>> = Vec::with_capacity(files.len());
        for (layer, visits) in files {
            let pin = match self.ensure_resident(&layer).await {
                Ok(pin) => pin,
                Err(e) => {
                    fail(walks, visits.iter().map(|(i, _)| *i), &e);
                    continue;
                }
            };
            owners.push(visits.iter().map(|(i, _)| *i).collect());
            let key_visits = visits
                .into_iter()
                .map(|(i, lsn_range)| KeyVisit {
                    key: walks[i].key,
                    lsn_range,
                    state: std::mem::take(&mut walks[i].state),
                    result: ReconstructResult::Continue,
                })
                .collect();
            work.push((pin, key_visits));
        }
        if work.is_empty() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(pin, mut visits)| {
                    let r = pin.layer().visit_keys(&mut visits);
                    (visits, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                // The states went with the failed task: fail every key of the round.
                let e = other(format!("layer read task: {e}"));
                fail(walks, owners.into_iter().flatten(), &e);
                return;
            }
        };
        for ((visits, r), owner) in done.into_iter().zip(owners) {
            match r {
                Ok(()) => {
                    for (v, i) in visits.into_iter().zip(owner) {
                        walks[i].state = v.state;
                        if advance(&mut walks[i], v.result, v.lsn_range.start) {
                            next.push(i);
                        }
                    }
                }
                Err(e) => fail(walks, owner.into_iter(), &PageReconstructError::LayerFile(e)),
            }
        }
    }

    /// The values of the walks: images as found, WAL redo where records
    /// were collected (pipelined to the redo processes).
    async fn reconstruct_walks(&self, walks: Vec<Walk>, lsn: Lsn) -> Vec<Result<Option<Bytes>>> {
        let mut results: Vec<Option<Result<Option<Bytes>>>> = Vec::with_capacity(walks.len());
        let mut redo = Vec::new();
        for (i, w) in walks.into_iter().enumerate() {
            if let Some(e) = w.error {
                results.push(Some(Err(e)));
            } else if w.state.records.is_empty() {
                results.push(Some(Ok(w.state.img.map(|(_, b)| b))));
            } else {
                results.push(None);
                redo.push((i, w.key, w.state));
            }
        }
        if !redo.is_empty() {
            let (idx, reqs): (Vec<usize>, Vec<(Key, ValueReconstructState)>) =
                redo.into_iter().map(|(i, k, s)| (i, (k, s))).unzip();
            for (i, page) in idx.into_iter().zip(self.reconstruct_many(reqs, lsn).await) {
                results[i] = Some(page.map(Some));
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(other("value not read")))).collect()
    }
}

/// Record a visit's outcome: complete, or continue below `floor` (true:
/// the key goes on to the next round).
fn advance(w: &mut Walk, result: ReconstructResult, floor: Lsn) -> bool {
    match result {
        ReconstructResult::Complete => w.done = true,
        ReconstructResult::Continue => w.cont_lsn = floor,
    }
    !w.done
}

/// Fail the walks `idx` with (a copy of) `e`.
fn fail(walks: &mut [Walk], idx: impl Iterator<Item = usize>, e: &PageReconstructError) {
    for i in idx {
        walks[i].error = Some(duplicate(e));
        walks[i].done = true;
    }
}
