//! Prometheus metrics of the pageserver, registered in the default registry
//! on first use. Owned here so that every component reports under one
//! naming scheme (`strata_pageserver_*`).
use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge_vec, Histogram, IntCounter,
    IntCounterVec, IntGaugeVec,
};

const TIME_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// For passes that take seconds to minutes (compaction, GC).
const LONG_TIME_BUCKETS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0];
const BYTES_BUCKETS: &[f64] = &[
    128.0, 512.0, 2048.0, 8192.0, 32768.0, 131072.0, 524288.0, 2097152.0, 8388608.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register_histogram!(name, help, buckets.to_vec()).expect("metric names are unique")
}

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).expect("metric names are unique")
}

/// Time spent applying one run of records (in Postgres or in Rust).
pub static WAL_REDO_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_wal_redo_seconds", "Time spent on WAL redo of one request run", TIME_BUCKETS)
});

/// Records per Postgres redo request.
pub static WAL_REDO_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_wal_redo_records", "WAL records per redo request", COUNT_BUCKETS)
});

/// Record bytes per Postgres redo request.
pub static WAL_REDO_BYTES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_wal_redo_bytes", "WAL record bytes per redo request", BYTES_BUCKETS)
});

/// Time from spawning a redo process until it serves requests.
pub static WAL_REDO_LAUNCH_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_pageserver_wal_redo_process_launch_seconds",
        "Time to launch a WAL redo process",
        TIME_BUCKETS,
    )
});

/// Redo attempts that failed (each is retried once on a fresh process).
pub static WAL_REDO_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_wal_redo_failures_total", "Failed WAL redo attempts")
});

/// Redo processes that died or were killed during a request, by cause:
/// `sandbox` (seccomp), `cpu_limit`, `signal`, `exit`, `timeout`.
pub static WAL_REDO_PROCESS_DEATHS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_pageserver_wal_redo_process_deaths_total",
        "WAL redo processes that died or were killed during a request, by cause",
        &["cause"]
    )
    .expect("metric names are unique")
});

/// Records applied per GetPage@LSN reconstruction that needed redo.
pub static RECONSTRUCT_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_reconstruct_records", "WAL records per page reconstruction", COUNT_BUCKETS)
});

/// Time to serve one GetPage@LSN (after the LSN wait).
pub static GETPAGE_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_getpage_seconds", "Time to serve one GetPage@LSN request", TIME_BUCKETS)
});

/// Time to flush one frozen in-memory layer.
pub static LAYER_FLUSH_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_layer_flush_seconds", "Time to flush a frozen in-memory layer", TIME_BUCKETS)
});

/// WAL records ingested.
pub static WAL_INGEST_RECORDS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_wal_ingest_records_total", "WAL records ingested"));

/// WAL bytes received by walreceivers.
pub static WALRECEIVER_SOURCE_SWITCHES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_walreceiver_source_switches_total", "Walreceiver connections made to a different WAL source than the previous one"));
pub static WAL_RECEIVED_BYTES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_wal_received_bytes_total", "WAL bytes received"));

/// GC passes run.
pub static GC_RUNS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_gc_runs_total", "GC passes run"));

/// Layer files removed by GC.
pub static GC_LAYERS_REMOVED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_gc_layers_removed_total", "Layer files removed by GC"));

/// Bytes of layer files removed by GC.
pub static GC_BYTES_REMOVED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_gc_reclaimed_bytes_total", "Bytes of layer files removed by GC"));

/// Bytes of a timeline's layer files, on local disk or only in remote
/// storage (the API's `current_physical_size`).
pub static PHYSICAL_SIZE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_pageserver_physical_size_bytes",
        "Bytes of a timeline's layer files, resident or remote-only",
        &["tenant_id", "timeline_id"]
    )
    .expect("metric names are unique")
});

/// A per-timeline size exported under the project's name
/// (`strata_…_bytes`) and under seed 001's name, which dashboards built
/// for Neon know, with the same value.
pub struct SizeGauge {
    names: [IntGaugeVec; 2],
}

impl SizeGauge {
    fn new(name: &str, seed_name: &str, help: &str) -> SizeGauge {
        let gauge = |n: &str| register_int_gauge_vec!(n, help, &["tenant_id", "timeline_id"]).expect("metric names are unique");
        SizeGauge { names: [gauge(name), gauge(seed_name)] }
    }

    pub fn set(&self, tenant: &str, timeline: &str, bytes: u64) {
        for g in &self.names {
            g.with_label_values(&[tenant, timeline]).set(bytes as i64);
        }
    }

