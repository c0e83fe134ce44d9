//! Key files, signing and verification.
//!
//! Files: a private key is PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), mode
//! 0600; a public key is SPKI PEM (`-----BEGIN PUBLIC KEY-----`). A public
//! key directory holds `*.pem` files, one key each; other files are
//! ignored. A token file holds one token (surrounding whitespace ignored).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::{AuthError, Claims};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32
/// bytes of the key follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Errors of key and token files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not an Ed25519 {what} key in PEM: {detail}", path.display())]
    BadKey { path: PathBuf, what: &'static str, detail: String },
    #[error("{}: no public key (*.pem) found", path.display())]
    NoKeys { path: PathBuf },
    #[error("{}: empty token file", path.display())]
    EmptyToken { path: PathBuf },
    #[error("key generation failed")]
    Generate,
    #[error("signing failed: {0}")]
    Sign(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// Make a new Ed25519 key pair: the private key at `private_path` (mode
/// 0600, written atomically) and the public key at `public_path`.
pub fn generate_key_pair(private_path: &Path, public_path: &Path) -> Result<(), KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(pair.public_key().as_ref());
    let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki));
    utils::fs::write_atomic_private(private_path, private_pem.as_bytes()).map_err(io_err(private_path))?;
    utils::fs::write_atomic(public_path, public_pem.as_bytes()).map_err(io_err(public_path))
}

/// Read a token file (read at each use by the components, so a re-signed
/// token is picked up without a restart).
pub fn read_token_file(path: &Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(KeyError::EmptyToken { path: path.to_path_buf() });
    }
    Ok(token.to_string())
}

/// Signs tokens with one private key.
pub struct Signer {
    key: EncodingKey,
    kid: String,
}

impl Signer {
    pub fn from_pem_file(path: &Path) -> Result<Signer, KeyError> {
        let pem = std::fs::read(path).map_err(io_err(path))?;
        let key = EncodingKey::from_ed_pem(&pem).map_err(|e| KeyError::BadKey { path: path.to_path_buf(), what: "private", detail: e.to_string() })?;
        let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Signer { key, kid })
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

struct Loaded {
    keys: Arc<Vec<DecodingKey>>,
    mtime: Option<SystemTime>,
    checked_at: Instant,
}

/// The public keys a component accepts, from a directory or one file.
pub struct KeySet {
    source: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("source", &self.source).finish()
    }
}

impl KeySet {
    /// How often [`KeySet::verify`] looks whether the keys changed, at most.
    pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

    /// Load every public key of `source` (a directory of `*.pem`, or one
    /// file); at least one must be there.
    pub fn load(source: &Path) -> Result<KeySet, KeyError> {
        let (keys, mtime) = read_keys(source)?;
        let loaded = Loaded { keys: Arc::new(keys), mtime, checked_at: Instant::now() };
        Ok(KeySet { source: source.to_path_buf(), loaded: Mutex::new(loaded) })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The keys, reloaded first when the source changed (checked at most
    /// once per [`Self::RECHECK_INTERVAL`]; a source that cannot be read
    /// keeps the keys it had, with a warning).
    fn keys(&self) -> Arc<Vec<DecodingKey>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked_at.elapsed() >= Self::RECHECK_INTERVAL {
            loaded.checked_at = Instant::now();
            let mtime = mtime_of(&self.source);
            if mtime.is_some() && mtime != loaded.mtime {
                match read_keys(&self.source) {
                    Ok((keys, mtime)) => {
                        tracing::info!(source = %self.source.display(), keys = keys.len(), "public keys reloaded");
                        loaded.keys = Arc::new(keys);
                        loaded.mtime = mtime;
                    }
                    Err(e) => tracing::warn!("keeping the public keys loaded before: {e}"),
                }
            }
        }
        Arc::clone(&loaded.keys)
    }

    /// The claims of `token` when one of the keys signed it and it has not
    /// expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed(format!("algorithm {:?}, only EdDSA is accepted", header.alg)));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        for key in self.keys().iter() {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => continue,
                    ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                    _ => return Err(AuthError::Malformed(e.to_string())),
                },
            }
        }
        Err(AuthError::BadSignature)
    }
}

