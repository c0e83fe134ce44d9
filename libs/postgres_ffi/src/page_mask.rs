//! Page masks for comparing two copies of a PostgreSQL 15 page that should
//! hold the same data: the masks of `wal_consistency_checking` (`bufmask.c`
//! and each access method's `*_mask` function), which hide what PostgreSQL
//! changes without WAL, plus the page-kind detection and header decoding
//! that a page-by-page comparison of two data directories needs.
//!
//! Masks, as PostgreSQL applies them (MASK_MARKER is 0):
//!
//! * all pages: `pd_checksum`. (`pd_lsn` is NOT masked here, unlike in
//!   PostgreSQL, which compares against a WAL image: two data directories
//!   rebuilt from the same WAL must agree on it.)
//! * heap, hash, GIN, GiST, SP-GiST, BRIN: hint page flags PD_PAGE_FULL,
//!   PD_HAS_FREE_LINES, PD_ALL_VISIBLE and `pd_prune_xid`.
//! * the unused space between `pd_lower` and `pd_upper` (GIN, SP-GiST and
//!   BRIN meta pages only when `pd_lower` looks set).
//! * heap: tuple infomask hint bits (all of HEAP_XACT_MASK unless xmin is
//!   frozen, else the xmax hints), `t_cid` (redo writes FirstCommandId), the
//!   ctid of speculative insertions, padding after each tuple.
//! * btree leaf, hash bucket/overflow, GiST leaf: line-pointer flags
//!   (LP_DEAD is set without WAL); btree BTP_HAS_GARBAGE, BTP_SPLIT_END,
//!   `btpo_cycleid`; hash LH_PAGE_HAS_DEAD_TUPLES and the whole content of
//!   unused hash pages; GiST NSN, F_FOLLOW_RIGHT, F_HAS_GARBAGE; the whole
//!   content of deleted GIN pages; BRIN_EVACUATE_PAGE.
//! * sequence: like PostgreSQL (`seq_mask`: unused space) plus the tuple's
//!   hint bits and `last_value` / `log_cnt`. The extra part is Strata's:
//!   `nextval()` WAL-logs a state up to 32 values ahead and then writes the
//!   real one to the page without WAL, so a page rebuilt from WAL (a
//!   standby's, a pageserver's) holds the logged state while the primary's
//!   holds the current one. PostgreSQL's checker compares against the
//!   logged image and never sees this.
//! * SP-GiST meta page: the last-used-pages cache (`SpGistLUPCache`),
//!   updated without WAL. Also Strata's addition: PostgreSQL's checker never
//!   sees the meta page (no record registers it after creation).
//!
//! Which mask applies depends on the access method. A data directory does
//! not say which access method a relation file belongs to (that is in the
//! catalog), so [`detect_page_kind`] dispatches on the page itself, the way
//! `pg_filedump` and `pageinspect` do: by the size of the special space and
//! the page-type id that most access methods keep in its last two bytes.
//! See [`detect_page_kind`] for the rules.

use crate::pg_constants::BLCKSZ;

/// Size of `PageHeaderData`.
pub const SIZE_OF_PAGE_HEADER: usize = 24;
/// `PG_PAGE_LAYOUT_VERSION` (4) in the low byte, the page size above it.
pub const PAGE_SIZE_VERSION: u16 = BLCKSZ as u16 | 4;

pub const PD_HAS_FREE_LINES: u16 = 0x1;
pub const PD_PAGE_FULL: u16 = 0x2;
pub const PD_ALL_VISIBLE: u16 = 0x4;

pub const LP_UNUSED: u8 = 0;
pub const LP_NORMAL: u8 = 1;
pub const LP_REDIRECT: u8 = 2;
pub const LP_DEAD: u8 = 3;

const HEAP_XMAX_COMMITTED: u16 = 0x0400;
const HEAP_XMAX_INVALID: u16 = 0x0800;
const HEAP_XMIN_FROZEN: u16 = 0x0300;
const HEAP_XACT_MASK: u16 = 0xFFF0;
const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xFFFE;
const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;

const BTP_LEAF: u16 = 1 << 0;
const BTP_SPLIT_END: u16 = 1 << 5;
const BTP_HAS_GARBAGE: u16 = 1 << 6;
const MAX_BT_CYCLE_ID: u16 = 0xFF7F;

