//! Lazy computes against full ones, in one run (figures, no assertion):
//!
//! 1. `strata endpoint start` → first successful query, for a small
//!    (pgbench scale `STRATA_BENCH_SMALL_SCALE`, default 7, ≈ 100 MB) and a
//!    big database (`STRATA_BENCH_BIG_SCALE`, default 135, ≈ 2 GB): lazy,
//!    full, and the baseline `pg_basebackup` of the same database from a
//!    running compute + start of stock PostgreSQL on the copy. The starts
//!    come after the load has settled (`settle`: seconds of the
//!    pageserver's checkpoint, which waits for the image layers the load
//!    asks for);
//! 2. pgbench TPS on the small database, lazy (after a warm-up of the same
//!    length) and full: read-only (`-S`) and read-write, `-c 4`,
//!    `STRATA_BENCH_SECS` seconds each (default 20);
//! 3. `pgbench -i -s STRATA_BENCH_INIT_SCALE` (default 20) on a lazy and a
//!    full compute.
//!
//! With `STRATA_BENCH_START_ONLY` set, only part 1 runs. Each start's
//! phase split (`strata: endpoint … started in …`) goes to stderr.
//!
//! Goals from issue 17: lazy start ≤ 1 s and flat in the database size;
//! TPS lazy ≥ 0.8× full; bulk load lazy ≤ 1.5× full. Build the binaries
//! for the same profile first:
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench -p control_plane --bench lazy_start
//! cargo build --workspace --bins && cargo bench --profile dev -p control_plane --bench lazy_start
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::{psql, started_cluster, url_of, Repo};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const FIRST_QUERY: &str = "SELECT count(*) FROM pgbench_branches";

fn start(repo: &Repo, args: &[&str]) -> String {
    let mut all = vec!["endpoint", "start"];
    all.extend_from_slice(args);
    url_of(repo, &repo.ok(&all))
}

/// Seconds from `strata endpoint start` to the first successful query;
/// prints the start's own phase split (its `started in` line).
fn start_to_query(repo: &Repo, name: &str, branch: &str, mode: &str) -> f64 {
    let began = Instant::now();
    let out = repo.run(&["endpoint", "start", name, "--branch-name", branch, mode]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "endpoint start {name}: {stderr}{stdout}");
    psql(&url_of(repo, &stdout), FIRST_QUERY);
    let secs = began.elapsed().as_secs_f64();
    for line in stderr.lines().filter(|l| l.contains("started in") || l.contains("basebackup of endpoint")) {
        eprintln!("    {name} {mode}: {line}");
    }
    repo.ok(&["endpoint", "stop", name]);
    secs
}

/// Seconds of `pg_basebackup` from `url` plus stock PostgreSQL's start on
/// the copy and its first query.
fn basebackup_and_stock_start(url: &str) -> f64 {
    let began = Instant::now();
    let mut copy = pg_harness::PgCluster::empty().expect("temp cluster");
    let out = Command::new(format!("{PG_BIN}/pg_basebackup"))
        .args(["-d", url, "-X", "stream", "-c", "fast", "-D"])
        .arg(copy.data_dir())
        .output()
        .expect("run pg_basebackup");
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    copy.finish_data_dir(&[]).expect("configure copy");
    copy.start_postmaster().expect("start copy");
    copy.sql(FIRST_QUERY).expect("first query");
    let secs = began.elapsed().as_secs_f64();
    let _ = copy.stop();
    secs
}

/// Seconds until the pageserver has flushed `branch` and finished the
/// pass after it (L0 compaction, the image layers the load asks for), so
/// that the starts measure reads, not the load's aftermath.
fn settle(repo: &Repo, branch: &str) -> f64 {
    let state = control_plane::state::State::load(&repo.path).expect("state");
    let b = state.branches.iter().find(|b| b.name == branch).expect("branch in state");
    let port = control_plane::config::Config::load(&repo.path).expect("config").pageserver.http_port;
    let started = Instant::now();
    let path = format!("/v1/tenant/{}/timeline/{}/checkpoint", b.tenant_id, b.timeline_id);
    let (status, body) = common::http_request("POST", port, &path);
    assert_eq!(status, 200, "checkpoint: {body}");
    started.elapsed().as_secs_f64()
}

fn pgbench_tps(url: &str, args: &[&str]) -> f64 {
    let out = Command::new(format!("{PG_BIN}/pgbench")).args(args).arg(url).output().expect("run pgbench");
    assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{text}"))
}

fn timed_init(repo: &Repo, name: &str, branch: &str, mode: &str, scale: u64) -> f64 {
    let url = start(repo, &[name, "--branch-name", branch, mode]);
    let began = Instant::now();
    common::pgbench(&url, &["-i", "-q", "-s", &scale.to_string()]);
    let secs = began.elapsed().as_secs_f64();
    repo.ok(&["endpoint", "stop", name]);
    secs
}

