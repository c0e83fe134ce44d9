//! The redo process's sandbox, on real PostgreSQL 15 redo processes: the
//! seccomp filter is in force once a process serves, a forbidden system
//! call kills the process and fails the request cleanly (after the retry),
//! the next request runs on a fresh process; the memory limit stops a big
//! allocation; the CPU budget retires processes; the sandbox can be turned
//! off; a production build refuses the test commands.
mod common;

use std::sync::OnceLock;

use common::mask::{mask_page, Am};
use common::HeapChain;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use pageserver::metrics::WAL_REDO_PROCESS_DEATHS;
use pageserver::walredo::{DeathCause, PostgresRedoManager, TestCommand, WalRedoConfig, WalRedoError};

fn chain() -> &'static HeapChain {
    static CHAIN: OnceLock<HeapChain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let sql = "CREATE TABLE t (a int, b text);
                   INSERT INTO t SELECT g, repeat('y', g % 50) FROM generate_series(1, 80) g;
                   UPDATE t SET b = 'changed' WHERE a % 3 = 0;
                   DELETE FROM t WHERE a % 11 = 0;";
        common::heap_chain(sql, "t", 0).expect("heap chain fixture")
    })
}

async fn redo_matches_disk(manager: &PostgresRedoManager) {
    redo_chain_matches_disk(manager, chain()).await;
}

async fn redo_chain_matches_disk(manager: &PostgresRedoManager, c: &HeapChain) {
    let page = manager.request_redo(c.key, c.last_lsn(), c.base.clone(), c.records.clone()).await.expect("redo");
    let (mut a, mut b) = (page.to_vec(), c.on_disk.clone());
    mask_page(Am::Heap, &mut a);
    mask_page(Am::Heap, &mut b);
    assert!(a == b, "rebuilt page differs from the data file");
}

/// A manager running the test build of the extension.
fn test_manager(tweak: impl FnOnce(&mut WalRedoConfig)) -> (PostgresRedoManager, tempfile::TempDir) {
    let lib = common::walredo_test_lib();
    common::manager(1, |c| {
        c.lib_path = Some(lib);
        tweak(c);
    })
}

fn only_pid(manager: &PostgresRedoManager) -> u32 {
    let status = manager.status();
    assert_eq!(status.processes.len(), 1, "{status:?}");
    status.processes[0].pid
}

/// A field of /proc/PID/status, e.g. "Seccomp".
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line[prefix.len()..].trim().to_string()
}

/// (soft, hard) of a line of /proc/PID/limits, e.g. "Max data size".
fn proc_limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut words = line[name.len()..].split_whitespace();
    (words.next().unwrap_or_default().to_string(), words.next().unwrap_or_default().to_string())
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

fn deaths(cause: &str) -> u64 {
    WAL_REDO_PROCESS_DEATHS.with_label_values(&[cause]).get()
}

#[tokio::test]
async fn serving_process_is_under_seccomp_and_limits() {
    let (manager, _dir) = common::manager(1, |c| {
        c.memory_limit_bytes = 512 << 20;
        c.cpu_limit_secs = 600;
    });
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    assert_eq!(proc_status(pid, "Seccomp"), "2", "filter mode once the process serves");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let mib512 = (512u64 << 20).to_string();
    assert_eq!(proc_limit(pid, "Max data size"), (mib512.clone(), mib512));
    assert_eq!(proc_limit(pid, "Max cpu time"), ("600".into(), "605".into()));
    assert_eq!(proc_limit(pid, "Max core file size"), ("0".into(), "0".into()));
    redo_matches_disk(&manager).await;
    assert_eq!(only_pid(&manager), pid, "real redo runs inside the filter");
    manager.shutdown().await;
}