const HASHO_PAGE_ID: u16 = 0xFF80;
const LH_UNUSED_PAGE: u16 = 0;
const LH_OVERFLOW_PAGE: u16 = 1 << 0;
const LH_BUCKET_PAGE: u16 = 1 << 1;
const LH_PAGE_HAS_DEAD_TUPLES: u16 = 1 << 7;
const LH_PAGE_TYPE: u16 = 0x0F;

const GIST_PAGE_ID: u16 = 0xFF81;
const F_LEAF: u16 = 1 << 0;
const F_FOLLOW_RIGHT: u16 = 1 << 3;
const F_HAS_GARBAGE: u16 = 1 << 4;

const GIN_DELETED: u16 = 1 << 2;
/// Highest GIN page flag (GIN_COMPRESSED); GIN has no page id.
const GIN_FLAGS_ALL: u16 = 0xFF;

const SPGIST_PAGE_ID: u16 = 0xFF82;
const SPGIST_META: u16 = 1 << 0;
/// `SpGistMetaPageData.lastUsedPages`: after `magicNumber`, 8 × (blkno, freeSpace).
const SPGIST_LUP_CACHE: std::ops::Range<usize> = SIZE_OF_PAGE_HEADER + 4..SIZE_OF_PAGE_HEADER + 4 + 8 * 8;

const BLOOM_PAGE_ID: u16 = 0xFF83;

const BRIN_PAGETYPE_META: u16 = 0xF091;
const BRIN_PAGETYPE_REVMAP: u16 = 0xF092;
const BRIN_PAGETYPE_REGULAR: u16 = 0xF093;
const BRIN_EVACUATE_PAGE: u16 = 1 << 0;

/// `SEQ_MAGIC` in a sequence page's special space.
const SEQ_MAGIC: u32 = 0x1717;
/// A sequence tuple: header (t_hoff 24) + last_value, log_cnt, is_called.
const SEQ_TUPLE_LEN: usize = 24 + 8 + 8 + 1;

/// What a page is, as far as masking cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageKind {
    /// All-zero, or `pd_upper == 0` (`PageIsNew`): compared as is.
    New,
    Heap,
    Btree,
    Hash,
    Gin,
    Gist,
    SpGist,
    Brin,
    Sequence,
    /// A visibility-map fork page (known from the fork, not the page).
    VisibilityMap,
    /// A free-space-map fork page (known from the fork, not the page).
    FreeSpaceMap,
    /// A page with a header but an unrecognised special space (e.g. an
    /// extension's access method): `generic_mask` (unused space) applies.
    Unknown,
    /// Not a valid page header (`pd_pagesize_version`, or pointers out of
    /// order): compared as is.
    Invalid,
}

impl PageKind {
    /// From `pg_am.amname` and `pg_class.relkind`, for callers that have the
    /// catalog.
    pub fn from_catalog(amname: &str, relkind: &str) -> Option<PageKind> {
        match (amname, relkind) {
            (_, "S") => Some(PageKind::Sequence),
            ("heap", _) => Some(PageKind::Heap),
            ("btree", _) => Some(PageKind::Btree),
            ("hash", _) => Some(PageKind::Hash),
            ("gin", _) => Some(PageKind::Gin),
            ("gist", _) => Some(PageKind::Gist),
            ("spgist", _) => Some(PageKind::SpGist),
            ("brin", _) => Some(PageKind::Brin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PageKind::New => "new",
            PageKind::Heap => "heap",
            PageKind::Btree => "btree",
            PageKind::Hash => "hash",
            PageKind::Gin => "gin",
            PageKind::Gist => "gist",
            PageKind::SpGist => "spgist",
            PageKind::Brin => "brin",
            PageKind::Sequence => "sequence",
            PageKind::VisibilityMap => "vm",
            PageKind::FreeSpaceMap => "fsm",
            PageKind::Unknown => "unknown",
            PageKind::Invalid => "invalid",
        }
    }
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([p[at], p[at + 1]])
}
fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"))
}
fn put_u16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// The decoded `PageHeaderData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// `pd_lsn` as one 64-bit LSN (`xlogid << 32 | xrecoff`).
    pub lsn: u64,
    pub checksum: u16,
    pub flags: u16,
    pub lower: u16,
    pub upper: u16,
    pub special: u16,
    pub pagesize_version: u16,
    pub prune_xid: u32,
}

