//! Where redo processes run: the built extension and the scratch clusters.
//!
//! Owns: locating `walredo.so` where the redo user can load it
//! ([`locate_walredo_lib`]), the shared template
//! cluster (`initdb` once, with `walredo_main()` created in its catalog) and
//! one copy of it per pool slot (`<work_dir>/slot-N`), since a single-user
//! postgres locks its data directory.
//!
//! Invariants: a template is usable only once its `READY` file exists; it is
//! built in a temporary directory and renamed into place, so a crash never
//! leaves a half-made one. All these functions block (they run `initdb` and
//! `cp`): call them from a blocking context. They are not cancellable.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use utils::pg_user::PgUser;

/// File name of the built extension.
pub const LIB_FILE: &str = "walredo.so";
/// Environment variable naming the built `walredo.so` (or its directory).
pub const LIB_ENV: &str = "STRATA_WALREDO_LIB";

const FUNCTION_SQL: &str =
    "CREATE FUNCTION walredo_main() RETURNS void AS 'walredo', 'walredo_main' LANGUAGE C;\n";

/// Serialises template creation inside this process.
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// Find `walredo.so`: `explicit`, else `$STRATA_WALREDO_LIB`, else the build
/// script's known output paths; the first that exists wins. The redo
/// processes run as `user` and must be able to load it: a library `user`
/// cannot read (a checkout under `/root`) is copied to
/// `<state root>/walredo/` first, and that copy is returned.
pub fn locate_walredo_lib(explicit: Option<&Path>, user: &PgUser) -> Result<PathBuf, String> {
    let from_env = std::env::var_os(LIB_ENV).map(PathBuf::from);
    let candidates: Vec<PathBuf> = match explicit.map(Path::to_path_buf).or(from_env) {
        Some(given) if given.is_dir() => vec![given.join(LIB_FILE)],
        Some(given) => vec![given],
        None => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/walredo").join(LIB_FILE),
            utils::pg_user::state_root().join("walredo").join(LIB_FILE),
        ],
    };
    let found = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
        format!("{LIB_FILE} not found (looked at {candidates:?}); run scripts/build-walredo.sh or set {LIB_ENV}")
    })?;
    let found = found.canonicalize().map_err(|e| format!("resolve {}: {e}", found.display()))?;
    if user.can_read(&found) {
        return Ok(found);
    }
    copy_reachable(&found, user)
}

/// Copy `lib` to `<state root>/walredo/walredo.so` (atomically, mode 0644)
/// unless an identical copy is there; check that `user` can read it.
fn copy_reachable(lib: &Path, user: &PgUser) -> Result<PathBuf, String> {
    let dir = utils::pg_user::state_root().join("walredo");
    let dest = dir.join(LIB_FILE);
    let bytes = std::fs::read(lib).map_err(|e| format!("read {}: {e}", lib.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.parent().unwrap_or(&dir), &dir] {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", d.display()))?;
        }
        let tmp = dir.join(format!("{LIB_FILE}.tmp.{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("write {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).map_err(|e| format!("install {}: {e}", dest.display()))?;
    }
    if !user.can_read(&dest) {
        return Err(format!("{} is not readable by {} (set STRATA_STATE_DIR or {LIB_ENV})", dest.display(), user.name()));
    }
    tracing::info!(from = %lib.display(), to = %dest.display(), "walredo.so copied where the redo user can load it");
    Ok(dest)
}

/// Run `scripts/build-walredo.sh` (idempotent) and return the installed
/// library's path. For tests, benchmarks and development setups.
pub fn build_walredo_lib() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-walredo.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    let stdout = checked("build-walredo.sh", out)?;
    let path = stdout.lines().last().unwrap_or_default().trim();
    if path.is_empty() {
        return Err("build-walredo.sh printed no path".into());
    }
    Ok(PathBuf::from(path))
}

fn checked(what: &str, out: Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what} failed ({}): {stderr}{stdout}", out.status));
    }
    Ok(stdout)
}

