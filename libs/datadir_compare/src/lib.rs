//! Compares two PostgreSQL 15 data directories that should hold the same
//! database state — a primary's and its physical standby's after replay,
//! or (Strata) a compute's own and the one rebuilt from the pageserver at
//! the same LSN — page by page, with the masks of `wal_consistency_checking`
//! ([`postgres_ffi::page_mask`]).
//!
//! What is compared, by relative path:
//!
//! * **Relation files** (`global/`, `base/<db>/`,
//!   `pg_tblspc/<spc>/PG_15_*/<db>/`, following tablespace symlinks; every
//!   segment `<relfilenode>[_fork][.N]`): block by block. A block whose
//!   bytes differ is masked according to its kind ([`page_mask`]: detected
//!   from the page's special space for the main and init forks, from the
//!   fork for `_vm`) and compared again. A block present on one side only
//!   (the file is shorter or missing on the other) must be *empty*: all
//!   zeros, or a freshly initialised page that was never WAL-logged
//!   (`pd_lsn` 0, no line pointers, nothing else set — what the visibility
//!   map's `vm_extend` writes). PostgreSQL extends files without WAL (bulk
//!   extension, hash bucket allocation, VM extension) and replay only
//!   extends up to the blocks records touch, so such tails are expected.
//! * **SLRUs** (`pg_xact`, `pg_multixact/offsets`, `pg_multixact/members`,
//!   `pg_commit_ts`): segment by segment, byte-equal up to the shorter
//!   length; differing lengths and segments present on one side only are
//!   notes, not differences (each server zeroes, extends and truncates its
//!   SLRU pages on its own schedule, within what WAL says).
//! * **Relation mapper files** (`pg_filenode.map`): byte-equal.
//! * **Everything else** not excluded (`PG_VERSION`, `pg_twophase/*`,
//!   unknown files): byte-equal, and present on both sides.
//!
//! Side A is the server that wrote its own pages (primary, compute), side B
//! the copy rebuilt from WAL (standby, pageserver basebackup). Besides the
//! masks, two differences that PostgreSQL 15 itself produces between such
//! copies are accepted, counted and noted (found by running the whole
//! regression suite on a primary with a streaming standby):
//!
//! * a visibility-map page on B with a subset of A's bits
//!   ([`Options::allow_vm_bits_missing_in_b`]; `CREATE DATABASE` with the
//!   default WAL_LOG strategy logs VM pages without their bits);
//! * a page whose `pd_lsn` on A is a placeholder — 0, or GistBuildLSN on a
//!   GiST page — where B has the LSN of the record that logged it, and that
//!   is otherwise equal ([`Report::pages_unstamped_in_a`]: unlogged indexes'
//!   init forks, GiST sorted builds).
//!
//! Excluded, each for a reason ([`exclusion_reason`]): WAL, statistics,
//! replication slots, logical decoding state, transient state (snapshots,
//! dynamic shared memory, LISTEN/NOTIFY, SSI, subtransactions), postmaster
//! run-time files, configuration, recovery signals and base-backup
//! artefacts, `pg_control`, relcache init files, temporary files and
//! temporary relations, free space maps, and the main and VM forks of
//! unlogged relations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use postgres_ffi::page_mask::{self, detect_page_kind, diff_ranges, item_id, mask_page, ItemId, PageHeader, PageKind};
use postgres_ffi::pg_constants::{BLCKSZ, FSM_FORKNUM, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};
use postgres_ffi::relfile::{fork_name, fork_number};
use postgres_ffi::RelFileNode;

/// Blocks per relation segment file (1 GiB of 8 KiB pages).
pub const RELSEG_SIZE: u64 = 131_072;
/// Pages per SLRU segment file.
pub const SLRU_PAGES_PER_SEGMENT: u64 = 32;
const DEFAULTTABLESPACE_OID: u32 = 1663;
const GLOBALTABLESPACE_OID: u32 = 1664;
/// `GistBuildLSN`: the fake LSN GiST's index build puts on pages.
const GIST_BUILD_LSN: u64 = 1;

/// Which directory a file or block came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "A",
            Side::B => "B",
        })
    }
}

/// Side A is the directory of the server that wrote its pages itself (a
/// primary, a compute endpoint); side B the one rebuilt from WAL (a
/// standby, a basebackup from the pageserver). The comparison is symmetric
/// except where an option says otherwise.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop recording differences after this many (counting goes on).
    pub max_differences: usize,
    /// Accept a visibility-map page on B that has a subset of A's bits
    /// (and is otherwise equal) — the safe direction: a missing bit only
    /// costs a heap visit. PostgreSQL 15 itself produces this: `CREATE
    /// DATABASE ... STRATEGY WAL_LOG` (the default) copies every fork with
    /// `log_newpage_buffer(buf, page_std = true)`, and a VM page keeps its
    /// bits in what a standard page calls the hole, so the image in the WAL
    /// drops them and replay rebuilds the new database's VM pages empty.
    /// Bits set on B but not on A are always a difference. Default true.
    pub allow_vm_bits_missing_in_b: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_differences: 20,
            allow_vm_bits_missing_in_b: true,
        }
    }
}

