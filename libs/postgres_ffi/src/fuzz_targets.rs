//! Entry points of the fuzz targets (`fuzz/`) and of their regression tests
//! (`tests/fuzz_regressions.rs`): each takes arbitrary bytes and must never
//! panic, overflow or loop for ever, whatever the bytes. Not an API for
//! anything else. No state, no I/O, no cancellation concerns.
use bytes::Bytes;
use utils::lsn::Lsn;

use crate::controlfile::{CheckPoint, ControlFile};
use crate::waldecoder::WalStreamDecoder;
use crate::DecodedRecord;

const SEG_SIZE_BYTES: u64 = 16 << 20;

/// Decode everything the record decoder can get out of `rec`, including
/// the restored pages of its images.
fn decode_record(lsn: Lsn, rec: Bytes) {
    if let Ok(decoded) = DecodedRecord::decode(lsn, rec) {
        let _ = decoded.rmgr_name();
        let _ = decoded.len_without_images();
        for blk in &decoded.blocks {
            let _ = (blk.will_init(), blk.has_image(), blk.apply_image());
            if let Some(image) = &blk.image {
                let _ = (image.apply(), image.compression(), image.restore_page());
            }
        }
    }
}

/// The WAL stream decoder (and the record decoder on what it yields).
/// `data[0]` picks where the stream starts (a segment, a page, or inside a
/// page) and the size of the chunks it is fed in.
pub fn wal_stream(data: &[u8]) {
    let Some((&mode, wal)) = data.split_first() else { return };
    let start = match mode % 3 {
        0 => Lsn(SEG_SIZE_BYTES),
        1 => Lsn(SEG_SIZE_BYTES + 8192),
        _ => Lsn(SEG_SIZE_BYTES + 8192 + 40),
    };
    let chunk_len = usize::from(mode / 3).max(1) * 97;
    let mut decoder = WalStreamDecoder::new(start, SEG_SIZE_BYTES);
    for chunk in wal.chunks(chunk_len) {
        decoder.feed_bytes(chunk);
        loop {
            match decoder.poll_decode() {
                Ok(Some(raw)) => decode_record(raw.start_lsn, raw.bytes),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = (decoder.available_lsn(), decoder.consumed_lsn());
}

/// The record decoder on one raw record.
pub fn wal_record(data: &[u8]) {
    decode_record(Lsn(SEG_SIZE_BYTES + 8192 + 40), Bytes::copy_from_slice(data));
}

/// The pg_control and checkpoint record readers.
pub fn pg_control(data: &[u8]) {
    if let Ok(control) = ControlFile::parse(data) {
        let _ = (control.checkpoint(), control.wal_seg_size(), control.state(), control.min_recovery_point());
        let _ = control.encode();
    }
    let _ = CheckPoint::decode(data);
}
