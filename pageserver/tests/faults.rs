//! The redo manager under failure: killed, stopped and crashing processes,
//! bad records, concurrency, cancellation and shutdown — all on real
//! PostgreSQL 15 redo processes and real WAL.
mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::mask::{mask_page, Am};
use common::HeapChain;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pageserver::walredo::{DeathCause, PostgresRedoManager, WalRecord, WalRedoError};
use utils::lsn::Lsn;

fn chain() -> &'static HeapChain {
    static CHAIN: OnceLock<HeapChain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let sql = "CREATE TABLE t (a int, b text);
                   INSERT INTO t SELECT g, repeat('x', g % 40) FROM generate_series(1, 60) g;
                   UPDATE t SET b = 'updated' WHERE a % 5 = 0;
                   DELETE FROM t WHERE a % 7 = 0;";
        common::heap_chain(sql, "t", 0).expect("heap chain fixture")
    })
}

async fn redo(manager: &PostgresRedoManager) -> Result<Bytes, WalRedoError> {
    let c = chain();
    manager.request_redo(c.key, c.last_lsn(), c.base.clone(), c.records.clone()).await
}

fn assert_matches_disk(page: &[u8]) {
    let (mut a, mut b) = (page.to_vec(), chain().on_disk.clone());
    mask_page(Am::Heap, &mut a);
    mask_page(Am::Heap, &mut b);
    assert!(a == b, "rebuilt page differs from the data file");
}

fn only_pid(manager: &PostgresRedoManager) -> i32 {
    let status = manager.status();
    assert_eq!(status.processes.len(), 1, "{status:?}");
    status.processes[0].pid as i32
}

fn signal(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).expect("signal redo process");
}

