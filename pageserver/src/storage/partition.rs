//! Key partitioning: the key space cut into contiguous *partitions* (tiles
//! from [`Key::MIN`] to [`Key::MAX`]) that image layers are made for, one
//! image layer per partition that needs one.
//!
//! Owns: the rule that maps the keys that exist at an LSN to partitions.
//!
//! Rule: keys are grouped by *class* — the database directory; each
//! database's relmapper file and relation directory; each relation fork;
//! each SLRU kind; the two-phase area; the control file and checkpoint;
//! the last-commit key — and each class is cut into chunks of at most
//! `target_keys` keys. Consecutive small relation forks (each at most
//! `target_keys` keys) are packed into one partition while it stays within
//! `target_keys` keys, so a cluster's hundreds of small catalogs make a few
//! partitions, not hundreds. A partition starts at its (first) class's
//! first key or at its chunk's first key, and ends where the next partition
//! starts, so metadata classes get small partitions of their own and large
//! relations' chunks start at block multiples of `target_keys` (stable
//! while a relation grows). Keys that do not exist (gaps) fall into the
//! partition before them.
//!
//! Invariants: partitions are sorted, non-empty, contiguous, the first
//! starts at `Key::MIN` and the last ends at `Key::MAX`; every input key is
//! in exactly one partition's `keys`.
//!
//! Cancellation: pure computation, nothing awaits.
use std::ops::Range;

use crate::storage::key::*;

/// One partition: its key range and the keys that exist in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub key_range: Range<Key>,
    pub keys: Vec<Key>,
}

/// The first key of `key`'s class (see the module documentation).
pub fn class_start(key: Key) -> Key {
    let zero = Key { field1: key.field1, ..Key::MIN };
    match key.field1 {
        0x00 if key.field2 == 0 && key.field3 == 0 && key.field4 == 0 => Key::MIN,
        0x00 if key.field4 == 0 => relmap_file_key(key.field2, key.field3),
        0x00 => Key { field6: 0, ..key },
        0x01 => Key { field2: key.field2, ..zero },
        _ => zero,
    }
}

/// Partition `keys` (sorted, deduplicated) into chunks of at most
/// `target_keys` keys per class; an empty input gives one partition of
/// the whole key space.
pub fn partition(keys: &[Key], target_keys: usize) -> Vec<Partition> {
    let target_keys = target_keys.max(1);
    let mut parts: Vec<Partition> = Vec::new();
    // Whether the last partition holds small relation forks that a further
    // small fork may join.
    let mut packing = false;
    let mut i = 0;
    while i < keys.len() {
        let class = class_start(keys[i]);
        let class_len = keys[i..].iter().take_while(|k| class_start(**k) == class).count();
        let class_keys = &keys[i..i + class_len];
        let small_rel = is_rel_class(class) && class_len <= target_keys;
        match parts.last_mut() {
            Some(last) if packing && small_rel && last.keys.len() + class_len <= target_keys => {
                last.keys.extend_from_slice(class_keys);
            }
            _ => {
                for (n, chunk) in class_keys.chunks(target_keys).enumerate() {
                    let start = if n == 0 { class } else { chunk[0] };
                    parts.push(Partition { key_range: start..Key::MAX, keys: chunk.to_vec() });
                }
                packing = small_rel;
            }
        }
        i += class_len;
    }
    if parts.is_empty() {
        return vec![Partition { key_range: Key::MIN..Key::MAX, keys: Vec::new() }];
    }
    parts[0].key_range.start = Key::MIN;
    for n in 1..parts.len() {
        parts[n - 1].key_range.end = parts[n].key_range.start;
    }
    parts
}

/// A relation fork's class (not a per-database metadata class).
fn is_rel_class(class: Key) -> bool {
    class.field1 == 0x00 && class.field4 != 0
}

#[cfg(test)]
mod tests {
    use postgres_ffi::RelFileNode;

    use super::*;
    use crate::walredo::SlruKind;

    #[test]
    fn classes_get_their_own_partitions_and_chunks_are_block_aligned() {
        let a = RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        let b = RelFileNode { rel_node: 16390, ..a };
        let mut keys = vec![DBDIR_KEY, relmap_file_key(1663, 5), rel_dir_key(1663, 5)];
        keys.extend((0..10).map(|blk| rel_block_key(a, 0, blk)));
        keys.push(rel_size_key(a, 0));
        keys.extend([rel_block_key(b, 0, 0), rel_size_key(b, 0)]);
        let c = RelFileNode { rel_node: 16400, ..a };
        keys.extend([rel_block_key(c, 0, 0), rel_size_key(c, 0)]);
        keys.extend([slru_dir_key(SlruKind::Clog), slru_block_key(SlruKind::Clog, 0, 0)]);
        keys.extend([CONTROLFILE_KEY, CHECKPOINT_KEY, COMMIT_TS_KEY]);
        keys.sort();
        let parts = partition(&keys, 4);
        let starts: Vec<Key> = parts.iter().map(|p| p.key_range.start).collect();
        let want = vec![
            Key::MIN,
            relmap_file_key(1663, 5),
            rel_block_key(a, 0, 0),
            rel_block_key(a, 0, 4),
            rel_block_key(a, 0, 8),
            rel_block_key(b, 0, 0), // b and c packed together
            slru_dir_key(SlruKind::Clog),
            CONTROLFILE_KEY,
            COMMIT_TS_KEY,
        ];
        assert_eq!(starts, want);
        assert_eq!(parts.last().unwrap().key_range.end, Key::MAX);
        for w in parts.windows(2) {
            assert_eq!(w[0].key_range.end, w[1].key_range.start, "contiguous");
        }
        let all: Vec<Key> = parts.iter().flat_map(|p| p.keys.clone()).collect();
        assert_eq!(all, keys);
        assert!(parts.iter().all(|p| p.keys.iter().all(|k| p.key_range.contains(k))));
        assert_eq!(partition(&[], 4).len(), 1);
    }
}
