//! The byte protocol spoken with `walredo_main()` (pgxn/walredo/walredo.c)
//! over the redo process's stdin/stdout.
//!
//! Every message is a tag byte, a little-endian `u32` body length, then the
//! body. A request is `B` (target block), optionally `P` (base page) or `Z`
//! (zero page), any number of `A` (end LSN + raw record), then `G`, which the
//! process answers with exactly `BLCKSZ` bytes. `H` (ping) is answered with
//! `PONG`. `T` (a test command, [`TestCommand`]) is answered with `DONE`,
//! but only by a test build of the extension (`build-walredo.sh --test`); a
//! production build treats it as an unknown tag and exits. Before serving, the process prints [`READY_MARKER`] on a line of
//! its own (after Postgres' single-user banner, which the client skips).
//!
//! This module only builds byte buffers: it owns no I/O and has no
//! cancellation concerns. Invariant: a buffer built by [`encode_request`]
//! is one complete request that ends with `G`.
use bytes::Bytes;
use postgres_ffi::pg_constants::BLCKSZ;
use postgres_ffi::RelFileNode;
use utils::lsn::Lsn;

/// Line printed by the process when it starts serving.
pub const READY_MARKER: &str = "STRATA-WALREDO-READY";
/// The answer to a ping.
pub const PONG: &[u8; 4] = b"PONG";
/// The answer to a test command.
pub const DONE: &[u8; 4] = b"DONE";
/// The SQL that starts the service in single-user mode.
pub const START_SQL: &str = "SELECT walredo_main();\n";

fn put_header(buf: &mut Vec<u8>, tag: u8, len: usize) {
    buf.push(tag);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
}

/// What a request rebuilds: block `blkno` of fork `forknum` of `rel`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub rel: RelFileNode,
    pub forknum: u8,
    pub blkno: u32,
}

/// Base page of a request.
pub enum Base<'a> {
    /// No base: the first record must initialise the page or carry its image.
    None,
    /// A page of `BLCKSZ` bytes.
    Image(&'a [u8]),
    /// An all-zero page.
    Zero,
}

/// Encode a whole request (begin, base, records, get-page).
/// `records` are (end LSN, raw record) pairs.
pub fn encode_request<'a>(
    target: Target,
    base: Base<'_>,
    records: impl Iterator<Item = (Lsn, &'a Bytes)>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + BLCKSZ);
    put_header(&mut buf, b'B', 17);
    for v in [target.rel.spc_node, target.rel.db_node, target.rel.rel_node] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    buf.push(target.forknum);
    buf.extend_from_slice(&target.blkno.to_le_bytes());
    match base {
        Base::None => {}
        Base::Image(page) => {
            put_header(&mut buf, b'P', page.len());
            buf.extend_from_slice(page);
        }
        Base::Zero => put_header(&mut buf, b'Z', 0),
    }
    for (lsn, rec) in records {
        put_header(&mut buf, b'A', 8 + rec.len());
        buf.extend_from_slice(&lsn.0.to_le_bytes());
        buf.extend_from_slice(rec);
    }
    put_header(&mut buf, b'G', 0);
    buf
}

/// A request that only a test build of the extension serves: it makes the
/// process do what its sandbox or resource limits must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestCommand {
    /// Open a TCP socket (forbidden by the seccomp filter).
    OpenSocket,
    /// Allocate and touch this many bytes (stopped by the memory limit).
    Allocate { size_bytes: u64 },
}

/// Encode a test command: kind (u8), argument (u64).
pub fn encode_test_command(cmd: TestCommand) -> Vec<u8> {
    let (kind, arg) = match cmd {
        TestCommand::OpenSocket => (1u8, 0u64),
        TestCommand::Allocate { size_bytes } => (2, size_bytes),
    };
    let mut buf = Vec::with_capacity(14);
    put_header(&mut buf, b'T', 9);
    buf.push(kind);
    buf.extend_from_slice(&arg.to_le_bytes());
    buf
}

/// Encode a ping.
pub fn encode_ping() -> Vec<u8> {
    let mut buf = Vec::with_capacity(5);
    put_header(&mut buf, b'H', 0);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let rel = RelFileNode { spc_node: 1663, db_node: 5, rel_node: 16384 };
        let rec = Bytes::from_static(&[7u8; 30]);
        let buf = encode_request(
            Target { rel, forknum: 0, blkno: 9 },
            Base::Zero,
            [(Lsn(0x1_0000_0010), &rec)].into_iter(),
        );
        assert_eq!(&buf[..5], &[b'B', 17, 0, 0, 0]);
        assert_eq!(&buf[5..9], &1663u32.to_le_bytes());
        assert_eq!(buf[17], 0);
        assert_eq!(&buf[18..22], &9u32.to_le_bytes());
        assert_eq!(&buf[22..27], &[b'Z', 0, 0, 0, 0]);
        assert_eq!(&buf[27..32], &[b'A', 38, 0, 0, 0]);
        assert_eq!(&buf[32..40], &0x1_0000_0010u64.to_le_bytes());
        assert_eq!(&buf[70..], &[b'G', 0, 0, 0, 0]);
        assert_eq!(encode_ping(), vec![b'H', 0, 0, 0, 0]);
        let alloc = encode_test_command(TestCommand::Allocate { size_bytes: 0x0102 });
        assert_eq!(alloc, vec![b'T', 9, 0, 0, 0, 2, 2, 1, 0, 0, 0, 0, 0, 0]);
    }
}