/// The result of a comparison.
#[derive(Debug, Default)]
pub struct Report {
    /// Files compared (on either side), excluded ones not counted.
    pub files_compared: usize,
    /// Relation blocks compared (present on at least one side).
    pub pages_compared: u64,
    /// Blocks whose bytes differed but are equal after masking.
    pub pages_equal_after_masking: u64,
    /// Blocks present on one side only, and empty there.
    pub empty_pages_one_side: u64,
    /// Visibility-map pages whose bits on B are a strict subset of A's
    /// (see [`Options::allow_vm_bits_missing_in_b`]).
    pub vm_pages_fewer_bits_in_b: u64,
    /// Pages equal except that A's `pd_lsn` is a placeholder (0, or
    /// GistBuildLSN 0/1 on a GiST page) where B has the LSN of the record
    /// that logged the page: the writer wrote the page before (or without)
    /// stamping it. PostgreSQL 15 does this in `btbuildempty` and
    /// `spgbuildempty` (unlogged indexes' init forks: `smgrwrite` then
    /// `log_newpage`) and in GiST's sorted build
    /// (`gist_indexsortbuild_flush_ready_pages`: pages written with
    /// GistBuildLSN, then `log_newpages` on the in-memory copies).
    pub pages_unstamped_in_a: u64,
    /// Compared blocks by page kind (as detected on side A, else B).
    pub pages_by_kind: BTreeMap<&'static str, u64>,
    /// Relative paths of the relation files compared.
    pub relation_files: Vec<String>,
    /// The first differences, up to [`Options::max_differences`].
    pub differences: Vec<Difference>,
    /// All differences (files, or relation forks, that differ).
    pub differences_total: usize,
    /// Things that are not differences but worth knowing.
    pub notes: Vec<String>,
    /// Excluded paths (relative) with the reason.
    pub excluded: Vec<(String, &'static str)>,
}

impl Report {
    pub fn is_equal(&self) -> bool {
        self.differences_total == 0
    }

    /// `N files, M pages compared, K differences`.
    pub fn summary(&self) -> String {
        format!(
            "{} files, {} pages compared, {} differences",
            self.files_compared, self.pages_compared, self.differences_total
        )
    }

    /// Human-readable report: the first difference decoded, the others by
    /// one line, notes (all of them with `verbose`), and the summary line.
    pub fn render(&self, verbose: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (i, d) in self.differences.iter().enumerate() {
            let text = d.to_string();
            if i == 0 {
                let _ = writeln!(out, "{text}");
            } else {
                let _ = writeln!(out, "also: {}", text.lines().next().unwrap_or_default());
            }
        }
        if self.differences_total > self.differences.len() {
            let _ = writeln!(out, "... and {} more", self.differences_total - self.differences.len());
        }
        if verbose {
            for n in &self.notes {
                let _ = writeln!(out, "note: {n}");
            }
            for (path, reason) in &self.excluded {
                let _ = writeln!(out, "excluded: {path}: {reason}");
            }
            let kinds: Vec<String> = self.pages_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "pages by kind: {}", kinds.join(", "));
        } else if !self.notes.is_empty() {
            let _ = writeln!(out, "{} notes (--verbose shows them and the exclusions)", self.notes.len());
        }
        if self.pages_equal_after_masking > 0 {
            let _ = writeln!(out, "{} pages differed only in masked bits", self.pages_equal_after_masking);
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    fn add(&mut self, opts: &Options, d: Difference) {
        self.differences_total += 1;
        if self.differences.len() < opts.max_differences {
            self.differences.push(d);
        }
    }
}

/// One relation fork: the directory it lives in and its file number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFork {
    /// Relative directory: `global`, `base/5`, `pg_tblspc/16390/PG_15_202209061/5`.
    pub dir: String,
    pub rel: RelFileNode,
    pub fork: u8,
}

impl RelFork {
    /// Path of the first segment, relative to the data directory.
    pub fn path(&self) -> String {
        match self.fork {
            MAIN_FORKNUM => format!("{}/{}", self.dir, self.rel.rel_node),
            f => format!("{}/{}_{}", self.dir, self.rel.rel_node, fork_name(f).unwrap_or("?")),
        }
    }
}

impl fmt::Display for RelFork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (rel {} fork {})",
            self.path(),
            self.rel,
            fork_name(self.fork).unwrap_or("?")
        )
    }
}

/// How two files differ.
#[derive(Debug)]
pub struct Difference {
    /// Relative path of the file (first segment for relations).
    pub path: String,
    pub what: DiffKind,
}

#[derive(Debug)]
pub enum DiffKind {
    /// A file, or a non-empty relation block, exists on one side only.
    OnlyIn { side: Side, detail: String },
    /// Relation pages differ after masking.
    Page {
        first: Box<PageDiff>,
        /// Blocks of this relation fork that differ.
        blocks_differing: u64,
    },
    /// Non-relation files differ at a byte (SLRU, relmapper, others).
    Bytes { offset: u64, a: u8, b: u8, detail: String },
    /// Non-relation, non-SLRU files differ in length (and not before).
    Length { a: u64, b: u64 },
}