impl PageHeader {
    pub fn parse(page: &[u8]) -> PageHeader {
        let hi = u32_at(page, 0) as u64;
        let lo = u32_at(page, 4) as u64;
        PageHeader {
            lsn: (hi << 32) | lo,
            checksum: u16_at(page, 8),
            flags: u16_at(page, 10),
            lower: u16_at(page, 12),
            upper: u16_at(page, 14),
            special: u16_at(page, 16),
            pagesize_version: u16_at(page, 18),
            prune_xid: u32_at(page, 20),
        }
    }

    /// Line pointers on the page (`PageGetMaxOffsetNumber`).
    pub fn max_offset(&self) -> usize {
        (self.lower as usize).saturating_sub(SIZE_OF_PAGE_HEADER) / 4
    }

    /// The fields as (name, value) pairs, `pd_lsn` as `X/X`.
    pub fn fields(&self) -> [(&'static str, String); 8] {
        [
            ("pd_lsn", format!("{:X}/{:X}", self.lsn >> 32, self.lsn as u32)),
            ("pd_checksum", format!("0x{:04x}", self.checksum)),
            ("pd_flags", format!("0x{:04x}", self.flags)),
            ("pd_lower", self.lower.to_string()),
            ("pd_upper", self.upper.to_string()),
            ("pd_special", self.special.to_string()),
            ("pd_pagesize_version", format!("0x{:04x}", self.pagesize_version)),
            ("pd_prune_xid", self.prune_xid.to_string()),
        ]
    }
}

/// One `ItemIdData`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemId {
    pub off: u16,
    pub flags: u8,
    pub len: u16,
}

impl ItemId {
    pub fn flags_name(&self) -> &'static str {
        match self.flags {
            LP_UNUSED => "UNUSED",
            LP_NORMAL => "NORMAL",
            LP_REDIRECT => "REDIRECT",
            _ => "DEAD",
        }
    }
}

/// Line pointer `off` (1-based), if the page has that many.
pub fn item_id(page: &[u8], off: usize) -> Option<ItemId> {
    let at = SIZE_OF_PAGE_HEADER + 4 * off.checked_sub(1)?;
    if off > PageHeader::parse(page).max_offset() || at + 4 > page.len() {
        return None;
    }
    let raw = u32_at(page, at);
    Some(ItemId {
        off: (raw & 0x7FFF) as u16,
        flags: ((raw >> 15) & 3) as u8,
        len: (raw >> 17) as u16,
    })
}

fn set_item_flags(page: &mut [u8], off: usize, flags: u8) {
    let at = SIZE_OF_PAGE_HEADER + 4 * (off - 1);
    let raw = u32_at(page, at);
    let raw = (raw & !(3 << 15)) | ((flags as u32) << 15);
    page[at..at + 4].copy_from_slice(&raw.to_le_bytes());
}

/// Whether the header is one PostgreSQL would accept (`PageIsVerified`'s
/// header checks, minus the checksum).
pub fn header_is_sane(page: &[u8]) -> bool {
    if page.len() != BLCKSZ {
        return false;
    }
    let h = PageHeader::parse(page);
    h.pagesize_version == PAGE_SIZE_VERSION
        && (h.lower as usize) >= SIZE_OF_PAGE_HEADER
        && h.lower <= h.upper
        && h.upper <= h.special
        && (h.special as usize) <= BLCKSZ
        && h.special.is_multiple_of(8)
}

