//! WAL offload in a real cluster (3 safekeepers, the pageserver, a stock
//! compute, remote storage in `<repo>/remote`): completed segments are
//! offloaded byte for byte, every safekeeper learns `backup_lsn`, local WAL
//! below min(remote_consistent_lsn, backup_lsn) is removed once the
//! pageserver has uploaded its layers, and WAL that no safekeeper holds on
//! disk any more is still served — to a replication client starting at an
//! old LSN, and to a safekeeper that was down and catches up from a peer.
//! The cluster keeps working and a compute restart loses nothing.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_post, metric, psql, started_cluster, superuser_conninfo, url_of, Repo};
use control_plane::config::Config;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use utils::lsn::Lsn;

const SEG_SIZE: u64 = 16 * 1024 * 1024;

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "--max-time", "10"]).args(common::curl_auth(url)).arg(url).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lsn(v: &Value, field: &str) -> Lsn {
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in {v}")).parse().unwrap()
}

struct Cluster<'a> {
    repo: &'a Repo,
    conf: Config,
    tenant: String,
    timeline: String,
}

impl<'a> Cluster<'a> {
    fn new(repo: &'a Repo) -> Self {
        let state = control_plane::state::State::load(&repo.path).unwrap();
        let main = state.branches.iter().find(|b| b.name == "main").unwrap();
        let (tenant, timeline) = (main.tenant_id.to_string(), main.timeline_id.to_string());
        Cluster { repo, conf: Config::load(&repo.path).unwrap(), tenant, timeline }
    }
    fn sk_dir(&self, id: u64) -> PathBuf {
        self.repo.path.join(format!("safekeeper_{id}/data/{}/{}", self.tenant, self.timeline))
    }
    fn remote_dir(&self) -> PathBuf {
        self.repo.path.join(format!("remote/wal/{}/{}", self.tenant, self.timeline))
    }
    fn sk(&self, id: u64) -> &control_plane::config::SafekeeperConf {
        self.conf.safekeepers.iter().find(|s| s.id == id).unwrap()
    }
    fn sk_status(&self, id: u64) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/v1/tenant/{}/timeline/{}", self.sk(id).http_port, self.tenant, self.timeline);
        http_get(&url).and_then(|t| serde_json::from_str(&t).ok())
    }
    fn sk_metric(&self, id: u64, name: &str) -> f64 {
        let text = http_get(&format!("http://127.0.0.1:{}/metrics", self.sk(id).http_port)).unwrap_or_default();
        metric(&text, name).unwrap_or(0.0)
    }
    fn kill9_sk(&self, id: u64) {
        let text = std::fs::read_to_string(self.repo.path.join(format!("safekeeper_{id}/pid"))).unwrap();
        let _ = kill(Pid::from_raw(text.lines().next().unwrap().trim().parse().unwrap()), Signal::SIGKILL);
        wait_for("the safekeeper to die", Duration::from_secs(10), || self.sk_status(id).is_none());
    }
    /// Segment numbers of the WAL files on safekeeper `id`'s disk.
    fn local_segments(&self, id: u64) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(self.sk_dir(id))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| segno(&name))
            })
            .collect();
        out.sort();
        out
    }
    fn checkpoint(&self) -> Value {
        let path = format!("/v1/tenant/{}/timeline/{}/checkpoint", self.tenant, self.timeline);
        let body = http_post(self.conf.pageserver.http_port, &path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("checkpoint answered {body:?}: {e}"))
    }
}

fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    log * (0x1_0000_0000 / SEG_SIZE) + seg
}

fn seg_name(start: Lsn) -> String {
    start.segment_file_name(1, SEG_SIZE)
}

fn read(dir: &Path, start: Lsn) -> Vec<u8> {
    std::fs::read(dir.join(seg_name(start))).unwrap_or_else(|e| panic!("{}/{}: {e}", dir.display(), seg_name(start)))
}

