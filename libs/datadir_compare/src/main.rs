//! `strata-compare-datadirs A B`: compares two PostgreSQL 15 data
//! directories page by page with the masks of `wal_consistency_checking`
//! (see the `datadir_compare` library). Both servers must be stopped.
//!
//! Prints `N files, M pages compared, 0 differences` and exits 0, or the
//! first differences (decoded) and the same summary line, and exits 1.
//! Exit 2 on usage or I/O errors.
//!
//! Options: `--max-differences N` (default 20) how many to record (the first
//! is shown decoded, the others by one line); `--verbose` also lists notes,
//! exclusions and the pages compared by kind.

use std::path::PathBuf;
use std::process::ExitCode;

use datadir_compare::{compare_datadirs, Options};

fn usage() -> ExitCode {
    eprintln!("usage: strata-compare-datadirs [--max-differences N] [--verbose] <datadir A> <datadir B>");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut opts = Options::default();
    let mut verbose = false;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--verbose" | "-v" => verbose = true,
            "--max-differences" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => opts.max_differences = n,
                _ => return usage(),
            },
            "-h" | "--help" => return usage(),
            s if s.starts_with('-') => return usage(),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    let [a, b] = dirs.as_slice() else { return usage() };
    let report = match compare_datadirs(a, b, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata-compare-datadirs: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("A = {}\nB = {}", a.display(), b.display());
    print!("{}", report.render(verbose));
    if report.is_equal() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
