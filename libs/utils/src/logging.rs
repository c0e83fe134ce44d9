//! Logging setup shared by Strata's binaries: `tracing` to stderr, filtered
//! by `RUST_LOG` (default `info`), with colours only on a terminal (logs
//! usually go to files).

/// Install the global subscriber. Call once, at the start of `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
}