/// What kind of page this is, judged from the page alone. Rules, first match
/// wins (`sp` = `pd_special`, special size = 8192 - sp):
///
/// 1. `pd_upper == 0`: [`PageKind::New`] (`PageIsNew`; all-zero pages too).
/// 2. header not sane (`pd_pagesize_version` != 8192|4, or not
///    24 <= lower <= upper <= special <= 8192): [`PageKind::Invalid`].
/// 3. special size 0: [`PageKind::Heap`] (heap and TOAST pages have no
///    special space; VM and FSM pages have none either, which is why the
///    caller must pass those by fork).
/// 4. special size 8 (`GinPageOpaqueData`, `SpGistPageOpaqueData`,
///    `BrinSpecialSpace`, `sequence_magic` MAXALIGNed, bloom):
///    * u16 at sp+6 is SPGIST_PAGE_ID 0xFF82: [`PageKind::SpGist`];
///    * u16 at sp+6 is a BRIN page type 0xF091..0xF093: [`PageKind::Brin`];
///    * u16 at sp+6 is BLOOM_PAGE_ID 0xFF83: [`PageKind::Unknown`];
///    * u32 at sp is SEQ_MAGIC 0x1717, one line pointer of a sequence
///      tuple's length (41): [`PageKind::Sequence`];
///    * u16 at sp+6 (GIN flags) within GIN's flag bits: [`PageKind::Gin`]
///      (GIN keeps no page id; this is the fallback for 8-byte specials).
/// 5. special size 16 (`BTPageOpaqueData`, `HashPageOpaqueData`,
///    `GISTPageOpaqueData`):
///    * u16 at sp+14 is HASHO_PAGE_ID 0xFF80: [`PageKind::Hash`];
///    * u16 at sp+14 is GIST_PAGE_ID 0xFF81: [`PageKind::Gist`];
///    * u16 at sp+14 (btpo_cycleid) <= MAX_BT_CYCLE_ID 0xFF7F:
///      [`PageKind::Btree`] (btree keeps no page id; the cycle id range is
///      what tells it apart, as in PostgreSQL's own comments).
/// 6. anything else: [`PageKind::Unknown`].
pub fn detect_page_kind(page: &[u8]) -> PageKind {
    if page.len() != BLCKSZ {
        return PageKind::Invalid;
    }
    if u16_at(page, 14) == 0 {
        return PageKind::New;
    }
    if !header_is_sane(page) {
        return PageKind::Invalid;
    }
    let sp = u16_at(page, 16) as usize;
    match BLCKSZ - sp {
        0 => PageKind::Heap,
        8 => {
            let id = u16_at(page, sp + 6);
            if id == SPGIST_PAGE_ID {
                PageKind::SpGist
            } else if id == BRIN_PAGETYPE_META || id == BRIN_PAGETYPE_REVMAP || id == BRIN_PAGETYPE_REGULAR {
                PageKind::Brin
            } else if id == BLOOM_PAGE_ID {
                PageKind::Unknown
            } else if u32_at(page, sp) == SEQ_MAGIC
                && PageHeader::parse(page).max_offset() == 1
                && item_id(page, 1).is_some_and(|i| i.len as usize == SEQ_TUPLE_LEN)
            {
                PageKind::Sequence
            } else if id & !GIN_FLAGS_ALL == 0 {
                PageKind::Gin
            } else {
                PageKind::Unknown
            }
        }
        16 => match u16_at(page, sp + 14) {
            HASHO_PAGE_ID => PageKind::Hash,
            GIST_PAGE_ID => PageKind::Gist,
            c if c <= MAX_BT_CYCLE_ID => PageKind::Btree,
            _ => PageKind::Unknown,
        },
        _ => PageKind::Unknown,
    }
}

/// Apply the masks of `kind` to `page` (8192 bytes) in place. `blkno` is the
/// page's block number (the heap mask rewrites speculative ctids to it).
/// [`PageKind::New`] and [`PageKind::Invalid`] pages are left alone, like
/// PostgreSQL leaves new pages.
pub fn mask_page(kind: PageKind, page: &mut [u8], blkno: u32) {
    if page.len() != BLCKSZ || u16_at(page, 14) == 0 {
        return; // PageIsNew: nothing to mask
    }
    if !header_is_sane(page) {
        return;
    }
    // The access method's special space must be there (a caller may pass a
    // kind from the catalog for a page that is not what it should be).
    let special_size = BLCKSZ - u16_at(page, 16) as usize;
    let needs = match kind {
        PageKind::Btree | PageKind::Hash | PageKind::Gist => 16,
        PageKind::Gin | PageKind::SpGist | PageKind::Brin | PageKind::Sequence => 8,
        _ => 0,
    };
    if special_size < needs {
        mask_checksum(page);
        return;
    }
    match kind {
        PageKind::New | PageKind::Invalid => {}
        PageKind::Heap => {
            mask_checksum(page);
            mask_page_hint_bits(page);
            mask_unused_space(page);
            mask_heap_tuples(page, blkno);
        }
        PageKind::Btree => mask_btree(page),
        PageKind::Hash => mask_hash(page),
        PageKind::Gin => mask_gin(page),
        PageKind::Gist => mask_gist(page),
        PageKind::SpGist => mask_spgist(page),
        PageKind::Brin => mask_brin(page),
        PageKind::Sequence => mask_sequence(page, blkno),
        // Their content lives in the "hole" (PageGetContents): only the
        // checksum is masked.
        PageKind::VisibilityMap | PageKind::FreeSpaceMap => mask_checksum(page),
        PageKind::Unknown => {
            mask_checksum(page);
            mask_unused_space(page);
        }
    }
}

