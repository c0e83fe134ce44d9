//! Residence of a layer file: *resident* (its complete file is on local
//! disk under its name) or *remote* (only in remote storage: seed 001's
//! RemoteLayer), the pins of the reads that use it, and the last-use
//! clock that eviction orders by.
//!
//! Owns: the per-layer state. Downloading is the timeline's business
//! (`crate::tenant::timeline::ondemand`): it puts the complete file in
//! place under the layer's name, then calls [`LayerFile::mark_resident`].
//! Eviction is [`LayerFile::try_evict`], driven by
//! `crate::tenant::eviction`.
//!
//! Invariants:
//! * A pinned layer is never evicted: [`LayerFile::pin`] counts under the
//!   state lock and [`LayerFile::try_evict`] refuses while the count is not
//!   zero. Readers pin *before* they look at residence, so a layer they
//!   found resident (or that their download made resident) stays resident
//!   until the pin is dropped.
//! * A layer whose opened handle is shared (a read that took no pin) is
//!   not evicted either.
//! * `resident` changes only while the state lock and the opened-handle
//!   lock are both held (in that order), and readers check it under the
//!   handle lock, so a read never opens a file that eviction deleted.
//!   Eviction deletes the file, drops the handle (and with it the file's
//!   cached index blocks, see [`super::block_cache`]) and marks the layer
//!   remote under those locks.
//!
//! Cancellation: nothing awaits. Pinning and marking resident take a short
//! lock and may run on the async runtime; eviction deletes a file
//! (blocking: callers use `spawn_blocking`) while it holds the layer's
//! state lock, so a reader pinning that same layer waits that long.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::{LayerFile, LayerFileError};

/// The last-use clock: a counter, so that uses are strictly ordered.
static CLOCK: AtomicU64 = AtomicU64::new(1);

pub(super) struct Residence {
    resident: AtomicBool,
    /// Pins held (see [`LayerPin`]).
    pins: Mutex<usize>,
    /// [`CLOCK`] at the last pin that counted as a use (0: none since load).
    last_use: AtomicU64,
}

impl Residence {
    pub(super) fn new(resident: bool) -> Residence {
        Residence { resident: AtomicBool::new(resident), pins: Mutex::new(0), last_use: AtomicU64::new(0) }
    }

    pub(super) fn is_resident(&self) -> bool {
        self.resident.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        self.last_use.store(CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// What [`LayerFile::try_evict`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictOutcome {
    /// The file is deleted; the layer is remote.
    Evicted,
    /// It was not resident.
    NotResident,
    /// A read holds a pin.
    Pinned,
    /// Its opened handle is in use (or being opened) by a read without a pin.
    InUse,
}

/// A pin of a layer: while it lives, the layer is not evicted. Taken before
/// a read checks residence (and downloads if needed); dropped when the read
/// is done. May be moved into `spawn_blocking`.
pub struct LayerPin {
    layer: Arc<LayerFile>,
}

impl LayerPin {
    pub fn layer(&self) -> &Arc<LayerFile> {
        &self.layer
    }

    /// Whether the layer is resident (then it stays so while pinned).
    pub fn is_resident(&self) -> bool {
        self.layer.residence.is_resident()
    }
}

impl Drop for LayerPin {
    fn drop(&mut self) {
        let mut pins = self.layer.residence.lock();
        *pins = pins.saturating_sub(1);
    }
}

impl std::fmt::Debug for LayerPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerPin").field("layer", &self.layer.desc.file_name()).finish()
    }
}

impl LayerFile {
    /// Pin the layer for a read and count it as used now (see the module
    /// documentation).
    pub fn pin(self: &Arc<Self>) -> LayerPin {
        self.pin_inner(true)
    }

    /// Pin the layer without counting a use (background passes such as GC
    /// that should not make old layers look recently used).
    pub fn pin_untouched(self: &Arc<Self>) -> LayerPin {
        self.pin_inner(false)
    }

    fn pin_inner(self: &Arc<Self>, touch: bool) -> LayerPin {
        let mut pins = self.residence.lock();
        *pins += 1;
        if touch {
            self.residence.touch();
        }
        drop(pins);
        LayerPin { layer: Arc::clone(self) }
    }

    /// Whether the file is on local disk.
    pub fn is_resident(&self) -> bool {
        self.residence.is_resident()
    }

    /// Pins held now.
    pub fn pins(&self) -> usize {
        *self.residence.lock()
    }

    /// The last-use clock value (larger is more recent; 0: not used since
    /// it was loaded).
    pub fn last_use(&self) -> u64 {
        self.residence.last_use.load(Ordering::Relaxed)
    }

    /// The complete file is now in place under the layer's name (a
    /// download finished): the layer is resident, and counts as used now.
    pub fn mark_resident(&self) {
        let _pins = self.residence.lock();
        let mut handle = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        *handle = None;
        self.residence.resident.store(true, Ordering::Release);
        self.residence.touch();
    }

    /// Evict the layer if it is resident and nothing uses it: delete the
    /// local file, drop the opened handle and its cached index blocks, mark
    /// it remote. The caller checks that remote storage holds it. Blocking.
    pub fn try_evict(&self) -> Result<EvictOutcome, LayerFileError> {
        let pins = self.residence.lock();
        if !self.residence.is_resident() {
            return Ok(EvictOutcome::NotResident);
        }
        if *pins > 0 {
            return Ok(EvictOutcome::Pinned);
        }
        let mut handle = match self.opened.try_lock() {
            Ok(h) => h,
            Err(TryLockError::WouldBlock) => return Ok(EvictOutcome::InUse),
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
        };
        if let Some(Ok(opened)) = handle.as_ref() {
            if Arc::strong_count(opened) > 1 {
                return Ok(EvictOutcome::InUse);
            }
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(format!("evicting: deleting the file: {e}"))),
        }
        *handle = None;
        self.residence.resident.store(false, Ordering::Release);
        Ok(EvictOutcome::Evicted)
    }
}
