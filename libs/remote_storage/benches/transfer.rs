//! Upload and download throughput of `GenericRemoteStorage` against a local
//! directory and a real moto S3 server, next to a baseline of plain file
//! copies of the same files, in one run:
//!
//!   cargo bench -p remote_storage --bench transfer
//!
//! `STRATA_BENCH_OBJECTS` (default 8) objects of `STRATA_BENCH_OBJECT_MIB`
//! (default 32) MiB each, moved one after the other and then all at once.
//! The local backend fsyncs what it writes, so the baseline is shown with and
//! without fsync. moto is a single Python process: its figures say more
//! about moto than about S3.

use std::path::{Path, PathBuf};
use std::time::Instant;

use remote_storage::testing::MotoServer;
use remote_storage::{CancellationToken, GenericRemoteStorage, RemoteLocation, RemotePath, RemoteStorageConfig};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn report(what: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!("{what:<44} {:>9.1} MB/s  ({:.2} s)", bytes as f64 / 1e6 / secs, secs);
}

fn baseline(sources: &[PathBuf], dir: &Path, total: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let started = Instant::now();
    for (i, src) in sources.iter().enumerate() {
        std::fs::copy(src, dir.join(format!("copy-{i}"))).unwrap();
    }
    report("baseline std::fs::copy", total, started);
    let started = Instant::now();
    for (i, src) in sources.iter().enumerate() {
        let dst = dir.join(format!("synced-{i}"));
        std::fs::copy(src, &dst).unwrap();
        std::fs::File::open(&dst).unwrap().sync_all().unwrap();
    }
    std::fs::File::open(dir).unwrap().sync_all().unwrap();
    report("baseline std::fs::copy + fsync", total, started);
    std::fs::remove_dir_all(dir).unwrap();
}

async fn transfer(name: &str, storage: &GenericRemoteStorage, sources: &[PathBuf], dir: &Path, total: u64) {
    let cancel = CancellationToken::new();
    std::fs::create_dir_all(dir).unwrap();
    let keys: Vec<RemotePath> = (0..sources.len()).map(|i| RemotePath::new(&format!("bench/obj-{i}")).unwrap()).collect();

    let started = Instant::now();
    for (src, key) in sources.iter().zip(&keys) {
        storage.upload_file(src, key, &cancel).await.unwrap();
    }
    report(&format!("{name}: upload, one at a time"), total, started);

    let started = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        storage.download_to_file(key, &dir.join(format!("dl-{i}")), None, &cancel).await.unwrap();
    }
    report(&format!("{name}: download, one at a time"), total, started);

    let started = Instant::now();
    futures::future::try_join_all(sources.iter().zip(&keys).map(|(src, key)| storage.upload_file(src, key, &cancel)))
        .await
        .unwrap();
    report(&format!("{name}: upload, {} at once", keys.len()), total, started);

    let started = Instant::now();
    futures::future::try_join_all(keys.iter().enumerate().map(|(i, key)| {
        let dst = dir.join(format!("dl-{i}"));
        let cancel = &cancel;
        async move { storage.download_to_file(key, &dst, None, cancel).await }
    }))
    .await
    .unwrap();
    report(&format!("{name}: download, {} at once", keys.len()), total, started);

    for (i, src) in sources.iter().enumerate() {
        let got = std::fs::metadata(dir.join(format!("dl-{i}"))).unwrap().len();
        assert_eq!(got, std::fs::metadata(src).unwrap().len());
    }
    storage.delete_many(&keys, &cancel).await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    let objects = env_usize("STRATA_BENCH_OBJECTS", 8);
    let mib = env_usize("STRATA_BENCH_OBJECT_MIB", 32);
    let work = tempfile::tempdir().unwrap();
    let sources: Vec<PathBuf> = (0..objects)
        .map(|i| {
            let p = work.path().join(format!("src-{i}"));
            std::fs::write(&p, pattern(mib << 20, i as u64 + 1)).unwrap();
            p
        })
        .collect();
    let total = (objects * (mib << 20)) as u64;
    println!("{objects} objects x {mib} MiB = {} MB per pass", total / 1_000_000);

    baseline(&sources, &work.path().join("baseline"), total);

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let local = RemoteStorageConfig::new(RemoteLocation::LocalFs { root: work.path().join("remote") });
        let storage = GenericRemoteStorage::new(&local).unwrap();
        transfer("local fs", &storage, &sources, &work.path().join("local-dl"), total).await;
    });

    let moto = MotoServer::start();
    rt.block_on(async {
        let storage = GenericRemoteStorage::new(&moto.config("bench")).unwrap();
        transfer("moto s3", &storage, &sources, &work.path().join("moto-dl"), total).await;
    });
}