fn mask_checksum(page: &mut [u8]) {
    put_u16(page, 8, 0);
}

/// `mask_page_hint_bits`.
fn mask_page_hint_bits(page: &mut [u8]) {
    page[20..24].fill(0); // pd_prune_xid
    let flags = u16_at(page, 10) & !(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE);
    put_u16(page, 10, flags);
}

/// `mask_unused_space` (skipped, instead of PostgreSQL's error, when the
/// pointers are out of order: then the difference shows).
fn mask_unused_space(page: &mut [u8]) {
    let h = PageHeader::parse(page);
    let (lower, upper, special) = (h.lower as usize, h.upper as usize, h.special as usize);
    if lower >= SIZE_OF_PAGE_HEADER && lower <= upper && upper <= special && special <= BLCKSZ {
        page[lower..upper].fill(0);
    }
}

/// `mask_page_content`: everything after the header, and lower/upper.
fn mask_page_content(page: &mut [u8]) {
    page[SIZE_OF_PAGE_HEADER..].fill(0);
    page[12..16].fill(0);
}

/// `mask_lp_flags`: every used line pointer becomes LP_UNUSED.
fn mask_lp_flags(page: &mut [u8]) {
    for off in 1..=PageHeader::parse(page).max_offset() {
        if let Some(id) = item_id(page, off) {
            if id.flags != LP_UNUSED {
                set_item_flags(page, off, LP_UNUSED);
            }
        }
    }
}

fn mask_heap_tuples(page: &mut [u8], blkno: u32) {
    for off in 1..=PageHeader::parse(page).max_offset() {
        let Some(id) = item_id(page, off) else { continue };
        let (lp_off, len) = (id.off as usize, id.len as usize);
        if len == 0 || lp_off + len > BLCKSZ {
            continue;
        }
        if id.flags == LP_NORMAL && len >= SIZEOF_HEAP_TUPLE_HEADER {
            mask_heap_tuple_header(&mut page[lp_off..lp_off + SIZEOF_HEAP_TUPLE_HEADER], blkno, off as u16);
        }
        // Padding after the tuple up to MAXALIGN.
        let end = (lp_off + len.next_multiple_of(8)).min(BLCKSZ);
        page[lp_off + len..end].fill(0);
    }
}

fn mask_heap_tuple_header(t: &mut [u8], blkno: u32, off: u16) {
    let infomask = u16_at(t, 20);
    let masked = if infomask & HEAP_XMIN_FROZEN != HEAP_XMIN_FROZEN {
        infomask & !HEAP_XACT_MASK
    } else {
        infomask & !(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED)
    };
    put_u16(t, 20, masked);
    t[8..12].fill(0); // t_cid
    if u16_at(t, 16) == SPEC_TOKEN_OFFSET_NUMBER {
        // ItemPointerSet(&t_ctid, blkno, off): BlockIdData is two u16 halves.
        put_u16(t, 12, (blkno >> 16) as u16);
        put_u16(t, 14, blkno as u16);
        put_u16(t, 16, off);
    }
}

fn mask_btree(page: &mut [u8]) {
    mask_checksum(page);
    mask_unused_space(page);
    let sp = u16_at(page, 16) as usize;
    let flags = u16_at(page, sp + 12);
    if flags & BTP_LEAF != 0 {
        mask_lp_flags(page);
    }
    put_u16(page, sp + 12, flags & !(BTP_HAS_GARBAGE | BTP_SPLIT_END));
    put_u16(page, sp + 14, 0); // btpo_cycleid
}

