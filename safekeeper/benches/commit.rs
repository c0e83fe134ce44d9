//! Commit throughput and latency with Strata safekeepers as synchronous
//! standbys, beside stock PostgreSQL with one synchronous `pg_receivewal`,
//! all in the same run: `cargo bench -p safekeeper --bench commit`.
//!
//! Each setup runs `pgbench -N` (simple-update, no branch table updates) with
//! `STRATA_BENCH_CLIENTS` clients (default 4) for `STRATA_BENCH_SECONDS`
//! (default 10) against a fresh compute.

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

/// Stock PostgreSQL with `pg_receivewal --synchronous` as its only synchronous standby.
fn stock_with_pg_receivewal() -> anyhow::Result<Figures> {
    let pg = PgCluster::start(&[("synchronous_standby_names", "recv"), ("synchronous_commit", "on")])?;
    let dir = tempfile::tempdir()?;
    let conn = format!("host=127.0.0.1 port={} user=postgres application_name=recv", pg.port());
    let mut recv: Child = Command::new(pg_bin("pg_receivewal"))
        .args(["--synchronous", "-d", &conn, "-D"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    common::wait_until(std::time::Duration::from_secs(30), || {
        Ok(pg.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")? == "1")
    })?;
    let figures = pgbench(&pg);
    let _ = recv.kill();
    let _ = recv.wait();
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
    let setups: [(&str, Setup); 3] = [
        ("stock PG15 + pg_receivewal --synchronous (baseline)", Box::new(stock_with_pg_receivewal)),
        ("Strata, 1 safekeeper", Box::new(|| with_safekeepers(1, 1))),
        ("Strata, 3 safekeepers, ANY 2", Box::new(|| with_safekeepers(3, 2))),
    ];
    for (name, run) in setups {
        let f = run().with_context(|| name.to_string())?;
        println!("{name:<48} {:>10.0} {:>16.2}", f.tps, f.latency_ms);
    }
    Ok(())
}
