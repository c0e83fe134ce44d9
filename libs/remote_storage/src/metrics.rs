//! Prometheus metrics of remote storage, registered in the default registry
//! on first use and shared by every [`crate::GenericRemoteStorage`] of the
//! process (the `op` label is an [`crate::Op`] name).
//!
//! * `remote_storage_operations_total{op,result}`: calls finished, once each
//!   after its retries; `result` is `ok`, `error` or `cancelled`.
//! * `remote_storage_bytes_total{op}`: bytes moved by successful `upload`
//!   and `download` calls.
//! * `remote_storage_errors_total{op,kind}`: failed attempts, retried ones
//!   included (`kind`: `timeout`, `transient`, `permanent`, `not_found`,
//!   `already_exists`, `size_mismatch`, `local_io`).
//! * `remote_storage_operation_seconds{op}`: time of a whole call, retries
//!   and the wait for the concurrency limit included.

use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};

const SECONDS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// `remote_storage_operations_total{op,result}`.
pub static OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remote_storage_operations_total",
        "Remote storage calls finished, after their retries",
        &["op", "result"]
    )
    .expect("metric names are unique")
});

/// `remote_storage_bytes_total{op}`.
pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("remote_storage_bytes_total", "Bytes uploaded or downloaded by successful calls", &["op"])
        .expect("metric names are unique")
});

/// `remote_storage_errors_total{op,kind}`.
pub static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "remote_storage_errors_total",
        "Failed remote storage attempts, retried ones included",
        &["op", "kind"]
    )
    .expect("metric names are unique")
});

/// `remote_storage_operation_seconds{op}`.
pub static OPERATION_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "remote_storage_operation_seconds",
        "Time of one remote storage call, retries included",
        &["op"],
        SECONDS_BUCKETS.to_vec()
    )
    .expect("metric names are unique")
});
