//! Passwords of a cluster: each endpoint's client password (for role
//! [`CLIENT_ROLE`], kept in its `endpoint.toml`) and the cluster's
//! replication password (for role [`REPLICATION_ROLE`], the only role the
//! computes accept replication connections from, used by the safekeepers),
//! kept in `<repo>/secrets/replication_password`.
//!
//! Invariants: every file holding a password is mode 0600 (in a directory
//! of mode 0700 for `secrets/`) from its creation on; a password is created
//! once and then only read; computes receive SCRAM-SHA-256 verifiers, never
//! a cleartext password, so no server log can show one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The role clients log in as: the owner of the `postgres` database, not a
/// superuser (see `Endpoint::configure_roles` for what it may do).
pub const CLIENT_ROLE: &str = "strata_owner";
/// The bootstrap superuser. It has no password, and `pg_hba.conf` refuses
/// it on TCP: only the control plane and the proxy use it, over the
/// compute's Unix socket.
pub const SUPERUSER_ROLE: &str = "postgres";
/// The role the safekeepers stream from computes as.
pub const REPLICATION_ROLE: &str = "strata_replication";
const SECRETS_DIR: &str = "secrets";
const REPLICATION_PASSWORD_FILE: &str = "replication_password";
const REPLICATION_VERIFIER_FILE: &str = "replication_scram_verifier";
const PASSWORD_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const PASSWORD_LEN: usize = 32;

/// A password: `Debug` does not show it, so it cannot leak through a
/// logged struct. Letters and digits only, so it goes into URLs and
/// conninfo strings unescaped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(********)")
    }
}

impl Password {
    /// A new random password (32 letters and digits, about 190 bits).
    pub fn generate() -> Password {
        let mut rng = rand::rngs::OsRng;
        Password((0..PASSWORD_LEN).map(|_| PASSWORD_CHARS[rng.gen_range(0..PASSWORD_CHARS.len())] as char).collect())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A SCRAM-SHA-256 verifier of it (random salt), what `ALTER ROLE …
    /// PASSWORD` is given so the server never sees the password itself.
    pub fn scram_verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.0.as_bytes())
    }
}

/// A password and the SCRAM verifier computes store for it (made once, so
/// a compute that already holds it needs no catalog change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub password: Password,
    pub scram_verifier: String,
}

impl Credential {
    pub fn generate() -> Credential {
        let password = Password::generate();
        Credential { scram_verifier: password.scram_verifier(), password }
    }
}

/// Where the cluster's replication password lives (the safekeepers'
/// `--compute-password-file`).
pub fn replication_password_path(repo: &Path) -> PathBuf {
    repo.join(SECRETS_DIR).join(REPLICATION_PASSWORD_FILE)
}

/// The cluster's replication credential, created on first use: the
/// password in `secrets/replication_password` (what the safekeepers read),
/// its verifier beside it.
pub fn replication_credential(repo: &Path) -> anyhow::Result<Credential> {
    let (path, verifier_path) = (replication_password_path(repo), repo.join(SECRETS_DIR).join(REPLICATION_VERIFIER_FILE));
    if let (Some(password), Some(scram_verifier)) = (read_secret(&path)?, read_secret(&verifier_path)?) {
        return Ok(Credential { password: Password(password), scram_verifier });
    }
    let dir = repo.join(SECRETS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let created = Credential::generate();
    // The verifier first: a password file without one is never left.
    utils::fs::write_atomic_private(&verifier_path, created.scram_verifier.as_bytes()).with_context(|| format!("write {}", verifier_path.display()))?;
    utils::fs::write_atomic_private(&path, created.password.expose().as_bytes()).with_context(|| format!("write {}", path.display()))?;
    Ok(created)
}

/// A secret file's contents without the final newline; `None` when it is
/// missing or empty.
fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim_end().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_replication_password_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = replication_credential(dir.path()).unwrap();
        assert_eq!(replication_credential(dir.path()).unwrap(), first);
        let first = first.password;
        let mode = std::fs::metadata(replication_password_path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(first.expose().len(), PASSWORD_LEN);
        assert!(first.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(Password::generate(), first);
        assert!(!format!("{first:?}").contains(first.expose()));
        assert!(first.scram_verifier().starts_with("SCRAM-SHA-256$4096:"));
    }
}