/// The first differing block of a relation fork, decoded.
#[derive(Debug)]
pub struct PageDiff {
    pub relation: RelFork,
    pub block: u64,
    pub kind_a: PageKind,
    pub kind_b: PageKind,
    /// Raw (unmasked) headers.
    pub header_a: PageHeader,
    pub header_b: PageHeader,
    /// Header fields that differ after masking.
    pub header_fields_differing: Vec<&'static str>,
    /// Line pointers whose (masked) item id or item bytes differ.
    pub line_pointers: Vec<LinePointerDiff>,
    /// Byte ranges `[start, end)` that differ after masking.
    pub ranges: Vec<(usize, usize)>,
    /// The masked bytes of the first few ranges (up to 32 bytes each), A and B.
    pub range_bytes: Vec<(usize, Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
pub struct LinePointerDiff {
    pub offset: usize,
    /// Raw item ids.
    pub a: Option<ItemId>,
    pub b: Option<ItemId>,
    pub item_id_differs: bool,
    pub item_bytes_differ: bool,
}

fn fmt_item(i: &Option<ItemId>) -> String {
    match i {
        Some(i) => format!("(off {}, {}, len {})", i.off, i.flags_name(), i.len),
        None => "(none)".to_string(),
    }
}

impl fmt::Display for PageDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  page kind: A {} / B {}", self.kind_a.name(), self.kind_b.name())?;
        writeln!(f, "  {:<22} {:<20} {:<20}", "header field", "A", "B")?;
        for ((name, va), (_, vb)) in self.header_a.fields().iter().zip(self.header_b.fields().iter()) {
            let mark = if self.header_fields_differing.contains(name) {
                "  <- differs after masking"
            } else {
                ""
            };
            writeln!(f, "  {name:<22} {va:<20} {vb:<20}{mark}")?;
        }
        if self.line_pointers.is_empty() {
            writeln!(f, "  line pointers: no difference")?;
        } else {
            writeln!(f, "  line pointers that differ (after masking):")?;
            for lp in self.line_pointers.iter().take(20) {
                let mut what = Vec::new();
                if lp.item_id_differs {
                    what.push("item id");
                }
                if lp.item_bytes_differ {
                    what.push("item bytes");
                }
                writeln!(
                    f,
                    "    lp {:>3}: A {:<28} B {:<28} {}",
                    lp.offset,
                    fmt_item(&lp.a),
                    fmt_item(&lp.b),
                    what.join(", ")
                )?;
            }
            if self.line_pointers.len() > 20 {
                writeln!(f, "    ... {} more", self.line_pointers.len() - 20)?;
            }
        }
        let shown: Vec<String> = self
            .ranges
            .iter()
            .take(12)
            .map(|(s, e)| format!("[{s}..{e})"))
            .collect();
        write!(
            f,
            "  bytes differing after masking: {}{}",
            shown.join(" "),
            if self.ranges.len() > 12 {
                format!(" ... ({} ranges)", self.ranges.len())
            } else {
                String::new()
            }
        )?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ");
        for (start, a, b) in &self.range_bytes {
            write!(f, "\n    @{start}: A {}\n    @{start}: B {}", hex(a), hex(b))?;
        }
        Ok(())
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            DiffKind::OnlyIn { side, detail } => write!(f, "{}: only in {side}: {detail}", self.path),
            DiffKind::Page {
                first,
                blocks_differing,
            } => {
                writeln!(
                    f,
                    "{}: block {} differs ({} block{} of this fork differ{})",
                    first.relation,
                    first.block,
                    blocks_differing,
                    if *blocks_differing == 1 { "" } else { "s" },
                    if *blocks_differing == 1 { "s" } else { "" }
                )?;
                write!(f, "{first}")
            }
            DiffKind::Bytes { offset, a, b, detail } => {
                write!(f, "{}: byte {offset} differs: A 0x{a:02x}, B 0x{b:02x}", self.path)?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            DiffKind::Length { a, b } => write!(f, "{}: length differs: A {a} bytes, B {b} bytes", self.path),
        }
    }
}

/// Why a path (relative to the data directory, `/`-separated) is not
/// compared, or `None` if it is. Relation-level exclusions (FSM, unlogged
/// relations) are decided by the caller, which knows the init forks.
pub fn exclusion_reason(rel: &str) -> Option<&'static str> {
    let mut parts = rel.split('/');
    let top = parts.next().unwrap_or_default();
    let name = rel.rsplit('/').next().unwrap_or_default();
    let top_reason = match top {
        "pg_wal" => Some("WAL: each server's own segments, written, recycled and removed independently"),
        "pg_stat" | "pg_stat_tmp" => Some("cumulative statistics: not WAL-logged"),
        "pg_replslot" => Some("replication slots: per server"),
        "pg_logical" => Some("logical decoding snapshots and mappings: per server, not WAL-logged"),
        "pg_snapshots" => Some("exported snapshots: transient"),
        "pg_dynshmem" => Some("dynamic shared memory: transient"),
        "pg_notify" => Some("LISTEN/NOTIFY queue: transient, reset at start"),
        "pg_serial" => Some("serializable (SSI) summary: transient, reset at start"),
        "pg_subtrans" => Some("subtransaction parents: transient, zeroed at start"),
        "log" | "pg_log" => Some("server logs"),
        "postmaster.pid" | "postmaster.opts" | "current_logfiles" => Some("run-time state of a postmaster"),
        "postgresql.conf" | "postgresql.auto.conf" | "pg_hba.conf" | "pg_ident.conf" => {
            Some("configuration: per server (a standby's names its primary)")
        }
        "standby.signal" | "recovery.signal" => Some("recovery mode markers: per server"),
        "backup_label" | "backup_label.old" | "tablespace_map" | "tablespace_map.old" | "backup_manifest" => {
            Some("base-backup artefacts")
        }
        _ => None,
    };
    if top_reason.is_some() {
        return top_reason;
    }
    if rel == "global/pg_control" {
        return Some("control file: per-server state (checkpoint, state, minimum recovery point)");
    }
    if name == "pg_internal.init" {
        return Some("relcache init file: rebuilt at start, not WAL-logged");
    }
    if name.ends_with(".tmp") || name.starts_with("pgsql_tmp") || rel.split('/').any(|p| p.starts_with("pgsql_tmp")) {
        return Some("temporary file");
    }
    None
}

