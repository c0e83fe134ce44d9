//! WAL redo throughput and process launch time on real PostgreSQL 15 redo
//! processes (harness = false: prints figures, asserts nothing about time).
//!
//! * heap-insert chains of 1, 10 and 100 records (an initialising insert
//!   plus plain inserts into the same block), sequential and with two
//!   concurrent requesters (pool of two processes), and in batches of 16
//!   and 64 through `request_redo_many` (pipelined to the processes);
//! * launch time: stop the idle process, then time a ping (spawn, crash
//!   recovery of the scratch cluster, handshake, round trip);
//! * all of it with the seccomp sandbox on (the default) and, as the
//!   baseline measured in the same run, off.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pageserver::walredo::{PostgresRedoManager, RedoRequest};

const BUDGET: Duration = Duration::from_secs(3);

async fn run_chain(manager: Arc<PostgresRedoManager>, chain: Arc<common::HeapChain>, n: usize) -> usize {
    let records = chain.records[..n].to_vec();
    let lsn = records[n - 1].0;
    let started = Instant::now();
    let mut pages = 0;
    while started.elapsed() < BUDGET {
        for _ in 0..50 {
            manager.request_redo(chain.key, lsn, None, records.clone()).await.expect("redo");
            pages += 1;
        }
    }
    pages
}

async fn throughput(manager: &Arc<PostgresRedoManager>, chain: &Arc<common::HeapChain>, n: usize, clients: usize) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(run_chain(Arc::clone(manager), Arc::clone(chain), n)))
        .collect();
    let mut pages = 0;
    for t in tasks {
        pages += t.await.expect("bench task");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "chain of {n:>3} records, {clients} requester(s): {:>9.0} pages/s {:>10.0} records/s",
        pages as f64 / secs,
        (pages * n) as f64 / secs
    );
}

/// Pages/s with `request_redo_many` in batches of `batch` (pipelined to
/// the processes, `PIPELINE_DEPTH` requests per exchange).
async fn pipelined(manager: &Arc<PostgresRedoManager>, chain: &common::HeapChain, n: usize, batch: usize) {
    let records = chain.records[..n].to_vec();
    let lsn = records[n - 1].0;
    let started = Instant::now();
    let mut pages = 0;
    while started.elapsed() < BUDGET {
        let reqs = (0..batch)
            .map(|_| RedoRequest { key: chain.key.into(), lsn, base: None, records: records.clone() })
            .collect();
        for page in manager.request_redo_many(reqs).await {
            page.expect("redo");
            pages += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "chain of {n:>3} records, batches of {batch:>3} (pipelined): {:>9.0} pages/s {:>10.0} records/s",
        pages as f64 / secs,
        (pages * n) as f64 / secs
    );
}

async fn launch_time(manager: &PostgresRedoManager) {
    let mut samples = Vec::new();
    for _ in 0..10 {
        manager.maybe_quiesce(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(50)).await; // let the old one be reaped
        let started = Instant::now();
        manager.ping().await.expect("ping");
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "process launch (spawn + recovery + handshake + ping): median {:?}, min {:?}, max {:?}",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1]
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let sql = "CREATE TABLE b (a int);
               INSERT INTO b SELECT generate_series(1, 150);";
    let chain = Arc::new(common::heap_chain(sql, "b", 0).expect("chain"));
    assert!(chain.base.is_none() && chain.records.len() >= 100, "expected an init + inserts chain");
    rt.block_on(async {
        for (label, sandbox) in [("sandbox on", true), ("sandbox off (baseline)", false)] {
            println!("-- {label}");
            let (manager, _dir) = common::manager(2, |c| {
                c.sandbox = sandbox;
                c.pipeline_depth = pageserver::walredo::PIPELINE_DEPTH;
            });
            let manager = Arc::new(manager);
            manager.ping().await.expect("warm up");
            for n in [1, 10, 100] {
                for clients in [1, 2] {
                    throughput(&manager, &chain, n, clients).await;
                }
                for batch in [16, 64] {
                    pipelined(&manager, &chain, n, batch).await;
                }
            }
            launch_time(&manager).await;
            manager.shutdown().await;
        }
    });
}
