//! Decoding one WAL record (`XLogRecord` + block references + main data),
//! following PostgreSQL 15's `DecodeXLogRecord`.
//!
//! Layout: the 24-byte header; then a sequence of headers, each introduced
//! by a block id — block references (id 0..=32, each with optional image
//! header and relation), the main data length (short or long), the
//! replication origin, the top-level xid; then the payloads in the same
//! order: for each block its image then its data, finally the main data.
//!
//! Payloads are returned as [`Bytes`] slices of the record: nothing is
//! copied. Every length is checked against the record before use, so a
//! malformed record yields a [`RecordDecodeError`], never a panic.

use bytes::Bytes;
use utils::lsn::Lsn;

use crate::pg_constants::*;
use crate::relfile::RelFileNode;
use crate::rmgr::{self, RM_XLOG_ID};

/// The fixed record header (`XLogRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XLogRecordHeader {
    pub xl_tot_len: u32,
    pub xl_xid: u32,
    pub xl_prev: Lsn,
    pub xl_info: u8,
    pub xl_rmid: u8,
    pub xl_crc: u32,
}

impl XLogRecordHeader {
    /// Parse the first 24 bytes of `buf` (which must hold them).
    pub fn parse(buf: &[u8]) -> XLogRecordHeader {
        assert!(buf.len() >= XLOG_SIZE_OF_XLOG_RECORD, "short record header");
        let u32_at = |off: usize| u32::from_le_bytes(buf[off..off + 4].try_into().expect("4"));
        XLogRecordHeader {
            xl_tot_len: u32_at(0),
            xl_xid: u32_at(4),
            xl_prev: Lsn(u64::from_le_bytes(buf[8..16].try_into().expect("8"))),
            xl_info: buf[16],
            xl_rmid: buf[17],
            xl_crc: u32_at(20),
        }
    }

    /// The 24 header bytes (padding zeroed).
    pub fn encode(&self) -> [u8; XLOG_SIZE_OF_XLOG_RECORD] {
        let mut out = [0u8; XLOG_SIZE_OF_XLOG_RECORD];
        out[0..4].copy_from_slice(&self.xl_tot_len.to_le_bytes());
        out[4..8].copy_from_slice(&self.xl_xid.to_le_bytes());
        out[8..16].copy_from_slice(&self.xl_prev.0.to_le_bytes());
        out[16] = self.xl_info;
        out[17] = self.xl_rmid;
        out[20..24].copy_from_slice(&self.xl_crc.to_le_bytes());
        out
    }

    /// The resource-manager-specific bits of `xl_info`.
    pub fn rmgr_info(&self) -> u8 {
        self.xl_info & XLR_RMGR_INFO_MASK
    }

    pub fn is_xlog_switch(&self) -> bool {
        self.xl_rmid == RM_XLOG_ID && self.rmgr_info() == XLOG_SWITCH
    }
}

/// CRC-32C of a whole record as PostgreSQL computes `xl_crc`: the payload
/// after the header first, then the header up to the CRC field.
pub fn record_crc(record: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&record[XLOG_SIZE_OF_XLOG_RECORD..]);
    crc32c::crc32c_append(crc, &record[..XLOG_RECORD_CRC_OFFSET])
}

/// A full-page image carried by a block reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage {
    /// The stored bytes (without the hole; compressed if `bimg_info` says so).
    pub data: Bytes,
    pub hole_offset: u16,
    pub hole_length: u16,
    /// `BKPIMAGE_*` bits.
    pub bimg_info: u8,
}

impl BlockImage {
    /// Whether redo should restore this image (`BKPIMAGE_APPLY`); false for
    /// images kept only for `wal_consistency_checking`.
    pub fn apply(&self) -> bool {
        self.bimg_info & BKPIMAGE_APPLY != 0
    }

    /// The compression method, if any (`pglz`, `lz4`, `zstd`).
    pub fn compression(&self) -> Option<&'static str> {
        match self.bimg_info & BKPIMAGE_COMPRESSED_MASK {
            0 => None,
            BKPIMAGE_COMPRESS_PGLZ => Some("pglz"),
            BKPIMAGE_COMPRESS_LZ4 => Some("lz4"),
            _ => Some("zstd"),
        }
    }

    /// The full 8 KiB page with the hole filled with zeroes. Compressed
    /// images are not supported yet and give `None`.
    pub fn restore_page(&self) -> Option<Vec<u8>> {
        if self.compression().is_some() {
            return None;
        }
        let (off, len) = (self.hole_offset as usize, self.hole_length as usize);
        let mut page = Vec::with_capacity(BLCKSZ);
        page.extend_from_slice(&self.data[..off]);
        page.resize(off + len, 0);
        page.extend_from_slice(&self.data[off..]);
        (page.len() == BLCKSZ).then_some(page)
    }
}

/// One block reference of a record (`DecodedBkpBlock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub id: u8,
    pub rel: RelFileNode,
    pub forknum: u8,
    pub blkno: u32,
    /// The raw `fork_flags` byte.
    pub flags: u8,
    pub image: Option<BlockImage>,
    /// Block-specific data (empty unless `BKPBLOCK_HAS_DATA`).
    pub data: Bytes,
}