/// A relation file name: `<relfilenode>[_<fork>][.<segno>]`; `Err` with a
/// reason for temporary relations (`t<backend>_<relfilenode>...`).
fn parse_relation_file_name(name: &str) -> Option<Result<(u32, u8, u32), &'static str>> {
    if let Some(rest) = name.strip_prefix('t') {
        if rest
            .split('_')
            .next()
            .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
        {
            return Some(Err("temporary relation: not WAL-logged, removed at start"));
        }
        return None;
    }
    let (base, segno) = match name.split_once('.') {
        Some((b, s)) => (b, s.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let (num, fork) = match base.split_once('_') {
        Some((n, f)) => (n, fork_number(f)?),
        None => (base, MAIN_FORKNUM),
    };
    if num.is_empty() || !num.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(Ok((num.parse().ok()?, fork, segno)))
}

/// (spc, db) of a relation directory, or `None` if `dir` is not one.
fn relation_dir(dir: &str) -> Option<(u32, u32)> {
    let parts: Vec<&str> = dir.split('/').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    match parts.as_slice() {
        ["global"] => Some((GLOBALTABLESPACE_OID, 0)),
        ["base", db] => Some((DEFAULTTABLESPACE_OID, num(db)?)),
        ["pg_tblspc", spc, version, db] if version.starts_with("PG_") => Some((num(spc)?, num(db)?)),
        _ => None,
    }
}

/// A file of each side (either may be missing).
type Pair = (Option<PathBuf>, Option<PathBuf>);

const SLRU_DIRS: &[&str] = &[
    "pg_xact",
    "pg_multixact/offsets",
    "pg_multixact/members",
    "pg_commit_ts",
];

/// Every file under `root`, by relative path, following the symlinks in
/// `pg_tblspc`. Excluded directories are listed but not descended into.
fn list_files(root: &Path, excluded: &mut BTreeMap<String, &'static str>) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel_dir, dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("read directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("read directory {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if let Some(reason) = exclusion_reason(&rel) {
                excluded.insert(rel, reason);
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            let followed = if meta.file_type().is_symlink() {
                // Tablespaces (pg_tblspc/<oid> -> location); anything else is
                // followed too, and compared where it leads.
                std::fs::metadata(&path).with_context(|| format!("follow symlink {}", path.display()))?
            } else {
                meta
            };
            if followed.is_dir() {
                stack.push((rel, path));
            } else if followed.is_file() {
                out.insert(rel, path);
            }
        }
    }
    Ok(out)
}

