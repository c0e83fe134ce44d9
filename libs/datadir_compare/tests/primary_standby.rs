//! The real analogue of Strata's "rebuilt data directory equals the
//! compute's own" check: a primary and a physical standby (pg_basebackup +
//! streaming replay) after a workload touching every built-in index access
//! method, a tablespace, TOAST, sequences, an unlogged table, another
//! database, multixacts, two-phase commit and subtransactions. Both are
//! checkpointed (the standby makes a restartpoint) and stopped cleanly;
//! the comparator must find no difference.

use datadir_compare::{compare_datadirs, Options};
use pg_harness::{pg_owned_tempdir, PgCluster};

const WORKLOAD: &str = r#"
CREATE TABLE h (id serial PRIMARY KEY, v text, arr int[], p point, r int4range,
                t tsvector, pad text);
CREATE INDEX h_v_hash ON h USING hash (v);
CREATE INDEX h_arr_gin ON h USING gin (arr);
CREATE INDEX h_t_gin ON h USING gin (t) WITH (fastupdate = on);
CREATE INDEX h_p_gist ON h USING gist (p);
CREATE INDEX h_r_gist ON h USING gist (r);
CREATE INDEX h_id_brin ON h USING brin (id) WITH (pages_per_range = 4);
CREATE INDEX h_p_spgist ON h USING spgist (p);
CREATE INDEX h_v_spgist ON h USING spgist (v);
INSERT INTO h (v, arr, p, r, t, pad)
  SELECT md5(g::text), ARRAY[g % 10, g % 7], point(g % 100, g / 100), int4range(g, g + 10),
         to_tsvector('english', 'word' || (g % 50) || ' other' || (g % 13)), repeat('x', g % 200)
  FROM generate_series(1, 15000) g;
UPDATE h SET v = v || 'u' WHERE id % 5 = 0;
DELETE FROM h WHERE id % 7 = 0;
VACUUM h;
INSERT INTO h (v, arr, p, r, t, pad)
  SELECT md5(g::text), ARRAY[g % 3], point(g % 10, g % 17), int4range(g, g + 2),
         to_tsvector('english', 'late' || (g % 5)), 'late'
  FROM generate_series(15001, 20000) g;
UPDATE h SET pad = 'small' WHERE id % 3 = 0;
SELECT brin_summarize_new_values('h_id_brin');
CREATE INDEX h_id_brin_late ON h USING brin (id);
CREATE TABLE toasty (id int PRIMARY KEY, big text);
INSERT INTO toasty SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 300) g;
UPDATE toasty SET big = big || 'tail' WHERE id % 2 = 0;
CREATE SEQUENCE s CACHE 1;
SELECT count(nextval('s')) FROM generate_series(1, 100);
CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text);
INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 2000) g;
CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts;
INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
CREATE INDEX in_ts_v ON in_ts USING hash (v) TABLESPACE ts;
CREATE TABLE locked (id int PRIMARY KEY, v int);
INSERT INTO locked SELECT g, g FROM generate_series(1, 100) g;
BEGIN;
SELECT count(*) FROM (SELECT * FROM locked WHERE id <= 50 FOR SHARE) s;
PREPARE TRANSACTION 'p1';
BEGIN;
SELECT count(*) FROM (SELECT * FROM locked WHERE id <= 50 FOR SHARE) s;
COMMIT;
COMMIT PREPARED 'p1';
DO $$
BEGIN
  FOR i IN 1..50 LOOP
    BEGIN
      INSERT INTO locked VALUES (1000 + i, i);
      IF i % 3 = 0 THEN RAISE EXCEPTION 'roll back this one'; END IF;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END LOOP;
END $$;
VACUUM FREEZE locked;
ANALYZE;
CREATE DATABASE other;
"#;

const OTHER_DB: &str = r#"
CREATE TABLE o (id int PRIMARY KEY, v text);
INSERT INTO o SELECT g, repeat('o', g % 50) FROM generate_series(1, 5000) g;
CREATE INDEX o_v ON o (v);
DELETE FROM o WHERE id % 4 = 0;
"#;

#[test]
fn standby_after_replay_equals_primary() {
    let mut primary = PgCluster::start(&[("max_prepared_transactions", "4")]).unwrap();
    let ts_primary = pg_owned_tempdir(primary.user(), "strata-ts-").unwrap();
    let ts_standby_root = pg_owned_tempdir(primary.user(), "strata-ts-standby-").unwrap();
    let ts_standby = ts_standby_root.path().join("ts");
    primary
        .sql(&format!(
            "CREATE TABLESPACE ts LOCATION '{}'",
            ts_primary.path().display()
        ))
        .unwrap();
    let mut standby = primary
        .start_standby("compare_standby", &[(ts_primary.path(), &ts_standby)])
        .unwrap();

    primary.sql(WORKLOAD).unwrap();
    primary.sql_db("other", OTHER_DB).unwrap();
    // Hint bits set by reads on both sides, independently.
    standby.wait_caught_up(&primary).unwrap();
    primary
        .sql("SELECT count(*) FROM h; SELECT count(*) FROM toasty;")
        .unwrap();
    standby
        .sql("SELECT count(*) FROM h; SELECT count(*) FROM locked;")
        .unwrap();
    primary.stop_with_standby(&mut standby).unwrap();

    let report = compare_datadirs(primary.data_dir(), standby.data_dir(), &Options::default()).unwrap();
    eprintln!("{}", report.summary());
    eprintln!("pages by kind: {:?}", report.pages_by_kind);
    eprintln!("pages equal only after masking: {}", report.pages_equal_after_masking);
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    let diffs: Vec<String> = report.differences.iter().map(|d| d.to_string()).collect();
    assert!(report.is_equal(), "{}\n{}", report.summary(), diffs.join("\n"));

    // The workload reached every kind of page, the tablespace and the
    // other database, and excluded the unlogged table's main fork.
    for kind in [
        "heap", "btree", "hash", "gin", "gist", "spgist", "brin", "sequence", "vm",
    ] {
        assert!(
            report.pages_by_kind.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} page compared: {:?}",
            report.pages_by_kind
        );
    }
    assert!(
        report.relation_files.iter().any(|p| p.starts_with("pg_tblspc/")),
        "no tablespace file compared"
    );
    let other_oid = primary_oid_of_other(&report);
    assert!(
        other_oid.is_some(),
        "no relation file of a second user database compared"
    );
    assert!(
        report
            .excluded
            .iter()
            .any(|(_, reason)| reason.starts_with("unlogged relation")),
        "unlogged table not excluded"
    );
    assert!(report.pages_compared > 1000, "{}", report.summary());
}

/// Some `base/<db>` other than template0/1 and `postgres` (oids 1, 4, 5)
/// holds compared relation files.
fn primary_oid_of_other(report: &datadir_compare::Report) -> Option<u32> {
    report
        .relation_files
        .iter()
        .filter_map(|p| p.strip_prefix("base/")?.split('/').next()?.parse::<u32>().ok())
        .find(|oid| *oid > 16383)
}
