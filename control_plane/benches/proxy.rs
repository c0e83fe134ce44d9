//! The proxy's cost and scale to zero's wake-up, each beside its baseline
//! in the same run. Prints figures only (no assertion). The cluster's
//! binaries are taken from the directory of the `strata` binary the bench
//! is built with, so build them for the same profile first:
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench -p control_plane --bench proxy
//! cargo build --workspace --bins && cargo bench --profile dev -p control_plane --bench proxy
//! ```
//!
//! * `pgbench -S` (`STRATA_BENCH_CLIENTS`, default 4, for
//!   `STRATA_BENCH_SECONDS`, default 10) on one endpoint, directly and
//!   through the proxy, plain text and TLS (goal: proxy ≥ 0.9× direct);
//! * wake-up: connection to first query result for a suspended endpoint
//!   (`STRATA_BENCH_WAKES` times, default 3), beside `strata endpoint
//!   start` of the same endpoint and a connection to a running one; with
//!   a full and with a lazy compute.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{psql, started_cluster};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pgbench_tps(url: &str) -> f64 {
    let clients = env_num("STRATA_BENCH_CLIENTS", 4).to_string();
    let seconds = env_num("STRATA_BENCH_SECONDS", 10).to_string();
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-S", "-n", "-c", &clients, "-j", "2", "-T", &seconds, url])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("tps = ")).expect("tps line");
    line["tps = ".len()..].split_whitespace().next().unwrap().parse().unwrap()
}

fn time_query(url: &str) -> Duration {
    let started = Instant::now();
    assert_eq!(psql(url, "SELECT 1"), "1");
    started.elapsed()
}

fn status(repo: &common::Repo) -> String {
    let list = repo.ok(&["endpoint", "list"]);
    list.lines().find(|l| l.starts_with("main ")).and_then(|l| l.split_whitespace().last()).unwrap_or("").to_string()
}

fn main() {
    let repo = started_cluster(1);
    let out = repo.ok(&["endpoint", "start", "main"]);
    let direct = common::url_of(&repo, &out);
    let proxied = common::proxy_url(&repo, "main");
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench").args(["-i", "-s", "10", "-q", &direct]).output().unwrap();
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));

    println!("pgbench -S, {} clients, {} s each", env_num("STRATA_BENCH_CLIENTS", 4), env_num("STRATA_BENCH_SECONDS", 10));
    let base = pgbench_tps(&direct);
    println!("{:<40} {:>10.0}", "direct to the compute (baseline)", base);
    let tps = pgbench_tps(&proxied);
    println!("{:<40} {:>10.0}   {:.2}x", "through the proxy", tps, tps / base);
    let tls = pgbench_tps(&format!("{proxied}&sslmode=require"));
    println!("{:<40} {:>10.0}   {:.2}x", "through the proxy, TLS", tls, tls / base);

    println!("\nwake-up (connection to first result), beside its baselines");
    // A wake starts the endpoint in the mode it was last started in.
    for mode in ["--full", "--lazy"] {
        wake_ups(&repo, &proxied, mode);
    }
}

/// Wake-ups of `main` started with `mode`, beside a query to it running
/// and `strata endpoint start` of it in that mode.
fn wake_ups(repo: &common::Repo, proxied: &str, mode: &str) {
    repo.ok(&["endpoint", "stop", "main"]);
    repo.ok(&["endpoint", "start", "main", mode, "--suspend-after", "2s"]);
    let running = time_query(proxied);
    println!("{mode}: {:<32} {:>10.0} ms", "running endpoint, through the proxy", running.as_secs_f64() * 1e3);
    let mut wakes = Vec::new();
    for _ in 0..env_num("STRATA_BENCH_WAKES", 3) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while status(repo) != "suspended" {
            assert!(Instant::now() < deadline, "the endpoint was not suspended");
            std::thread::sleep(Duration::from_millis(200));
        }
        let took = time_query(proxied);
        println!("{mode}: {:<32} {:>10.0} ms", "suspended endpoint woken by a client", took.as_secs_f64() * 1e3);
        wakes.push(took);
    }
    repo.ok(&["endpoint", "stop", "main"]);
    let started = Instant::now();
    repo.ok(&["endpoint", "start", "main", mode]);
    let cli = started.elapsed();
    println!("{mode}: {:<32} {:>10.0} ms", "strata endpoint start (baseline)", cli.as_secs_f64() * 1e3);
    wakes.sort();
    if let Some(median) = wakes.get(wakes.len() / 2) {
        println!("{mode}: median wake-up {:.0} ms = {:.2}x of strata endpoint start", median.as_secs_f64() * 1e3, median.as_secs_f64() / cli.as_secs_f64());
    }
}
