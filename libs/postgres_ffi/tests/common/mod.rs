//! Shared by the WAL decoding tests and the decode benchmark: a directory of
//! real PostgreSQL 15 WAL made by a varied workload, and `pg_waldump`'s view
//! of the same files, parsed into [`RecordSummary`]s.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use pg_harness::{pg_bin, PgCluster};
use postgres_ffi::relfile::fork_name;
use postgres_ffi::DecodedRecord;
use utils::lsn::Lsn;

/// What `pg_waldump --bkp-details` says of one record, and what we compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    pub lsn: Lsn,
    pub prev: Lsn,
    pub rmgr: String,
    pub rec_len: usize,
    pub tot_len: usize,
    pub xid: u32,
    pub blocks: Vec<String>,
}

/// Where a fixture's WAL copy lives: a temporary directory removed with
/// the fixture, or a fixed directory (for a fixture kept in a `static`,
/// which is never dropped) that the next run replaces.
pub enum FixtureDir {
    Temp(tempfile::TempDir),
    Fixed(PathBuf),
}

impl FixtureDir {
    fn path(&self) -> &Path {
        match self {
            FixtureDir::Temp(t) => t.path(),
            FixtureDir::Fixed(p) => p,
        }
    }
}

/// A copy of a cluster's `pg_wal` plus `pg_waldump`'s reading of it.
pub struct WalFixture {
    pub dir: FixtureDir,
    pub seg_size: u64,
    pub start: Lsn,
    pub waldump: Vec<RecordSummary>,
    /// Where `pg_waldump` stopped, from its final error line.
    pub waldump_end: Lsn,
}

impl WalFixture {
    /// Run `sql` on a fresh cluster with `settings`, stop it cleanly and keep
    /// a copy of its WAL.
    pub fn generate(settings: &[(&str, &str)], sql: &str) -> anyhow::Result<WalFixture> {
        Self::generate_into(FixtureDir::Temp(tempfile::tempdir()?), settings, sql)
    }

    /// [`WalFixture::generate`] into the fixed directory `dir` (emptied
    /// first), for a fixture that is never dropped: its copy does not
    /// outlive the next run's.
    pub fn generate_in(dir: PathBuf, settings: &[(&str, &str)], sql: &str) -> anyhow::Result<WalFixture> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Self::generate_into(FixtureDir::Fixed(dir), settings, sql)
    }

    fn generate_into(dir: FixtureDir, settings: &[(&str, &str)], sql: &str) -> anyhow::Result<WalFixture> {
        let mut pg = PgCluster::start(settings)?;
        pg.sql(sql)?;
        pg.stop()?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(pg.wal_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                std::fs::copy(entry.path(), dir.path().join(&name))?;
                segments.push(name);
            }
        }
        segments.sort();
        let first = segments.first().context("no WAL segments")?;
        let seg_size = postgres_ffi::wal_files::segment_size_of(&dir.path().join(first))?;
        let last = segments.last().context("no WAL segments")?;
        let (waldump, waldump_end) = run_waldump(dir.path(), first, last)?;
        let start = waldump.first().context("pg_waldump printed no records")?.lsn;
        Ok(WalFixture { dir, seg_size, start, waldump, waldump_end })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The WAL bytes from `from` to the end of the last segment file.
    pub fn bytes_from(&self, from: Lsn) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = from;
        loop {
            let path: PathBuf = postgres_ffi::wal_files::segment_path(self.path(), 1, pos, self.seg_size);
            let Ok(data) = std::fs::read(&path) else { return out };
            out.extend_from_slice(&data[pos.segment_offset(self.seg_size) as usize..]);
            pos = pos.segment_start(self.seg_size) + self.seg_size;
        }
    }

    pub fn total_bytes(&self) -> u64 {
        std::fs::read_dir(self.path())
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// `pg_waldump -b` over the segments in `dir` from `first_segment` to
/// `last_segment` (given only a start segment, it reads that one file alone).
fn run_waldump(dir: &Path, first_segment: &str, last_segment: &str) -> anyhow::Result<(Vec<RecordSummary>, Lsn)> {
    let out = Command::new(pg_bin("pg_waldump"))
        .arg("--bkp-details")
        .arg("-p")
        .arg(dir)
        .arg(first_segment)
        .arg(last_segment)
        .output()
        .context("run pg_waldump")?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let records = parse_waldump(&stdout)?;
    // "pg_waldump: error: error in WAL record at 0/1511A88: invalid record length at 0/1511B00: wanted 24, got 0"
    let end = stderr
        .split("invalid record length at ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .with_context(|| {
            let last = stdout.lines().last().unwrap_or("");
            format!("unexpected pg_waldump ending ({}): stderr {stderr:?}, last record {last:?}", out.status)
        })?;
    Ok((records, end.parse()?))
}

/// Parse `pg_waldump --bkp-details` output.
pub fn parse_waldump(text: &str) -> anyhow::Result<Vec<RecordSummary>> {
    let mut records: Vec<RecordSummary> = Vec::new();
    for line in text.lines() {
        if let Some(blk) = line.strip_prefix("\tblkref #") {
            let rec = records.last_mut().context("blkref before any record")?;
            rec.blocks.push(format!("#{blk}"));
        } else if let Some(rest) = line.strip_prefix("rmgr: ") {
            records.push(parse_record_line(rest).with_context(|| format!("line {line:?}"))?);
        } else {
            bail!("unexpected pg_waldump line {line:?}");
        }
    }
    Ok(records)
}

fn parse_record_line(rest: &str) -> anyhow::Result<RecordSummary> {
    let (rmgr, rest) = rest.split_once(" len (rec/tot):").context("no len")?;
    let (head, _desc) = rest.split_once(", desc:").context("no desc")?;
    let fields: Vec<&str> = head.split(", ").map(str::trim).collect();
    let [lens, tx, lsn, prev] = fields[..] else { bail!("fields {fields:?}") };
    let (rec_len, tot_len) = lens.split_once('/').context("lens")?;
    Ok(RecordSummary {
        lsn: lsn.strip_prefix("lsn: ").context("lsn")?.parse()?,
        prev: prev.strip_prefix("prev ").context("prev")?.parse()?,
        rmgr: rmgr.trim().to_string(),
        rec_len: rec_len.trim().parse()?,
        tot_len: tot_len.trim().parse()?,
        xid: tx.strip_prefix("tx:").context("tx")?.trim().parse()?,
        blocks: Vec::new(),
    })
}

/// Our decoding of a record, in `pg_waldump`'s terms.
pub fn summarize(rec: &DecodedRecord) -> RecordSummary {
    let blocks = rec.blocks.iter().map(|b| {
        let mut s = format!(
            "#{}: rel {} fork {} blk {}",
            b.id,
            b.rel,
            fork_name(b.forknum).unwrap_or("?"),
            b.blkno
        );
        if let Some(img) = &b.image {
            let verify = if img.apply() { "" } else { " for WAL verification" };
            s += &format!("(FPW{verify}); hole: offset: {}, length: {}", img.hole_offset, img.hole_length)
                .replacen("(", " (", 1);
            if let Some(method) = img.compression() {
                let saved = 8192 - img.hole_length as usize - img.data.len();
                s += &format!(", compression saved: {saved}, method: {method}");
            }
        }
        s
    });
    RecordSummary {
        lsn: rec.lsn,
        prev: rec.header.xl_prev,
        rmgr: rec.rmgr_name(),
        rec_len: rec.len_without_images(),
        tot_len: rec.raw.len(),
        xid: rec.header.xl_xid,
        blocks: blocks.collect(),
    }
}
