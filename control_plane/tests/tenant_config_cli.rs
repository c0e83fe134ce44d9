//! Per-tenant storage settings and storage operations through `strata`
//! and the pageserver's API, on a real cluster under pgbench:
//! `strata tenant create -c`, `strata tenant config [-c]` (bad input: one
//! line, non-zero exit, nothing changed), `POST …/compact` and `POST …/gc`
//! doing real work with the metrics following, `GET …/layers` naming the
//! files on disk, and `strata timeline delete` (refused with a child
//! branch or a running endpoint, then removing the branch's directories).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `strata ARGS` must fail with exit code 1 and one line on stderr containing `msg`.
fn refused(repo: &Repo, args: &[&str], msg: &str) {
    let out = repo.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "strata {args:?}: {err}");
    assert!(err.contains(msg), "strata {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "strata {args:?}: {err}");
}

/// A labelled sample: the first line of `name{…}` whose labels contain every one of `labels`.
fn labelled(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (lbls, value) = rest.split_once("} ")?;
        labels.iter().all(|x| lbls.contains(x)).then(|| value.trim().parse().ok()).flatten()
    })
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The timeline id of branch `name` from `strata timeline list`.
fn timeline_of(repo: &Repo, name: &str) -> String {
    let list = repo.ok(&["timeline", "list"]);
    list.lines()
        .find_map(|l| {
            let l = l.trim_start_matches(|c: char| !c.is_alphanumeric());
            let l = l.split_once(": ").map_or(l, |(_, rest)| rest);
            let (n, id) = l.split_once(" [")?;
            (n == name).then(|| id.trim_end_matches(']').to_string())
        })
        .unwrap_or_else(|| panic!("no branch {name} in {list}"))
}

