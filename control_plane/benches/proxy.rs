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
//! * `pgbench -S` on one endpoint with 1 client and with
//!   `STRATA_BENCH_CLIENTS` (default 4), each for `STRATA_BENCH_SECONDS`
//!   (default 5) and `STRATA_BENCH_ROUNDS` times (default 3, interleaved;
//!   medians printed): directly, through the proxy in plain text and with
//!   TLS, and through PgBouncer in session mode — the field's standard
//!   relay doing the same job, when `/usr/sbin/pgbouncer` is installed
//!   (`apt-get install pgbouncer`; the bench does not need it). Goal:
//!   proxy ≥ 0.9× direct;
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

fn pgbench_tps(url: &str, clients: u64) -> f64 {
    let seconds = env_num("STRATA_BENCH_SECONDS", 5).to_string();
    let threads = clients.min(2).to_string();
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-S", "-n", "-c", &clients.to_string(), "-j", &threads, "-T", &seconds, url])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("tps = ")).expect("tps line");
    line["tps = ".len()..].split_whitespace().next().unwrap().parse().unwrap()
}

/// PgBouncer in session mode in front of endpoint `name`'s compute,
/// running as the Postgres user (it refuses root); killed on drop.
struct PgBouncer {
    child: std::process::Child,
    url: String,
}

impl PgBouncer {
    const BINARY: &'static str = "/usr/sbin/pgbouncer";

    fn start(repo: &common::Repo, name: &str) -> Option<PgBouncer> {
        if !std::path::Path::new(Self::BINARY).exists() {
            return None;
        }
        let user = utils::pg_user::PgUser::from_env().unwrap();
        let dir = user.reachable_dir(&repo.path.join("pgbouncer")).unwrap();
        let ep = common::endpoint(repo, name);
        let password = ep.credential.as_ref().expect("an endpoint password").password.expose().to_string();
        let role = control_plane::secrets::CLIENT_ROLE;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ini = format!(
            "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = plain\nauth_file = {users}\npool_mode = session\nlogfile = {log}\n",
            ep.port,
            users = dir.join("users.txt").display(),
            log = dir.join("log").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("users.txt"), format!("\"{role}\" \"{password}\"\n")).unwrap();
        user.chown(&dir).unwrap();
        let child = user.command(Self::BINARY)
            .arg("--quiet")
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn().expect("start pgbouncer");
        let url = format!("postgresql://{role}:{password}@127.0.0.1:{port}/postgres?sslmode=disable");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not listen on {port}; see {}", dir.join("log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(PgBouncer { child, url })
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pgbench -S` TPS of each `(label, url)` with `clients`, rounds
/// interleaved so that drift of the machine hits every row alike; the
/// first row is the baseline the others are divided by.
fn compare_tps(rows: &[(&str, String)], clients: u64) {
    let rounds = env_num("STRATA_BENCH_ROUNDS", 3).max(1);
    let mut tps = vec![Vec::new(); rows.len()];
    for _ in 0..rounds {
        for (i, (_, url)) in rows.iter().enumerate() {
            tps[i].push(pgbench_tps(url, clients));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = tps.iter_mut().map(median).collect();
    println!("pgbench -S, {clients} client(s), median of {rounds} rounds");
    for ((label, _), tps) in rows.iter().zip(&medians) {
        println!("  {label:<44} {tps:>10.0}   {:.2}x", tps / medians[0]);
    }
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

    // The compute has no TLS; pgbench's default sslmode=prefer would
    // take TLS through the proxy, so plain text is asked for explicitly.
    let mut rows = vec![
        ("direct to the compute (baseline)", format!("{direct}?sslmode=disable")),
        ("through the proxy", format!("{proxied}&sslmode=disable")),
        ("through the proxy, TLS", format!("{proxied}&sslmode=require")),
    ];
    let bouncer = PgBouncer::start(&repo, "main");
    match &bouncer {
        Some(b) => rows.push(("through PgBouncer, session mode (reference)", b.url.clone())),
        None => println!("({} not installed: the PgBouncer reference row is left out)", PgBouncer::BINARY),
    }
    for clients in [1, env_num("STRATA_BENCH_CLIENTS", 4)] {
        compare_tps(&rows, clients);
    }
    drop(bouncer);

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
