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
//!
//! Beside TPS each line prints CPU time per commit, which varies much less
//! between runs than TPS on a shared machine: of the compute (the
//! postmaster with every child, backends and walsenders included) and of
//! the WAL receivers together (the safekeeper processes, or the
//! `pg_receivewal` processes), measured over the pgbench run from
//! `/proc/PID/stat`.

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
    compute_cpu_ms_per_commit: f64,
    receivers_cpu_ms_per_commit: f64,
}

/// CPU seconds (user + system) a process has used, with `reaped`: also
/// those of its children that it has waited for.
fn cpu_s(pid: u32, reaped: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the parenthesised command name (which may hold spaces).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let fields: Vec<f64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    let (own, children) = (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0), fields.get(13).unwrap_or(&0.0) + fields.get(14).unwrap_or(&0.0));
    let ticks = if reaped { own + children } else { own };
    ticks / clock_ticks_per_s()
}

/// `getconf CLK_TCK` (the unit of `/proc/PID/stat` times), once.
fn clock_ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().ok();
        out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
    })
}

/// CPU seconds of the compute so far: the postmaster, the children it has
/// reaped (backends that ended) and its live children.
fn compute_cpu_s(pg: &PgCluster) -> f64 {
    let Some(postmaster) = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok()) else {
        return 0.0;
    };
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(postmaster))
        .map(|pid| cpu_s(pid, false))
        .sum();
    cpu_s(postmaster, true) + children
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()
}

/// Run pgbench on `pg`, WAL received by the processes `receivers`.
fn pgbench(pg: &PgCluster, receivers: &[u32]) -> anyhow::Result<Figures> {
    let conn = pg.connstr("postgres");
    let init = Command::new(pg_bin("pgbench")).args(["-i", "-s", "1", "-q", &conn]).output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    let clients = env_num("STRATA_BENCH_CLIENTS", 4).to_string();
    let seconds = env_num("STRATA_BENCH_SECONDS", 10).to_string();
    let receivers_cpu_s = || receivers.iter().map(|pid| cpu_s(*pid, false)).sum::<f64>();
    let (compute_before, receivers_before) = (compute_cpu_s(pg), receivers_cpu_s());
    let out = Command::new(pg_bin("pgbench"))
        .args(["-N", "-c", &clients, "-j", "2", "-T", &seconds, &conn])
        .output()?;
    let (compute_after, receivers_after) = (compute_cpu_s(pg), receivers_cpu_s());
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let find = |prefix: &str| -> anyhow::Result<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix)).with_context(|| format!("no {prefix:?} in {text}"))?;
        let number = line[prefix.len()..].split_whitespace().next().context("number")?;
        Ok(number.parse()?)
    };
    let commits = find("number of transactions actually processed: ")?.max(1.0);
    Ok(Figures {
        tps: find("tps = ")?,
        latency_ms: find("latency average = ")?,
        compute_cpu_ms_per_commit: (compute_after - compute_before) * 1000.0 / commits,
        receivers_cpu_ms_per_commit: (receivers_after - receivers_before) * 1000.0 / commits,
    })
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
    .and_then(|()| pgbench(&pg, &receivers.iter().map(Child::id).collect::<Vec<_>>()));
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
    let receivers: Vec<u32> = env.sks.iter().filter_map(|sk| sk.pid()).collect();
    pgbench(&env.pg, &receivers)
}

fn main() -> anyhow::Result<()> {
    println!(
        "pgbench -N, {} clients, {} s per setup, synchronous_commit = on\n",
        env_num("STRATA_BENCH_CLIENTS", 4),
        env_num("STRATA_BENCH_SECONDS", 10)
    );
    println!("{:<48} {:>8} {:>11} {:>11} {:>11}", "setup", "TPS", "latency ms", "compute", "receivers");
    println!("{:<48} {:>8} {:>11} {:>11} {:>11}", "", "", "avg", "CPU ms/tx", "CPU ms/tx");
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
        println!(
            "{name:<48} {:>8.0} {:>11.2} {:>11.3} {:>11.3}   {ratio}",
            f.tps, f.latency_ms, f.compute_cpu_ms_per_commit, f.receivers_cpu_ms_per_commit
        );
        tps[i] = Some(f.tps);
    }
    Ok(())
}
