//! The key space: every piece of a cluster's state the pageserver stores is
//! a value under an 18-byte [`Key`] `{u8, u32, u32, u32, u8, u32}`, ordered
//! as a big-endian byte string so that related keys are adjacent.
//!
//! Layout (field1 selects the area):
//!
//! | what | field1 | field2 | field3 | field4 | field5 | field6 |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | database directory | 0x00 | 0 | 0 | 0 | 0 | 0 |
//! | relmapper file of (spc, db) | 0x00 | spc | db | 0 | 0 | 0 |
//! | relation directory of (spc, db) | 0x00 | spc | db | 0 | 0 | 1 |
//! | relation block | 0x00 | spc | db | rel | fork | blk |
//! | relation size (blocks) | 0x00 | spc | db | rel | fork | 0xFFFFFFFF |
//! | SLRU segment directory | 0x01 | kind | 0 | 0 | 0 | 0 |
//! | SLRU page | 0x01 | kind | 1 | segno | 0 | blk |
//! | SLRU segment size (pages) | 0x01 | kind | 1 | segno | 0 | 0xFFFFFFFF |
//! | two-phase directory | 0x02 | 0 | 0 | 0 | 0 | 0 |
//! | two-phase state file | 0x02 | 0 | 0 | 0 | 1 | xid |
//! | pg_control | 0x03 | 0 | 0 | 0 | 0 | 0 |
//! | last checkpoint (`CheckPoint`) | 0x03 | 0 | 0 | 0 | 0 | 1 |
//! | last commit (end LSN, time, max time; see `commit_ts`) | 0x04 | 0 | 0 | 0 | 0 | 0 |
//!
//! SLRU kinds: 0 = pg_xact (CLOG), 1 = pg_multixact/offsets,
//! 2 = pg_multixact/members. Relation number 0 never names a real relation,
//! which keeps the per-database metadata keys apart from block keys.
use std::fmt;
use std::str::FromStr;

use postgres_ffi::RelFileNode;

use crate::walredo::{RedoKey, SlruKind};

/// Bytes of an encoded key.
pub const KEY_SIZE: usize = 18;

/// One key of the key space (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub field1: u8,
    pub field2: u32,
    pub field3: u32,
    pub field4: u32,
    pub field5: u8,
    pub field6: u32,
}

const REL_SIZE_BLKNUM: u32 = u32::MAX;

impl Key {
    pub const MIN: Key = Key { field1: 0, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0 };
    pub const MAX: Key =
        Key { field1: 0xFF, field2: u32::MAX, field3: u32::MAX, field4: u32::MAX, field5: 0xFF, field6: u32::MAX };

    /// Big-endian encoding (byte order = key order).
    pub fn to_bytes(&self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[0] = self.field1;
        b[1..5].copy_from_slice(&self.field2.to_be_bytes());
        b[5..9].copy_from_slice(&self.field3.to_be_bytes());
        b[9..13].copy_from_slice(&self.field4.to_be_bytes());
        b[13] = self.field5;
        b[14..18].copy_from_slice(&self.field6.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; KEY_SIZE]) -> Key {
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Key { field1: b[0], field2: u32_at(1), field3: u32_at(5), field4: u32_at(9), field5: b[13], field6: u32_at(14) }
    }

    /// The smallest key greater than this one (saturates at [`Key::MAX`]).
    pub fn next(&self) -> Key {
        let mut b = self.to_bytes();
        for i in (0..KEY_SIZE).rev() {
            if b[i] == 0xFF {
                b[i] = 0;
            } else {
                b[i] += 1;
                return Key::from_bytes(&b);
            }
        }
        Key::MAX
    }

    /// A relation block (not a size key).
    pub fn is_rel_block_key(&self) -> bool {
        self.field1 == 0x00 && self.field4 != 0 && self.field6 != REL_SIZE_BLKNUM
    }

    /// An SLRU page (not a size or directory key).
    pub fn is_slru_block_key(&self) -> bool {
        self.field1 == 0x01 && self.field3 == 1 && self.field6 != REL_SIZE_BLKNUM
    }

    /// The WAL redo target this key names, for page keys.
    pub fn to_redo_key(&self) -> Option<RedoKey> {
        if self.is_rel_block_key() {
            let rel = RelFileNode { spc_node: self.field2, db_node: self.field3, rel_node: self.field4 };
            Some(RedoKey::Rel { rel, forknum: self.field5, blkno: self.field6 })
        } else if self.is_slru_block_key() {
            let kind = slru_kind_from_u32(self.field2)?;
            Some(RedoKey::Slru { kind, segno: self.field4, blkno: self.field6 })
        } else {
            None
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({:02x}.{}.{}.{}.{}.{})",
            self.field1, self.field2, self.field3, self.field4, self.field5, self.field6
        )
    }
}

