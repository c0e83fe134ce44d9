//! Safekeeper failures with a real cluster of 3 safekeepers: acknowledged
//! commits survive a compute restart while a safekeeper is down, a restarted
//! safekeeper catches up from its peers byte for byte, and the pageserver
//! keeps ingesting when its WAL source dies.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::failover::{lsn, wait_for, Cl, SEG_SIZE};
use common::{psql, started_cluster, url_of};
use serde_json::Value;
use utils::lsn::Lsn;

fn count_ids(url: &str, ids: &[i64]) -> usize {
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    psql(url, &format!("SELECT count(*) FROM c WHERE id = ANY('{{{list}}}'::bigint[])")).parse().unwrap()
}

fn insert_acked(url: &str, n: usize) -> Vec<i64> {
    (0..n).map(|_| psql(url, "INSERT INTO c(v) VALUES (1) RETURNING id").lines().next().unwrap().parse().unwrap()).collect()
}

#[test]
fn acknowledged_commits_survive_compute_restart_with_a_safekeeper_down() {
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    let mut acked = insert_acked(&main, 20);
    cl.kill9_sk(1);
    // sk2 + sk3 still form a quorum: commits go on.
    acked.extend(insert_acked(&main, 50));
    psql(&main, "INSERT INTO c(v) SELECT 2 FROM generate_series(1, 20000)");
    acked.extend(insert_acked(&main, 20));
    repo.ok(&["endpoint", "stop", "main"]);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(count_ids(&main, &acked), acked.len(), "acknowledged commits were lost");
    assert_eq!(psql(&main, "SELECT count(*) FROM c WHERE v = 2"), "20000");
    // The restarted safekeeper rejoins the new term and catches up.
    cl.restart_missing();
    acked.extend(insert_acked(&main, 10));
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    cl.wait_commit_everywhere(end);
    cl.assert_wal_identical();
    let status = repo.ok(&["status"]);
    println!("{status}");
    assert!(status.contains("STREAMS_FROM sk_"), "{status}");
    for id in 1..=3 {
        assert!(status.contains(&format!("sk_{id:<4} term 2")), "safekeeper {id} not on the second term: {status}");
    }
}

#[test]
fn a_restarted_safekeeper_catches_up_from_its_peers() {
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    cl.kill9_sk(3);
    // A few MB of WAL while safekeeper 3 is down.
    psql(&main, "INSERT INTO c(v) SELECT 1 FROM generate_series(1, 60000)");
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    cl.restart_missing();
    cl.wait_commit_everywhere(end);
    cl.assert_wal_identical();
    let sk = cl.conf.safekeepers.iter().find(|s| s.id == 3).unwrap();
    let metrics = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{}/metrics", sk.http_port)]).output().unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let recovered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("safekeeper_recovery_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(recovered > 1_000_000.0, "safekeeper 3 did not recover from its peers ({recovered} bytes)");
}

/// Bytes of WAL the compute at `url` holds in pg_wal.
fn pg_wal_bytes(url: &str) -> u64 {
    psql(url, "SELECT sum(size) FROM pg_ls_waldir()").parse().unwrap()
}

fn metric_of(port: u16, name: &str) -> f64 {
    common::metric(&common::http_get(port, "/metrics"), name).unwrap_or(0.0)
}

