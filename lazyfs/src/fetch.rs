//! Fetching blocks from the pageserver: GetPage@start_lsn over the binary
//! page stream ([`pageclient`]), for the FUSE threads.
//!
//! Owns one tokio runtime and one page-stream connection shared by every
//! FUSE thread (requests from them are pipelined on it). Invariants: a page
//! handed back is exactly [`BLOCK_BYTES`] long and is the pageserver's
//! answer for that block at the start LSN; on any failure the caller gets an
//! error, never a zero page. A lost connection is replaced once per call
//! (the next call reconnects again if that failed), with the token file
//! read again, so a re-signed token is used.
//!
//! Cancellation: callers block (they are FUSE worker threads, not tasks);
//! nothing here is run on the runtime's threads except the client itself.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use pageclient::{PageClient, PageClientError, RelTag};
use utils::id::{TenantId, TimelineId};
use utils::lsn::Lsn;

use crate::blockmap::BLOCK_BYTES;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("page service: {0}")]
    Client(#[from] PageClientError),
    #[error("block {blkno} of {rel:?} came back {len} bytes long")]
    BadPage { rel: RelTag, blkno: u32, len: usize },
    #[error("page service token: {0}")]
    Token(String),
}

fn read_token(path: Option<&std::path::Path>) -> Result<Option<String>, FetchError> {
    path.map(auth::read_token_file).transpose().map_err(|e| FetchError::Token(e.to_string()))
}

/// Where blocks come from.
pub struct Fetcher {
    rt: tokio::runtime::Runtime,
    host: String,
    port: u16,
    tenant: TenantId,
    timeline: TimelineId,
    pub lsn: Lsn,
    client: Mutex<Option<PageClient>>,
    metrics: Metrics,
    /// The token presented to the page service, read at each connection.
    token_file: Option<PathBuf>,
}

impl Fetcher {
    /// Connects at once, so a wrong address, timeline or token fails the
    /// start. `token_file`: the token (a JWT) for a page service that
    /// checks them, read at every (re)connection.
    pub fn connect(
        host: &str,
        port: u16,
        tenant: TenantId,
        timeline: TimelineId,
        lsn: Lsn,
        metrics: Metrics,
        token_file: Option<PathBuf>,
    ) -> Result<Fetcher, FetchError> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().thread_name("lazyfs-io").build().map_err(|e| {
            PageClientError::Connect { addr: format!("{host}:{port}"), reason: format!("tokio runtime: {e}") }
        })?;
        let token = read_token(token_file.as_deref())?;
        let client = rt.block_on(PageClient::connect_with_token(host, port, tenant, timeline, token.as_deref()))?;
        Ok(Fetcher { rt, host: host.into(), port, tenant, timeline, lsn, client: Mutex::new(Some(client)), metrics, token_file })
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    fn client(&self) -> Result<PageClient, FetchError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref().filter(|c| c.closed().is_none()) {
            return Ok(c.clone());
        }
        tracing::warn!(host = %self.host, port = self.port, "page service connection lost; reconnecting");
        let token = read_token(self.token_file.as_deref())?;
        let c = self.rt.block_on(PageClient::connect_with_token(&self.host, self.port, self.tenant, self.timeline, token.as_deref()))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Blocks `blknos` of `rel` at the start LSN, in order.
    pub fn fetch(&self, rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, FetchError> {
        let started = Instant::now();
        let result = self.fetch_once(rel, blknos).or_else(|e| match e {
            FetchError::Client(ref c) if c.is_fatal() => self.fetch_once(rel, blknos),
            other => Err(other),
        });
        self.metrics.fetch_seconds.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(pages) => self.metrics.blocks_fetched.inc_by(pages.len() as u64),
            Err(e) => {
                self.metrics.fetch_errors.inc();
                tracing::error!(?rel, blocks = blknos.len(), lsn = %self.lsn, "fetch failed: {e}");
            }
        }
        result
    }

    fn fetch_once(&self, rel: RelTag, blknos: &[u32]) -> Result<Vec<Bytes>, FetchError> {
        let client = self.client()?;
        let blocks: Vec<(RelTag, u32)> = blknos.iter().map(|&b| (rel, b)).collect();
        let answers = self.rt.block_on(client.get_pages(&blocks, self.lsn))?;
        answers
            .into_iter()
            .zip(blknos)
            .map(|(page, &blkno)| {
                let page = page?;
                if page.len() as u64 != BLOCK_BYTES {
                    return Err(FetchError::BadPage { rel, blkno, len: page.len() });
                }
                Ok(page)
            })
            .collect()
    }
}
