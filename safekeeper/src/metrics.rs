//! Prometheus metrics of the safekeeper, in the default registry (served at
//! `/metrics` by the HTTP API).

use std::sync::LazyLock;

use prometheus::{register_histogram, register_int_counter, register_int_gauge, register_int_gauge_vec, Histogram, IntCounter, IntGauge, IntGaugeVec};

pub struct Metrics {
    pub wal_bytes_written: IntCounter,
    pub fsync_seconds: Histogram,
    pub wal_bytes_sent: IntCounter,
    pub compute_connections: IntCounter,
    pub compute_connection_errors: IntCounter,
    pub replica_connections: IntGauge,
    pub protocol_errors: IntCounter,
    pub broker_publish_errors: IntCounter,
    pub recoveries: IntCounter,
    pub recovery_errors: IntCounter,
    pub recovery_bytes: IntCounter,
    pub wal_backup_segments: IntCounter,
    pub wal_backup_bytes: IntCounter,
    pub wal_backup_errors: IntCounter,
    pub wal_backup_lag_bytes: IntGaugeVec,
    pub wal_backup_downloads: IntCounter,
    pub wal_partial_uploads: IntCounter,
    pub remote_wal_deleted_objects: IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    wal_bytes_written: register_int_counter!("safekeeper_wal_bytes_written_total", "WAL bytes written and fsynced").expect("metric"),
    fsync_seconds: register_histogram!(
        "safekeeper_wal_write_fsync_seconds",
        "Time to write and fsync one batch of WAL",
        vec![0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]
    )
    .expect("metric"),
    wal_bytes_sent: register_int_counter!("safekeeper_wal_bytes_sent_total", "WAL bytes sent to replicas").expect("metric"),
    compute_connections: register_int_counter!("safekeeper_compute_connections_total", "Replication connections made to computes").expect("metric"),
    compute_connection_errors: register_int_counter!("safekeeper_compute_connection_errors_total", "Compute connections that failed or broke").expect("metric"),
    replica_connections: register_int_gauge!("safekeeper_replica_connections", "Connected replication clients").expect("metric"),
    protocol_errors: register_int_counter!("safekeeper_protocol_errors_total", "Client connections closed for protocol errors").expect("metric"),
    broker_publish_errors: register_int_counter!("safekeeper_broker_publish_errors_total", "Failed publishes to the broker").expect("metric"),
    recoveries: register_int_counter!("safekeeper_recoveries_total", "Peer recoveries started").expect("metric"),
    recovery_errors: register_int_counter!("safekeeper_recovery_errors_total", "Peer recoveries that failed").expect("metric"),
    recovery_bytes: register_int_counter!("safekeeper_recovery_bytes_total", "WAL bytes received from peers").expect("metric"),
    wal_backup_segments: register_int_counter!("safekeeper_wal_backup_segments_total", "WAL segments this safekeeper offloaded to remote storage").expect("metric"),
    wal_backup_bytes: register_int_counter!("safekeeper_wal_backup_bytes_total", "WAL bytes this safekeeper offloaded to remote storage").expect("metric"),
    wal_backup_errors: register_int_counter!("safekeeper_wal_backup_errors_total", "Failed WAL offload rounds (upload, read, or a mismatching object)").expect("metric"),
    wal_backup_lag_bytes: register_int_gauge_vec!(
        "safekeeper_wal_backup_lag_bytes",
        "flush_lsn - backup_lsn: WAL held locally that is not offloaded yet",
        &["tenant_id", "timeline_id"]
    )
    .expect("metric"),
    wal_backup_downloads: register_int_counter!("safekeeper_wal_backup_downloads_total", "Offloaded WAL segments downloaded to serve a replica or a recovering peer").expect("metric"),
    wal_partial_uploads: register_int_counter!("safekeeper_wal_partial_uploads_total", "Partial (last, incomplete) WAL segments uploaded for idle timelines").expect("metric"),
    remote_wal_deleted_objects: register_int_counter!("safekeeper_remote_wal_deleted_objects_total", "Offloaded WAL objects deleted by remote GC").expect("metric"),
});

/// All metrics of the default registry in the text format.
pub fn gather_text() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
