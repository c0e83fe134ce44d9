//! Does the pageserver's storage stay bounded under a long write load?
//! Prints figures (no assertion): every minute and at the end, the
//! database size (`pg_database_size`, the baseline measured in the same
//! run), the pageserver's physical size of the timeline (sum of its layer
//! files) and its ratio to the database size, layer counts by kind, the
//! pageserver's RSS and the WAL written; at the end the ratio (goal ≤ 2.5×)
//! and the growth of the physical size over the last five minutes (goal:
//! flat). The cluster's binaries are taken from the directory of the
//! `strata` binary the bench is built with, so build them for the same
//! profile first:
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench -p control_plane --bench storage_size
//! cargo build --workspace --bins && cargo bench --profile dev -p control_plane --bench storage_size
//! ```
//!
//! A local cluster (1 safekeeper, remote storage `<repo>/remote`), a tenant
//! with `pitr_interval=0s`, `gc_horizon=STRATA_BENCH_GC_HORIZON` (default
//! 16MiB) and `gc_period=10s` (other settings the defaults);
//! `pgbench -i` at scale `STRATA_BENCH_SCALE` (default 30, about 470 MB), then the
//! standard pgbench transaction with `STRATA_BENCH_CLIENTS` clients
//! (default 4) for `STRATA_BENCH_SECS` seconds (default 600), sampled
//! every `STRATA_BENCH_SAMPLE_SECS` (default 60). With
//! `STRATA_BENCH_LAYER_LOG=FILE`, each sample also appends the timeline's
//! detail and layer listing to FILE as one JSON line.
//!
//! 2026-12-02, dev profile, 2 loaded cores. Before GC asked for images
//! (8-minute run): the L0 files of `pgbench -i` and every L0 holding keys
//! of a partition that changed in fewer than `image_creation_threshold`
//! flushes were never removed; the physical size went 422 → 1071 MiB
//! (2.24x, +96% over the last 300 s) with 9 L0 files left. After (600 s,
//! pgbench slowed to 129 tps by builds beside it): 1.19x at the end,
//! physical size between 553 and 680 MiB over the last 300 s (-10.5%
//! end to end; peaks 680 vs 618 MiB), 1-3 L0 files.
//!
//! Pageserver RSS, 2026-12-02, dev profile, 2 cores at load 12-18: before
//! the memory fixes (records pinning received WAL chunks, whole-partition
//! image buffers, glibc keeping freed arena memory) a 240 s run went
//! 342 → 519 MiB (a quiet 600 s run: 383 → 1250 MiB); after, 600 s went
//! 177 → 116 MiB, between 70 and 223 MiB over the last 300 s, tracking
//! the value cache + index cache + in-memory layer gauges.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get, psql, start_cluster_with_tenant_settings, url_of, Repo};
use utils::lsn::Lsn;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The pageserver's resident set size, from `/proc`.
fn rss_bytes(repo: &Repo) -> u64 {
    let pid = std::fs::read_to_string(repo.path.join("pageserver/pid")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// One row of figures.
struct Sample {
    t_s: u64,
    db_bytes: u64,
    physical_bytes: u64,
    layers: (u64, u64, u64),
    image_bytes: u64,
    rss_bytes: u64,
    wal_bytes: u64,
}

struct Bench {
    repo: Repo,
    url: String,
    http_port: u16,
    timeline_path: String,
    start_lsn: Lsn,
    began: Instant,
}

impl Bench {
    fn sample(&self) -> Sample {
        let db_bytes = psql(&self.url, "SELECT pg_database_size(current_database())").parse().unwrap_or(0);
        let detail: serde_json::Value = serde_json::from_str(&http_get(self.http_port, &self.timeline_path)).unwrap_or_default();
        let physical_bytes = detail["current_physical_size"].as_u64().unwrap_or(0);
        let layers: serde_json::Value =
            serde_json::from_str(&http_get(self.http_port, &format!("{}/layers", self.timeline_path))).unwrap_or_default();
        let list = layers.as_array().or_else(|| layers["layers"].as_array()).cloned().unwrap_or_default();
        if let Ok(path) = std::env::var("STRATA_BENCH_LAYER_LOG") {
            append_layer_log(&path, self.began.elapsed().as_secs(), &detail, &list);
        }
        let count = |f: &dyn Fn(&serde_json::Value) -> bool| list.iter().filter(|l| f(l)).count() as u64;
        let image = |l: &serde_json::Value| l["kind"].as_str() == Some("image");
        let l0 = count(&|l| !image(l) && (l["level"].as_str() == Some("L0") || l["level"].as_u64() == Some(0)));
        let images = count(&image);
        let l1 = list.len() as u64 - l0 - images;
        let image_bytes = list.iter().filter(|l| image(l)).filter_map(|l| l["size_bytes"].as_u64()).sum();
        let flush: Lsn = psql(&self.url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap_or(self.start_lsn);
        Sample {
            t_s: self.began.elapsed().as_secs(),
            db_bytes,
            physical_bytes,
            layers: (l0, l1, images),
            image_bytes,
            rss_bytes: rss_bytes(&self.repo),
            wal_bytes: flush.0.saturating_sub(self.start_lsn.0),
        }
    }
}

/// Append the timeline detail and its layer listing (one JSON line) to
/// `path`, to see what accumulates between samples.
fn append_layer_log(path: &str, t_s: u64, detail: &serde_json::Value, layers: &[serde_json::Value]) {
    use std::io::Write;
    let line = serde_json::json!({ "t_s": t_s, "timeline": detail, "layers": layers });
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

fn print_header() {
    println!(
        "{:>6} {:>10} {:>13} {:>7} {:>5} {:>5} {:>6} {:>10} {:>9} {:>10}",
        "t_s", "db_MiB", "physical_MiB", "ratio", "L0", "L1", "image", "image_MiB", "rss_MiB", "wal_MiB"
    );
}

fn print_sample(s: &Sample, note: &str) {
    println!(
        "{:>6} {:>10.1} {:>13.1} {:>7.2} {:>5} {:>5} {:>6} {:>10.1} {:>9.1} {:>10.1}{note}",
        s.t_s,
        mib(s.db_bytes),
        mib(s.physical_bytes),
        s.physical_bytes as f64 / s.db_bytes.max(1) as f64,
        s.layers.0,
        s.layers.1,
        s.layers.2,
        mib(s.image_bytes),
        mib(s.rss_bytes),
        mib(s.wal_bytes)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("storage_size: bench");
        return;
    }
    let secs = env_num("STRATA_BENCH_SECS", 600);
    let scale = env_num("STRATA_BENCH_SCALE", 30).to_string();
    let clients = env_num("STRATA_BENCH_CLIENTS", 4).to_string();
    let horizon = std::env::var("STRATA_BENCH_GC_HORIZON").unwrap_or_else(|_| "16MiB".into());
    let settings = [format!("gc_horizon={horizon}"), "pitr_interval=0s".into(), "gc_period=10s".into()];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let repo = start_cluster_with_tenant_settings(Repo::new(), 1, &settings);
    let conf = control_plane::config::Config::load(&repo.path).unwrap();
    let state = control_plane::state::State::load(&repo.path).unwrap();
    let main_branch = state.branches.iter().find(|b| b.name == "main").unwrap();
    let timeline_path = format!("/v1/tenant/{}/timeline/{}", main_branch.tenant_id, main_branch.timeline_id);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    let start_lsn: Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    println!("storage_size: tenant settings {settings:?}; pgbench -i -s {scale}, then {secs} s of pgbench -c {clients}");
    let init_started = Instant::now();
    common::pgbench(&url, &["-i", "-q", "-s", &scale]);
    println!("pgbench -i: {:.0} s", init_started.elapsed().as_secs_f64());
    let bench = Bench { repo, url, http_port: conf.pageserver.http_port, timeline_path, start_lsn, began: Instant::now() };
    let mut load = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-n", "-c", &clients, "-j", "2", "-T", &secs.to_string()])
        .arg(&bench.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    print_header();
    let mut samples = vec![bench.sample()];
    print_sample(&samples[0], "  (after pgbench -i)");
    let every = Duration::from_secs(env_num("STRATA_BENCH_SAMPLE_SECS", 60).max(1));
    let mut next = every;
    while load.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        if bench.began.elapsed() >= next {
            next += every;
            let s = bench.sample();
            print_sample(&s, "");
            samples.push(s);
        }
    }
    let out = load.wait_with_output().unwrap();
    let tps = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("tps")).unwrap_or("tps: ?").to_string();
    let last = bench.sample();
    print_sample(&last, "  (end)");
    let five_min_ago = samples.iter().rev().find(|s| last.t_s.saturating_sub(s.t_s) >= 300).unwrap_or(&samples[0]);
    let growth = last.physical_bytes as f64 - five_min_ago.physical_bytes as f64;
    println!("pgbench: {tps}");
    // Image passes make the size a sawtooth: compare the peaks of the last
    // five minutes and of the five before as well.
    let peak = |from: u64, to: u64| samples.iter().chain([&last]).filter(|s| s.t_s >= from && s.t_s <= to).map(|s| s.physical_bytes).max();
    let end = last.t_s;
    if let (Some(recent), Some(before)) = (peak(end.saturating_sub(300), end), peak(end.saturating_sub(600), end.saturating_sub(300))) {
        println!("peak physical size: {:.1} MiB in the last 300 s, {:.1} MiB in the 300 s before", mib(recent), mib(before));
    }
    println!(
        "storage_size figures: database {:.1} MiB, physical {:.1} MiB: ratio {:.2}x (goal <= 2.5x); physical size over the last {} s: {:+.1} MiB ({:+.1}%; goal: flat) while {:.0} MiB of WAL were written; pageserver RSS {:.0} MiB",
        mib(last.db_bytes),
        mib(last.physical_bytes),
        last.physical_bytes as f64 / last.db_bytes.max(1) as f64,
        last.t_s - five_min_ago.t_s,
        growth / (1024.0 * 1024.0),
        100.0 * growth / five_min_ago.physical_bytes.max(1) as f64,
        mib(last.wal_bytes.saturating_sub(five_min_ago.wal_bytes)),
        mib(last.rss_bytes)
    );
}
