//! PostgreSQL's own regression suite, run against a running server: a stock
//! cluster in tests today, a Strata compute endpoint once the `strata`
//! command starts one (issue 8).
//!
//! [`Suite::setup`] runs `scripts/setup-regress.sh` (idempotent: fetches the
//! suite from the Debian source package of the installed PostgreSQL 15,
//! builds `regress.so`, finds `pg_regress`) and reads the settings it
//! writes. [`Suite::run`] runs `scripts/regress.sh`, the whole
//! `parallel_schedule` in installcheck mode against `host:port`, and parses
//! its result.
//!
//! When the mirror does not serve the source of the installed minor version
//! (the security archive's sources are missing on some mirrors), the suite
//! is the closest older one and setup also unpacks the stock Debian server
//! of the suite's version: [`Suite::matched_server_bindir`] is the server to
//! run for a clean pass (`STRATA_PG_BIN`), since a few tests change between
//! minor releases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The repository root (scripts live in `<root>/scripts`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The regression suite, set up.
#[derive(Debug, Clone)]
pub struct Suite {
    pub env_file: PathBuf,
    vars: BTreeMap<String, String>,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Output directory (results/, regression.diffs); a temporary one by
    /// default, removed after a passing run.
    pub outputdir: Option<PathBuf>,
    /// Connect as this user (default `postgres`).
    pub user: Option<String>,
    /// Extra arguments for pg_regress (after `--`), e.g. test names.
    pub extra_args: Vec<String>,
    /// Schedule file (default: the suite's `parallel_schedule`).
    pub schedule: Option<PathBuf>,
    /// Run in the existing `regression` database instead of recreating it.
    pub use_existing: bool,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct RegressRun {
    /// Exit status of scripts/regress.sh (0 all passed, 1 some failed, 2 error).
    pub exit_code: i32,
    pub tests_ok: usize,
    /// Names of the tests that failed.
    pub failed: Vec<String>,
    /// Tests that failed but are marked `ignore:` in the schedule.
    pub ignored: usize,
    pub elapsed: Duration,
    /// The summary line of scripts/regress.sh.
    pub summary: String,
    /// Everything it printed (pg_regress's output and, on failure, the head
    /// of regression.diffs).
    pub output: String,
}

impl RegressRun {
    pub fn passed(&self) -> bool {
        self.exit_code == 0 && self.failed.is_empty() && self.tests_ok > 0
    }

    /// The last `n` lines of the output, for assertion messages.
    pub fn output_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('\'').to_string()))
        .collect()
}

/// Test results from pg_regress's output: (ok, failed names, ignored).
fn parse_results(output: &str) -> (usize, Vec<String>, usize) {
    let (mut ok, mut failed, mut ignored) = (0, Vec::new(), 0);
    for line in output.lines() {
        let Some((name, result)) = line.split_once(" ... ") else {
            continue;
        };
        let name = name.trim().trim_start_matches("test ").trim().to_string();
        let result = result.trim_start();
        if result.starts_with("ok") {
            ok += 1;
        } else if result.starts_with("FAILED") {
            failed.push(name);
        } else if result.starts_with("failed (ignored)") {
            ignored += 1;
        }
    }
    (ok, failed, ignored)
}

impl Suite {
    /// Run `scripts/setup-regress.sh` and read what it set up. Needs root
    /// (or sudo) the first time on a machine, and a Debian mirror.
    pub fn setup() -> anyhow::Result<Suite> {
        let script = repo_root().join("scripts/setup-regress.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let env_file = PathBuf::from(
            stdout
                .lines()
                .last()
                .context("setup-regress.sh printed nothing")?
                .trim(),
        );
        let text = std::fs::read_to_string(&env_file).with_context(|| format!("read {}", env_file.display()))?;
        Ok(Suite {
            env_file,
            vars: parse_env_file(&text),
        })
    }

    /// A variable of the settings file (`REGRESS_SRCDIR`, `PG_REGRESS`, …).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Minor version of the installed server, e.g. `15.20`.
    pub fn installed_version(&self) -> &str {
        self.var("PG_SERVER_VERSION").unwrap_or_default()
    }