/// A key that is not 36 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid key {0:?}: expected 36 hex digits")]
pub struct KeyParseError(pub String);

impl FromStr for Key {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        let mut b = [0u8; KEY_SIZE];
        hex::decode_to_slice(s, &mut b).map_err(|_| KeyParseError(s.to_string()))?;
        Ok(Key::from_bytes(&b))
    }
}

pub fn slru_kind_to_u32(kind: SlruKind) -> u32 {
    match kind {
        SlruKind::Clog => 0,
        SlruKind::MultiXactOffsets => 1,
        SlruKind::MultiXactMembers => 2,
    }
}

pub fn slru_kind_from_u32(v: u32) -> Option<SlruKind> {
    match v {
        0 => Some(SlruKind::Clog),
        1 => Some(SlruKind::MultiXactOffsets),
        2 => Some(SlruKind::MultiXactMembers),
        _ => None,
    }
}

/// Directory (under the data directory) of an SLRU.
pub fn slru_dir_name(kind: SlruKind) -> &'static str {
    match kind {
        SlruKind::Clog => "pg_xact",
        SlruKind::MultiXactOffsets => "pg_multixact/offsets",
        SlruKind::MultiXactMembers => "pg_multixact/members",
    }
}

pub const ALL_SLRU_KINDS: [SlruKind; 3] = [SlruKind::Clog, SlruKind::MultiXactOffsets, SlruKind::MultiXactMembers];

pub const DBDIR_KEY: Key = Key::MIN;
pub const TWOPHASEDIR_KEY: Key = Key { field1: 0x02, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0 };
pub const CONTROLFILE_KEY: Key = Key { field1: 0x03, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0 };
pub const CHECKPOINT_KEY: Key = Key { field1: 0x03, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1 };
/// The last commit record at or before an LSN ([`crate::tenant::commit_ts::CommitTs`]).
pub const COMMIT_TS_KEY: Key = Key { field1: 0x04, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0 };

pub fn relmap_file_key(spc: u32, db: u32) -> Key {
    Key { field1: 0x00, field2: spc, field3: db, field4: 0, field5: 0, field6: 0 }
}

pub fn rel_dir_key(spc: u32, db: u32) -> Key {
    Key { field1: 0x00, field2: spc, field3: db, field4: 0, field5: 0, field6: 1 }
}

pub fn rel_block_key(rel: RelFileNode, forknum: u8, blkno: u32) -> Key {
    Key { field1: 0x00, field2: rel.spc_node, field3: rel.db_node, field4: rel.rel_node, field5: forknum, field6: blkno }
}

pub fn rel_size_key(rel: RelFileNode, forknum: u8) -> Key {
    rel_block_key(rel, forknum, REL_SIZE_BLKNUM)
}

pub fn slru_dir_key(kind: SlruKind) -> Key {
    Key { field1: 0x01, field2: slru_kind_to_u32(kind), field3: 0, field4: 0, field5: 0, field6: 0 }
}

pub fn slru_block_key(kind: SlruKind, segno: u32, blkno: u32) -> Key {
    Key { field1: 0x01, field2: slru_kind_to_u32(kind), field3: 1, field4: segno, field5: 0, field6: blkno }
}

pub fn slru_segment_size_key(kind: SlruKind, segno: u32) -> Key {
    slru_block_key(kind, segno, REL_SIZE_BLKNUM)
}

pub fn twophase_file_key(xid: u32) -> Key {
    Key { field1: 0x02, field2: 0, field3: 0, field4: 0, field5: 1, field6: xid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_encoding() {
        let rel = RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        let k = rel_block_key(rel, 0, 7);
        assert_eq!(Key::from_bytes(&k.to_bytes()), k);
        assert_eq!(k.to_string().parse::<Key>().unwrap(), k);
        assert!(rel_dir_key(1663, 5) < k && k < rel_size_key(rel, 0));
        assert!(k < rel_block_key(rel, 1, 0));
        assert_eq!(k.next(), rel_block_key(rel, 0, 8));
        assert!(k.is_rel_block_key() && !rel_size_key(rel, 0).is_rel_block_key());
        assert!(!rel_dir_key(1663, 5).is_rel_block_key() && !relmap_file_key(1663, 5).is_rel_block_key());
        let s = slru_block_key(SlruKind::MultiXactMembers, 3, 4);
        assert_eq!(s.to_redo_key(), Some(RedoKey::Slru { kind: SlruKind::MultiXactMembers, segno: 3, blkno: 4 }));
        assert!(!slru_segment_size_key(SlruKind::Clog, 0).is_slru_block_key());
        assert_eq!(Key::MAX.next(), Key::MAX);
        assert!("zz".parse::<Key>().is_err());
    }
}
