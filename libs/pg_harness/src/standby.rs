//! Physical streaming standbys of a [`PgCluster`], made with `pg_basebackup`,
//! for tests that compare what replay rebuilds with what the primary wrote.
//!
//! A standby is itself a [`PgCluster`] (its own temporary directory, free
//! port, clean-up on drop), started with `standby.signal` and
//! `primary_conninfo` written by `pg_basebackup -R`, streaming from a
//! physical replication slot so that the primary keeps the WAL it needs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use utils::lsn::Lsn;

use crate::{check_output, pg_bin, pg_owned_tempdir, PgCluster};

const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

impl PgCluster {
    /// `pg_basebackup` this (running) cluster into a new directory and start
    /// it as a hot standby streaming from slot `slot` (created by
    /// `pg_basebackup -C`). `tablespace_mapping` relocates tablespaces
    /// (`-T old=new`); `new` must not exist yet or be empty, and is created
    /// owned by the Postgres user.
    pub fn start_standby(&self, slot: &str, tablespace_mapping: &[(&Path, &Path)]) -> anyhow::Result<PgCluster> {
        let user = self.user.clone();
        let root = pg_owned_tempdir(&user, "strata-pg-standby-")?;
        let data_dir = root.path().join("data");
        let mut cmd = user.command(pg_bin("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-X", "stream", "-R", "-C", "-S", slot, "--checkpoint=fast", "--no-sync"]);
        for (old, new) in tablespace_mapping {
            std::fs::create_dir_all(new).with_context(|| format!("create {}", new.display()))?;
            user.chown(new)?;
            cmd.arg(format!("--tablespace-mapping={}={}", old.display(), new.display()));
        }
        check_output("pg_basebackup", cmd.output().context("run pg_basebackup")?)?;
        let mut standby = PgCluster {
            root: Some(root),
            data_dir,
            port: 0,
            user,
            postmaster: None,
        };
        standby.start_postmaster()?;
        Ok(standby)
    }

    /// `pg_last_wal_replay_lsn()` (end of the last record replayed) on a
    /// standby.
    pub fn replay_lsn(&self) -> anyhow::Result<Lsn> {
        let text = self.sql("SELECT pg_last_wal_replay_lsn()")?;
        text.parse().with_context(|| format!("parse LSN {text:?}"))
    }

    /// Wait until this standby has replayed WAL past `lsn`.
    pub fn wait_replayed_past(&self, lsn: Lsn) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let replayed = self.replay_lsn()?;
            if replayed > lsn {
                return Ok(());
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                bail!(
                    "standby replayed only up to {replayed}, waiting for {lsn}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until this standby has replayed everything `primary` has written
    /// so far.
    pub fn wait_caught_up(&self, primary: &PgCluster) -> anyhow::Result<()> {
        let target = primary.sql("SELECT pg_current_wal_insert_lsn()")?;
        let target: Lsn = target.parse().with_context(|| format!("parse LSN {target:?}"))?;
        // Replay LSN is the end of the last record; the insert LSN is where
        // the next starts, so "past target - 1" means "caught up".
        self.wait_replayed_past(Lsn(target.0.saturating_sub(1)))
    }

    /// "Latest checkpoint location" of a stopped (or running) cluster, from
    /// `pg_controldata`.
    pub fn latest_checkpoint_lsn(&self) -> anyhow::Result<Lsn> {
        let out = Command::new(pg_bin("pg_controldata"))
            .arg(&self.data_dir)
            .env("LC_ALL", "C")
            .output()
            .context("run pg_controldata")?;
        let text = check_output("pg_controldata", out)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("Latest checkpoint location:"))
            .context("no 'Latest checkpoint location' in pg_controldata output")?;
        let lsn = line.rsplit(' ').next().unwrap_or_default();
        lsn.parse().with_context(|| format!("parse LSN {lsn:?}"))
    }

    /// Stop a primary and its standby so that both data directories hold
    /// everything: checkpoint the primary, let the standby replay it and
    /// make a restartpoint, stop the primary (its shutdown checkpoint
    /// reaches the standby before the walsender exits), wait until the
    /// standby has replayed that record, then stop the standby (its
    /// shutdown restartpoint at that record writes every dirty buffer).
    pub fn stop_with_standby(&mut self, standby: &mut PgCluster) -> anyhow::Result<()> {
        self.checkpoint()?;
        standby.wait_caught_up(self)?;
        standby.checkpoint()?; // a restartpoint
        self.stop()?;
        let shutdown_checkpoint = self.latest_checkpoint_lsn()?;
        standby.wait_replayed_past(shutdown_checkpoint)?;
        standby.stop()
    }
}
