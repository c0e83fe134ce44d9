//! Committed transactions survive kill -9 of the pageserver and of the
//! compute under load: counted client-side, checked after a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{psql, started_cluster, url_of};
use control_plane::endpoint::Endpoint;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A psql session inserting one row per transaction; every id it prints was
/// acknowledged as committed.
struct Load {
    child: std::process::Child,
    acked: Arc<Mutex<Vec<i64>>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let mut child = Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-At", "-q", url, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            for _ in 0..1_000_000 {
                if stdin.write_all(b"INSERT INTO c(v) VALUES (1) RETURNING id;\n").is_err() {
                    return;
                }
            }
        });
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = acked.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(id) = line.trim().parse() {
                    sink.lock().unwrap().push(id);
                }
            }
        });
        Load { child, acked }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait for psql to end (its server died) and return the acknowledged ids.
    fn finish(mut self) -> Vec<i64> {
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        self.acked.lock().unwrap().clone()
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_file(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path).unwrap().lines().next().unwrap().trim().parse().unwrap()
}

/// SIGKILL a postmaster and every process it started.
fn kill9_tree(pid: i32) {
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|s| s.parse::<i32>().ok());
            ppid == Some(pid)
        })
        .collect();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for child in children {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
}

#[test]
fn kill9_of_pageserver_and_compute_loses_no_committed_transaction() {
    let repo = started_cluster(1);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    let loads = [Load::start(&main), Load::start(&main)];
    wait_for("load to commit", || loads.iter().map(Load::count).sum::<usize>() > 300);

    // The pageserver is not on the commit path: the load goes on without it.
    kill9_tree(pid_file(&repo.path.join("pageserver/pid")));
    let before = loads.iter().map(Load::count).sum::<usize>();
    wait_for("load to continue without the pageserver", || loads.iter().map(Load::count).sum::<usize>() > before + 300);

    let ep = Endpoint::load(&repo.path, "main").unwrap().unwrap();
    kill9_tree(pid_file(&ep.pgdata.join("postmaster.pid")));
    let acked: Vec<i64> = loads.into_iter().flat_map(Load::finish).collect();
    assert!(acked.len() > 600, "only {} commits acknowledged", acked.len());

    repo.ok(&["start"]); // restarts the pageserver, which resumes streaming
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    let ids = acked.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let found = psql(&main, &format!("SELECT count(*) FROM c WHERE id = ANY('{{{ids}}}'::bigint[])"));
    assert_eq!(found, acked.len().to_string(), "acknowledged commits were lost");
    // At most one in-flight (unacknowledged) commit per session may also exist.
    let total: usize = psql(&main, "SELECT count(*) FROM c").parse().unwrap();
    assert!(total >= acked.len() && total <= acked.len() + 2, "{total} rows for {} acknowledged commits", acked.len());
    // The restarted compute writes again.
    psql(&main, "INSERT INTO c(v) VALUES (2)");
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let repo = started_cluster(1);
    let err = |args: &[&str]| {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(1), "strata {args:?} should fail");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        text
    };
    assert!(err(&["endpoint", "start", "x", "--branch-name", "nope"]).contains("unknown branch \"nope\""));
    assert!(err(&["timeline", "branch", "--branch-name", "b", "--ancestor-branch-name", "nope"]).contains("unknown branch"));
    assert!(err(&["endpoint", "stop", "never-created"]).contains("no endpoint named"));
    repo.ok(&["endpoint", "start", "main"]);
    assert!(err(&["endpoint", "start", "main"]).contains("already running"));
    assert!(err(&["timeline", "branch", "--branch-name", "main"]).contains("already exists"));
    let list = repo.ok(&["timeline", "list"]);
    assert_eq!(list.lines().count(), 1, "a failed command created a branch: {list}");
    assert!(!repo.path.join("endpoints/x").exists(), "a failed start created an endpoint");
}
