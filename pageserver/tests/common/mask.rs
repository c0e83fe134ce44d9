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
//! `pd_lsn` is NOT masked: it must match exactly.

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

const PAGE_HEADER: usize = 24;
const PD_HAS_FREE_LINES: u16 = 0x1;
const PD_PAGE_FULL: u16 = 0x2;
const PD_ALL_VISIBLE: u16 = 0x4;
const LP_NORMAL: u32 = 1;

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([p[at], p[at + 1]])
}
fn put_u16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn special(p: &[u8]) -> usize {
    u16_at(p, 16) as usize
}

/// Apply the masks of `am` to `page` (8192 bytes) in place.
pub fn mask_page(am: Am, page: &mut [u8]) {
    if u16_at(page, 14) == 0 {
        return; // a new (all-zero) page: nothing to mask
    }
    put_u16(page, 8, 0); // pd_checksum
    match am {
        Am::Heap => {
            mask_hint_bits(page);
            mask_unused_space(page);
            mask_heap_tuples(page);
        }
        Am::Btree => mask_btree(page),
        Am::Hash => mask_hash(page),
        Am::Gin => mask_gin(page),
        Am::Gist => mask_gist(page),
        Am::Sequence => mask_unused_space(page),
    }
}

fn mask_hint_bits(page: &mut [u8]) {
    page[20..24].fill(0); // pd_prune_xid
    let flags = u16_at(page, 10) & !(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE);
    put_u16(page, 10, flags);
}

fn mask_unused_space(page: &mut [u8]) {
    let (lower, upper) = (u16_at(page, 12) as usize, u16_at(page, 14) as usize);
    if lower >= PAGE_HEADER && lower <= upper && upper <= special(page) && special(page) <= page.len() {
        page[lower..upper].fill(0);
    }
}

fn max_offset(page: &[u8]) -> usize {
    (u16_at(page, 12) as usize).saturating_sub(PAGE_HEADER) / 4
}

fn item_id(page: &[u8], off: usize) -> u32 {
    let at = PAGE_HEADER + 4 * (off - 1);
    u32::from_le_bytes(page[at..at + 4].try_into().unwrap())
}

fn mask_lp_flags(page: &mut [u8]) {
    for off in 1..=max_offset(page) {
        let id = item_id(page, off);
        if (id >> 15) & 3 != 0 {
            let at = PAGE_HEADER + 4 * (off - 1);
            page[at..at + 4].copy_from_slice(&(id & !(3 << 15)).to_le_bytes());
        }
    }
}

fn mask_heap_tuples(page: &mut [u8]) {
    for off in 1..=max_offset(page) {
        let id = item_id(page, off);
        let (lp_off, flags, len) = ((id & 0x7FFF) as usize, (id >> 15) & 3, (id >> 17) as usize);
        if lp_off + len > page.len() || len == 0 {
            continue;
        }
        if flags == LP_NORMAL && len >= 23 {
            let t = &mut page[lp_off..lp_off + 23];
            let infomask = u16_at(t, 20);
            let masked = if infomask & 0x0300 == 0x0300 { infomask & !0x0C00 } else { infomask & !0xFFF0 };
            put_u16(t, 20, masked);
            t[8..12].fill(0); // t_cid
            if u16_at(t, 16) == 0xFFFE {
                t[12..18].fill(0); // speculative token in ctid
            }
        }
        let pad = len.next_multiple_of(8) - len;
        let end = (lp_off + len + pad).min(page.len());
        page[lp_off + len..end].fill(0);
    }
}

fn mask_btree(page: &mut [u8]) {
    mask_unused_space(page);
    let sp = special(page);
    if sp + 16 > page.len() {
        return;
    }
    let flags = u16_at(page, sp + 12);
    if flags & 1 != 0 {
        mask_lp_flags(page);
    }
    put_u16(page, sp + 12, flags & !((1 << 6) | (1 << 5))); // BTP_HAS_GARBAGE, BTP_SPLIT_END
    put_u16(page, sp + 14, 0); // btpo_cycleid
}

fn mask_hash(page: &mut [u8]) {
    mask_hint_bits(page);
    mask_unused_space(page);
    let sp = special(page);
    if sp + 16 > page.len() {
        return;
    }
    let flags = u16_at(page, sp + 12);
    match flags & 0x0F {
        0 => {
            page[PAGE_HEADER..].fill(0);
            page[12..16].fill(0);
        }
        1 | 2 => mask_lp_flags(page),
        _ => {}
    }
    let flags = u16_at(page, sp + 12);
    put_u16(page, sp + 12, flags & !0x80); // LH_PAGE_HAS_DEAD_TUPLES
}

fn mask_gin(page: &mut [u8]) {
    mask_hint_bits(page);
    let sp = special(page);
    let deleted = sp + 8 <= page.len() && u16_at(page, sp + 6) & (1 << 2) != 0;
    if deleted {
        page[PAGE_HEADER..].fill(0);
        page[12..16].fill(0);
    } else if u16_at(page, 12) as usize > PAGE_HEADER {
        mask_unused_space(page);
    }
}

fn mask_gist(page: &mut [u8]) {
    mask_hint_bits(page);
    mask_unused_space(page);
    let sp = special(page);
    if sp + 16 > page.len() {
        return;
    }
    page[sp..sp + 8].fill(0); // NSN
    let mut flags = u16_at(page, sp + 12) | 8; // F_FOLLOW_RIGHT set
    if flags & 1 != 0 {
        mask_lp_flags(page);
    }
    flags &= !16; // F_HAS_GARBAGE
    put_u16(page, sp + 12, flags);
}

/// Byte ranges where two pages differ (for error messages).
pub fn diff_ranges(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for i in 0..a.len().min(b.len()) {
        if a[i] != b[i] {
            match out.last_mut() {
                Some((_, end)) if *end == i => *end = i + 1,
                _ => out.push((i, i + 1)),
            }
        }
    }
    out
}