/// Compare data directories `a` and `b`. Errors are for unreadable
/// directories; differences are in the [`Report`].
pub fn compare_datadirs(a: &Path, b: &Path, opts: &Options) -> anyhow::Result<Report> {
    let mut excluded = BTreeMap::new();
    let files_a = list_files(a, &mut excluded).with_context(|| format!("list {}", a.display()))?;
    let files_b = list_files(b, &mut excluded).with_context(|| format!("list {}", b.display()))?;
    let mut report = Report::default();

    // Sort every path into relation segments, SLRU segments, and the rest.
    let mut relations: BTreeMap<RelFork, BTreeMap<u32, Pair>> = BTreeMap::new();
    let mut slru: BTreeMap<String, Pair> = BTreeMap::new();
    let mut plain: BTreeMap<String, Pair> = BTreeMap::new();
    let mut init_forks: BTreeSet<(String, u32)> = BTreeSet::new();
    let all: BTreeSet<&String> = files_a.keys().chain(files_b.keys()).collect();
    for rel in all {
        let pa = files_a.get(rel).cloned();
        let pb = files_b.get(rel).cloned();
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        if let Some((spc, db)) = relation_dir(dir) {
            match parse_relation_file_name(name) {
                Some(Ok((relnode, fork, segno))) => {
                    let key = RelFork {
                        dir: dir.to_string(),
                        rel: RelFileNode {
                            spc_node: spc,
                            db_node: db,
                            rel_node: relnode,
                        },
                        fork,
                    };
                    if fork == INIT_FORKNUM {
                        init_forks.insert((dir.to_string(), relnode));
                    }
                    let e = relations.entry(key).or_default().entry(segno).or_default();
                    *e = (pa, pb);
                    continue;
                }
                Some(Err(reason)) => {
                    excluded.insert(rel.clone(), reason);
                    continue;
                }
                None => {}
            }
        }
        if SLRU_DIRS.contains(&dir) {
            slru.insert(rel.clone(), (pa, pb));
        } else {
            plain.insert(rel.clone(), (pa, pb));
        }
    }

    for (key, segments) in &relations {
        let reason = if key.fork == FSM_FORKNUM {
            Some("free space map: updated without WAL, replay's and the primary's own updates differ")
        } else if key.fork != INIT_FORKNUM && init_forks.contains(&(key.dir.clone(), key.rel.rel_node)) {
            Some("unlogged relation: not WAL-logged, reset from its init fork at start")
        } else {
            None
        };
        if let Some(reason) = reason {
            for segno in segments.keys() {
                let path = if *segno == 0 {
                    key.path()
                } else {
                    format!("{}.{segno}", key.path())
                };
                excluded.insert(path, reason);
            }
            continue;
        }
        report.files_compared += segments.len();
        for segno in segments.keys() {
            report.relation_files.push(if *segno == 0 {
                key.path()
            } else {
                format!("{}.{segno}", key.path())
            });
        }
        compare_relation(key, segments, opts, &mut report)?;
    }
    for (rel, (pa, pb)) in &slru {
        report.files_compared += 1;
        compare_slru(rel, pa.as_deref(), pb.as_deref(), opts, &mut report)?;
    }
    for (rel, (pa, pb)) in &plain {
        report.files_compared += 1;
        compare_plain(rel, pa.as_deref(), pb.as_deref(), opts, &mut report)?;
    }
    if report.empty_pages_one_side > 0 {
        report.notes.push(format!(
            "{} block(s) exist on one side only and are empty there (zero or initialised without WAL: \
             files extended without WAL, e.g. bulk extension, hash bucket allocation, VM extension)",
            report.empty_pages_one_side
        ));
    }
    if report.vm_pages_fewer_bits_in_b > 0 {
        report.notes.push(format!(
            "{} visibility-map page(s) have bits set on A that B lacks (the safe direction; expected in \
             databases made by CREATE DATABASE ... STRATEGY WAL_LOG, whose WAL images drop VM bits)",
            report.vm_pages_fewer_bits_in_b
        ));
    }
    if report.pages_unstamped_in_a > 0 {
        report.notes.push(format!(
            "{} page(s) are equal except that A's pd_lsn is a placeholder (0, or GistBuildLSN on GiST) where B \
             has the record's LSN (unlogged indexes' init forks, GiST sorted builds write pages before \
             WAL-logging them)",
            report.pages_unstamped_in_a
        ));
    }
    report.excluded = excluded.into_iter().collect();
    Ok(report)
}

/// Reads a relation segment page by page.
struct PageReader {
    file: Option<File>,
    path: Option<PathBuf>,
}

impl PageReader {
    fn open(path: Option<&Path>) -> anyhow::Result<PageReader> {
        let file = match path {
            Some(p) => Some(File::open(p).with_context(|| format!("open {}", p.display()))?),
            None => None,
        };
        Ok(PageReader {
            file,
            path: path.map(Path::to_path_buf),
        })
    }

    /// The next page, `None` at the end; a partial last page is padded
    /// with zeros and reported as `Err`-free but noted by the caller via
    /// the returned length.
    fn next(&mut self, buf: &mut [u8]) -> anyhow::Result<Option<usize>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut got = 0;
        while got < buf.len() {
            match file.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let p = self.path.as_deref().unwrap_or(Path::new("?"));
                    return Err(e).with_context(|| format!("read {}", p.display()));
                }
            }
        }
        if got == 0 {
            return Ok(None);
        }
        buf[got..].fill(0);
        Ok(Some(got))
    }
}

/// A page that a copy rebuilt from WAL may lack: all zeros, or a header
/// written by `PageInit` and nothing else (no LSN, no items, no flags).
pub fn is_empty_page(page: &[u8]) -> bool {
    if page.iter().all(|&b| b == 0) {
        return true;
    }
    let h = PageHeader::parse(page);
    h.lsn == 0
        && h.flags == 0
        && h.prune_xid == 0
        && h.lower as usize == page_mask::SIZE_OF_PAGE_HEADER
        && h.upper == h.special
        && h.pagesize_version == page_mask::PAGE_SIZE_VERSION
        && page[page_mask::SIZE_OF_PAGE_HEADER..].iter().all(|&b| b == 0)
}

fn kind_for(fork: u8, page: &[u8]) -> PageKind {
    let kind = detect_page_kind(page);
    match (fork, kind) {
        (_, PageKind::New) | (_, PageKind::Invalid) => kind,
        (VISIBILITYMAP_FORKNUM, _) => PageKind::VisibilityMap,
        (FSM_FORKNUM, _) => PageKind::FreeSpaceMap,
        _ => kind,
    }
}

