//! Failpoints: named places in the code where a test can make the process
//! die with SIGKILL, to test what a `kill -9` at exactly that moment leaves
//! behind (crash tests of compaction, GC and uploads).
//!
//! Owns: the parsing of `STRATA_FAILPOINTS` and the per-name hit counts.
//!
//! Configuration comes only from the environment variable
//! `STRATA_FAILPOINTS`, read once at the first hit: `;`-separated
//! `NAME=kill` (die at the first hit) or `NAME=kill@N` (die at the N-th
//! hit, N ≥ 1). Nothing else can turn a failpoint on — in particular no
//! network input — so a production process started without the variable
//! never dies here. A malformed entry is reported on stderr and ignored.
//!
//! Cost when off: one `OnceLock` load and a `None` check per hit.
//!
//! Before dying the process writes `failpoint NAME: SIGKILL (hit N)` to
//! stderr, so a test can tell which point it died at. SIGKILL is raised on
//! the process itself: no destructor, no flush, no `atexit` runs — exactly
//! what an external `kill -9` does.
//!
//! Cancellation: nothing here awaits or blocks.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV_VAR: &str = "STRATA_FAILPOINTS";

/// An armed failpoint: die at hit number `at`.
#[derive(Debug)]
struct Armed {
    at: u64,
    hits: AtomicU64,
}

fn armed() -> &'static Option<HashMap<String, Armed>> {
    static ARMED: OnceLock<Option<HashMap<String, Armed>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let spec = std::env::var(ENV_VAR).ok()?;
        let (points, errors) = parse(&spec);
        for e in errors {
            eprintln!("{ENV_VAR}: {e} (ignored)");
        }
        (!points.is_empty()).then_some(points)
    })
}

/// Parse a `STRATA_FAILPOINTS` value: the armed points and one message per
/// malformed entry.
fn parse(spec: &str) -> (HashMap<String, Armed>, Vec<String>) {
    let mut points = HashMap::new();
    let mut errors = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            errors.push(format!("'{entry}' is not NAME=kill or NAME=kill@N"));
            continue;
        };
        let at = match action.trim().strip_prefix("kill") {
            Some("") => Some(1),
            Some(n) => n.strip_prefix('@').and_then(|n| n.parse::<u64>().ok()).filter(|n| *n >= 1),
            None => None,
        };
        match at {
            Some(at) => {
                points.insert(name.trim().to_string(), Armed { at, hits: AtomicU64::new(0) });
            }
            None => errors.push(format!("'{entry}': the action must be kill or kill@N with N >= 1")),
        }
    }
    (points, errors)
}

/// Pass the failpoint `name`: dies with SIGKILL if `STRATA_FAILPOINTS`
/// arms it and this is the hit it names; otherwise returns at once.
pub fn hit(name: &str) {
    let Some(points) = armed() else { return };
    let Some(point) = points.get(name) else { return };
    let n = point.hits.fetch_add(1, Ordering::AcqRel) + 1;
    if n == point.at {
        eprintln!("failpoint {name}: SIGKILL (hit {n})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise fail, do not go on.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kill_and_kill_at_n_and_reports_bad_entries() {
        let (points, errors) = parse("a=kill; b=kill@3;;c=pause;d;e=kill@0;f=kill@x");
        assert_eq!(points.len(), 2);
        assert_eq!(points["a"].at, 1);
        assert_eq!(points["b"].at, 3);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("'c=pause'")), "{errors:?}");
    }

    #[test]
    fn an_unarmed_point_returns() {
        // The test process has no STRATA_FAILPOINTS naming this point.
        hit("utils-test-never-armed");
    }
}