#[test]
fn tenant_settings_compaction_gc_layers_and_branch_delete() {
    let repo = Repo::new();
    let (base, ps, endpoints) = free_ports();
    repo.ok(&[
        "init", "--base-port", &base.to_string(), "--pageserver-port", &ps.to_string(),
        "--endpoint-base-port", &endpoints.to_string(),
    ]);
    repo.ok(&["start"]);
    let port = control_plane::config::Config::load(&repo.path).unwrap().pageserver.http_port;

    // Bad settings: one line, nothing created.
    refused(&repo, &["tenant", "create", "--set-default", "-c", "foo=1"], "unknown setting 'foo' (known: ");
    refused(&repo, &["tenant", "create", "-c", "gc_horizon=12XB"], "gc_horizon: '12XB' is not a size (e.g. 64MiB)");
    assert_eq!(repo.ok(&["tenant", "list"]).trim(), "", "nothing was created");

    let settings = [
        "gc_horizon=1MiB", "pitr_interval=0s", "checkpoint_distance=1MiB", "compaction_threshold=1000",
        "gc_period=0s", "compaction_period=0s",
    ];
    let mut args = vec!["tenant", "create", "--set-default"];
    for s in &settings {
        args.extend(["-c", s]);
    }
    let created = repo.ok(&args);
    let tenant = created.split_whitespace().nth(2).unwrap().to_string();
    let shown = repo.ok(&["tenant", "config"]);
    let row = |text: &str, key: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("{key}: {text}"));
        line.split_whitespace().skip(1).map(str::to_string).collect()
    };
    assert_eq!(row(&shown, "gc_horizon"), ["1MiB", "tenant"], "{shown}");
    assert_eq!(row(&shown, "pitr_interval"), ["0s", "tenant"], "{shown}");
    assert_eq!(row(&shown, "checkpoint_distance"), ["1MiB", "tenant"], "{shown}");
    assert_eq!(row(&shown, "image_creation_threshold"), ["3", "default"], "{shown}");
    assert!(shown.contains(&tenant), "{shown}");
    refused(&repo, &["tenant", "config", "-c", "bogus=1"], "unknown setting 'bogus'");
    refused(&repo, &["tenant", "config", "-c", "compaction_threshold=many"], "compaction_threshold: 'many' is not a whole number");
    assert_eq!(repo.ok(&["tenant", "config", "--tenant", &tenant]), shown, "refused changes changed nothing");

    // pgbench with a 1 MiB checkpoint distance: L0 files pile up (the
    // compaction threshold is 1000).
    let main = url_of(&repo, &repo.ok(&["endpoint", "start", "main"]));
    pgbench(&main, &["-i", "-q", "-s", "2"]);
    pgbench(&main, &["-c", "2", "-t", "300"]);
    let tl = timeline_of(&repo, "main");
    let tl_path = format!("/v1/tenant/{tenant}/timeline/{tl}");
    let caught_up_on = |path: &str, lsn: &str| {
        let target: utils::lsn::Lsn = lsn.parse().unwrap();
        let started = Instant::now();
        loop {
            let d = json(&http_get(port, path));
            let last: utils::lsn::Lsn = d["last_record_lsn"].as_str().unwrap().parse().unwrap();
            if last >= target {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "pageserver at {last}, compute at {target}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let caught_up = |lsn: &str| caught_up_on(&tl_path, lsn);
    caught_up(&psql(&main, "SELECT pg_current_wal_flush_lsn()"));
    let (status, body) = http_request("POST", port, &format!("{tl_path}/checkpoint"));
    assert_eq!(status, 200, "{body}");

    // Lower the threshold through the CLI; the compaction pass does it now.
    let changed = repo.ok(&["tenant", "config", "-c", "compaction_threshold=2"]);
    assert_eq!(row(&changed, "compaction_threshold"), ["2", "tenant"], "{changed}");
    assert_eq!(row(&changed, "gc_horizon"), ["1MiB", "tenant"], "other overrides are kept: {changed}");
    let m0 = http_get(port, "/metrics");
    let (status, body) = http_request("POST", port, &format!("{tl_path}/compact"));
    assert_eq!(status, 200, "{body}");
    let c = json(&body);
    eprintln!("compact: {c}");
    let l0 = c["layers_before"]["l0_deltas"].as_u64().unwrap();
    assert!(l0 >= 2, "pgbench at 1 MiB flushed several L0 files: {c}");
    assert_eq!(c["l0_compacted"].as_u64(), Some(l0), "{c}");
    assert!(c["l1_created"].as_u64().unwrap() >= 1, "{c}");
    assert_eq!(c["layers_after"]["l0_deltas"], 0, "{c}");
    let m1 = http_get(port, "/metrics");
    let runs = |m: &str| metric(m, "strata_pageserver_compaction_runs_total").unwrap_or(0.0);
    assert!(runs(&m1) > runs(&m0), "compaction runs counted");
    let tl_label = format!("timeline_id=\"{tl}\"");
    assert_eq!(
        labelled(&m1, "strata_pageserver_layers", &[&tl_label, "kind=\"l1\""]),
        c["layers_after"]["l1_deltas"].as_f64(),
        "the L1 gauge follows"
    );
    assert_eq!(labelled(&m1, "strata_pageserver_layers", &[&tl_label, "kind=\"l0\""]), Some(0.0));

    // GC: image layers now, then more than gc_horizon of WAL; the older
    // layers lie below the cutoff, covered by the images.
    let (status, body) = http_request("POST", port, &format!("{tl_path}/checkpoint?image_layers=true"));
    assert_eq!(status, 200, "{body}");
    psql(&main, "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS v FROM generate_series(1, 20000) g");
    caught_up(&psql(&main, "SELECT pg_current_wal_flush_lsn()"));
    let before = json(&http_get(port, &tl_path));
    let (status, body) = http_request("POST", port, &format!("{tl_path}/gc"));
    assert_eq!(status, 200, "{body}");
    let g = json(&body);
    eprintln!("gc: {g}");
    assert!(g["layers_removed"].as_u64().unwrap() > 0, "{g}");
    assert!(g["bytes_reclaimed"].as_u64().unwrap() > 0, "{g}");
    let cutoff: utils::lsn::Lsn = g["gc_cutoff_lsn"].as_str().unwrap().parse().unwrap();
    let last: utils::lsn::Lsn = before["last_record_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(g["horizon_cutoff_lsn"], g["gc_cutoff_lsn"], "no PITR window: the horizon decides: {g}");
    assert!(cutoff.0 > 0 && cutoff.0 + (1 << 20) >= last.0, "cutoff {cutoff} is gc_horizon below the last record {last}");
    let m2 = http_get(port, "/metrics");
    assert!(metric(&m2, "strata_pageserver_gc_runs_total").unwrap_or(0.0) >= 1.0);
    assert!(
        metric(&m2, "strata_pageserver_gc_reclaimed_bytes_total").unwrap_or(0.0)
            >= g["bytes_reclaimed"].as_f64().unwrap()
    );
    assert!(m2.contains("strata_pageserver_gc_seconds_count"), "GC durations");
    let detail = json(&http_get(port, &tl_path));
    assert_eq!(detail["gc_cutoff_lsn"], g["gc_cutoff_lsn"], "{detail}");
    assert!(detail["pitr_cutoff_lsn"].is_string(), "{detail}");

    // The layer listing names the files on disk, with their sizes.
    let layers = json(&http_get(port, &format!("{tl_path}/layers")));
    let dir = repo.path.join(format!("pageserver/data/tenants/{tenant}/timelines/{tl}"));
    let mut total = 0;
    let list = layers["layers"].as_array().unwrap();
    assert!(!list.is_empty(), "{layers}");
    for l in list {
        let file = dir.join(l["file_name"].as_str().unwrap());
        let size = std::fs::metadata(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())).len();
        assert_eq!(size, l["size_bytes"].as_u64().unwrap(), "{}", file.display());
        assert!(["delta", "image"].contains(&l["kind"].as_str().unwrap()), "{l}");
        total += size;
    }
    assert_eq!(json(&http_get(port, &tl_path))["current_physical_size"].as_u64(), Some(total));
    let physical = labelled(&m2, "strata_pageserver_physical_size_bytes", &[&tl_label]);
    assert!(physical.is_some_and(|p| p > 0.0), "physical size gauge");

    // Branch delete: refused with a child branch, then with a running
    // endpoint; removes the directories otherwise.
    repo.ok(&["timeline", "branch", "--branch-name", "dev"]);
    repo.ok(&["timeline", "branch", "--branch-name", "devchild", "--ancestor-branch-name", "dev"]);
    let dev_url = url_of(&repo, &repo.ok(&["endpoint", "start", "devep", "--branch-name", "dev"]));
    psql(&dev_url, "CREATE TABLE only_on_dev AS SELECT generate_series(1, 1000) AS x");
    let dev_lsn = psql(&dev_url, "SELECT pg_current_wal_flush_lsn()");
    let (dev, child) = (timeline_of(&repo, "dev"), timeline_of(&repo, "devchild"));
    let ps_dir = |id: &str| repo.path.join(format!("pageserver/data/tenants/{tenant}/timelines/{id}"));
    let sk_dir = |id: &str| repo.path.join(format!("safekeeper_1/data/{tenant}/{id}"));
    assert!(ps_dir(&dev).exists() && sk_dir(&dev).exists());
    refused(&repo, &["timeline", "delete", "dev"], "has child branches (devchild)");
    refused(&repo, &["timeline", "delete", "nosuch"], "unknown branch \"nosuch\"");
    let out = repo.ok(&["timeline", "delete", "devchild"]);
    assert!(out.contains("deleted branch devchild"), "{out}");
    assert!(!ps_dir(&child).exists(), "pageserver directory of devchild removed");
    assert!(!sk_dir(&child).exists(), "safekeeper directory of devchild removed");
    refused(&repo, &["timeline", "delete", "dev"], "has a running endpoint \"devep\"");
    assert!(ps_dir(&dev).exists(), "a refused delete removed nothing");
    repo.ok(&["endpoint", "stop", "devep"]);
    caught_up_on(&format!("/v1/tenant/{tenant}/timeline/{dev}"), &dev_lsn);
    let (status, body) = http_request("POST", port, &format!("/v1/tenant/{tenant}/timeline/{dev}/checkpoint"));
    assert_eq!(status, 200, "{body}");
    let dev_layers = json(&http_get(port, &format!("/v1/tenant/{tenant}/timeline/{dev}/layers")));
    assert!(!dev_layers["layers"].as_array().unwrap().is_empty(), "dev has layer files of its own: {dev_layers}");
    let out = repo.ok(&["timeline", "delete", "dev"]);
    assert!(out.contains("removed stopped endpoint devep") && out.contains("deleted branch dev"), "{out}");
    assert!(!ps_dir(&dev).exists(), "layers directory of dev removed");
    assert!(!sk_dir(&dev).exists());
    let list = repo.ok(&["timeline", "list"]);
    assert!(!list.contains("dev"), "{list}");
    assert!(!repo.ok(&["endpoint", "list"]).contains("devep"));
    let (status, _) = http_request("GET", port, &format!("/v1/tenant/{tenant}/timeline/{dev}"));
    assert_eq!(status, 404);
    // main still serves.
    assert_eq!(psql(&main, "SELECT count(*) FROM pgbench_branches"), "2");
}
