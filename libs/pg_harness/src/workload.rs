//! SQL workloads that make PostgreSQL write WAL of many kinds, shared by the
//! tests and benchmarks of every component that consumes WAL.

/// Settings that keep every WAL segment a workload writes (nothing recycled
/// or removed), so the whole history can be read back from `pg_wal`.
pub const KEEP_ALL_WAL: &[(&str, &str)] = &[
    ("wal_keep_size", "4GB"),
    ("max_wal_size", "4GB"),
    ("checkpoint_timeout", "1h"),
    ("max_prepared_transactions", "4"),
];

/// A workload touching most record kinds: DDL, COPY and INSERT, UPDATE with
/// and without HOT, DELETE, btree splits, hash/GIN/GiST/BRIN indexes,
/// sequences, VACUUM (prune, freeze, visibility map), TRUNCATE, CREATE and
/// DROP DATABASE in both strategies, subtransactions, two-phase commit, a
/// long transaction spanning several WAL segments, logical messages larger
/// than a WAL page and than a segment, checkpoints and a WAL switch.
///
/// `scale` multiplies row counts (1 writes about 60 MB of WAL).
pub fn varied_wal_sql(scale: u32) -> String {
    let rows = 20_000 * scale;
    let long_rows = 300_000 * scale;
    format!(
        r#"
CREATE TABLE items (id int PRIMARY KEY, val text, tags int[], pos point, pad text);
INSERT INTO items SELECT g, md5(g::text), ARRAY[g % 7, g % 11], point(g % 100, g / 100), repeat('p', 60)
  FROM generate_series(1, {rows}) g;
CREATE INDEX items_val_hash ON items USING hash (val);
CREATE INDEX items_tags_gin ON items USING gin (tags);
CREATE INDEX items_pos_gist ON items USING gist (pos);
CREATE INDEX items_id_brin ON items USING brin (id);
CREATE TABLE hot (id int PRIMARY KEY, counter int, note text) WITH (fillfactor = 50);
INSERT INTO hot SELECT g, 0, 'n' FROM generate_series(1, 2000) g;
UPDATE hot SET counter = counter + 1;
UPDATE hot SET counter = counter + 1 WHERE id % 2 = 0;
UPDATE items SET id = id + 1000000 WHERE id % 7 = 0;
UPDATE items SET val = val || 'x' WHERE id % 5 = 0;
DELETE FROM items WHERE id % 3 = 0;
CREATE TABLE copied (a int, b text);
COPY copied FROM STDIN;
1	one
2	two
3	three
\.
CREATE SEQUENCE seq;
SELECT count(nextval('seq')) FROM generate_series(1, 200);
BEGIN;
INSERT INTO copied VALUES (10, 'sub');
SAVEPOINT s1;
INSERT INTO copied VALUES (11, 'rolled back');
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO copied VALUES (12, 'kept');
COMMIT;
BEGIN;
INSERT INTO copied VALUES (20, 'prepared');
PREPARE TRANSACTION 'strata_2pc';
COMMIT PREPARED 'strata_2pc';
BEGIN;
INSERT INTO copied VALUES (21, 'aborted');
ROLLBACK;
VACUUM items;
VACUUM FREEZE hot;
CHECKPOINT;
TRUNCATE copied;
CREATE UNLOGGED TABLE scratch (x int);
INSERT INTO scratch SELECT generate_series(1, 100);
CREATE DATABASE db_wal_log;
CREATE DATABASE db_file_copy STRATEGY file_copy;
\c db_wal_log
CREATE TABLE other (x int PRIMARY KEY);
INSERT INTO other SELECT generate_series(1, 1000);
\c postgres
DROP DATABASE db_file_copy;
BEGIN;
CREATE TABLE long_txn (id int, payload text);
INSERT INTO long_txn SELECT g, md5(g::text) FROM generate_series(1, {long_rows}) g;
COMMIT;
SELECT pg_logical_emit_message(false, 'strata', repeat('m', 100000)) IS NOT NULL;
SELECT pg_logical_emit_message(true, 'strata', repeat('s', 20000000)) IS NOT NULL;
SELECT pg_switch_wal() IS NOT NULL;
INSERT INTO items VALUES (-1, 'after switch', '{{}}', point(0, 0), '');
CHECKPOINT;
"#
    )
}
