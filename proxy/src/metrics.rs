//! Prometheus metrics of the proxy, in the default registry (served at
//! `/metrics`).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge, Histogram, IntCounter,
    IntCounterVec, IntGauge,
};

pub struct Metrics {
    pub connections: IntCounter,
    pub active_connections: IntGauge,
    pub refused: IntCounterVec,
    pub wakeups: IntCounter,
    pub wake_failures: IntCounter,
    pub wake_seconds: Histogram,
    pub suspends: IntCounter,
    pub bytes: IntCounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections: register_int_counter!("proxy_connections_total", "Client connections accepted").expect("metric names are unique"),
    active_connections: register_int_gauge!("proxy_active_connections", "Client connections open now").expect("metric names are unique"),
    refused: register_int_counter_vec!(
        "proxy_refused_connections_total",
        "Client connections ended with an error before reaching a compute, by reason",
        &["reason"]
    )
    .expect("metric names are unique"),
    wakeups: register_int_counter!("proxy_wakeups_total", "Suspended endpoints started for a connection").expect("metric names are unique"),
    wake_failures: register_int_counter!("proxy_wake_failures_total", "Wake-ups that failed or timed out").expect("metric names are unique"),
    wake_seconds: register_histogram!(
        "proxy_wake_seconds",
        "Time from a connection to a suspended endpoint until its compute is up",
        vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
    )
    .expect("metric names are unique"),
    suspends: register_int_counter!("proxy_suspends_total", "Idle endpoints suspended").expect("metric names are unique"),
    bytes: register_int_counter_vec!(
        "proxy_bytes_total",
        "Bytes relayed between clients and computes, by direction",
        &["direction"]
    )
    .expect("metric names are unique"),
});

/// All metrics of the default registry in the text format.
pub fn gather_text() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