/// WAL `[start, start + len)` streamed by the safekeeper at `pg_port`.
fn stream_wal(pg_port: u16, tenant: &str, timeline: &str, start: Lsn, len: u64) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut conf: pq_proto::ConnConfig = format!("postgresql://test@127.0.0.1:{pg_port}/postgres").parse().unwrap();
        conf.options = Some(format!("-c tenant_id={tenant} -c timeline_id={timeline}"));
        conf.password = common::token_for_port(pg_port);
        let mut client = pq_proto::ReplicationClient::connect_config(&conf).await.map_err(|e| e.to_string())?;
        client.identify_system().await.map_err(|e| e.to_string())?;
        let mut stream = client.start_replication(None, start, 1).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.map_err(|_| "no WAL for 30 s".to_string())?;
            match msg.map_err(|e| e.to_string())? {
                Some(pq_proto::ReplicationMessage::XLogData(x)) => {
                    assert_eq!(x.wal_start, start + out.len() as u64, "gap in the stream");
                    out.extend_from_slice(&x.data);
                }
                Some(_) => {}
                None => return Err("stream ended".into()),
            }
        }
        out.truncate(len as usize);
        Ok(out)
    })
}

#[test]
fn wal_is_offloaded_removed_locally_and_still_served() {
    let repo = started_cluster(3);
    let cl = Cluster::new(&repo);
    assert!(cl.conf.pageserver.remote_storage.is_some());
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    psql(&main, "CREATE TABLE t(id bigserial primary key, v text)");
    // Safekeeper 3 is down for the first part: it must later catch up from
    // WAL that its peers have offloaded and removed.
    cl.kill9_sk(3);
    for _ in 0..6 {
        psql(&main, "INSERT INTO t(v) SELECT md5(g::text) FROM generate_series(1, 2000) g");
        psql(&superuser_conninfo(&repo, "main"), "SELECT pg_switch_wal()");
    }
    psql(&main, "INSERT INTO t(v) VALUES ('after the switches')");
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    let done = end.segment_start(SEG_SIZE);
    let start = lsn(&cl.sk_status(1).unwrap(), "timeline_start_lsn");
    let first = start.segment_start(SEG_SIZE);
    assert!(done.0 - first.0 >= 6 * SEG_SIZE, "{first}..{done}: the switches made no segments");

    // Offloaded: both live safekeepers know it, and each object is the
    // safekeeper's own segment, byte for byte (kept for later comparisons).
    wait_for("backup_lsn to cover the completed segments", Duration::from_secs(90), || {
        [1, 2].iter().all(|&id| cl.sk_status(id).is_some_and(|s| lsn(&s, "backup_lsn") >= done))
    });
    let mut copies = Vec::new();
    let mut pos = first;
    while pos < done {
        let local = read(&cl.sk_dir(1), pos);
        assert!(read(&cl.remote_dir(), pos) == local, "offloaded segment {} differs from safekeeper 1's", seg_name(pos));
        copies.push((pos, local));
        pos += SEG_SIZE;
    }
    assert!(cl.sk_metric(1, "safekeeper_wal_backup_segments_total") >= copies.len() as f64);
    assert_eq!(cl.sk_metric(2, "safekeeper_wal_backup_segments_total"), 0.0, "two safekeepers offloaded");

    // The pageserver uploads its layers; its remote_consistent_lsn reaches
    // the safekeepers, and WAL below min(it, backup_lsn) goes from their disks.
    let ps_url = format!("{}/v1/tenant/{}/timeline/{}", common::pageserver_http(&repo), cl.tenant, cl.timeline);
    wait_for("the pageserver to ingest all WAL", Duration::from_secs(60), || {
        http_get(&ps_url).and_then(|t| serde_json::from_str::<Value>(&t).ok()).is_some_and(|d| lsn(&d, "last_record_lsn") >= end)
    });
    let detail = cl.checkpoint();
    let remote_lsn = lsn(&detail, "remote_consistent_lsn");
    assert!(remote_lsn >= end, "remote_consistent_lsn {remote_lsn} after the checkpoint, WAL ends at {end}");
    let horizon_seg = done.segment_number(SEG_SIZE);
    for id in [1, 2] {
        wait_for("old WAL to be removed", Duration::from_secs(90), || cl.local_segments(id).first().is_some_and(|&s| s >= horizon_seg));
        let left = cl.local_segments(id);
        assert!(left.len() <= 2, "safekeeper {id} still holds segments {left:?}");
        let status = cl.sk_status(id).unwrap();
        assert!(lsn(&status, "timeline_start_lsn") >= done, "{status}");
    }

    // A replication client starting below every safekeeper's local WAL gets
    // it from remote storage: the same bytes, across a segment boundary.
    let (old, len) = (copies[1].0, 2 * SEG_SIZE);
    let streamed = stream_wal(cl.sk(2).pg_port, &cl.tenant, &cl.timeline, old, len).expect("stream offloaded WAL");
    let expected: Vec<u8> = copies[1].1.iter().chain(copies[2].1.iter()).copied().collect();
    assert!(streamed == expected, "WAL streamed from remote storage differs from the offloaded segments");
    assert!(cl.sk_metric(2, "safekeeper_wal_backup_downloads_total") >= 2.0);
    // Below what was ever offloaded: refused with the reason.
    let err = stream_wal(cl.sk(2).pg_port, &cl.tenant, &cl.timeline, Lsn(first.0 - SEG_SIZE), 8).unwrap_err();
    assert!(err.contains("outside the WAL on this safekeeper") && err.contains("remote storage"), "{err}");

    // Safekeeper 3 comes back behind what its peers hold on disk: it catches
    // up from a peer, whose walsender reads the offloaded WAL.
    let downloads_before = cl.sk_metric(1, "safekeeper_wal_backup_downloads_total") + cl.sk_metric(2, "safekeeper_wal_backup_downloads_total");
    repo.ok(&["start"]);
    wait_for("safekeeper 3 to catch up", Duration::from_secs(120), || cl.sk_status(3).is_some_and(|s| lsn(&s, "flush_lsn") >= end));
    let mut compared = 0;
    for (pos, copy) in &copies {
        if let Ok(local) = std::fs::read(cl.sk_dir(3).join(seg_name(*pos))) {
            assert!(local == *copy, "safekeeper 3 recovered other bytes in {}", seg_name(*pos));
            compared += 1;
        }
    }
    println!("safekeeper 3: {compared} recovered segments compared");
    let downloads = cl.sk_metric(1, "safekeeper_wal_backup_downloads_total") + cl.sk_metric(2, "safekeeper_wal_backup_downloads_total");
    assert!(downloads > downloads_before, "safekeeper 3 did not recover through remote storage");
    assert!(cl.sk_metric(3, "safekeeper_recovery_bytes_total") >= SEG_SIZE as f64);
    wait_for("safekeeper 3 to learn backup_lsn", Duration::from_secs(30), || cl.sk_status(3).is_some_and(|s| lsn(&s, "backup_lsn") >= done));
    // ... and drops the WAL that is offloaded and uploaded, like its peers.
    wait_for("safekeeper 3 to remove old WAL", Duration::from_secs(90), || cl.local_segments(3).first().is_some_and(|&s| s >= horizon_seg));

    // The cluster works on, and a compute restart loses nothing.
    let rows = psql(&main, "SELECT count(*) FROM t");
    assert_eq!(rows, "12001");
    psql(&main, "INSERT INTO t(v) VALUES ('after removal')");
    repo.ok(&["endpoint", "stop", "main"]);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert_eq!(psql(&main, "SELECT count(*) FROM t"), "12002");
    assert_eq!(psql(&main, "SELECT count(*) FROM t WHERE v = 'after removal'"), "1");
    let status = repo.ok(&["status"]);
    assert!(status.contains("offloaded"), "{status}");
    println!("{status}");

    // A deleted branch takes its offloaded WAL with it.
    repo.ok(&["timeline", "branch", "--branch-name", "dev"]);
    let dev = url_of(&repo, &repo.ok(&["endpoint", "start", "dev", "--branch-name", "dev"]));
    psql(&dev, "INSERT INTO t(v) SELECT 'dev' FROM generate_series(1, 1000)");
    psql(&superuser_conninfo(&repo, "dev"), "SELECT pg_switch_wal()");
    psql(&dev, "INSERT INTO t(v) VALUES ('dev after the switch')");
    let state = control_plane::state::State::load(&repo.path).unwrap();
    let dev_tl = state.branches.iter().find(|b| b.name == "dev").unwrap().timeline_id.to_string();
    let dev_remote = repo.path.join(format!("remote/wal/{}/{dev_tl}", cl.tenant));
    let files = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    wait_for("the branch's first segment to be offloaded", Duration::from_secs(60), || files(&dev_remote) >= 1);
    repo.ok(&["endpoint", "stop", "dev"]);
    repo.ok(&["timeline", "delete", "dev"]);
    assert_eq!(files(&dev_remote), 0, "offloaded WAL of the deleted branch is left in remote storage");
    assert!(files(&cl.remote_dir()) >= copies.len(), "the main branch's offloaded WAL went too");
}
