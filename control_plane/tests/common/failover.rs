//! A running cluster of three safekeepers seen from a test: their status,
//! their WAL files, killing and restarting them, and waiting for them to
//! agree (shared by the failover and network-namespace tests).

use std::process::Command;
use std::time::{Duration, Instant};

use control_plane::config::Config;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use utils::lsn::Lsn;

use super::{pageserver_http, Repo};

pub const SEG_SIZE: u64 = 16 * 1024 * 1024;

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn http_get(url: &str) -> Option<Value> {
    let out = Command::new("curl").args(["-sf", "--max-time", "10"]).args(super::curl_auth(url)).arg(url).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

pub fn lsn(v: &Value, field: &str) -> Lsn {
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in {v}")).parse().unwrap()
}

pub struct Cl<'a> {
    pub repo: &'a Repo,
    pub conf: Config,
}

impl<'a> Cl<'a> {
    pub fn new(repo: &'a Repo) -> Self {
        Cl { repo, conf: Config::load(&repo.path).unwrap() }
    }
    pub fn branch(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.repo.path.join("branches.toml")).unwrap();
        let state: control_plane::state::State = toml::from_str(&text).unwrap();
        let b = &state.branches[0];
        (b.tenant_id.to_string(), b.timeline_id.to_string())
    }
    pub fn sk_dir(&self, id: u64) -> std::path::PathBuf {
        let (t, tl) = self.branch();
        self.repo.path.join(format!("safekeeper_{id}/data/{t}/{tl}"))
    }
    pub fn sk_status(&self, id: u64) -> Option<Value> {
        let sk = self.conf.safekeepers.iter().find(|s| s.id == id).unwrap();
        let (t, tl) = self.branch();
        http_get(&format!("{}/v1/tenant/{t}/timeline/{tl}", sk.at.http(sk.http_port)))
    }
    /// The pageserver's timeline detail; it must answer within three tries
    /// of 10 s (one slow answer on a machine at load 20 is not a failure).
    pub fn ps_detail(&self) -> Value {
        let (t, tl) = self.branch();
        let url = format!("{}/v1/tenant/{t}/timeline/{tl}", pageserver_http(self.repo));
        (0..3).find_map(|_| http_get(&url)).expect("pageserver answers")
    }
    pub fn pid(&self, component: &str) -> i32 {
        let text = std::fs::read_to_string(self.repo.path.join(component).join("pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }
    pub fn kill9_sk(&self, id: u64) {
        let pid = self.pid(&format!("safekeeper_{id}"));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_for("safekeeper to die", Duration::from_secs(10), || self.sk_status(id).is_none());
        std::thread::sleep(Duration::from_millis(100));
    }
    pub fn kill9_pageserver(&self) {
        let pid = self.pid("pageserver");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_for("pageserver to die", Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        });
    }
    /// `strata start` starts whatever component is not running.
    pub fn restart_missing(&self) {
        self.repo.ok(&["start"]);
    }
    /// Safekeeper `id`'s WAL bytes `[from, to)`, or `None` when a segment is
    /// gone (offloaded and removed).
    pub fn try_wal(&self, id: u64, from: Lsn, to: Lsn) -> Option<Vec<u8>> {
        let dir = self.sk_dir(id);
        let mut buf = Vec::with_capacity((to.0 - from.0) as usize);
        let mut pos = from;
        while pos < to {
            let off = pos.segment_offset(SEG_SIZE) as usize;
            let len = ((to.0 - pos.0) as usize).min(SEG_SIZE as usize - off);
            let data = std::fs::read(dir.join(pos.segment_file_name(1, SEG_SIZE))).ok()?;
            buf.extend_from_slice(&data[off..off + len]);
            pos += len as u64;
        }
        Some(buf)
    }
    /// Start of the oldest WAL segment safekeeper `id` still has on disk
    /// (older ones may have been offloaded and removed).
    pub fn first_local_wal(&self, id: u64) -> Lsn {
        let names = std::fs::read_dir(self.sk_dir(id)).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok());
        let segno = names
            .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|n| u64::from_str_radix(&n[8..16], 16).unwrap() * 0x1_0000_0000 / SEG_SIZE + u64::from_str_radix(&n[16..], 16).unwrap())
            .min()
            .expect("a WAL segment on disk");
        Lsn(segno * SEG_SIZE)
    }
    /// Every safekeeper holds the same WAL bytes up to the lowest commit_lsn,
    /// from the highest timeline start (or the oldest segment all still have).
    pub fn assert_wal_identical(&self) {
        let statuses: Vec<Value> = (1..=3).map(|id| self.sk_status(id).expect("safekeeper answers")).collect();
        let commit = statuses.iter().map(|s| lsn(s, "commit_lsn")).min().unwrap();
        let start = statuses.iter().map(|s| lsn(s, "timeline_start_lsn")).max().unwrap();
        // Removal of offloaded segments runs meanwhile: a segment gone
        // between the listing and the read means look again from later.
        for _ in 0..10 {
            let from = (1..=3).map(|id| self.first_local_wal(id)).max().unwrap().max(start);
            assert!(commit > from, "nothing committed: {from}..{commit}");
            let Some(wals) = (1..=3).map(|id| self.try_wal(id, from, commit)).collect::<Option<Vec<_>>>() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            for (id, other) in (2..=3).zip(&wals[1..]) {
                if let Some(pos) = wals[0].iter().zip(other).position(|(a, b)| a != b) {
                    panic!("safekeeper {id} WAL differs from safekeeper 1 at {}", from + pos as u64);
                }
            }
            return;
        }
        panic!("WAL segments kept disappearing while being compared");
    }
    pub fn wait_commit_everywhere(&self, target: Lsn) {
        self.wait_commit_everywhere_within(target, Duration::from_secs(60))
    }
    pub fn wait_commit_everywhere_within(&self, target: Lsn, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<Option<Value>> = (1..=3).map(|id| self.sk_status(id)).collect();
            if statuses.iter().all(|s| s.as_ref().is_some_and(|s| lsn(s, "commit_lsn") >= target && lsn(s, "flush_lsn") >= target)) {
                return;
            }
            if Instant::now() > deadline {
                let shown: Vec<String> = statuses
                    .iter()
                    .map(|s| match s {
                        Some(s) => format!("flush {} commit {} term {} acceptor {}", s["flush_lsn"], s["commit_lsn"], s["term"], s["acceptor"]),
                        None => "no answer".to_string(),
                    })
                    .collect();
                panic!("timed out waiting for every safekeeper to commit {target}: {shown:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