fn pid_alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// The template cluster (`initdb`) is made in the background when the
/// manager is created, before any request; no process is launched for it.
#[tokio::test]
async fn the_template_cluster_is_made_before_the_first_request() {
    let user = utils::pg_user::PgUser::from_env().expect("postgres user");
    let own = pg_harness::pg_owned_tempdir(&user, "strata-walredo-warm-").expect("template dir");
    let template = own.path().join("template");
    let (manager, _dir) = common::manager(1, |c| c.template_dir = Some(template.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !template.join("READY").exists() {
        assert!(std::time::Instant::now() < deadline, "no template made within 120 s of the manager's creation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(template.join("data/PG_VERSION").exists(), "READY without the template's data directory");
    assert!(manager.status().processes.is_empty(), "the warm-up launched a process");
    manager.ping().await.expect("ping with the template made in advance");
}

#[tokio::test]
async fn ping_status_and_redo() {
    let (manager, _dir) = common::manager(1, |_| {});
    assert!(manager.status().processes.is_empty(), "launched lazily");
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    assert!(manager.status().last_redo_at.is_none());
    assert_matches_disk(&redo(&manager).await.expect("redo"));
    assert_eq!(only_pid(&manager), pid, "process reused");
    assert!(manager.status().last_redo_at.is_some());
    manager.shutdown().await;
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn child_killed_mid_request_is_retried_on_a_fresh_process() {
    let (manager, _dir) = common::manager(1, |_| {});
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    // Stop the child so that the request is certainly in flight, then kill it.
    signal(pid, Signal::SIGSTOP);
    let manager = Arc::new(manager);
    let request = tokio::spawn({
        let m = Arc::clone(&manager);
        async move { redo(&m).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(pid, Signal::SIGKILL);
    let page = request.await.expect("join").expect("retried request succeeds");
    assert_matches_disk(&page);
    assert_ne!(only_pid(&manager), pid, "a fresh process served the retry");
    manager.shutdown().await;
}

#[tokio::test]
async fn hung_child_times_out_and_the_retry_succeeds() {
    let (manager, _dir) = common::manager(1, |c| c.request_timeout = Duration::from_secs(1));
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    signal(pid, Signal::SIGSTOP);
    let page = redo(&manager).await.expect("retry after timeout");
    assert_matches_disk(&page);
    assert_ne!(only_pid(&manager), pid);
    assert!(!pid_alive(pid), "timed-out process was killed and reaped");
    manager.shutdown().await;
}

#[tokio::test]
async fn garbage_record_fails_and_the_next_request_succeeds() {
    let (manager, _dir) = common::manager(1, |_| {});
    let c = chain();
    let mut garbage = vec![0xA5u8; 200];
    garbage[..4].copy_from_slice(&200u32.to_le_bytes()); // a plausible xl_tot_len
    let mut records = c.records.clone();
    records.push((Lsn(c.last_lsn().0 + 1000), WalRecord::Postgres { will_init: false, rec: Bytes::from(garbage) }));
    let err = manager.request_redo(c.key, c.last_lsn(), c.base.clone(), records).await.unwrap_err();
    // The process reports the bad record and exits: a death, with its reason.
    assert!(matches!(err, WalRedoError::Died { cause: DeathCause::Exit(1), .. }), "{err}");
    let page = redo(&manager).await.expect("next request works");
    assert_matches_disk(&page);
    manager.shutdown().await;
}

#[tokio::test]
async fn record_without_base_or_init_is_an_error() {
    let (manager, _dir) = common::manager(1, |_| {});
    let c = chain();
    let tail = c.records[1..].to_vec();
    let err = manager.request_redo(c.key, c.last_lsn(), None, tail).await.unwrap_err();
    assert!(err.to_string().contains("no base page"), "{err}");
    let short = manager.request_redo(c.key, c.last_lsn(), Some(Bytes::from_static(b"x")), c.records.clone()).await;
    assert!(matches!(short, Err(WalRedoError::InvalidRequest(_))));
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_requesters_get_identical_pages() {
    let (manager, _dir) = common::manager(3, |_| {});
    let manager = Arc::new(manager);
    let expected = redo(&manager).await.expect("reference redo");
    assert_matches_disk(&expected);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (m, expected) = (Arc::clone(&manager), expected.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(redo(&m).await.expect("redo"), expected);
            }
        }));
    }
    for t in tasks {
        t.await.expect("requester");
    }
    assert!(manager.status().processes.len() <= 3);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_in_flight_requests_then_cancels() {
    let (manager, _dir) = common::manager(2, |_| {});
    let manager = Arc::new(manager);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let m = Arc::clone(&manager);
        tasks.push(tokio::spawn(async move {
            loop {
                match redo(&m).await {
                    Ok(page) => assert_matches_disk(&page),
                    Err(WalRedoError::Cancelled) => return,
                    Err(e) => panic!("unexpected error during shutdown: {e}"),
                }
            }
        }));
    }
    while manager.status().last_redo_at.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pids: Vec<i32> = manager.status().processes.iter().map(|p| p.pid as i32).collect();
    manager.shutdown().await;
    assert!(manager.status().processes.is_empty());
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived shutdown");
    }
    for t in tasks {
        t.await.expect("requester ends with Cancelled");
    }
    assert!(matches!(redo(&manager).await, Err(WalRedoError::Cancelled)));
    assert!(matches!(manager.ping().await, Err(WalRedoError::Cancelled)));
    manager.shutdown().await; // idempotent
}

#[tokio::test]
async fn dropped_request_retires_its_process() {
    let (manager, _dir) = common::manager(1, |_| {});
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    signal(pid, Signal::SIGSTOP);
    let dropped = tokio::time::timeout(Duration::from_millis(200), redo(&manager)).await;
    assert!(dropped.is_err(), "request was still waiting on the stopped child");
    let page = redo(&manager).await.expect("fresh process");
    assert_matches_disk(&page);
    assert_ne!(only_pid(&manager), pid);
    manager.shutdown().await;
}

#[tokio::test]
async fn idle_processes_are_quiesced() {
    let (manager, _dir) = common::manager(1, |c| c.idle_timeout = Duration::from_millis(100));
    manager.ping().await.expect("ping");
    let pid = only_pid(&manager);
    // The background task stops it; wait (bounded) until it has.
    for _ in 0..200 {
        if manager.status().processes.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(manager.status().processes.is_empty(), "idle process still running");
    assert!(!pid_alive(pid));
    manager.ping().await.expect("relaunched on demand");
    assert_eq!(manager.maybe_quiesce(Duration::ZERO), 1);
    manager.shutdown().await;
}
