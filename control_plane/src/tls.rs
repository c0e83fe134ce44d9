//! The proxy's TLS certificate: `strata init` makes a private CA for the
//! repository and a server certificate signed by it, or takes the user's
//! certificate and key.
//!
//! Files (in `<repo>/tls/`): `ca.crt` (give it to clients as
//! `sslrootcert` for `sslmode=verify-full`), `ca.key`, `proxy.crt`,
//! `proxy.key`. Invariants: keys are written mode 0600 and atomically; the
//! server certificate names `localhost`, `*.localhost` (SNI routing:
//! `NAME.localhost`), `127.0.0.1`, and the proxy's host (with `*.host`
//! when it is a name).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

pub const TLS_DIR: &str = "tls";

/// Where the proxy's certificate and key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`, when `strata init` made it.
    pub ca: Option<PathBuf>,
}

/// Names the generated server certificate is valid for.
pub fn server_names(proxy_host: &str) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "*.localhost".to_string(), "127.0.0.1".to_string()];
    if !names.iter().any(|n| n == proxy_host) {
        names.push(proxy_host.to_string());
        if proxy_host.parse::<std::net::IpAddr>().is_err() {
            names.push(format!("*.{proxy_host}"));
        }
    }
    names
}

/// Make a CA and a server certificate for `proxy_host` in `<repo>/tls`.
pub fn generate(repo: &Path, proxy_host: &str) -> anyhow::Result<TlsFiles> {
    let dir = repo.join(TLS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, format!("Strata CA for {}", repo.display()));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = CertificateParams::new(server_names(proxy_host))?;
    params.distinguished_name.push(DnType::CommonName, "strata proxy");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let files = TlsFiles { cert: dir.join("proxy.crt"), key: dir.join("proxy.key"), ca: Some(dir.join("ca.crt")) };
    write(&dir.join("ca.key"), ca_key_pem.as_bytes(), 0o600)?;
    write(&dir.join("ca.crt"), ca.pem().as_bytes(), 0o644)?;
    write(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Copy the user's certificate and key into `<repo>/tls`.
pub fn install(repo: &Path, cert: &Path, key: &Path) -> anyhow::Result<TlsFiles> {
    let dir = repo.join(TLS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    anyhow::ensure!(String::from_utf8_lossy(&cert_pem).contains("BEGIN CERTIFICATE"), "{} is not a PEM certificate", cert.display());
    anyhow::ensure!(String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY"), "{} is not a PEM private key", key.display());
    let files = TlsFiles { cert: dir.join("proxy.crt"), key: dir.join("proxy.key"), ca: None };
    write(&files.key, &key_pem, 0o600)?;
    write(&files.cert, &cert_pem, 0o644)?;
    Ok(files)
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_pem_and_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), "proxy.example.com").unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        for key in [&files.key, &dir.path().join("tls/ca.key")] {
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            server_names("proxy.example.com"),
            ["localhost", "*.localhost", "127.0.0.1", "proxy.example.com", "*.proxy.example.com"]
        );
        assert_eq!(server_names("127.0.0.1"), ["localhost", "*.localhost", "127.0.0.1"]);
        let err = install(dir.path(), &files.key, &files.cert).unwrap_err().to_string();
        assert!(err.contains("not a PEM certificate"), "{err}");
    }
}
