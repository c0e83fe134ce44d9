//! `strata endpoint start NAME -c KEY=VALUE`: settings kept in the
//! endpoint's config, applied at every start, visible in `SHOW`; settings
//! Strata needs are refused with the reason; a value postgres rejects is
//! reported and not kept.

mod common;

use common::{psql, started_cluster, url_of};

#[test]
fn settings_survive_stop_and_start_and_managed_ones_are_refused() {
    let repo = started_cluster(1);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main", "-c", "work_mem=12MB", "-c", "application_name=strata_t"]));
    assert_eq!(psql(&url, "SHOW work_mem"), "12MB");
    // A default sized to the machine, overridable.
    let shared: String = psql(&url, "SHOW shared_buffers");
    assert!(shared.ends_with("MB") || shared.ends_with("GB"), "{shared}");

    repo.ok(&["endpoint", "stop", "main"]);
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main", "-c", "shared_buffers=64MB"]));
    assert_eq!(psql(&url, "SHOW work_mem"), "12MB", "a setting was lost at restart");
    assert_eq!(psql(&url, "SHOW shared_buffers"), "64MB");
    let toml = std::fs::read_to_string(repo.path.join("endpoints/main/endpoint.toml")).unwrap();
    assert!(toml.contains("work_mem = \"12MB\""), "{toml}");

    // Managed settings: one clear line, nothing changed.
    repo.ok(&["endpoint", "stop", "main"]);
    for bad in ["synchronous_commit=off", "port=1", "synchronous_standby_names=", "wal_level=minimal"] {
        let out = repo.run(&["endpoint", "start", "main", "-c", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("managed by strata"), "{bad}: {err}");
    }
    // A value postgres refuses: the start fails with its message; the bad value is not kept.
    let out = repo.run(&["endpoint", "start", "main", "-c", "work_mem=lots"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("work_mem"), "{}", String::from_utf8_lossy(&out.stderr));
    let url = url_of(&repo, &repo.ok(&["endpoint", "start", "main", "--reset", "shared_buffers"]));
    assert_eq!(psql(&url, "SHOW work_mem"), "12MB");
    assert_ne!(psql(&url, "SHOW shared_buffers"), "64MB", "--reset did not drop the setting");
    // Strata's own settings hold whatever the user set.
    assert_eq!(psql(&url, "SHOW synchronous_commit"), "on");
}