#[tokio::test]
async fn redo_in_a_new_database_runs_inside_the_filter() {
    // The scratch cluster has no directory for this database: redo creates
    // it (mkdir) under the filter.
    let sql = "CREATE TABLE n (a int, b text); INSERT INTO n SELECT g, 'v' || g FROM generate_series(1, 50) g;";
    let c = common::heap_chain_in(Some("sandboxdb"), sql, "n", 0).expect("chain in a new database");
    assert!(c.key.0.db_node != 5, "not the postgres database");
    let (manager, _dir) = common::manager(1, |_| {});
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    redo_chain_matches_disk(&manager, &c).await;
    assert_eq!(only_pid(&manager), pid, "the process survived");
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    manager.shutdown().await;
}

#[tokio::test]
async fn forbidden_syscall_kills_the_process_and_the_next_request_succeeds() {
    let (manager, _dir) = test_manager(|_| {});
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    assert_eq!(proc_status(pid, "Seccomp"), "2");
    let before = deaths("sandbox");
    let err = manager.test_command(TestCommand::OpenSocket).await.expect_err("socket() must not succeed");
    let WalRedoError::Died { pid: died, cause, .. } = &err else { panic!("not a death: {err}") };
    assert_eq!(*cause, DeathCause::Sandbox, "{err}");
    assert!(err.to_string().contains("seccomp sandbox"), "{err}");
    assert_ne!(*died, pid, "the retry ran on a fresh process, which died too");
    assert_eq!(deaths("sandbox") - before, 2, "the first attempt and the retry");
    assert!(!alive(pid) && !alive(*died), "killed processes are reaped");
    assert!(manager.status().processes.is_empty(), "no dead process left in the pool");
    redo_matches_disk(&manager).await;
    let fresh = only_pid(&manager);
    assert!(fresh != pid && fresh != *died);
    assert_eq!(proc_status(fresh, "Seccomp"), "2");
    manager.shutdown().await;
}

#[tokio::test]
async fn sandbox_can_be_turned_off() {
    let (manager, _dir) = test_manager(|c| c.sandbox = false);
    manager.test_command(TestCommand::OpenSocket).await.expect("socket() is allowed without the sandbox");
    let pid = only_pid(&manager);
    assert_eq!(proc_status(pid, "Seccomp"), "0");
    redo_matches_disk(&manager).await;
    assert_eq!(only_pid(&manager), pid);
    manager.shutdown().await;
}

#[tokio::test]
async fn memory_limit_stops_a_big_allocation() {
    let (manager, _dir) = test_manager(|c| c.memory_limit_bytes = 256 << 20);
    manager.test_command(TestCommand::Allocate { size_bytes: 32 << 20 }).await.expect("32 MiB fit");
    let pid = only_pid(&manager);
    let err = manager.test_command(TestCommand::Allocate { size_bytes: 512 << 20 }).await.expect_err("over the limit");
    assert!(matches!(err, WalRedoError::Died { cause: DeathCause::Exit(1), .. }), "{err}");
    assert!(err.to_string().contains("out of memory"), "{err}");
    assert!(!alive(pid));
    redo_matches_disk(&manager).await;
    manager.shutdown().await;
}

#[tokio::test]
async fn process_is_retired_once_half_its_cpu_limit_is_used() {
    // A 1 s limit: half of it (0 whole seconds) is used at once, so each
    // process serves one request and is replaced.
    let (manager, _dir) = common::manager(1, |c| c.cpu_limit_secs = 1);
    manager.ping().await.expect("ping");
    assert!(manager.status().processes.is_empty(), "retired after its request");
    redo_matches_disk(&manager).await;
    assert!(manager.status().processes.is_empty());
    manager.shutdown().await;
}

#[tokio::test]
async fn production_build_refuses_test_commands() {
    let (manager, _dir) = common::manager(1, |_| {});
    let err = manager.test_command(TestCommand::OpenSocket).await.expect_err("unknown to a production build");
    assert!(matches!(err, WalRedoError::Died { cause: DeathCause::Exit(1), .. }), "{err}");
    assert!(err.to_string().contains("unknown message tag 0x54"), "{err}");
    redo_matches_disk(&manager).await;
    manager.shutdown().await;
}