    /// The value under each name (project's, seed's).
    pub fn values(&self, tenant: &str, timeline: &str) -> [i64; 2] {
        self.names.each_ref().map(|g| g.with_label_values(&[tenant, timeline]).get())
    }

    pub fn remove(&self, tenant: &str, timeline: &str) {
        for g in &self.names {
            let _ = g.remove_label_values(&[tenant, timeline]);
        }
    }
}

/// Bytes of a timeline's layer files on local disk.
pub static RESIDENT_PHYSICAL_SIZE: LazyLock<SizeGauge> = LazyLock::new(|| {
    SizeGauge::new(
        "strata_pageserver_resident_physical_size_bytes",
        "pageserver_resident_physical_size",
        "Bytes of a timeline's layer files on local disk",
    )
});

/// Layer files evicted (deleted locally, kept in remote storage).
pub static LAYER_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_layer_evictions_total", "Layer files evicted from local disk (kept in remote storage)")
});

/// Eviction passes that found the resident size over the limit.
pub static EVICTION_PASSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_eviction_passes_total", "Eviction passes run with the resident size over the limit")
});

/// Layer downloads that failed after all attempts.
pub static LAYER_DOWNLOAD_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_remote_layer_download_errors_total", "Layer downloads that failed after all attempts")
});

/// Layer files of a timeline by kind (`l0`, `l1`, `image`).
pub static LAYERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_pageserver_layers",
        "Layer files of a timeline by kind (l0, l1, image)",
        &["tenant_id", "timeline_id", "kind"]
    )
    .expect("metric names are unique")
});

/// Compaction passes that wrote layers.
pub static COMPACTION_RUNS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_compaction_runs_total", "Compaction passes that merged L0 files or created image layers")
});

/// L0 files merged into L1 files.
pub static COMPACTION_L0_MERGED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_compaction_l0_merged_total", "L0 delta files merged into L1 files"));

/// Time of one L0 → L1 merge.
pub static COMPACTION_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_compaction_seconds", "Time to merge a timeline's L0 files into L1 files", LONG_TIME_BUCKETS)
});

/// Time of one GC pass.
pub static GC_TIME: LazyLock<Histogram> =
    LazyLock::new(|| histogram("strata_pageserver_gc_seconds", "Time of one GC pass of a timeline", LONG_TIME_BUCKETS));

/// Layer files uploaded to remote storage.
pub static LAYER_UPLOADS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_remote_layer_uploads_total", "Layer files uploaded to remote storage"));

/// Index objects uploaded to remote storage.
pub static INDEX_UPLOADS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("strata_pageserver_remote_index_uploads_total", "Index objects uploaded to remote storage"));

/// Remote layer objects deleted (after an index without them was uploaded).
pub static REMOTE_DELETIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_remote_layer_deletions_total", "Remote layer objects deleted")
});

/// Remote deletions and LSN advances skipped because a newer generation
/// holds the tenant.
pub static STALE_GENERATION_SKIPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "strata_pageserver_remote_stale_generation_skips_total",
        "Remote deletions or remote_consistent_lsn advances refused: a newer generation holds the tenant",
    )
});

/// Failed attempts of an upload-queue batch (each is retried).
pub static UPLOAD_QUEUE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_remote_upload_errors_total", "Failed upload-queue batches (retried)")
});

/// Layer files downloaded from remote storage.
pub static LAYER_DOWNLOADS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_remote_layer_downloads_total", "Layer files downloaded from remote storage")
});

/// Time to download one layer file.
pub static LAYER_DOWNLOAD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_pageserver_remote_layer_download_seconds",
        "Time to download one layer file",
        &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
    )
});

/// Operations waiting in upload queues.
pub static UPLOAD_QUEUE_PENDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_pageserver_remote_upload_queue_pending",
        "Operations queued for remote storage, per timeline",
        &["tenant_id", "timeline_id"]
    )
    .expect("metric names are unique")
});

/// Bytes of a timeline's layers in remote storage (its last uploaded index).
pub static REMOTE_PHYSICAL_SIZE: LazyLock<SizeGauge> = LazyLock::new(|| {
    SizeGauge::new(
        "strata_pageserver_remote_physical_size_bytes",
        "pageserver_remote_physical_size",
        "Bytes of the layers named by a timeline's last uploaded index",
    )
});

/// Lookups of layer-file index blocks served by the block cache.
pub static INDEX_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_layer_index_cache_hits_total", "Layer index block reads served by the block cache")
});

/// Layer-file index blocks read from disk (cache misses).
pub static INDEX_CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_layer_index_cache_misses_total", "Layer index block reads from disk")
});