/// Make `dir` exist and belong to the Postgres user.
pub(crate) fn ensure_owned_dir(dir: &Path, user: &PgUser) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    user.chown(dir).map_err(|e| e.to_string())
}

/// The template cluster's data directory, created on first use.
pub(crate) fn ensure_template(template_dir: &Path, lib_dir: &Path, user: &PgUser, pg_bin: &Path) -> Result<PathBuf, String> {
    let data = template_dir.join("data");
    let ready = template_dir.join("READY");
    let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if ready.exists() {
        return Ok(data);
    }
    ensure_owned_dir(template_dir, user)?;
    let tmp = template_dir.join(format!("data.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    run_initdb(&tmp, user, pg_bin)?;
    create_function(&tmp, lib_dir, user, pg_bin)?;
    if !data.exists() {
        std::fs::rename(&tmp, &data).map_err(|e| format!("rename template: {e}"))?;
    } else {
        let _ = std::fs::remove_dir_all(&tmp); // another process finished first
    }
    std::fs::write(&ready, b"ok\n").map_err(|e| format!("write {}: {e}", ready.display()))?;
    Ok(data)
}

fn run_initdb(data: &Path, user: &PgUser, pg_bin: &Path) -> Result<(), String> {
    let out = user
        .command(pg_bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N", "--no-instructions"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    checked("initdb", out).map(|_| ())
}

fn create_function(data: &Path, lib_dir: &Path, user: &PgUser, pg_bin: &Path) -> Result<(), String> {
    use std::io::Write;
    let mut child = user
        .command(pg_bin.join("postgres"))
        .args(single_user_args(data, lib_dir, true))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run postgres --single: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(FUNCTION_SQL.as_bytes()).map_err(|e| format!("write SQL: {e}"))?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| format!("wait for postgres: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = checked("postgres --single (CREATE FUNCTION)", out)?;
    if stderr.contains("ERROR") || stderr.contains("FATAL") {
        return Err(format!("CREATE FUNCTION walredo_main failed: {stderr}{stdout}"));
    }
    Ok(())
}

/// Arguments of `postgres` for a single-user redo process on `data`
/// (`sandbox`: whether `walredo_main()` installs its seccomp filter).
pub(crate) fn single_user_args(data: &Path, lib_dir: &Path, sandbox: bool) -> Vec<String> {
    let mut args = vec!["--single".to_string(), "-D".into(), data.display().to_string(), "-F".into()];
    for setting in [
        "shared_buffers=1MB".to_string(),
        format!("dynamic_library_path={}:$libdir", lib_dir.display()),
        "max_connections=5".into(),
        "max_wal_senders=0".into(),
        "max_worker_processes=0".into(),
        "max_prepared_transactions=0".into(),
        "log_checkpoints=off".into(),
        // no timer after start-up: re-arming one is forbidden by the sandbox
        "log_startup_progress_interval=0".into(),
        format!("strata_walredo.sandbox={}", if sandbox { "on" } else { "off" }),
    ] {
        args.push("-c".into());
        args.push(setting);
    }
    args.push("postgres".into());
    args
}

/// The data directory of pool slot `idx`, copied from the template if new.
pub(crate) fn ensure_slot(work_dir: &Path, idx: usize, template_data: &Path, user: &PgUser) -> Result<PathBuf, String> {
    let slot = work_dir.join(format!("slot-{idx}"));
    if slot.join("PG_VERSION").exists() {
        return Ok(slot);
    }
    let tmp = work_dir.join(format!("slot-{idx}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&slot);
    let out = user
        .command("cp")
        .arg("-a")
        .arg(template_data)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("run cp: {e}"))?;
    checked("copy template cluster", out)?;
    std::fs::rename(&tmp, &slot).map_err(|e| format!("rename slot: {e}"))?;
    Ok(slot)
}