/// Compare one block present on both sides; `None` if equal after masking.
fn compare_page(
    key: &RelFork,
    block: u64,
    a: &[u8],
    b: &[u8],
    opts: &Options,
    report: &mut Report,
) -> Option<PageDiff> {
    if a == b {
        return None;
    }
    let kind_a = kind_for(key.fork, a);
    let kind_b = kind_for(key.fork, b);
    let (mut ma, mut mb) = (a.to_vec(), b.to_vec());
    if kind_a == kind_b {
        mask_page(kind_a, &mut ma, block as u32);
        mask_page(kind_b, &mut mb, block as u32);
        if ma == mb {
            report.pages_equal_after_masking += 1;
            return None;
        }
        if kind_a == PageKind::VisibilityMap
            && opts.allow_vm_bits_missing_in_b
            && ma[..page_mask::SIZE_OF_PAGE_HEADER] == mb[..page_mask::SIZE_OF_PAGE_HEADER]
            && ma
                .iter()
                .zip(mb.iter())
                .skip(page_mask::SIZE_OF_PAGE_HEADER)
                .all(|(x, y)| y & !x == 0)
        {
            report.vm_pages_fewer_bits_in_b += 1;
            return None;
        }
        // Pages the writer put on disk before (or without) stamping the
        // LSN of the record that logged them: the copy rebuilt from WAL
        // has the record's LSN. See `Report::pages_unstamped_in_a`.
        let lsn_a = PageHeader::parse(&ma).lsn;
        let lsn_b = PageHeader::parse(&mb).lsn;
        let placeholder = lsn_a == 0 || (lsn_a == GIST_BUILD_LSN && kind_a == PageKind::Gist);
        if placeholder && lsn_b > lsn_a && ma[8..] == mb[8..] {
            report.pages_unstamped_in_a += 1;
            return None;
        }
    }
    let header_a = PageHeader::parse(a);
    let header_b = PageHeader::parse(b);
    let (mha, mhb) = (PageHeader::parse(&ma), PageHeader::parse(&mb));
    let header_fields_differing = mha
        .fields()
        .iter()
        .zip(mhb.fields().iter())
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, _)| x.0)
        .collect();
    let mut line_pointers = Vec::new();
    let n = mha.max_offset().max(mhb.max_offset());
    for off in 1..=n {
        let (ia, ib) = (item_id(&ma, off), item_id(&mb, off));
        let bytes = |p: &[u8], i: &Option<ItemId>| -> Vec<u8> {
            match i {
                Some(i) if i.len > 0 && (i.off as usize + i.len as usize) <= BLCKSZ => {
                    p[i.off as usize..i.off as usize + i.len as usize].to_vec()
                }
                _ => Vec::new(),
            }
        };
        let item_id_differs = ia != ib;
        let item_bytes_differ = bytes(&ma, &ia) != bytes(&mb, &ib);
        if item_id_differs || item_bytes_differ {
            line_pointers.push(LinePointerDiff {
                offset: off,
                a: item_id(a, off),
                b: item_id(b, off),
                item_id_differs,
                item_bytes_differ,
            });
        }
    }
    let ranges = diff_ranges(&ma, &mb);
    let range_bytes = ranges
        .iter()
        .take(4)
        .map(|&(s, e)| {
            let e = e.min(s + 32);
            (s, ma[s..e].to_vec(), mb[s..e].to_vec())
        })
        .collect();
    Some(PageDiff {
        relation: key.clone(),
        block,
        kind_a,
        kind_b,
        header_a,
        header_b,
        header_fields_differing,
        line_pointers,
        ranges,
        range_bytes,
    })
}

fn compare_relation(
    key: &RelFork,
    segments: &BTreeMap<u32, Pair>,
    opts: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut first: Option<Difference> = None;
    let mut blocks_differing = 0u64;
    let mut buf_a = vec![0u8; BLCKSZ];
    let mut buf_b = vec![0u8; BLCKSZ];
    for (segno, (pa, pb)) in segments {
        let mut ra = PageReader::open(pa.as_deref())?;
        let mut rb = PageReader::open(pb.as_deref())?;
        let mut blk_in_seg = 0u64;
        loop {
            let ga = ra.next(&mut buf_a)?;
            let gb = rb.next(&mut buf_b)?;
            if ga.is_none() && gb.is_none() {
                break;
            }
            let block = *segno as u64 * RELSEG_SIZE + blk_in_seg;
            blk_in_seg += 1;
            report.pages_compared += 1;
            let kind = kind_for(key.fork, if ga.is_some() { &buf_a } else { &buf_b });
            *report.pages_by_kind.entry(kind.name()).or_default() += 1;
            for (side, got) in [(Side::A, ga), (Side::B, gb)] {
                if let Some(n) = got {
                    if n != BLCKSZ {
                        report.notes.push(format!(
                            "{}: side {side} ends in a partial block {block} ({n} bytes)",
                            key.path()
                        ));
                    }
                }
            }
            let diff = match (ga, gb) {
                (Some(_), Some(_)) => compare_page(key, block, &buf_a, &buf_b, opts, report).map(|p| Difference {
                    path: key.path(),
                    what: DiffKind::Page {
                        first: Box::new(p),
                        blocks_differing: 0,
                    },
                }),
                (Some(_), None) | (None, Some(_)) => {
                    let (side, page) = if ga.is_some() {
                        (Side::A, &buf_a)
                    } else {
                        (Side::B, &buf_b)
                    };
                    if is_empty_page(page) {
                        report.empty_pages_one_side += 1;
                        None
                    } else {
                        let h = PageHeader::parse(page);
                        Some(Difference {
                            path: key.path(),
                            what: DiffKind::OnlyIn {
                                side,
                                detail: format!(
                                    "{key}: block {block} exists only in {side} and is not empty \
                                     (kind {}, pd_lsn {:X}/{:X}, pd_lower {}, pd_upper {})",
                                    kind_for(key.fork, page).name(),
                                    h.lsn >> 32,
                                    h.lsn as u32,
                                    h.lower,
                                    h.upper
                                ),
                            },
                        })
                    }
                }
                (None, None) => unreachable!(),
            };
            if let Some(d) = diff {
                blocks_differing += 1;
                if first.is_none() {
                    first = Some(d);
                }
            }
        }
    }
    if let Some(mut d) = first {
        if let DiffKind::Page {
            blocks_differing: n, ..
        } = &mut d.what
        {
            *n = blocks_differing;
        }
        report.add(opts, d);
    }
    Ok(())
}