/// A safekeeper down while 256 MB of WAL are written: the compute keeps no
/// more WAL for it than its bound (the slot is invalidated past
/// `max_slot_wal_keep_size`), and once started it catches up from its peers
/// to byte-identical WAL; nothing acknowledged is lost across a restart.
#[test]
fn a_safekeeper_down_for_256_mb_of_wal_catches_up_from_peers_within_the_pg_wal_bound() {
    const MB: u64 = 1024 * 1024;
    let (keep_mb, max_wal_mb) = (32, 64);
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    let keep = format!("max_slot_wal_keep_size={keep_mb}MB");
    let max_wal = format!("max_wal_size={max_wal_mb}MB");
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main", "-c", &keep, "-c", &max_wal, "-c", "min_wal_size=32MB"]));
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    let mut acked = insert_acked(&main, 10);
    cl.kill9_sk(3);
    let start: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    let mut peak_pg_wal = 0;
    let mut end = start;
    while end.0 - start.0 < 256 * MB {
        psql(&main, "INSERT INTO c(v) SELECT 2 FROM generate_series(1, 150000)");
        acked.extend(insert_acked(&main, 1));
        peak_pg_wal = peak_pg_wal.max(pg_wal_bytes(&main));
        end = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    }
    // What a checkpoint cycle may hold (max_wal_size), what the slot may keep,
    // and a few segments in flight; far below the 256 MB a slot would pin.
    let bound = (keep_mb + max_wal_mb) * MB + 4 * SEG_SIZE;
    println!("pg_wal peak {} MB while {} MB of WAL were written (bound {} MB)", peak_pg_wal / MB, (end.0 - start.0) / MB, bound / MB);
    assert!(peak_pg_wal <= bound, "pg_wal grew to {peak_pg_wal} bytes, above its bound {bound}");
    let slot = psql(&main, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'sk_3'");
    assert_eq!(slot, "lost", "the absent safekeeper's slot should have been invalidated");
    cl.restart_missing();
    acked.extend(insert_acked(&main, 10));
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    cl.wait_commit_everywhere_within(end, Duration::from_secs(300));
    cl.assert_wal_identical();
    let sk3 = cl.conf.safekeepers.iter().find(|s| s.id == 3).unwrap();
    let recovered = metric_of(sk3.http_port, "safekeeper_recovery_bytes_total");
    println!("safekeeper 3 recovered {} MB from its peers", recovered as u64 / MB);
    assert!(recovered > 0.0, "safekeeper 3 did not recover from its peers");
    repo.ok(&["endpoint", "stop", "main"]);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(count_ids(&main, &acked), acked.len(), "acknowledged commits were lost");
}

#[test]
fn the_pageserver_switches_source_when_its_safekeeper_dies() {
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    psql(&main, "INSERT INTO c(v) SELECT 1 FROM generate_series(1, 1000)");
    let source = |d: &Value| d["walreceiver"]["source"]["conninfo"].as_str().unwrap_or("").to_string();
    let current = source(&cl.ps_detail());
    let victim = cl.conf.safekeepers.iter().find(|s| current.contains(&format!("port={}", s.pg_port))).expect("streams from a safekeeper").id;
    // Load in the background while the source dies.
    let load = {
        let main = main.clone();
        std::thread::spawn(move || psql(&main, "INSERT INTO c(v) SELECT 2 FROM generate_series(1, 50000)"))
    };
    std::thread::sleep(Duration::from_millis(300));
    cl.kill9_sk(victim);
    load.join().unwrap();
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    wait_for("the pageserver to reach the compute's flush LSN", Duration::from_secs(60), || lsn(&cl.ps_detail(), "last_record_lsn") >= end);
    assert!(!source(&cl.ps_detail()).contains(&format!("port={}", cl.conf.safekeepers[victim as usize - 1].pg_port)));
    // Every block the pageserver rebuilds equals the compute's.
    repo.ok(&["endpoint", "compare", "main"]);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&main, "SELECT count(*) FROM c"), "51000");
}

/// Bank transfers in a psql session fed from stdin; an id is acknowledged
/// only once the `\echo C` after its COMMIT is printed (ON_ERROR_STOP: a
/// failed commit ends the session before that).
fn transfer_session(url: &str, seed: u64, acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>) -> std::process::Child {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", url, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let mut x = seed | 1;
        for _ in 0..10_000_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b, amount) = (x % ACCOUNTS + 1, (x >> 20) % ACCOUNTS + 1, (x >> 40) % 50 + 1);
            if a == b {
                continue;
            }
            let sql = format!(
                "BEGIN;\nUPDATE acc SET bal = bal + CASE id WHEN {a} THEN -{amount} ELSE {amount} END WHERE id IN ({a}, {b});\n\
                 INSERT INTO xfer(a, b, amount) VALUES ({a}, {b}, {amount}) RETURNING id;\nCOMMIT;\n\\echo C\n"
            );
            if stdin.write_all(sql.as_bytes()).is_err() {
                return;
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut pending = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match line.trim() {
                "C" => acked.lock().unwrap().extend(pending.take()),
                id => pending = id.parse::<i64>().ok().or(pending),
            }
        }
    });
    child
}

const ACCOUNTS: u64 = 20;
const INITIAL_BALANCE: i64 = 1000;