    /// Minor version the suite comes from, e.g. `15.20` (or older, see the
    /// module documentation).
    pub fn suite_version(&self) -> &str {
        self.var("REGRESS_SUITE_VERSION").unwrap_or_default()
    }

    /// Binaries of a stock server of the suite's own version: the installed
    /// ones when the versions match, else the unpacked Debian packages.
    pub fn matched_server_bindir(&self) -> Option<PathBuf> {
        self.var("MATCHED_PG_BINDIR").map(PathBuf::from)
    }

    /// The suite's `parallel_schedule` split into two schedules at a group
    /// boundary near the middle (written into `dir`), for running the suite
    /// in two parts with a restart between them.
    pub fn split_schedule(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let src = PathBuf::from(self.var("REGRESS_SRCDIR").context("REGRESS_SRCDIR not set up")?);
        let text = std::fs::read_to_string(src.join("parallel_schedule"))?;
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("test:")).collect();
        anyhow::ensure!(lines.len() >= 2, "parallel_schedule has {} groups", lines.len());
        let (first, second) = lines.split_at(lines.len() / 2);
        // `ignore:` lines apply wherever their test runs: give them to both.
        let ignores: Vec<&str> = text.lines().filter(|l| l.starts_with("ignore:")).collect();
        let (a, b) = (dir.join("schedule_first_half"), dir.join("schedule_second_half"));
        std::fs::write(&a, [ignores.as_slice(), first].concat().join("\n") + "\n")?;
        std::fs::write(&b, [ignores.as_slice(), second].concat().join("\n") + "\n")?;
        Ok((a, b))
    }

    /// Run the whole `parallel_schedule` against the server at `host:port`.
    /// An `Err` is for a run that could not happen; failing tests are in
    /// the result.
    pub fn run(&self, host: &str, port: u16, opts: &RunOptions) -> anyhow::Result<RegressRun> {
        let script = repo_root().join("scripts/regress.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(["--host", host, "--port", &port.to_string()]);
        if let Some(user) = &opts.user {
            cmd.args(["--user", user]);
        }
        if let Some(dir) = &opts.outputdir {
            cmd.arg("--outputdir").arg(dir);
        }
        if let Some(schedule) = &opts.schedule {
            cmd.arg("--schedule").arg(schedule);
        }
        if opts.use_existing {
            cmd.arg("--use-existing");
        }
        if !opts.extra_args.is_empty() {
            cmd.arg("--").args(&opts.extra_args);
        }
        let started = Instant::now();
        let out = cmd.output().with_context(|| format!("run {}", script.display()))?;
        let elapsed = started.elapsed();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let exit_code = out.status.code().unwrap_or(-1);
        let summary = output
            .lines()
            .rev()
            .find(|l| l.starts_with("regress: ") && l.contains(" tests: "))
            .unwrap_or_default()
            .to_string();
        if exit_code == 2 || summary.is_empty() {
            bail!(
                "{} could not run the suite (exit {exit_code}):\n{output}",
                script.display()
            );
        }
        let (tests_ok, failed, ignored) = parse_results(&output);
        Ok(RegressRun {
            exit_code,
            tests_ok,
            failed,
            ignored,
            elapsed,
            summary,
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_regress_output() {
        let out = "\
test test_setup                   ... ok          373 ms
parallel group (20 tests):  boolean char
     boolean                      ... ok           84 ms
     char                         ... FAILED       90 ms
     random                       ... failed (ignored)       12 ms
test sanity_check                 ... ok          123 ms
";
        let (ok, failed, ignored) = parse_results(out);
        assert_eq!(ok, 3);
        assert_eq!(failed, vec!["char".to_string()]);
        assert_eq!(ignored, 1);
    }

    #[test]
    fn parses_env_file() {
        let vars = parse_env_file("# c\nA='x y'\nB=''\n");
        assert_eq!(vars.get("A").map(String::as_str), Some("x y"));
        assert_eq!(vars.get("B").map(String::as_str), Some(""));
    }
}