fn read_all(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    match path {
        Some(p) => Ok(Some(std::fs::read(p).with_context(|| format!("read {}", p.display()))?)),
        None => Ok(None),
    }
}

/// What byte `offset` of SLRU segment `rel` holds, for messages.
fn describe_slru_byte(rel: &str, offset: u64, a: u8, b: u8) -> String {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let Ok(segno) = u64::from_str_radix(name, 16) else {
        return String::new();
    };
    let page_in_seg = offset / BLCKSZ as u64;
    let in_page = offset % BLCKSZ as u64;
    let page = segno * SLRU_PAGES_PER_SEGMENT + page_in_seg;
    match dir {
        "pg_xact" => {
            // 2 status bits per xid, 4 xids per byte.
            let first_xid = page * BLCKSZ as u64 * 4 + in_page * 4;
            let status = |byte: u8, i: u32| match (byte >> (2 * i)) & 3 {
                0 => "in progress",
                1 => "committed",
                2 => "aborted",
                _ => "sub-committed",
            };
            let xids: Vec<String> = (0..4u32)
                .filter(|&i| (a >> (2 * i)) & 3 != (b >> (2 * i)) & 3)
                .map(|i| format!("xid {}: A {} / B {}", first_xid + i as u64, status(a, i), status(b, i)))
                .collect();
            format!("CLOG page {page}; {}", xids.join("; "))
        }
        "pg_multixact/offsets" => {
            format!(
                "offsets page {page}, multixact {}",
                page * (BLCKSZ as u64 / 4) + in_page / 4
            )
        }
        _ => format!("SLRU page {page}, byte {in_page} of the page"),
    }
}

fn compare_slru(
    rel: &str,
    pa: Option<&Path>,
    pb: Option<&Path>,
    opts: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (a, b) = (read_all(pa)?, read_all(pb)?);
    match (a, b) {
        (Some(a), Some(b)) => {
            let n = a.len().min(b.len());
            if let Some(i) = (0..n).find(|&i| a[i] != b[i]) {
                let detail = describe_slru_byte(rel, i as u64, a[i], b[i]);
                report.add(
                    opts,
                    Difference {
                        path: rel.to_string(),
                        what: DiffKind::Bytes {
                            offset: i as u64,
                            a: a[i],
                            b: b[i],
                            detail,
                        },
                    },
                );
            } else if a.len() != b.len() {
                let longer = if a.len() > b.len() { &a } else { &b };
                let nonzero = longer[n..].iter().any(|&x| x != 0);
                report.notes.push(format!(
                    "{rel}: equal up to the shorter length; A {} bytes, B {} bytes (tail {})",
                    a.len(),
                    b.len(),
                    if nonzero { "holds data" } else { "all zero" }
                ));
            }
        }
        (Some(_), None) => report.notes.push(format!("{rel}: SLRU segment only in A")),
        (None, Some(_)) => report.notes.push(format!("{rel}: SLRU segment only in B")),
        (None, None) => {}
    }
    Ok(())
}