fn mtime_of(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_keys(source: &Path) -> Result<(Vec<DecodingKey>, Option<SystemTime>), KeyError> {
    let mtime = mtime_of(source);
    let meta = std::fs::metadata(source).map_err(io_err(source))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(source).map_err(io_err(source))? {
            let path = entry.map_err(io_err(source))?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                files.push(path);
            }
        }
        files.sort();
        files
    } else {
        vec![source.to_path_buf()]
    };
    let mut keys = Vec::with_capacity(files.len());
    for path in files {
        let pem = std::fs::read(&path).map_err(io_err(&path))?;
        let key = DecodingKey::from_ed_pem(&pem).map_err(|e| KeyError::BadKey { path: path.clone(), what: "public", detail: e.to_string() })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyError::NoKeys { path: source.to_path_buf() });
    }
    Ok((keys, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;
    use utils::id::TenantId;

    fn pair(dir: &Path, name: &str) -> Signer {
        std::fs::create_dir_all(dir.join("public")).unwrap();
        let private = dir.join(format!("{name}.key.pem"));
        generate_key_pair(&private, &dir.join("public").join(format!("{name}.pem"))).unwrap();
        Signer::from_pem_file(&private).unwrap()
    }

    fn now_s() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn sign_verify_and_refusals() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let signer = pair(dir.path(), "k1");
        let mode = std::fs::metadata(dir.path().join("k1.key.pem")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let keys = KeySet::load(&dir.path().join("public")).unwrap();
        let claims = Claims::tenant(TenantId::generate());
        let token = signer.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims);
        // The single-file form.
        let one = KeySet::load(&dir.path().join("public/k1.pem")).unwrap();
        assert_eq!(one.verify(&token).unwrap(), claims);

        assert_eq!(keys.verify(""), Err(AuthError::Missing));
        assert!(matches!(keys.verify("not.a.token"), Err(AuthError::Malformed(_))));
        assert!(matches!(keys.verify("garbage"), Err(AuthError::Malformed(_))));
        // A flipped signature byte, and a token of another key.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 3;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(std::str::from_utf8(&forged).unwrap()), Err(AuthError::BadSignature));
        let other = tempfile::tempdir().unwrap();
        let stranger = pair(other.path(), "k9");
        assert_eq!(keys.verify(&stranger.sign(&claims).unwrap()), Err(AuthError::BadSignature));

        let expired = Claims { exp: Some(now_s() - 10), ..Claims::new(Scope::Admin) };
        assert_eq!(keys.verify(&signer.sign(&expired).unwrap()), Err(AuthError::Expired));
        let valid = Claims { exp: Some(now_s() + 3600), ..Claims::new(Scope::Admin) };
        assert_eq!(keys.verify(&signer.sign(&valid).unwrap()).unwrap(), valid);
        // An HS256 token (alg confusion) is refused before any key is tried.
        let hs = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k").unwrap()).unwrap();
        assert!(matches!(keys.verify(&hs), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn a_rotation_accepts_both_keys_then_only_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = pair(dir.path(), "k1");
        let keys = KeySet::load(&dir.path().join("public")).unwrap();
        let (old_token, claims) = (old.sign(&Claims::new(Scope::SafekeeperData)).unwrap(), Claims::new(Scope::SafekeeperData));
        let new = pair(dir.path(), "k2");
        let new_token = new.sign(&claims).unwrap();
        // Picked up by itself after the recheck interval.
        std::thread::sleep(KeySet::RECHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(keys.verify(&new_token).unwrap(), claims);
        assert_eq!(keys.verify(&old_token).unwrap(), claims);
        std::fs::remove_file(dir.path().join("public/k1.pem")).unwrap();
        std::thread::sleep(KeySet::RECHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(keys.verify(&old_token), Err(AuthError::BadSignature));
        assert_eq!(keys.verify(&new_token).unwrap(), claims);
    }

    #[test]
    fn bad_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeySet::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::NoKeys { .. }), "{err}");
        std::fs::write(dir.path().join("x.pem"), "not a key").unwrap();
        let err = KeySet::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("x.pem"), "{err}");
        std::fs::write(dir.path().join("t"), "  \n").unwrap();
        assert!(matches!(read_token_file(&dir.path().join("t")), Err(KeyError::EmptyToken { .. })));
        assert!(KeySet::load(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
