//! Tuning of glibc's allocator, so that memory the pageserver frees goes
//! back to the system instead of staying in the process.
//!
//! Why: measured under the storage-size bench (pgbench, scale 30), about
//! 40% of the pageserver's anonymous memory (140 of 357 MiB) was free
//! memory glibc kept: each thread that allocates gets an arena of its own
//! (up to 8 per CPU), the blocking pool's threads come and go, and a chunk
//! freed in the middle of an arena is never returned by `free` (only the
//! top of the heap is). Three settings, applied once at startup before the
//! runtime's threads exist ([`configure`]):
//!
//! * `M_ARENA_MAX` (`--malloc-arena-max`, default 2): few arenas, so memory
//!   freed by one thread is reused by the others.
//! * `M_MMAP_THRESHOLD` fixed at [`MMAP_THRESHOLD_BYTES`]: buffers of that
//!   size and larger (layer writers' 1 MiB buffers, coalesced reads) are
//!   mapped and unmapped on their own; fixing it stops glibc from raising
//!   the threshold after such a free, which would put them into arenas.
//! * A trimmer thread ([`spawn_trimmer`], `--malloc-trim-period`, default
//!   10 s) that calls `malloc_trim(0)`, returning free pages inside every
//!   arena to the system. Counted in `strata_pageserver_malloc_trims_total`.
//!
//! Invariants: only glibc targets do anything; elsewhere these are no-ops.
//! Cancellation: the trimmer is a plain thread that lives as long as the
//! process (it holds nothing but the period); it never runs on the async
//! runtime, since a trim walks every arena under its lock.
use std::time::Duration;

use crate::metrics;

/// Allocations of at least this many bytes are mapped on their own.
pub const MMAP_THRESHOLD_BYTES: i32 = 128 << 10;

/// Apply the allocator settings; `arena_max == 0` keeps glibc's default
/// number of arenas. Call before starting threads. Returns whether glibc
/// accepted them.
pub fn configure(arena_max: u32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arena_max = i32::try_from(arena_max).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes allocator parameters.
        let arenas_ok = arena_max == 0 || unsafe { libc::mallopt(libc::M_ARENA_MAX, arena_max) } == 1;
        // SAFETY: as above.
        let mmap_ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) } == 1;
        arenas_ok && mmap_ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = arena_max;
        true
    }
}

/// Return free memory inside the allocator's arenas to the system now.
/// Blocking (walks every arena): not for the async runtime's threads.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
        metrics::MALLOC_TRIMS.inc();
    }
}

/// Start a thread that calls [`trim`] every `period` (nothing for a zero
/// period).
pub fn spawn_trimmer(period: Duration) -> std::io::Result<()> {
    if period.is_zero() {
        return Ok(());
    }
    std::thread::Builder::new().name("malloc-trim".into()).spawn(move || loop {
        std::thread::sleep(period);
        trim();
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_is_counted_and_settings_are_accepted() {
        assert!(configure(0));
        let before = metrics::MALLOC_TRIMS.get();
        trim();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert_eq!(metrics::MALLOC_TRIMS.get(), before + 1);
        let _ = before;
    }
}
