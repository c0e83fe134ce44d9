//! Disk full under load: the pageserver's data disk and one safekeeper's
//! filled to the last byte during a pgbench run. Commits go on (two
//! safekeepers of three), the pageserver keeps answering while its flushes
//! fail, the logs say why, and once space is back both resume by
//! themselves: no acknowledged commit is lost, every block the pageserver
//! rebuilds equals the compute's, and no partial file is left. (The
//! pageserver's disk is 512 MiB: after the catch-up, compaction needs room
//! for its L1 copies beside the L0 files.)
mod common;

use std::process::Command;
use std::time::Duration;

use common::failover::{lsn, wait_for, Cl};
use common::{psql, url_of, Repo};
use pg_harness::small_disk::SmallDisk;
use utils::lsn::Lsn;

fn log_of(repo: &Repo, component: &str) -> String {
    std::fs::read_to_string(repo.path.join(component).join("log")).unwrap_or_default()
}

/// Files under `dir` whose names end in `.tmp` or `.alloc` (partial writes).
fn partial_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".tmp") || name.ends_with(".alloc") {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

#[test]
fn full_pageserver_and_safekeeper_disks_lose_nothing_and_resume_when_space_returns() {
    let repo = common::start_cluster_with_tenant_settings(Repo::new(), 3, &["checkpoint_distance=4MiB"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    common::pgbench(&url, &["-i", "-s", "2", "-q"]);
    repo.ok(&["endpoint", "stop", "main"]);
    repo.ok(&["stop"]);
    let ps_disk = SmallDisk::mount_over(&repo.path.join("pageserver/data"), 512).unwrap();
    let sk_disk = SmallDisk::mount_over(&repo.path.join("safekeeper_1/data"), 64).unwrap();
    repo.ok(&["start"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    let cl = Cl::new(&repo);
    let ps_filler = ps_disk.fill().unwrap();
    let sk_filler = sk_disk.fill().unwrap();

    // pgbench, and a bulk insert of ~40 MB of WAL: more than a layer flush
    // and a new WAL segment, neither of which has room.
    let bench = {
        let url = url.clone();
        std::thread::spawn(move || {
            Command::new("/usr/lib/postgresql/15/bin/pgbench").args(["-N", "-c", "2", "-T", "20", &url]).output().unwrap()
        })
    };
    psql(&url, "CREATE TABLE big AS SELECT g AS id, repeat('x', 300) AS v FROM generate_series(1, 120000) g");
    wait_for("the pageserver to report the full disk", Duration::from_secs(60), || {
        log_of(&repo, "pageserver").contains("No space left on device")
    });
    wait_for("safekeeper 1 to report the full disk", Duration::from_secs(60), || {
        cl.sk_status(1).is_some_and(|s| s["acceptor"]["last_error"].as_str().is_some_and(|e| e.contains("No space left")))
    });
    // Still serving while full; behind the compute, not ahead of it.
    let compute: Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    let ingested = lsn(&cl.ps_detail(), "last_record_lsn");
    assert!(ingested <= compute, "pageserver at {ingested}, compute at {compute}");
    let disk_consistent = lsn(&cl.ps_detail(), "disk_consistent_lsn");
    assert!(lsn(&cl.sk_status(1).unwrap(), "flush_lsn") < compute, "safekeeper 1 acknowledged WAL it had no room for");

    std::fs::remove_file(ps_filler).unwrap();
    std::fs::remove_file(sk_filler).unwrap();
    let out = bench.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    let processed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {text}"));
    let end: Lsn = psql(&url, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    wait_for("the pageserver to catch up", Duration::from_secs(120), || lsn(&cl.ps_detail(), "last_record_lsn") >= end);
    cl.wait_commit_everywhere_within(end, Duration::from_secs(120));
    // Flushing works again: a checkpoint writes everything ingested.
    let (t, tl) = cl.branch();
    let body = common::http_post(cl.conf.pageserver.http_port, &format!("/v1/tenant/{t}/timeline/{tl}/checkpoint"));
    let detail: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("checkpoint answered {body:?}: {e}"));
    let flushed = lsn(&detail, "disk_consistent_lsn");
    assert!(flushed > disk_consistent && flushed.0 + 1 >= end.0, "disk-consistent at {flushed} (was {disk_consistent}), WAL ends at {end}");

    // Every block equal, every acknowledged transaction there after a restart.
    repo.ok(&["endpoint", "compare", "main"]);
    repo.ok(&["endpoint", "stop", "main"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    let history: u64 = psql(&url, "SELECT count(*) FROM pgbench_history").parse().unwrap();
    assert_eq!(history, processed, "acknowledged pgbench transactions lost");
    assert_eq!(psql(&url, "SELECT count(*) FROM big"), "120000");
    cl.assert_wal_identical();
    let left = partial_files(&repo.path.join("pageserver/data"));
    let left_sk = partial_files(&repo.path.join("safekeeper_1/data"));
    assert!(left.is_empty() && left_sk.is_empty(), "partial files left: {left:?} {left_sk:?}");
    repo.ok(&["stop"]);
    drop((ps_disk, sk_disk));
}
