//! Issue 6 through the real `strata` binary (real PostgreSQL 15, WAL
//! streamed through a safekeeper): tenant creation by initdb import, a
//! compute started from a basebackup, a varied workload (index,
//! UPDATE-heavy, TOAST, sequence, 2PC); a second compute on a branch at the
//! latest LSN dumps identically and passes amcheck; branches at an older
//! LSN and at a timestamp (via the pageserver's `lsn_by_timestamp` route)
//! show exactly the older state; the timestamp lookup survives a restart.

mod common;

use std::time::{Duration, Instant};

use common::{pageserver_http, psql, started_cluster, superuser_conninfo, url_of, Repo};
use utils::lsn::Lsn;

/// `endpoint start` through the CLI; returns (endpoint name, URL).
fn endpoint_start(repo: &Repo, args: &[&str]) -> (String, String) {
    let mut full = vec!["endpoint", "start"];
    full.extend_from_slice(args);
    (args[0].to_string(), url_of(&repo, &repo.ok(&full)))
}



/// pg_dump without 15.14+'s random `\restrict` / `\unrestrict` lines.
fn dump(url: &str) -> String {
    pg_harness::pg_dump(url).expect("pg_dump")
}



fn http_get(url: &str) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = common::token_for_url(url) {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.expect("HTTP GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    })
}

struct Ps {
    http: String,
    tenant: String,
}

impl Ps {
    fn timeline(&self, tl: &str) -> String {
        format!("{}/v1/tenant/{}/timeline/{tl}", self.http, self.tenant)
    }
    fn last_record_lsn(&self, tl: &str) -> Lsn {
        let (code, detail) = http_get(&self.timeline(tl));
        assert_eq!(code, 200, "{detail}");
        detail["last_record_lsn"].as_str().unwrap().parse().unwrap()
    }
    /// Wait until the pageserver ingested the compute's WAL up to its insert
    /// position (which may point past a page header); returns its last record LSN.
    fn catch_up(&self, tl: &str, compute: &str) -> Lsn {
        let target: Lsn = psql(compute, "SELECT pg_current_wal_insert_lsn()").parse().unwrap();
        let started = Instant::now();
        loop {
            let last = self.last_record_lsn(tl);
            if last >= target || (target.0 - last.0 <= 40 && started.elapsed() > Duration::from_secs(2)) {
                return last;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "pageserver stuck at {last}, target {target}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn lsn_by_timestamp(&self, tl: &str, ts: &str) -> (Lsn, String) {
        let url = format!("{}/lsn_by_timestamp?timestamp={}", self.timeline(tl), ts.replace('+', "%2B"));
        let (code, body) = http_get(&url);
        assert_eq!(code, 200, "{url}: {body}");
        (body["lsn"].as_str().unwrap().parse().unwrap(), body["kind"].as_str().unwrap().to_string())
    }
}

const NOW_UTC: &str = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// What distinguishes the states of the test's data.
fn fingerprint(url: &str) -> String {
    psql(
        url,
        "SELECT (SELECT count(*) || '/' || sum(balance) || '/' || sum(length(coalesce(note, ''))) FROM acct) || ' ' || \
         (SELECT count(*) || '/' || md5(string_agg(md5(body), ',' ORDER BY id)) FROM docs) || ' ' || \
         (SELECT count(*) FROM twopc) || ' ' || (SELECT last_value FROM acct_seq)",
    )
}

fn amcheck(url: &str) {
    psql(url, "CREATE EXTENSION IF NOT EXISTS amcheck");
    let checked = psql(
        url,
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisready AND i.indisvalid",
    );
    assert!(checked.parse::<u32>().unwrap() > 50, "btree indexes checked: {checked}");
    let corrupt = psql(
        url,
        "SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam, LATERAL verify_heapam(c.oid) \
         WHERE a.amname = 'heap' AND c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't'",
    );
    assert_eq!(corrupt, "0", "verify_heapam found corruption");
}

#[test]
fn import_branch_at_lsn_and_timestamp() {
    let repo = started_cluster(1);
    let tenant = repo.ok(&["tenant", "list"]).split_whitespace().next().expect("a tenant").to_string();
    let ps = Ps { http: pageserver_http(&repo), tenant };
    let tree = repo.ok(&["timeline", "list"]);
    let main_tl = tree.lines().next().unwrap().split('[').nth(1).unwrap().trim_end_matches(']').to_string();

    // The tenant is an imported initdb cluster; the endpoint's first start
    // committed its roles (on the safekeepers before the start returned),
    // the only commit so far: a moment later is after every commit.
    let (main_ep, main) = endpoint_start(&repo, &["main"]);
    let t0 = psql(&main, NOW_UTC);
    let roles = ps.catch_up(&main_tl, &main);
    let (lsn, kind) = ps.lsn_by_timestamp(&main_tl, &t0);
    assert!(kind == "future" && lsn >= roles, "the roles' commit is ingested (at {roles}): {kind} {lsn}");

    // State 1: DDL, an index, a sequence, TOAST, an UPDATE-heavy workload, 2PC.
    psql(
        &main,
        "CREATE SEQUENCE acct_seq;
         CREATE TABLE acct(id bigint PRIMARY KEY DEFAULT nextval('acct_seq'), owner text NOT NULL, balance bigint NOT NULL, note text);
         CREATE INDEX acct_owner ON acct(owner, balance);
         INSERT INTO acct(owner, balance) SELECT 'owner' || (g % 97), g FROM generate_series(1, 20000) g;
         CREATE TABLE docs(id int PRIMARY KEY, body text);
         ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT g, (SELECT string_agg(md5((g * 10000 + i)::text), '') FROM generate_series(1, 300) i) FROM generate_series(1, 20) g;
         CREATE TABLE twopc(id int PRIMARY KEY, v text);",
    );
    for i in 0..10 {
        psql(&main, &format!("UPDATE acct SET balance = balance + {i}, note = repeat('x', {i}) WHERE id % 10 = {i}"));
    }
    psql(&main, "DO $$ BEGIN FOR i IN 1..200 LOOP UPDATE acct SET balance = balance - 1 WHERE id = i; END LOOP; END $$");
    psql(&main, "BEGIN; INSERT INTO twopc VALUES (1, 'prepared'); PREPARE TRANSACTION 'p1'");
    psql(&main, "COMMIT PREPARED 'p1'");
    psql(&main, "UPDATE docs SET body = body || 'tail' WHERE id <= 5; DELETE FROM acct WHERE id > 19900");
    psql(&main, "VACUUM acct");
    // nextval() WAL-logs 32 values ahead, as crash recovery would see them:
    // setval() logs the exact value, so every copy agrees.
    psql(&main, "SELECT setval('acct_seq', (SELECT max(id) FROM acct))");
    let state1 = fingerprint(&main);
    let l1 = ps.catch_up(&main_tl, &main);
    std::thread::sleep(Duration::from_millis(20));
    let t1 = psql(&main, NOW_UTC);
    std::thread::sleep(Duration::from_millis(20));

    // State 2.
    psql(&main, "INSERT INTO acct(owner, balance) SELECT 'late', g FROM generate_series(1, 500) g");
    psql(&main, "UPDATE docs SET body = md5(body) WHERE id = 7; DELETE FROM docs WHERE id = 8");
    psql(&main, "BEGIN; INSERT INTO twopc VALUES (2, 'second'); PREPARE TRANSACTION 'p2'");
    psql(&main, "COMMIT PREPARED 'p2'");
    psql(&main, "CREATE INDEX acct_note ON acct(note); SELECT setval('acct_seq', (SELECT max(id) FROM acct))");
    let state2 = fingerprint(&main);
    assert_ne!(state1, state2);
    let l2 = ps.catch_up(&main_tl, &main);

    // A second compute on a branch at the latest LSN: same dump, no corruption.
    repo.ok(&["timeline", "branch", "--branch-name", "latest"]);
    let (latest_ep, latest) = endpoint_start(&repo, &["latest", "--branch-name", "latest"]);
    assert_eq!(fingerprint(&latest), state2);
    let (a, b) = (dump(&main), dump(&latest));
    if let Some((i, (x, y))) = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y) {
        panic!("pg_dump differs at line {}: {x:?} vs {y:?}", i + 1);
    }
    assert_eq!(a.lines().count(), b.lines().count());
    assert!(a.contains("CREATE INDEX acct_note") && a.contains("late"), "dump misses state 2");
    amcheck(&superuser_conninfo(&repo, &latest_ep));
    amcheck(&superuser_conninfo(&repo, &main_ep));
    repo.ok(&["endpoint", "stop", &latest_ep]);

    // A branch at the older LSN shows exactly state 1.
    repo.ok(&["timeline", "branch", "--branch-name", "old", "--ancestor-start-lsn", &l1.to_string()]);
    let (old_ep, old) = endpoint_start(&repo, &["old", "--branch-name", "old"]);
    assert_eq!(fingerprint(&old), state1);
    amcheck(&superuser_conninfo(&repo, &old_ep));
    repo.ok(&["endpoint", "stop", &old_ep]);

    // Point in time: the last commit at or before t1 is state 1's.
    let (at_t1, kind) = ps.lsn_by_timestamp(&main_tl, &t1);
    assert_eq!(kind, "present");
    assert!(at_t1 < l2, "{at_t1} vs {l2}");
    let (far, kind) = ps.lsn_by_timestamp(&main_tl, "2999-01-01T00:00:00Z");
    assert_eq!((kind.as_str(), far), ("future", ps.last_record_lsn(&main_tl)));
    let (_, kind) = ps.lsn_by_timestamp(&main_tl, "1999-12-31T23:00:00-01:00");
    assert_eq!(kind, "past");
    repo.ok(&["timeline", "branch", "--branch-name", "pitr", "--ancestor-start-lsn", &at_t1.to_string()]);
    let (pitr_ep, pitr) = endpoint_start(&repo, &["pitr", "--branch-name", "pitr"]);
    assert_eq!(fingerprint(&pitr), state1);
    repo.ok(&["endpoint", "stop", &pitr_ep]);

    // Branch-aware: on `latest` (branched after t1), t1 is before its start;
    // the far future is its own last record LSN.
    let latest_tl = repo
        .ok(&["timeline", "list"])
        .lines()
        .find(|l| l.contains(": latest ["))
        .and_then(|l| l.split('[').nth(1))
        .unwrap()
        .trim_end_matches(']')
        .to_string();
    let (lsn, kind) = ps.lsn_by_timestamp(&latest_tl, &t1);
    assert_eq!(kind, "past");
    assert!(lsn >= l2, "past answers the branch start: {lsn} vs {l2}");

    // Durable: the same answers after a restart of the whole cluster.
    repo.ok(&["endpoint", "stop", &main_ep]);
    repo.ok(&["stop"]);
    repo.ok(&["start"]);
    let wait = Instant::now();
    while ps.last_record_lsn(&main_tl) < l2 && wait.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ps.lsn_by_timestamp(&main_tl, &t1), (at_t1, "present".to_string()));
    let (lsn, kind) = ps.lsn_by_timestamp(&latest_tl, &t1);
    assert_eq!(kind, "past");
    assert!(lsn >= l2);
}
