//! Commit throughput and latency with Strata safekeepers as synchronous
//! standbys, each beside its stock baseline in the same run: one safekeeper
//! vs stock PostgreSQL with one synchronous `pg_receivewal`, three
//! safekeepers (ANY 2) vs stock with `ANY 2` of three `pg_receivewal`.
//! `cargo bench -p safekeeper --bench commit`; the ratio column is TPS over
//! the baseline's.
//!
//! Each setup runs `pgbench -N` (simple-update, no branch table updates) with
//! `STRATA_BENCH_CLIENTS` clients (default 4) for `STRATA_BENCH_SECONDS`
//! (default 10) against a fresh compute. `STRATA_BENCH_SETUPS=2,4` runs only
//! the numbered lines (to profile one).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use pg_harness::{pg_bin, PgCluster};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Figures {
    tps: f64,
    latency_ms: f64,
}

fn pgbench(pg: &PgCluster) -> anyhow::Result<Figures> {
    let conn = pg.connstr("postgres");
    let init = Command::new(pg_bin("pgbench")).args(["-i", "-s", "1", "-q", &conn]).output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let clients = env_num("STRATA_BENCH_CLIENTS", 4).to_string();
    let seconds = env_num("STRATA_BENCH_SECONDS", 10).to_string();
    let out = Command::new(pg_bin("pgbench"))
        .args(["-N", "-c", &clients, "-j", "2", "-T", &seconds, &conn])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let find = |prefix: &str| -> anyhow::Result<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix)).with_context(|| format!("no {prefix:?} in {text}"))?;
        let number = line[prefix.len()..].split_whitespace().next().context("number")?;
        Ok(number.parse()?)
    };
    Ok(Figures { tps: find("tps = ")?, latency_ms: find("latency average = ")? })
}

/// Stock PostgreSQL with `n` `pg_receivewal --synchronous` standbys, `quorum`
/// of which must confirm each commit (`ANY quorum (recv1, …)`; with one
/// receiver simply `recv1`). Each receiver streams through its own physical
/// replication slot, as each safekeeper does (the slot is what keeps the
/// WAL of a receiver that is down; it costs the compute a slot update per
/// acknowledgement).
fn stock_with_pg_receivewal(n: usize, quorum: usize) -> anyhow::Result<Figures> {
    let names: Vec<String> = (1..=n).map(|i| format!("recv{i}")).collect();
    let standby_names =
        if n == 1 { names[0].clone() } else { format!("ANY {quorum} ({})", names.join(", ")) };
    let pg = PgCluster::start(&[("synchronous_standby_names", &standby_names), ("synchronous_commit", "on")])?;
    let dirs = (0..n).map(|_| tempfile::tempdir()).collect::<Result<Vec<_>, _>>()?;
    let mut receivers: Vec<Child> = Vec::new();
    for (name, dir) in names.iter().zip(&dirs) {
        let conn = format!("host=127.0.0.1 port={} user=postgres application_name={name}", pg.port());
        pg.sql(&format!("SELECT pg_create_physical_replication_slot('{name}')"))?;
        let child = Command::new(pg_bin("pg_receivewal"))
            .args(["--synchronous", "--slot", name, "-d", &conn, "-D"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        receivers.push(child);
    }
    let figures = common::wait_until(std::time::Duration::from_secs(30), || {
        Ok(pg.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")? == n.to_string())
    })
    .and_then(|()| pgbench(&pg));
    for mut child in receivers {
        let _ = child.kill();
        let _ = child.wait();
    }
    figures
}

fn with_safekeepers(n: u64, quorum: usize) -> anyhow::Result<Figures> {
    let env = common::Env::new(n, quorum, &[])?;
    common::wait_until(std::time::Duration::from_secs(30), || {
        Ok(env.pg.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')")? == n.to_string())
    })?;
    pgbench(&env.pg)
}

fn main() -> anyhow::Result<()> {
    println!(
        "pgbench -N, {} clients, {} s per setup, synchronous_commit = on\n",
        env_num("STRATA_BENCH_CLIENTS", 4),
        env_num("STRATA_BENCH_SECONDS", 10)
    );
    println!("{:<48} {:>10} {:>16}", "setup", "TPS", "latency avg ms");
    type Setup = Box<dyn Fn() -> anyhow::Result<Figures>>;
    // (name, run, index of the baseline it is compared with)
    let setups: [(&str, Setup, Option<usize>); 4] = [
        ("stock PG15 + 1 pg_receivewal --synchronous", Box::new(|| stock_with_pg_receivewal(1, 1)), None),
        ("Strata, 1 safekeeper", Box::new(|| with_safekeepers(1, 1)), Some(0)),
        ("stock PG15 + ANY 2 of 3 pg_receivewal", Box::new(|| stock_with_pg_receivewal(3, 2)), None),
        ("Strata, 3 safekeepers, ANY 2", Box::new(|| with_safekeepers(3, 2)), Some(2)),
    ];
    // STRATA_BENCH_SETUPS=2,4 runs only those lines (for profiling one);
    // a line whose baseline is skipped prints no ratio.
    let only: Option<Vec<usize>> = std::env::var("STRATA_BENCH_SETUPS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let mut tps = vec![None; setups.len()];
    for (i, (name, run, baseline)) in setups.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&(i + 1))) {
            continue;
        }
        let f = run().with_context(|| name.to_string())?;
        let ratio = baseline
            .and_then(|b: usize| tps[b].map(|base: f64| format!("{:.2}x of the line {}", f.tps / base, b + 1)))
            .unwrap_or_default();
        println!("{name:<48} {:>10.0} {:>16.2}   {ratio}", f.tps, f.latency_ms);
        tps[i] = Some(f.tps);
    }
    Ok(())
}