fn mask_hash(page: &mut [u8]) {
    mask_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    let sp = u16_at(page, 16) as usize;
    let page_type = u16_at(page, sp + 12) & LH_PAGE_TYPE;
    if page_type == LH_UNUSED_PAGE {
        mask_page_content(page);
    } else if page_type == LH_BUCKET_PAGE || page_type == LH_OVERFLOW_PAGE {
        mask_lp_flags(page);
    }
    let flags = u16_at(page, sp + 12);
    put_u16(page, sp + 12, flags & !LH_PAGE_HAS_DEAD_TUPLES);
}

fn mask_gin(page: &mut [u8]) {
    mask_checksum(page);
    mask_page_hint_bits(page);
    let sp = u16_at(page, 16) as usize;
    if u16_at(page, sp + 6) & GIN_DELETED != 0 {
        mask_page_content(page);
    } else if u16_at(page, 12) as usize > SIZE_OF_PAGE_HEADER {
        mask_unused_space(page);
    }
}

fn mask_gist(page: &mut [u8]) {
    mask_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);
    let sp = u16_at(page, 16) as usize;
    page[sp..sp + 8].fill(0); // NSN
    let flags = u16_at(page, sp + 12);
    if flags & F_LEAF != 0 {
        mask_lp_flags(page);
    }
    put_u16(page, sp + 12, (flags | F_FOLLOW_RIGHT) & !F_HAS_GARBAGE);
}

fn mask_spgist(page: &mut [u8]) {
    mask_checksum(page);
    mask_page_hint_bits(page);
    if u16_at(page, 12) as usize >= SIZE_OF_PAGE_HEADER {
        mask_unused_space(page);
    }
    let sp = u16_at(page, 16) as usize;
    if u16_at(page, sp) & SPGIST_META != 0 {
        page[SPGIST_LUP_CACHE].fill(0);
    }
}

fn mask_brin(page: &mut [u8]) {
    mask_checksum(page);
    mask_page_hint_bits(page);
    let sp = u16_at(page, 16) as usize;
    let page_type = u16_at(page, sp + 6);
    if page_type == BRIN_PAGETYPE_REGULAR
        || (page_type == BRIN_PAGETYPE_META && u16_at(page, 12) as usize > SIZE_OF_PAGE_HEADER)
    {
        mask_unused_space(page);
    }
    let flags = u16_at(page, sp + 4);
    put_u16(page, sp + 4, flags & !BRIN_EVACUATE_PAGE);
}

fn mask_sequence(page: &mut [u8], blkno: u32) {
    mask_checksum(page);
    mask_unused_space(page);
    if let Some(id) = item_id(page, 1) {
        let (at, len) = (id.off as usize, id.len as usize);
        if id.flags == LP_NORMAL && len == SEQ_TUPLE_LEN && at + len <= BLCKSZ {
            mask_heap_tuple_header(&mut page[at..at + SIZEOF_HEAP_TUPLE_HEADER], blkno, 1);
            let hoff = page[at + 22] as usize;
            if hoff + 16 <= len {
                page[at + hoff..at + hoff + 16].fill(0); // last_value, log_cnt
            }
        }
    }
}

