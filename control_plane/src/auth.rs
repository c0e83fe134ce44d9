//! The cluster's tokens: key pairs under `<repo>/auth/`, the long-lived
//! tokens the control plane signs for each component, and key rotation.
//!
//! Layout (`auth/` and `auth/private/`, `auth/tokens/` are mode 0700, every
//! private key and token file 0600):
//! * `auth/private/key-<N>.pem` — Ed25519 private keys; the highest `N`
//!   signs (the current key).
//! * `auth/public/key-<N>.pem` — the public keys every component accepts
//!   (`--auth-public-key-dir`).
//! * `auth/tokens/admin.jwt` (the control plane's own calls),
//!   `pageserver.jwt` (`pageserverapi`: the pageserver's walreceiver),
//!   `safekeeper.jwt` (`safekeeperdata`: peers and the broker) and
//!   `tenant-<id>.jwt` (a tenant's lazyfs): signed once, read by the
//!   components at every use, re-signed by [`rotate`].
//!
//! Rotation: [`rotate`] adds key N+1 and re-signs every token with it;
//! components pick up the new public key within a second, so old and new
//! tokens both work; [`finish_rotation`] then removes every older key, after
//! which only tokens of the current key are accepted.
//!
//! Invariant: with `auth = true` in `config.toml` the key pair exists (made
//! by `strata init`) and every component is started with the flags of
//! [`broker_args`] / [`pageserver_args`] / [`safekeeper_args`]. Everything
//! here is small blocking file I/O run by the CLI.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ::auth::{Claims, Scope, Signer};
use utils::id::TenantId;

pub const AUTH_DIR: &str = "auth";

fn auth_dir(repo: &Path) -> PathBuf {
    repo.join(AUTH_DIR)
}

pub fn public_key_dir(repo: &Path) -> PathBuf {
    auth_dir(repo).join("public")
}

fn private_key_dir(repo: &Path) -> PathBuf {
    auth_dir(repo).join("private")
}

fn tokens_dir(repo: &Path) -> PathBuf {
    auth_dir(repo).join("tokens")
}

