//! What a user looks at: `strata --version`, `strata logs NAME [-n] [-f]`,
//! and `strata status` with sizes and lag per branch.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{psql, started_cluster, url_of};

#[test]
fn version_logs_and_status() {
    let repo = started_cluster(1);
    let version = repo.ok(&["--version"]);
    assert_eq!(version.trim(), format!("strata {}", env!("CARGO_PKG_VERSION")));

    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&url, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g");
    let ps = repo.ok(&["logs", "pageserver", "-n", "3"]);
    assert!(!ps.is_empty() && ps.lines().count() <= 3, "{ps}");
    let ep = repo.ok(&["logs", "main"]);
    assert!(ep.contains("database system is ready to accept connections"), "{ep}");
    let out = repo.run(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("known: broker, safekeeper_1, pageserver, proxy, main (endpoint)"), "{err}");

    // -f prints what is appended after it started.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--repo-dir", repo.path.to_str().unwrap(), "logs", "main", "-n", "0", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let marker = "strata_follow_marker_col";
    let _ = Command::new("/usr/lib/postgresql/15/bin/psql").args(["-X", &url, "-c", &format!("SELECT {marker}")]).output();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains(marker) && Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    follow.kill().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen.contains(marker), "logs -f did not show the new line: {seen}");
    assert!(!seen.contains("ready to accept connections"), "-n 0 printed old lines");

    let status = repo.ok(&["status"]);
    assert!(status.contains("DB_SIZE") && status.contains("LAG"), "{status}");
    let main = status.lines().find(|l| l.starts_with("main ")).expect("main in status");
    assert!(main.contains(" MiB"), "no database size for main: {main}");
    assert!(status.contains("pageserver on disk: "), "{status}");
}