impl BlockRef {
    /// The record initialises the block from scratch (`BKPBLOCK_WILL_INIT`).
    pub fn will_init(&self) -> bool {
        self.flags & BKPBLOCK_WILL_INIT != 0
    }

    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// The image is restored by redo (rather than kept for verification).
    pub fn apply_image(&self) -> bool {
        self.image.as_ref().is_some_and(BlockImage::apply)
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub lsn: Lsn,
    pub header: XLogRecordHeader,
    pub blocks: Vec<BlockRef>,
    pub main_data: Bytes,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
    /// The whole record, as given to [`DecodedRecord::decode`].
    pub raw: Bytes,
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL record at {lsn}: {reason}")]
pub struct RecordDecodeError {
    pub lsn: Lsn,
    pub reason: String,
}

/// A cursor over the record's header area that reports overruns.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    lsn: Lsn,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], RecordDecodeError> {
        let end = self.pos + N;
        let bytes = self.buf.get(self.pos..end).ok_or_else(|| RecordDecodeError {
            lsn: self.lsn,
            reason: format!("record ends inside {what} at offset {}", self.pos),
        })?;
        self.pos = end;
        Ok(bytes.try_into().expect("N bytes"))
    }
    fn fail(&self, reason: String) -> RecordDecodeError {
        RecordDecodeError { lsn: self.lsn, reason }
    }
    fn u8(&mut self, what: &str) -> Result<u8, RecordDecodeError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, RecordDecodeError> {
        Ok(u16::from_le_bytes(self.take(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, RecordDecodeError> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }
}

/// Most block references one record can carry (block ids 0..=32).
const MAX_BLOCKS_PER_RECORD: usize = XLR_MAX_BLOCK_ID as usize + 1;

impl DecodedRecord {
    /// Decode `raw`, the record that starts at `lsn` (as yielded by the
    /// stream decoder; its CRC is not checked again here).
    pub fn decode(lsn: Lsn, raw: Bytes) -> Result<DecodedRecord, RecordDecodeError> {
        let fail = |reason: String| RecordDecodeError { lsn, reason };
        if raw.len() < XLOG_SIZE_OF_XLOG_RECORD {
            return Err(fail(format!("record of {} bytes is shorter than its header", raw.len())));
        }
        let header = XLogRecordHeader::parse(&raw);
        if header.xl_tot_len as usize != raw.len() {
            return Err(fail(format!(
                "xl_tot_len {} does not match the {} bytes given",
                header.xl_tot_len,
                raw.len()
            )));
        }
        let mut parsed = HeaderParse::default();
        let mut rd = Reader { buf: &raw, pos: XLOG_SIZE_OF_XLOG_RECORD, lsn };
        while raw.len() - rd.pos > parsed.payload_total {
            parsed.read_one(&mut rd)?;
        }
        if raw.len() - rd.pos != parsed.payload_total {
            return Err(fail("payload lengths do not add up to the record length".into()));
        }
        let payload_start = rd.pos;
        parsed.slice_payloads(lsn, header, raw, payload_start)
    }

    pub fn rmgr_name(&self) -> String {
        rmgr::rmgr_name(self.header.xl_rmid)
    }

    /// `xl_tot_len` minus the bytes of full-page images (`pg_waldump`'s
    /// "rec" length).
    pub fn len_without_images(&self) -> usize {
        let images: usize = self.blocks.iter().filter_map(|b| b.image.as_ref()).map(|i| i.data.len()).sum();
        self.raw.len() - images
    }

    /// The block reference with id `id`.
    pub fn block(&self, id: u8) -> Option<&BlockRef> {
        self.blocks.iter().find(|b| b.id == id)
    }
}

/// State of the header-area walk in `DecodedRecord::decode`.
struct HeaderParse {
    blocks: Vec<BlockRef>,
    /// (image length, data length) of `blocks[i]`, sliced out once the
    /// header area ends.
    payload_lens: [(u16, u16); MAX_BLOCKS_PER_RECORD],
    main_data_len: usize,
    origin: Option<u16>,
    toplevel_xid: Option<u32>,
    payload_total: usize,
}

impl Default for HeaderParse {
    fn default() -> Self {
        HeaderParse {
            blocks: Vec::new(),
            payload_lens: [(0, 0); MAX_BLOCKS_PER_RECORD],
            main_data_len: 0,
            origin: None,
            toplevel_xid: None,
            payload_total: 0,
        }
    }
}

impl HeaderParse {
    fn read_one(&mut self, rd: &mut Reader) -> Result<(), RecordDecodeError> {
        match rd.u8("block id")? {
            XLR_BLOCK_ID_DATA_SHORT => self.set_main_data(rd.u8("main data length")? as usize),
            XLR_BLOCK_ID_DATA_LONG => self.set_main_data(rd.u32("main data length")? as usize),
            XLR_BLOCK_ID_ORIGIN => self.origin = Some(rd.u16("origin")?),
            XLR_BLOCK_ID_TOPLEVEL_XID => self.toplevel_xid = Some(rd.u32("top-level xid")?),
            id if id <= XLR_MAX_BLOCK_ID => self.read_block(rd, id)?,
            id => return Err(rd.fail(format!("invalid block_id {id}"))),
        }
        Ok(())
    }

    fn set_main_data(&mut self, len: usize) {
        self.main_data_len = len;
        self.payload_total += len;
    }

    fn read_block(&mut self, rd: &mut Reader, id: u8) -> Result<(), RecordDecodeError> {
        if let Some(last) = self.blocks.last() {
            if id <= last.id {
                return Err(rd.fail(format!("out-of-order block_id {id}")));
            }
        }
        let flags = rd.u8("block header")?;
        let data_len = rd.u16("block header")? as usize;
        let has_data = flags & BKPBLOCK_HAS_DATA != 0;
        if has_data != (data_len > 0) {
            return Err(rd.fail(format!(
                "BKPBLOCK_HAS_DATA is {has_data} but data length is {data_len} (block {id})"
            )));
        }
        let (image, image_len) = if flags & BKPBLOCK_HAS_IMAGE != 0 {
            read_image_header(rd, id)?
        } else {
            (None, 0)
        };
        let rel = if flags & BKPBLOCK_SAME_REL != 0 {
            let prev = self.blocks.last().map(|b| b.rel);
            prev.ok_or_else(|| rd.fail(format!("BKPBLOCK_SAME_REL set but no previous rel (block {id})")))?
        } else {
            let spc_node = rd.u32("relation")?;
            let db_node = rd.u32("relation")?;
            let rel_node = rd.u32("relation")?;
            RelFileNode { spc_node, db_node, rel_node }
        };
        let blkno = rd.u32("block number")?;
        self.payload_total += image_len + data_len;
        let forknum = flags & BKPBLOCK_FORK_MASK;
        // Block ids are strictly increasing and at most XLR_MAX_BLOCK_ID,
        // so there are never more than MAX_BLOCKS_PER_RECORD of them.
        self.payload_lens[self.blocks.len()] = (image_len as u16, data_len as u16);
        self.blocks.push(BlockRef { id, rel, forknum, blkno, flags, image, data: Bytes::new() });
        Ok(())
    }

    fn slice_payloads(
        self,
        lsn: Lsn,
        header: XLogRecordHeader,
        raw: Bytes,
        mut pos: usize,
    ) -> Result<DecodedRecord, RecordDecodeError> {
        let mut blocks = self.blocks;
        for (block, &(image_len, data_len)) in blocks.iter_mut().zip(&self.payload_lens) {
            let (image_len, data_len) = (image_len as usize, data_len as usize);
            if let Some(image) = block.image.as_mut() {
                image.data = raw.slice(pos..pos + image_len);
                pos += image_len;
            }
            block.data = raw.slice(pos..pos + data_len);
            pos += data_len;
        }
        let main_data = raw.slice(pos..pos + self.main_data_len);
        Ok(DecodedRecord {
            lsn,
            header,
            blocks,
            main_data,
            origin: self.origin,
            toplevel_xid: self.toplevel_xid,
            raw,
        })
    }
}

/// Read and check an `XLogRecordBlockImageHeader` (and the compression
/// header when present); returns the image (data filled in later) and its
/// stored length.
fn read_image_header(rd: &mut Reader, id: u8) -> Result<(Option<BlockImage>, usize), RecordDecodeError> {
    let bimg_len = rd.u16("image header")? as usize;
    let hole_offset = rd.u16("image header")?;
    let bimg_info = rd.u8("image header")?;
    let compressed = bimg_info & BKPIMAGE_COMPRESSED_MASK != 0;
    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
    let hole_length = match (has_hole, compressed) {
        (true, true) => rd.u16("image compression header")?,
        (true, false) => (BLCKSZ - bimg_len.min(BLCKSZ)) as u16,
        (false, _) => 0,
    };
    let problem = if has_hole && (hole_offset == 0 || hole_length == 0 || bimg_len == BLCKSZ) {
        Some("BKPIMAGE_HAS_HOLE set, but hole offset/length/image length are inconsistent")
    } else if !has_hole && (hole_offset != 0 || hole_length != 0) {
        Some("BKPIMAGE_HAS_HOLE not set, but hole offset or length is not zero")
    } else if compressed && bimg_len == BLCKSZ {
        Some("BKPIMAGE_COMPRESSED set, but image length is a whole block")
    } else if !has_hole && !compressed && bimg_len != BLCKSZ {
        Some("neither hole nor compression, but image length is not a whole block")
    } else if hole_offset as usize + hole_length as usize > BLCKSZ || bimg_len > BLCKSZ {
        Some("image hole or length exceeds the block size")
    } else {
        None
    };
    if let Some(problem) = problem {
        let detail = format!("block {id}: length {bimg_len}, hole {hole_offset}+{hole_length}");
        return Err(rd.fail(format!("{problem} ({detail})")));
    }
    let image = BlockImage { data: Bytes::new(), hole_offset, hole_length, bimg_info };
    Ok((Some(image), bimg_len))
}
