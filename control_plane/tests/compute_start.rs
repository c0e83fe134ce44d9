//! How `strata endpoint start` gets its data directory: a full start
//! unpacks the basebackup straight from the pageserver's HTTP body (memory
//! does not grow with the database, a MiB/s summary is printed, the result
//! compares equal), and a lazy start where lazy computes cannot run falls
//! back to a full start and says so; a start returns only once a quorum of
//! safekeepers holds what it committed. Real cluster, real PostgreSQL.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{pgbench, psql, started_cluster, url_of, Repo};

/// Run `strata args` while sampling its peak resident memory (VmHWM, a
/// high-water mark, so late samples see the whole peak); returns
/// (stdout, stderr, peak KiB).
fn run_measured(repo: &Repo, args: &[&str]) -> (String, String, u64) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_strata"));
    let mut child = Command::new(bin)
        .arg("--repo-dir")
        .arg(&repo.path)
        .args(args)
        .env("STRATA_BIN_DIR", bin.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strata");
    let status_path = format!("/proc/{}/status", child.id());
    let read_hwm = || -> Option<u64> {
        let text = std::fs::read_to_string(&status_path).ok()?;
        text.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    };
    let mut peak_kib = 0;
    while child.try_wait().expect("wait for strata").is_none() {
        peak_kib = peak_kib.max(read_hwm().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("strata output");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "strata {args:?}: {stderr}{stdout}");
    (stdout, stderr, peak_kib)
}

/// MiB in a `strata: basebackup of endpoint NAME (full): 172.0 MiB in 5.9 s (29.2 MiB/s)` line.
fn summary_mib(stderr: &str, name: &str) -> Option<f64> {
    let prefix = format!("strata: basebackup of endpoint {name} (full): ");
    let line = stderr.lines().find(|l| l.starts_with(&prefix) && l.contains(" in "))?;
    let mut words = line[prefix.len()..].split_whitespace();
    let (n, unit) = (words.next()?.parse::<f64>().ok()?, words.next()?);
    Some(match unit {
        "GiB" => n * 1024.0,
        "MiB" => n,
        "KiB" => n / 1024.0,
        _ => return None,
    })
}

#[test]
fn full_start_streams_the_basebackup_into_the_data_directory() {
    let repo = started_cluster(1);
    let (out, _) = (repo.ok(&["endpoint", "start", "seed"]), ());
    let url = url_of(&repo, &out);
    pgbench(&url, &["-i", "-q", "-s", "8"]);
    let db_mib = psql(&url, "SELECT sum(pg_database_size(datname)) FROM pg_database").parse::<f64>().unwrap() / 1048576.0;
    repo.ok(&["endpoint", "stop", "seed"]);
    assert!(db_mib > 100.0, "the databases hold {db_mib:.0} MiB");

    let (stdout, stderr, peak_kib) = run_measured(&repo, &["endpoint", "start", "seed", "--full"]);
    let sent = summary_mib(&stderr, "seed").unwrap_or_else(|| panic!("no basebackup summary line:\n{stderr}"));
    assert!(sent >= db_mib * 0.9, "the summary counts the archive ({sent:.0} MiB) of {db_mib:.0} MiB of databases:\n{stderr}");
    let peak_mib = peak_kib as f64 / 1024.0;
    assert!(peak_kib > 0 && peak_mib < sent / 2.0, "strata's peak memory {peak_mib:.0} MiB for a {sent:.0} MiB archive");
    let ep = common::endpoint(&repo, "seed");
    let leftovers: Vec<_> = std::fs::read_dir(ep.runtime_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".tar")).collect();
    assert!(leftovers.is_empty(), "no archive copy beside the data directory: {leftovers:?}");
    assert_eq!(psql(&url_of(&repo, &stdout), "SELECT count(*) FROM pgbench_accounts"), "800000");
    let report = repo.ok(&["endpoint", "compare", "seed"]);
    assert!(report.contains(" 0 differences"), "{report}");
}

#[test]
fn lazy_start_without_lazyfs_falls_back_to_a_full_start_and_says_so() {
    let mut repo = started_cluster(1);
    let (out, _) = (repo.ok(&["endpoint", "start", "seed"]), ());
    psql(&url_of(&repo, &out), "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    repo.ok(&["endpoint", "stop", "seed"]);
    // A binary directory without lazyfs (only `endpoint start` runs with it:
    // the cluster's components are already up).
    let empty_bin = tempfile::tempdir().unwrap();
    repo.envs.push(("STRATA_BIN_DIR".into(), empty_bin.path().display().to_string()));
    let result = repo.run(&["endpoint", "start", "lz", "--lazy"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&result.stdout).into_owned(), String::from_utf8_lossy(&result.stderr).into_owned());
    assert!(result.status.success(), "{stderr}{stdout}");
    assert!(stderr.contains("lazy start of endpoint lz is unavailable here") && stderr.contains("lazyfs"), "{stderr}");
    assert!(stdout.contains("(full (lazy unavailable))"), "{stdout}");
    let ep = common::endpoint(&repo, "lz");
    assert!(!ep.lazy_active && !control_plane::lazy::is_mounted(&ep.pgdata), "a plain data directory");
    assert_eq!(psql(&ep.url_with_password(), "SELECT count(*) FROM t"), "1000");
    repo.envs.clear();
    let list = repo.ok(&["endpoint", "list"]);
    assert!(list.lines().any(|l| l.starts_with("lz ") && l.contains("full (lazy unavailable)")), "{list}");
}

/// `endpoint start` returns only once a quorum of safekeepers follows the
/// new compute and holds everything it flushed, the endpoint's own
/// password change included (committed locally, before the replication
/// role let any safekeeper in). Before this was so, a safekeeper could
/// still sit in its reconnect backoff: the change stayed on the compute,
/// and an `endpoint compare` right after the start found pg_authid and
/// pg_xact differing (a CI failure of the lazy prefetch test).
#[test]
fn a_started_endpoint_is_followed_by_a_quorum_holding_what_it_committed() {
    let repo = started_cluster(3);
    let cl = common::failover::Cl::new(&repo);
    for name in ["first", "second", "third"] {
        let url = url_of(&repo, &repo.ok(&["endpoint", "start", name, "--branch-name", "main"]));
        let compute: utils::lsn::Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
        let holding: Vec<u64> = (1..=3)
            .filter(|&id| cl.sk_status(id).is_some_and(|s| common::failover::lsn(&s, "flush_lsn") >= compute))
            .collect();
        assert!(holding.len() >= 2, "endpoint {name}: compute flushed {compute}, only safekeepers {holding:?} hold it");
        // Stops the compute at once and rebuilds its data from the pageserver.
        let report = repo.ok(&["endpoint", "compare", name]);
        assert!(report.contains(" 0 differences"), "endpoint {name}: {report}");
    }
}
