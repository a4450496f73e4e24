//! Development certificates (rcgen): a CA and certificates it signs for nodes and clients, as
//! `am-node certs DIR` writes them and tests use them. Each certificate's first DNS name is the
//! identity a server takes from it under mutual TLS; node certificates also name `localhost`,
//! `127.0.0.1` and `::1`, so local endpoints verify.
//!
//! For development and tests only: keys are written unencrypted.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

/// A development certificate authority.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: PemPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA's own certificate and key.
    pub fn pem(&self) -> &PemPair {
        &self.pem
    }

    /// A certificate for `name` (its identity), valid for local endpoints too.
    pub fn issue(&self, name: &str) -> Result<PemPair, CertError> {
        self.issue_with(name, false)
    }

    /// A certificate that expired long ago, for testing refusals.
    pub fn issue_expired(&self, name: &str) -> Result<PemPair, CertError> {
        self.issue_with(name, true)
    }

    fn issue_with(&self, name: &str, expired: bool) -> Result<PemPair, CertError> {
        let names = vec![
            name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Writes `ca.pem` (and `ca.key`) and `NAME.pem` / `NAME.key` for each name into `dir`;
/// returns the files written.
pub fn write_dev_certs(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        error: source,
    })?;
    let ca = DevCa::new("asyncmachine development CA")?;
    let mut written = Vec::new();
    let mut write = |file: String, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|source| CertError::Write {
            path: path.display().to_string(),
            error: source,
        })?;
        written.push(path);
        Ok::<_, CertError>(())
    };
    write("ca.pem".into(), &ca.pem().cert)?;
    write("ca.key".into(), &ca.pem().key)?;
    for name in names {
        let pair = ca.issue(name)?;
        write(format!("{name}.pem"), &pair.cert)?;
        write(format!("{name}.key"), &pair.key)?;
    }
    Ok(written)
}