/// Byte ranges `[start, end)` where two pages differ.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn page_init(special_size: usize) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        put_u16(&mut p, 12, SIZE_OF_PAGE_HEADER as u16);
        put_u16(&mut p, 14, (BLCKSZ - special_size) as u16);
        put_u16(&mut p, 16, (BLCKSZ - special_size) as u16);
        put_u16(&mut p, 18, PAGE_SIZE_VERSION);
        p
    }

    /// Add an item of `len` bytes (filled with `fill`) with `flags`.
    fn add_item(p: &mut [u8], len: usize, flags: u8, fill: u8) -> usize {
        let h = PageHeader::parse(p);
        let upper = h.upper as usize - len.next_multiple_of(8);
        p[upper..upper + len].fill(fill);
        let raw = (upper as u32) | ((flags as u32) << 15) | ((len as u32) << 17);
        let at = h.lower as usize;
        p[at..at + 4].copy_from_slice(&raw.to_le_bytes());
        put_u16(p, 12, h.lower + 4);
        put_u16(p, 14, upper as u16);
        upper
    }

    #[test]
    fn detects_kinds_by_special_space() {
        assert_eq!(detect_page_kind(&vec![0u8; BLCKSZ]), PageKind::New);
        assert_eq!(detect_page_kind(&page_init(0)), PageKind::Heap);
        let mut p = page_init(16);
        assert_eq!(detect_page_kind(&p), PageKind::Btree);
        put_u16(&mut p, BLCKSZ - 2, HASHO_PAGE_ID);
        assert_eq!(detect_page_kind(&p), PageKind::Hash);
        put_u16(&mut p, BLCKSZ - 2, GIST_PAGE_ID);
        assert_eq!(detect_page_kind(&p), PageKind::Gist);
        let mut p = page_init(8);
        assert_eq!(detect_page_kind(&p), PageKind::Gin);
        put_u16(&mut p, BLCKSZ - 2, SPGIST_PAGE_ID);
        assert_eq!(detect_page_kind(&p), PageKind::SpGist);
        put_u16(&mut p, BLCKSZ - 2, BRIN_PAGETYPE_REVMAP);
        assert_eq!(detect_page_kind(&p), PageKind::Brin);
        let mut p = page_init(8);
        p[BLCKSZ - 8..BLCKSZ - 4].copy_from_slice(&SEQ_MAGIC.to_le_bytes());
        add_item(&mut p, SEQ_TUPLE_LEN, LP_NORMAL, 7);
        assert_eq!(detect_page_kind(&p), PageKind::Sequence);
        let mut p = page_init(24);
        assert_eq!(detect_page_kind(&p), PageKind::Unknown);
        put_u16(&mut p, 18, 0x2002);
        assert_eq!(detect_page_kind(&p), PageKind::Invalid);
    }

    #[test]
    fn heap_hint_bits_and_hole_are_masked_but_data_is_not() {
        let mut a = page_init(0);
        let at = add_item(&mut a, 30, LP_NORMAL, 0x11);
        put_u16(&mut a, at + 20, 0x0002); // HEAP_HASVARWIDTH only
        let mut b = a.clone();
        put_u16(&mut b, at + 20, 0x0002 | 0x0100 | HEAP_XMAX_INVALID); // XMIN_COMMITTED hints
        put_u16(&mut b, 10, PD_ALL_VISIBLE);
        put_u16(&mut b, 8, 0xBEEF); // checksum
        b[100] = 9; // in the hole
        b[at + 25] = 0x12; // padding after a 30-byte tuple
        assert_ne!(a, b);
        let (mut ma, mut mb) = (a.clone(), b.clone());
        mask_page(PageKind::Heap, &mut ma, 0);
        mask_page(PageKind::Heap, &mut mb, 0);
        assert_eq!(
            diff_ranges(&ma, &mb),
            vec![(at + 25, at + 26)],
            "only the tuple byte is left"
        );
        b[at + 25] = 0x11;
        b[at + 30] = 0x12; // padding
        let mut mb = b.clone();
        mask_page(PageKind::Heap, &mut mb, 0);
        assert_eq!(ma, mb);
        // pd_lsn is not masked.
        b[4] = 1;
        let mut mb = b.clone();
        mask_page(PageKind::Heap, &mut mb, 0);
        assert_eq!(diff_ranges(&ma, &mb), vec![(4, 5)]);
    }

    #[test]
    fn btree_leaf_lp_dead_is_masked() {
        let mut a = page_init(16);
        put_u16(&mut a, BLCKSZ - 4, BTP_LEAF);
        add_item(&mut a, 16, LP_NORMAL, 3);
        let mut b = a.clone();
        set_item_flags(&mut b, 1, LP_DEAD);
        put_u16(&mut b, BLCKSZ - 4, BTP_LEAF | BTP_HAS_GARBAGE);
        mask_page(PageKind::Btree, &mut a, 1);
        mask_page(PageKind::Btree, &mut b, 1);
        assert_eq!(a, b);
    }

    #[test]
    fn sequence_values_are_masked() {
        let mut a = page_init(8);
        a[BLCKSZ - 8..BLCKSZ - 4].copy_from_slice(&SEQ_MAGIC.to_le_bytes());
        let at = add_item(&mut a, SEQ_TUPLE_LEN, LP_NORMAL, 0);
        a[at + 22] = 24; // t_hoff
        let mut b = a.clone();
        a[at + 24] = 5; // last_value 5
        b[at + 24] = 37; // logged ahead
        a[at + 32] = 32; // log_cnt
        mask_page(PageKind::Sequence, &mut a, 0);
        mask_page(PageKind::Sequence, &mut b, 0);
        assert_eq!(a, b);
    }
}