fn main() {
    let small = env_num("STRATA_BENCH_SMALL_SCALE", 7);
    let big = env_num("STRATA_BENCH_BIG_SCALE", 135);
    let secs = env_num("STRATA_BENCH_SECS", 20).to_string();
    let init_scale = env_num("STRATA_BENCH_INIT_SCALE", 20);
    // The binaries beside `strata` (as the `strata` runs see them).
    std::env::set_var("STRATA_BIN_DIR", std::path::Path::new(env!("CARGO_BIN_EXE_strata")).parent().expect("bin dir"));
    if let Some(why) = control_plane::lazy::unavailable() {
        eprintln!("lazy computes are unavailable here: {why}");
        std::process::exit(1);
    }
    let repo = started_cluster(1);

    println!("== start → first query (s) ==");
    // `lazy_1st` may include the pageserver finishing ingest of the load's
    // WAL (every start waits for it); `lazy_2nd` and `full` start after it.
    println!("{:>8} {:>10} {:>8} {:>9} {:>9} {:>8} {:>22}", "scale", "db_MB", "settle", "lazy_1st", "lazy_2nd", "full", "pg_basebackup+stock");
    for scale in [small, big] {
        let branch = format!("db{scale}");
        repo.ok(&["timeline", "branch", "--branch-name", &branch, "--ancestor-branch-name", "main"]);
        let load = start(&repo, &[&format!("load{scale}"), "--branch-name", &branch, "--full"]);
        common::pgbench(&load, &["-i", "-q", "-s", &scale.to_string()]);
        let db_mb: f64 = psql(&load, "SELECT pg_database_size(current_database())").parse::<f64>().unwrap_or(0.0) / 1048576.0;
        // pg_basebackup replicates: only the replication role may (pg_hba).
        let replication = control_plane::secrets::replication_credential(&repo.path).expect("replication password");
        let ep = common::endpoint(&repo, &format!("load{scale}"));
        let repl_url = format!("postgresql://{}:{}@{}/postgres", control_plane::secrets::REPLICATION_ROLE, replication.password.expose(), ep.at.addr(ep.port));
        let stock = basebackup_and_stock_start(&repl_url);
        repo.ok(&["endpoint", "stop", &format!("load{scale}")]);
        let settle = settle(&repo, &branch);
        let lazy1 = start_to_query(&repo, &format!("lazy{scale}"), &branch, "--lazy");
        let lazy2 = start_to_query(&repo, &format!("lazy{scale}"), &branch, "--lazy");
        let full = start_to_query(&repo, &format!("full{scale}"), &branch, "--full");
        println!("{scale:>8} {db_mb:>10.0} {settle:>8.2} {lazy1:>9.2} {lazy2:>9.2} {full:>8.2} {stock:>22.2}");
    }
    if std::env::var_os("STRATA_BENCH_START_ONLY").is_some() {
        return;
    }

    println!("\n== pgbench TPS, scale {small}, -c 4, {secs} s (lazy after a {secs} s warm-up) ==");
    println!("{:>12} {:>10} {:>10} {:>8}", "workload", "lazy", "full", "ratio");
    let small_branch = format!("db{small}");
    let mut rows = Vec::new();
    for (label, extra) in [("read-only", vec!["-S"]), ("read-write", vec![])] {
        let mut tps = Vec::new();
        for mode in ["--lazy", "--full"] {
            let branch = format!("tps_{}_{}", &mode[2..], label);
            repo.ok(&["timeline", "branch", "--branch-name", &branch, "--ancestor-branch-name", &small_branch]);
            let name = format!("t_{}_{}", &mode[2..], label);
            let url = start(&repo, &[&name, "--branch-name", &branch, mode]);
            let mut args: Vec<&str> = vec!["-c", "4", "-j", "2", "-T", &secs];
            args.extend(extra.iter());
            if mode == "--lazy" {
                let mut warm = args.clone();
                warm.push("-S");
                pgbench_tps(&url, &warm);
            }
            tps.push(pgbench_tps(&url, &args));
            repo.ok(&["endpoint", "stop", &name]);
        }
        println!("{label:>12} {:>10.0} {:>10.0} {:>8.2}", tps[0], tps[1], tps[0] / tps[1]);
        rows.push(tps);
    }

    println!("\n== pgbench -i -s {init_scale} (s) ==");
    repo.ok(&["timeline", "branch", "--branch-name", "init_lazy", "--ancestor-branch-name", "main"]);
    repo.ok(&["timeline", "branch", "--branch-name", "init_full", "--ancestor-branch-name", "main"]);
    let lazy = timed_init(&repo, "i_lazy", "init_lazy", "--lazy", init_scale);
    let full = timed_init(&repo, "i_full", "init_full", "--full", init_scale);
    println!("{:>10} {:>10} {:>8}", "lazy", "full", "ratio");
    println!("{lazy:>10.1} {full:>10.1} {:>8.2}", lazy / full);
}
