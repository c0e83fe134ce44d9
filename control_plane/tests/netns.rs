//! Components on separate hosts, made with Linux network namespaces: three
//! safekeepers, the pageserver and the compute each in its own namespace on
//! a bridge (the broker and the control plane stay in ours), every one
//! reached by its own address. A partition is one safekeeper's link taken
//! down under load: commits go on with the other two, a compute restart
//! loses no acknowledged commit, and once the link is back the partitioned
//! safekeeper catches up to byte-identical WAL.
//!
//! Needs root (as CI runs) and iproute2's `ip`, and `nsenter`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::failover::{lsn, wait_for, Cl};
use common::{free_ports, psql, url_of, Repo};
use control_plane::config::{Config, Placement};
use utils::lsn::Lsn;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A bridge in our namespace and one namespace per host on it, removed on drop.
struct Net {
    bridge: String,
    subnet: String,
    hosts: Vec<String>,
}

impl Net {
    fn new(hosts: usize) -> Net {
        let pid = std::process::id();
        let tag = pid % 100_000;
        let subnet = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250);
        let net = Net { bridge: format!("stb{tag}"), subnet, hosts: (0..hosts).map(|i| format!("st{tag}h{i}")).collect() };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        for (i, ns) in net.hosts.iter().enumerate() {
            let (outside, inside) = net.veth(i);
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{}/24", net.host_ip(i)), "dev", &inside]);
            ip(&["-n", ns, "link", "set", &inside, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["link", "set", &outside, "master", &net.bridge]);
            ip(&["link", "set", &outside, "up"]);
        }
        net
    }
    fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }
    fn host_ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }
    fn veth(&self, i: usize) -> (String, String) {
        let tag = &self.bridge[3..];
        (format!("sv{tag}o{i}"), format!("sv{tag}i{i}"))
    }
    fn placement(&self, i: usize) -> Placement {
        Placement { host: self.host_ip(i), listen: None, netns: Some(self.hosts[i].clone()) }
    }
    /// Take host `i`'s link down (`up = false`) or bring it back.
    fn link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.veth(i).0, if up { "up" } else { "down" }]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

const SK: [usize; 3] = [0, 1, 2];
const PAGESERVER: usize = 3;
const COMPUTE: usize = 4;

/// `strata init`, then every component placed on its own host of `net`.
fn placed_cluster(net: &Net) -> Repo {
    let repo = Repo::new();
    let (base, ps, endpoints) = free_ports();
    repo.ok(&[
        "init", "--safekeepers", "3", "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(),
        "--endpoint-base-port", &endpoints.to_string(),
    ]);
    let mut conf = Config::load(&repo.path).unwrap();
    conf.broker.at.host = net.gateway();
    for (sk, host) in conf.safekeepers.iter_mut().zip(SK) {
        sk.at = net.placement(host);
    }
    // One binds every address of its host and advertises the one to use.
    conf.safekeepers[1].at.listen = Some("0.0.0.0".into());
    conf.pageserver.at = net.placement(PAGESERVER);
    conf.compute.at = net.placement(COMPUTE);
    std::fs::write(repo.path.join("config.toml"), toml::to_string_pretty(&conf).unwrap()).unwrap();
    repo.ok(&["start"]);
    repo.ok(&["tenant", "create", "--set-default"]);
    repo
}

/// Inserts rows one transaction at a time until `stop`, recording the ids
/// whose commit was acknowledged; failures (the compute restarting) retry.
fn insert_load(url: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<i64>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new("/usr/lib/postgresql/15/bin/psql")
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", "INSERT INTO c(v) VALUES (1) RETURNING id"])
                .output()
                .expect("run psql");
            match String::from_utf8_lossy(&out.stdout).lines().next().map(str::parse::<i64>) {
                Some(Ok(id)) if out.status.success() => acked.lock().unwrap().push(id),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}

#[test]
fn a_partitioned_safekeeper_loses_nothing_and_catches_up_when_its_link_returns() {
    let net = Net::new(5);
    let repo = placed_cluster(&net);
    let cl = Cl::new(&repo);
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    assert!(main.contains(&net.host_ip(COMPUTE)), "the compute is reached by its own address: {main}");
    // Each component listens on its host's address only: nothing on our loopback.
    let sk1 = &cl.conf.safekeepers[0];
    assert!(std::net::TcpStream::connect(("127.0.0.1", sk1.pg_port)).is_err(), "safekeeper 1 answers on our loopback");
    psql(&main, "CREATE TABLE c(id bigserial primary key, v int)");
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let load = insert_load(main.clone(), stop.clone(), acked.clone());
    wait_for("commits before the partition", Duration::from_secs(30), || acked.lock().unwrap().len() >= 20);

    net.link(SK[2], false);
    let before = acked.lock().unwrap().len();
    wait_for("commits with safekeeper 3 partitioned away", Duration::from_secs(60), || acked.lock().unwrap().len() >= before + 50);
    repo.ok(&["endpoint", "stop", "main"]);
    let restarted = repo.ok(&["endpoint", "start", "main"]);
    assert_eq!(url_of(&repo, &restarted), main);
    let before = acked.lock().unwrap().len();
    wait_for("commits after the restart, still partitioned", Duration::from_secs(60), || acked.lock().unwrap().len() >= before + 20);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let ids = acked.lock().unwrap().clone();
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let found: usize = psql(&main, &format!("SELECT count(*) FROM c WHERE id = ANY('{{{list}}}'::bigint[])")).parse().unwrap();
    assert_eq!(found, ids.len(), "acknowledged commits were lost");
    assert!(cl.sk_status(3).is_none(), "safekeeper 3 should be unreachable while partitioned");

    net.link(SK[2], true);
    psql(&main, "INSERT INTO c(v) SELECT 2 FROM generate_series(1, 1000)");
    let end: Lsn = psql(&main, "SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    cl.wait_commit_everywhere_within(end, Duration::from_secs(120));
    cl.assert_wal_identical();
    let terms: Vec<u64> = (1..=3).map(|id| cl.sk_status(id).unwrap()["term"].as_u64().unwrap()).collect();
    assert!(terms.iter().all(|&t| t == terms[0]), "safekeepers on different terms after the partition: {terms:?}");
    // The pageserver, in its own namespace, ingested all of it.
    wait_for("the pageserver to ingest up to the end", Duration::from_secs(60), || lsn(&cl.ps_detail(), "last_record_lsn") >= end);
    println!("{} commits acknowledged across the partition and the restart", ids.len());
}