/// Bytes held by the layer index block cache (bounded by its budget).
pub static INDEX_CACHE_BYTES: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!("strata_pageserver_layer_index_cache_bytes", "Bytes of layer index blocks cached")
        .expect("metric names are unique")
});

/// Reads of layer-file value blocks served by the value block cache.
pub static VALUE_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_layer_value_cache_hits_total", "Layer value block reads served by the value block cache")
});

/// Layer-file value blocks read from disk (value cache misses).
pub static VALUE_CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_layer_value_cache_misses_total", "Layer value block reads from disk")
});

/// Bytes held by the value block cache (bounded by its budget).
pub static VALUE_CACHE_BYTES: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!("strata_pageserver_layer_value_cache_bytes", "Bytes of layer value blocks cached")
        .expect("metric names are unique")
});

/// Requests per pipelined exchange with a WAL redo process.
pub static WAL_REDO_PIPELINED_REQUESTS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "strata_pageserver_wal_redo_pipelined_requests",
        "Page requests pipelined to a WAL redo process in one exchange",
        COUNT_BUCKETS,
    )
});

/// Relation-size lookups the relation-size cache answered.
pub static REL_SIZE_CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_rel_size_cache_hits_total", "Relation size/existence lookups answered by the relation-size cache")
});

/// Relation-size lookups that read the relation directory and size key.
pub static REL_SIZE_CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_rel_size_cache_misses_total", "Relation size/existence lookups read from storage")
});

/// Times a timeline's relation-size cache was full and emptied.
pub static REL_SIZE_CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_rel_size_cache_evictions_total", "Times a relation-size cache reached its capacity and was emptied")
});

/// Time ingest waited for frozen in-memory layers to be flushed.
pub static INGEST_BACKPRESSURE_SECONDS: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "strata_pageserver_ingest_backpressure_seconds_total",
        "Time WAL ingest waited for frozen in-memory layers to be flushed"
    )
    .expect("metric names are unique")
});

/// Times WAL ingest had to wait for frozen in-memory layers to be flushed.
pub static INGEST_BACKPRESSURE_WAITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_ingest_backpressure_waits_total", "Times WAL ingest waited for frozen layers to be flushed")
});

/// Open page service connections (text commands or a page stream); each
/// counts until its tasks have ended.
pub static PAGE_SERVICE_CONNECTIONS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "strata_pageserver_page_service_connections",
        "Open page service connections (their tasks included)"
    )
    .expect("metric names are unique")
});

/// Page service connections closed because the startup packet and
/// authentication were not done within the startup timeout.
pub static PAGE_SERVICE_STARTUP_TIMEOUTS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "strata_pageserver_page_service_startup_timeouts_total",
        "Page service connections closed for not finishing startup and authentication in time"
    )
    .expect("metric names are unique")
});

/// Page-stream requests served, by kind.
pub static PAGESTREAM_REQUESTS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "strata_pageserver_pagestream_requests_total",
        "Page-stream requests served, by kind",
        &["kind"]
    )
    .expect("metric names are unique")
});

/// Page-stream Error responses, by code.
pub static PAGESTREAM_ERRORS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "strata_pageserver_pagestream_errors_total",
        "Page-stream Error responses sent, by code",
        &["code"]
    )
    .expect("metric names are unique")
});

/// Requests per page-stream batch (requests waiting when the server
/// turned to them).
pub static PAGESTREAM_BATCH_REQUESTS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram("strata_pageserver_pagestream_batch_requests", "Requests served together as one page-stream batch", COUNT_BUCKETS)
});

/// Memory held by in-memory layers (open and frozen, and flushed ones a
/// reader still holds), as [`crate::storage::inmemory::InMemoryLayer`]
/// accounts it: values and the map's per-entry overhead.
pub static IN_MEMORY_LAYER_BYTES: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "strata_pageserver_in_memory_layer_bytes",
        "Bytes held by in-memory layers (open, frozen, and flushed ones still read), all timelines"
    )
    .expect("metric names are unique")
});

/// In-memory layers alive (open, frozen, and flushed ones still read).
pub static IN_MEMORY_LAYERS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "strata_pageserver_in_memory_layers",
        "In-memory layers alive (open, frozen, and flushed ones still read), all timelines"
    )
    .expect("metric names are unique")
});

/// Times the allocator's free memory was returned to the system
/// (see [`crate::malloc`]).
pub static MALLOC_TRIMS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("strata_pageserver_malloc_trims_total", "Times free memory in the allocator's arenas was returned to the system")
});