/// Transfers keep running (sessions restarted when the compute goes away)
/// until `stop` is set.
fn transfer_load(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>, acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut round = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            round += 1;
            let mut child = transfer_session(&url, seed.wrapping_mul(31).wrapping_add(round), acked.clone());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Chaos: kill -9 one random safekeeper at a time and restart it, now and
/// then kill -9 the pageserver too, restart the compute once, under a
/// bank-transfer load. `STRATA_CHAOS_SECS` makes
/// it run longer (default 25 s of chaos).
#[test]
fn chaos_bank_transfers_survive_safekeeper_kills_and_a_compute_restart() {
    let secs: u64 = std::env::var("STRATA_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("chaos seed {seed}, {secs} s");
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE acc(id int primary key, bal bigint); CREATE TABLE xfer(id bigserial primary key, a int, b int, amount int)");
    psql(&main, &format!("INSERT INTO acc SELECT g, {INITIAL_BALANCE} FROM generate_series(1, {ACCOUNTS}) g"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let loads: Vec<_> = (0..2).map(|i| transfer_load(main.clone(), stop.clone(), acked.clone(), seed + i)).collect();
    let started = Instant::now();
    let (mut rng, mut kills, mut ps_kills, mut compute_restarted) = (seed | 1, 0, 0, false);
    while started.elapsed() < Duration::from_secs(secs) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let victim = rng % 3 + 1;
        cl.kill9_sk(victim);
        kills += 1;
        // In the first round, then in about every third, the pageserver dies as well.
        if ps_kills == 0 || (rng >> 8) % 3 == 0 {
            cl.kill9_pageserver();
            ps_kills += 1;
        }
        std::thread::sleep(Duration::from_millis(300 + rng % 1200));
        cl.restart_missing();
        if !compute_restarted && started.elapsed() > Duration::from_secs(secs / 2) {
            repo.ok(&["endpoint", "stop", "main"]);
            repo.ok(&["endpoint", "start", "main"]);
            compute_restarted = true;
        }
        // The restarted safekeeper catches up before the next kill.
        let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
        wait_for("the restarted safekeeper to catch up", Duration::from_secs(60), || {
            cl.sk_status(victim).is_some_and(|s| lsn(&s, "flush_lsn") >= end)
        });
    }
    if !compute_restarted {
        repo.ok(&["endpoint", "stop", "main"]);
        repo.ok(&["endpoint", "start", "main"]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loads {
        l.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "only {} transfers acknowledged", acked.len());
    let list = acked.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let found: usize = psql(&main, &format!("SELECT count(*) FROM xfer WHERE id = ANY('{{{list}}}'::bigint[])")).parse().unwrap();
    assert_eq!(found, acked.len(), "acknowledged transfers were lost");
    let total: i64 = psql(&main, "SELECT sum(bal) FROM acc").parse().unwrap();
    assert_eq!(total, ACCOUNTS as i64 * INITIAL_BALANCE, "money was created or destroyed");
    // Every transfer row matches the balances: replaying them gives the same accounts.
    let replayed = psql(&main, &format!(
        "SELECT count(*) FROM acc JOIN (SELECT id, {INITIAL_BALANCE} + coalesce((SELECT sum(amount) FROM xfer WHERE b = acc.id), 0) \
         - coalesce((SELECT sum(amount) FROM xfer WHERE a = acc.id), 0) AS want FROM acc) w USING (id) WHERE bal <> want"
    ));
    assert_eq!(replayed, "0", "balances do not match the transfers");
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    cl.wait_commit_everywhere(end);
    cl.assert_wal_identical();
    // The pageserver, killed along the way, has ingested all of it.
    assert!(ps_kills > 0, "the pageserver was never killed");
    wait_for("the pageserver to ingest up to the end", Duration::from_secs(60), || lsn(&cl.ps_detail(), "last_record_lsn") >= end);
    println!("chaos figures: {} s, {kills} safekeeper kills, {ps_kills} pageserver kills, {} transfers acknowledged ({:.0}/s), compute restarted once",
        started.elapsed().as_secs(), acked.len(), acked.len() as f64 / started.elapsed().as_secs_f64());
}

#[test]
fn without_a_quorum_of_safekeepers_the_compute_does_not_start_and_nothing_changes() {
    let repo = started_cluster(3);
    let cl = Cl::new(&repo);
    repo.ok(&["endpoint", "start", "main"]);
    repo.ok(&["endpoint", "stop", "main"]);
    let term_before = cl.sk_status(3).unwrap()["term"].clone();
    cl.kill9_sk(1);
    cl.kill9_sk(2);
    let out = repo.run(&["endpoint", "start", "main"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a quorum");
    assert!(err.contains("only 1 of 3 safekeepers answer") && err.contains("safekeeper 1") && err.contains("safekeeper 2"), "{err}");
    assert_eq!(cl.sk_status(3).unwrap()["term"], term_before, "a failed election changed the term");
    cl.restart_missing();
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "SELECT 1");
}