fn compare_plain(
    rel: &str,
    pa: Option<&Path>,
    pb: Option<&Path>,
    opts: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (a, b) = (read_all(pa)?, read_all(pb)?);
    let d = match (a, b) {
        (Some(a), Some(b)) => {
            let n = a.len().min(b.len());
            if let Some(i) = (0..n).find(|&i| a[i] != b[i]) {
                let detail = if rel.ends_with("pg_filenode.map") {
                    "relation mapper file".to_string()
                } else {
                    String::new()
                };
                Some(DiffKind::Bytes {
                    offset: i as u64,
                    a: a[i],
                    b: b[i],
                    detail,
                })
            } else if a.len() != b.len() {
                Some(DiffKind::Length {
                    a: a.len() as u64,
                    b: b.len() as u64,
                })
            } else {
                None
            }
        }
        (Some(a), None) => Some(DiffKind::OnlyIn {
            side: Side::A,
            detail: format!("{} bytes", a.len()),
        }),
        (None, Some(b)) => Some(DiffKind::OnlyIn {
            side: Side::B,
            detail: format!("{} bytes", b.len()),
        }),
        (None, None) => None,
    };
    if let Some(what) = d {
        report.add(
            opts,
            Difference {
                path: rel.to_string(),
                what,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An initialised visibility-map page with the given bytes of bitmap.
    fn vm_page(lsn: u64, bitmap: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&24u16.to_le_bytes());
        p[14..16].copy_from_slice(&8192u16.to_le_bytes());
        p[16..18].copy_from_slice(&8192u16.to_le_bytes());
        p[18..20].copy_from_slice(&0x2004u16.to_le_bytes());
        p[24..24 + bitmap.len()].copy_from_slice(bitmap);
        p
    }

    #[test]
    fn vm_pages_may_lose_bits_in_b_but_not_be_zeroed_or_gain_bits() {
        let key = RelFork { dir: "base/5".into(), rel: RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 }, fork: VISIBILITYMAP_FORKNUM };
        let opts = Options::default();
        let mut report = Report::default();
        let zero = vec![0u8; BLCKSZ];
        // B lost bits (same header): accepted and counted.
        assert!(compare_page(&key, 0, &vm_page(0x1000, &[0x03]), &vm_page(0x1000, &[0x01]), &opts, &mut report).is_none());
        assert_eq!(report.vm_pages_fewer_bits_in_b, 1);
        // B zeroed the whole page (as a truncation once did in the pageserver): a difference.
        assert!(compare_page(&key, 0, &vm_page(0x1000, &[0x03]), &zero, &opts, &mut report).is_some());
        // B has bits A lacks: a difference, whatever A's page looks like.
        assert!(compare_page(&key, 0, &zero, &vm_page(0x1000, &[0x03]), &opts, &mut report).is_some());
        assert!(compare_page(&key, 0, &vm_page(0x1000, &[0x01]), &vm_page(0x1000, &[0x03]), &opts, &mut report).is_some());
        // Not accepted when the option is off.
        let strict = Options { allow_vm_bits_missing_in_b: false, ..Options::default() };
        assert!(compare_page(&key, 0, &vm_page(0x1000, &[0x03]), &vm_page(0x1000, &[0x01]), &strict, &mut report).is_some());
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(parse_relation_file_name("16384"), Some(Ok((16384, MAIN_FORKNUM, 0))));
        assert_eq!(
            parse_relation_file_name("16384_vm"),
            Some(Ok((16384, VISIBILITYMAP_FORKNUM, 0)))
        );
        assert_eq!(
            parse_relation_file_name("16384_init"),
            Some(Ok((16384, INIT_FORKNUM, 0)))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm.2"),
            Some(Ok((16384, FSM_FORKNUM, 2)))
        );
        assert_eq!(parse_relation_file_name("16384.1"), Some(Ok((16384, MAIN_FORKNUM, 1))));
        assert!(matches!(parse_relation_file_name("t3_16384"), Some(Err(_))));
        assert_eq!(parse_relation_file_name("PG_VERSION"), None);
        assert_eq!(parse_relation_file_name("pg_filenode.map"), None);
        assert_eq!(parse_relation_file_name("16384_bogus"), None);
    }

    #[test]
    fn relation_dirs() {
        assert_eq!(relation_dir("global"), Some((1664, 0)));
        assert_eq!(relation_dir("base/5"), Some((1663, 5)));
        assert_eq!(relation_dir("pg_tblspc/16390/PG_15_202209061/5"), Some((16390, 5)));
        assert_eq!(relation_dir("pg_xact"), None);
        assert_eq!(relation_dir("base/pgsql_tmp"), None);
    }

    #[test]
    fn exclusions() {
        assert!(exclusion_reason("pg_wal").is_some());
        assert!(exclusion_reason("global/pg_control").is_some());
        assert!(exclusion_reason("base/5/pg_internal.init").is_some());
        assert!(exclusion_reason("base/pgsql_tmp/pgsql_tmp123.0").is_some());
        assert!(exclusion_reason("global/pg_filenode.map").is_none());
        assert!(exclusion_reason("base/5/1259").is_none());
        assert!(exclusion_reason("pg_xact/0000").is_none());
    }

    #[test]
    fn empty_pages() {
        assert!(is_empty_page(&vec![0u8; BLCKSZ]));
        let mut p = vec![0u8; BLCKSZ];
        p[12..14].copy_from_slice(&24u16.to_le_bytes());
        p[14..16].copy_from_slice(&8192u16.to_le_bytes());
        p[16..18].copy_from_slice(&8192u16.to_le_bytes());
        p[18..20].copy_from_slice(&page_mask::PAGE_SIZE_VERSION.to_le_bytes());
        assert!(is_empty_page(&p), "PageInit image");
        p[4] = 1;
        assert!(!is_empty_page(&p), "an LSN means it was WAL-logged");
        p[4] = 0;
        p[100] = 1;
        assert!(!is_empty_page(&p), "content");
    }

    #[test]
    fn clog_byte_is_decoded() {
        let s = describe_slru_byte("pg_xact/0000", 1, 0b0101_0101, 0b0101_1001);
        assert!(s.contains("xid 5: A committed / B aborted"), "{s}");
    }
}