/// A token file's name and its claims.
fn token_claims(name: &str) -> Option<Claims> {
    let stem = name.strip_suffix(".jwt")?;
    match stem {
        "admin" => Some(Claims::new(Scope::Admin)),
        "pageserver" => Some(Claims::new(Scope::PageServerApi)),
        "safekeeper" => Some(Claims::new(Scope::SafekeeperData)),
        _ => stem.strip_prefix("tenant-")?.parse().ok().map(Claims::tenant),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod {}", dir.display()))
}

/// Key numbers present in `auth/private/`, ascending.
fn key_numbers(repo: &Path) -> anyhow::Result<Vec<u64>> {
    let dir = private_key_dir(repo);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let name = entry?.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("key-")?.strip_suffix(".pem")?.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn key_name(n: u64) -> String {
    format!("key-{n}.pem")
}

fn new_key(repo: &Path, n: u64) -> anyhow::Result<()> {
    let name = key_name(n);
    ::auth::generate_key_pair(&private_key_dir(repo).join(&name), &public_key_dir(repo).join(&name))?;
    Ok(())
}

/// The signer of the current (highest-numbered) key.
fn current_signer(repo: &Path) -> anyhow::Result<Signer> {
    let Some(&n) = key_numbers(repo)?.last() else { bail!("no private key in {}", private_key_dir(repo).display()) };
    Ok(Signer::from_pem_file(&private_key_dir(repo).join(key_name(n)))?)
}

/// `strata init`: the first key pair and the component tokens.
pub fn init(repo: &Path) -> anyhow::Result<()> {
    create_private_dir(&auth_dir(repo))?;
    create_private_dir(&private_key_dir(repo))?;
    create_private_dir(&tokens_dir(repo))?;
    std::fs::create_dir_all(public_key_dir(repo))?;
    new_key(repo, 1)?;
    let signer = current_signer(repo)?;
    for name in ["admin.jwt", "pageserver.jwt", "safekeeper.jwt"] {
        write_token(repo, &signer, name)?;
    }
    Ok(())
}

fn write_token(repo: &Path, signer: &Signer, name: &str) -> anyhow::Result<PathBuf> {
    let claims = token_claims(name).with_context(|| format!("{name}: not a token file name"))?;
    let path = tokens_dir(repo).join(name);
    utils::fs::write_atomic_private(&path, signer.sign(&claims)?.as_bytes()).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn token_path(repo: &Path, name: &str) -> PathBuf {
    tokens_dir(repo).join(name)
}

/// The control plane's own token (`admin`).
pub fn admin_token(repo: &Path) -> anyhow::Result<String> {
    Ok(::auth::read_token_file(&token_path(repo, "admin.jwt"))?)
}

/// The token file of `tenant` (for its lazyfs), signed when missing.
pub fn tenant_token_file(repo: &Path, tenant: TenantId) -> anyhow::Result<PathBuf> {
    let name = format!("tenant-{tenant}.jwt");
    let path = token_path(repo, &name);
    if path.exists() {
        return Ok(path);
    }
    write_token(repo, &current_signer(repo)?, &name)
}

/// `strata auth token`: a new token of `scope` (for `tenant`), signed by
/// the current key, expiring after `ttl` when given.
pub fn sign(repo: &Path, scope: Scope, tenant: Option<TenantId>, ttl: Option<std::time::Duration>) -> anyhow::Result<String> {
    if (scope == Scope::Tenant) != tenant.is_some() {
        bail!("--tenant is needed with scope tenant, and only with it");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let exp = ttl.map(|t| now.saturating_add(t.as_secs()));
    Ok(current_signer(repo)?.sign(&Claims { scope, tenant_id: tenant, exp })?)
}

/// `strata auth rotate`: a new key, and every token re-signed with it; the
/// old public keys stay accepted until [`finish_rotation`]. The new key's name.
pub fn rotate(repo: &Path) -> anyhow::Result<String> {
    let next = key_numbers(repo)?.last().copied().unwrap_or(0) + 1;
    new_key(repo, next)?;
    let signer = current_signer(repo)?;
    for entry in std::fs::read_dir(tokens_dir(repo))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if token_claims(&name).is_some() {
            write_token(repo, &signer, &name)?;
        }
    }
    Ok(key_name(next))
}

/// `strata auth finish-rotation`: remove every key but the current one;
/// tokens signed by them are refused from then on. The keys removed.
pub fn finish_rotation(repo: &Path) -> anyhow::Result<Vec<String>> {
    let numbers = key_numbers(repo)?;
    let Some((_, old)) = numbers.split_last() else { bail!("no key in {}", private_key_dir(repo).display()) };
    let mut removed = Vec::new();
    for &n in old {
        let name = key_name(n);
        for dir in [public_key_dir(repo), private_key_dir(repo)] {
            let path = dir.join(&name);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            }
        }
        removed.push(name);
    }
    utils::fs::fsync_dir(&public_key_dir(repo))?;
    Ok(removed)
}

fn flag(name: &str, path: PathBuf) -> [String; 2] {
    [name.to_string(), path.display().to_string()]
}

/// The broker's auth flags (none when auth is off).
pub fn broker_args(repo: &Path, enabled: bool) -> Vec<String> {
    if !enabled {
        return Vec::new();
    }
    flag("--auth-public-key-dir", public_key_dir(repo)).to_vec()
}

/// The pageserver's auth flags: keys to check, and its token for the safekeepers.
pub fn pageserver_args(repo: &Path, enabled: bool) -> Vec<String> {
    if !enabled {
        return Vec::new();
    }
    [flag("--auth-public-key-dir", public_key_dir(repo)), flag("--auth-token-file", token_path(repo, "pageserver.jwt"))].concat()
}

/// A safekeeper's auth flags: keys to check, and its token for peers and the broker.
pub fn safekeeper_args(repo: &Path, enabled: bool) -> Vec<String> {
    if !enabled {
        return Vec::new();
    }
    [flag("--auth-public-key-dir", public_key_dir(repo)), flag("--auth-token-file", token_path(repo, "safekeeper.jwt"))].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_rotate_finish() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        init(repo).unwrap();
        assert_eq!(mode(&private_key_dir(repo).join("key-1.pem")), 0o600);
        assert_eq!(mode(&tokens_dir(repo).join("admin.jwt")), 0o600);
        assert_eq!(mode(&auth_dir(repo)), 0o700);
        let keys = ::auth::KeySet::load(&public_key_dir(repo)).unwrap();
        let old_admin = admin_token(repo).unwrap();
        assert_eq!(keys.verify(&old_admin).unwrap(), Claims::new(Scope::Admin));
        let t = TenantId::generate();
        let tenant_file = tenant_token_file(repo, t).unwrap();
        let tenant_token = ::auth::read_token_file(&tenant_file).unwrap();
        assert_eq!(keys.verify(&tenant_token).unwrap(), Claims::tenant(t));

        assert_eq!(rotate(repo).unwrap(), "key-2.pem");
        let new_admin = admin_token(repo).unwrap();
        assert_ne!(new_admin, old_admin);
        assert_ne!(::auth::read_token_file(&tenant_file).unwrap(), tenant_token, "tenant token not re-signed");
        let both = ::auth::KeySet::load(&public_key_dir(repo)).unwrap();
        assert!(both.verify(&old_admin).is_ok() && both.verify(&new_admin).is_ok());
        assert_eq!(finish_rotation(repo).unwrap(), vec!["key-1.pem".to_string()]);
        let new_only = ::auth::KeySet::load(&public_key_dir(repo)).unwrap();
        assert_eq!(new_only.verify(&old_admin), Err(::auth::AuthError::BadSignature));
        assert!(new_only.verify(&new_admin).is_ok());
        assert!(sign(repo, Scope::Tenant, None, None).is_err());
    }
}
