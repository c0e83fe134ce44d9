//! Safekeeper disk usage over a long write load, next to the WAL volume
//! written. Prints figures only (no assertion). The cluster's binaries are
//! taken from the directory of the `strata` binary the bench is built with,
//! so build them for the same profile first:
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench -p control_plane --bench wal_disk
//! cargo build --workspace --bins && cargo bench --profile dev -p control_plane --bench wal_disk
//! ```
//!
//! A local cluster of 3 safekeepers with remote storage (`<repo>/remote`):
//! `pgbench -i` at scale `STRATA_BENCH_SCALE` (default 10), then pgbench
//! with `STRATA_BENCH_CLIENTS` clients (default 4) for `STRATA_BENCH_SECONDS`
//! (default 180) running a write-heavy transaction (an insert of
//! `STRATA_BENCH_ROWS` rows of 500 bytes, default 100, plus an update of
//! `pgbench_accounts`). Every 10 s: WAL written since the compute started,
//! each safekeeper's timeline directory on disk, what is offloaded
//! (`backup_lsn`), what the pageserver holds in remote storage
//! (`remote_consistent_lsn`), and the offloaded WAL's size in remote
//! storage. The pageserver uploads on its own (every frozen in-memory
//! layer, `--checkpoint-distance-mb` 64); nothing is forced.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{psql, started_cluster, url_of};
use utils::lsn::Lsn;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn sk_status(port: u16, tenant: &str, timeline: &str) -> Option<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/v1/tenant/{tenant}/timeline/{timeline}");
    let out = Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn lsn_of(v: &serde_json::Value, field: &str) -> Lsn {
    v[field].as_str().and_then(|s| s.parse().ok()).unwrap_or(Lsn(0))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("wal_disk: bench");
        return;
    }
    let seconds = env_num("STRATA_BENCH_SECONDS", 180);
    let clients = env_num("STRATA_BENCH_CLIENTS", 4).to_string();
    let scale = env_num("STRATA_BENCH_SCALE", 10).to_string();
    let rows = env_num("STRATA_BENCH_ROWS", 100);
    let repo = started_cluster(3);
    let conf = control_plane::config::Config::load(&repo.path).unwrap();
    let state = control_plane::state::State::load(&repo.path).unwrap();
    let main_branch = state.branches.iter().find(|b| b.name == "main").unwrap();
    let (tenant, timeline) = (main_branch.tenant_id.to_string(), main_branch.timeline_id.to_string());
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    let start: Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    common::pgbench(&url, &["-i", "-q", "-s", &scale]);
    psql(&url, "CREATE TABLE bench_log(id bigserial, aid int, payload text)");
    let script_dir = tempfile::tempdir().unwrap();
    let script = script_dir.path().join("write.sql");
    std::fs::write(
        &script,
        format!(
            "\\set aid random(1, 100000 * :scale)\nBEGIN;\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
             INSERT INTO bench_log(aid, payload) SELECT :aid, repeat(md5(g::text), 16) FROM generate_series(1, {rows}) g;\nEND;\n"
        ),
    )
    .unwrap();
    println!(
        "wal_disk: pgbench -i -s {scale}, then {seconds} s of pgbench -c {clients} inserting {rows} rows of 500 B per transaction; 3 safekeepers, remote storage {}",
        conf.pageserver.remote_storage.as_deref().unwrap_or("none")
    );
    let mut load = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-n", "-c", &clients, "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    println!("{:>6} {:>12} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}", "t_s", "wal_MiB", "sk1_MiB", "sk2_MiB", "sk3_MiB", "offload_MiB", "ps_remote", "remote_wal");
    let began = Instant::now();
    let (mut max_disk, mut last_wal) = (0u64, 0u64);
    let remote_wal_dir = repo.path.join(format!("remote/wal/{tenant}/{timeline}"));
    let mut sample = |final_sample: bool| {
        let flush: Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
        let wal = flush.0 - start.0;
        let disks: Vec<u64> = conf.safekeepers.iter().map(|sk| dir_bytes(&repo.path.join(format!("safekeeper_{}/data/{tenant}/{timeline}", sk.id)))).collect();
        let status = sk_status(conf.safekeepers[0].http_port, &tenant, &timeline).unwrap_or_default();
        let offloaded = lsn_of(&status, "backup_lsn").0.saturating_sub(start.0);
        let remote = lsn_of(&status, "remote_consistent_lsn").0.saturating_sub(start.0);
        max_disk = max_disk.max(*disks.iter().max().unwrap());
        last_wal = wal;
        println!(
            "{:>6} {:>12.1} {:>10.1} {:>10.1} {:>10.1} {:>12.1} {:>12.1} {:>12.1}{}",
            began.elapsed().as_secs(), mib(wal), mib(disks[0]), mib(disks[1]), mib(disks[2]), mib(offloaded), mib(remote), mib(dir_bytes(&remote_wal_dir)),
            if final_sample { "  (after the load)" } else { "" }
        );
    };
    while load.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(10));
        sample(false);
    }
    // Let uploads and one removal round finish.
    std::thread::sleep(Duration::from_secs(25));
    sample(true);
    let transactions = psql(&url, "SELECT count(*) FROM bench_log").parse::<u64>().unwrap() / rows.max(1);
    println!(
        "wal_disk figures: {:.0} MiB of WAL written ({transactions} transactions in the timed part); largest safekeeper timeline directory at any sample {:.0} MiB ({:.1}% of the WAL written)",
        mib(last_wal),
        mib(max_disk),
        100.0 * max_disk as f64 / last_wal.max(1) as f64
    );
}
