//! Page masks for comparing a rebuilt page with the one in the data file,
//! the same as PostgreSQL 15's `wal_consistency_checking` applies
//! (`bufmask.c` and each access method's `*_mask` function). They hide what
//! PostgreSQL changes without WAL:
//!
//! * all pages: `pd_checksum`; "hint" page flags PD_PAGE_FULL,
//!   PD_HAS_FREE_LINES, PD_ALL_VISIBLE and `pd_prune_xid` (not for btree);
//!   the unused space between `pd_lower` and `pd_upper`.
//! * heap: infomask visibility hint bits (all of HEAP_XACT_MASK unless xmin
//!   is frozen, else the xmax hints), `t_cid` (redo writes FirstCommandId),
//!   ctid of speculative tuples, padding after each tuple.
//! * btree, hash, GiST leaf: line-pointer flags (LP_DEAD is set unlogged);
//!   BTP_HAS_GARBAGE, BTP_SPLIT_END and btpo_cycleid; LH_PAGE_HAS_DEAD_TUPLES
//!   and the content of unused hash pages; GiST NSN, F_FOLLOW_RIGHT and
//!   F_HAS_GARBAGE; the content of deleted GIN pages.
//!
//! `pd_lsn` is NOT masked: it must match exactly. The masks themselves live
//! in `postgres_ffi::page_mask` (shared with `datadir_compare`).

use postgres_ffi::page_mask::PageKind;

/// The access method of a relation, as far as masking cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Am {
    Heap,
    Btree,
    Hash,
    Gin,
    Gist,
    Sequence,
}

impl Am {
    /// From `pg_am.amname` / `relkind`.
    pub fn from_catalog(amname: &str, relkind: &str) -> Option<Am> {
        match (amname, relkind) {
            (_, "S") => Some(Am::Sequence),
            ("heap", _) => Some(Am::Heap),
            ("btree", _) => Some(Am::Btree),
            ("hash", _) => Some(Am::Hash),
            ("gin", _) => Some(Am::Gin),
            ("gist", _) => Some(Am::Gist),
            _ => None,
        }
    }
}

/// Mask `page` (of a relation with access method `am`) the way
/// `wal_consistency_checking` does, with the shared masks of
/// `postgres_ffi::page_mask`.
pub fn mask_page(am: Am, page: &mut [u8]) {
    let kind = match am {
        Am::Heap => PageKind::Heap,
        Am::Btree => PageKind::Btree,
        Am::Hash => PageKind::Hash,
        Am::Gin => PageKind::Gin,
        Am::Gist => PageKind::Gist,
        Am::Sequence => PageKind::Sequence,
    };
    // The block number only places speculative tuples' ctid; both sides of
    // a comparison are masked alike.
    postgres_ffi::page_mask::mask_page(kind, page, 0);
}

pub use postgres_ffi::page_mask::diff_ranges;
