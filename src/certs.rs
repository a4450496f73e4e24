//! Development certificates (rcgen): a CA and certificates it signs for nodes and clients, as
//! `am-node certs DIR` writes them and tests use them. Each certificate's first DNS name is the
//! identity a server takes from it under mutual TLS; node certificates also name `localhost`,
//! `127.0.0.1` and `::1`, so local endpoints verify.
//!
//! `am-node certs` run again on the same directory signs with the CA already there, so the
//! certificates it issued before keep verifying; replacing the CA is a choice
//! ([`CaPolicy::Replace`]).
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
    /// rcgen could not generate a key or sign a certificate (an invalid name is the usual cause).
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate or key file could not be written; check the directory exists and is writable.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The file that was being written.
        path: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// An existing certificate, key or CA file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file that was being read.
        path: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The directory holds only half of a CA (its certificate without its key, or the reverse).
    #[error("{dir} holds {found} but not {missing}, so its CA cannot sign")]
    HalfCa {
        /// The directory that was looked in.
        dir: String,
        /// The CA file that is there (`ca.pem` or `ca.key`).
        found: &'static str,
        /// The CA file that is not.
        missing: &'static str,
    },
    /// The directory's CA cannot be used to sign (unparsable, or its key does not match).
    #[error("the CA in {dir} cannot sign certificates that verify against it: {reason}")]
    UnusableCa {
        /// The directory holding the CA.
        dir: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate just signed does not verify against the CA: a bug or a corrupted CA.
    #[error("{cert} does not verify against {ca}: {reason}")]
    NotSignedBy {
        /// The certificate's file.
        cert: String,
        /// The CA's file.
        ca: String,
        /// The verifier's error.
        reason: String,
    },
}

impl CertError {
    /// What to do about it, for a person.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CertError::HalfCa { .. } | CertError::UnusableCa { .. } => Some(
                "pass --new-ca to replace the CA (certificates it signed before then stop verifying)",
            ),
            _ => None,
        }
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub cert: String,
    /// Its private key, PEM (PKCS#8), unencrypted.
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

    /// A CA from its PEM certificate and key, to issue more certificates with it.
    pub fn from_pem(pem: PemPair) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(&pem.key)?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key)?;
        Ok(DevCa { issuer, pem })
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

/// Whether `write_dev_certs` keeps a CA it finds in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaPolicy {
    /// Sign with `ca.pem` / `ca.key` when they are there; make them when not.
    Reuse,
    /// Make a new CA even when one is there (what it signed stops verifying).
    Replace,
}

/// Where the CA that signed the new certificates came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// There was none; a new one was written.
    Created,
    /// The directory's CA signed them.
    Reused,
    /// A CA was there and was replaced (`CaPolicy::Replace`).
    Replaced,
}

/// What `write_dev_certs` did.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// Where the CA that signed the certificates came from.
    pub ca: CaOrigin,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

/// Writes `NAME.pem` / `NAME.key` for each name into `dir`, signed by the CA in `dir`
/// (`ca.pem`, `ca.key`): the one there, unless `policy` says to replace it, or a new one.
pub fn write_dev_certs(
    dir: &Path,
    names: &[String],
    policy: CaPolicy,
) -> Result<DevCerts, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        error: source,
    })?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let existing = match (ca_cert.exists(), ca_key.exists(), policy) {
        (false, false, _) => None,
        (_, _, CaPolicy::Replace) => Some(CaOrigin::Replaced),
        (true, true, CaPolicy::Reuse) => Some(CaOrigin::Reused),
        (found, _, CaPolicy::Reuse) => {
            let (found, missing) = if found {
                ("ca.pem", "ca.key")
            } else {
                ("ca.key", "ca.pem")
            };
            return Err(CertError::HalfCa {
                dir: dir.display().to_string(),
                found,
                missing,
            });
        }
    };
    let (ca, origin) = match existing {
        Some(CaOrigin::Reused) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|source| CertError::Read {
                    path: path.display().to_string(),
                    error: source,
                })
            };
            let pem = PemPair {
                cert: read(&ca_cert)?,
                key: read(&ca_key)?,
            };
            let unusable = |reason: String| CertError::UnusableCa {
                dir: dir.display().to_string(),
                reason,
            };
            let ca = DevCa::from_pem(pem).map_err(|e| unusable(e.to_string()))?;
            // A key that does not belong to the certificate signs certificates that fail later,
            // far from here: try one now.
            let probe = ca.issue("probe").map_err(|e| unusable(e.to_string()))?;
            verify_signed_by(&probe.cert, &ca.pem().cert)
                .map_err(|e| unusable(format!("ca.key does not belong to ca.pem ({e})")))?;
            (ca, CaOrigin::Reused)
        }
        other => (
            DevCa::new("asyncmachine development CA")?,
            other.unwrap_or(CaOrigin::Created),
        ),
    };
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
    if origin != CaOrigin::Reused {
        write("ca.pem".into(), &ca.pem().cert)?;
        write("ca.key".into(), &ca.pem().key)?;
    }
    for name in names {
        let pair = ca.issue(name)?;
        write(format!("{name}.pem"), &pair.cert)?;
        write(format!("{name}.key"), &pair.key)?;
    }
    Ok(DevCerts {
        ca: origin,
        written,
    })
}

/// Checks that a PEM certificate is signed by the PEM CA certificate and valid now.
pub fn verify_signed_by(cert: &str, ca: &str) -> Result<(), CertError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let fail = |reason: String| CertError::NotSignedBy {
        cert: "the certificate".into(),
        ca: "the CA".into(),
        reason,
    };
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let ca = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| fail(e.to_string()))?;
    let end = webpki::EndEntityCert::try_from(&cert).map_err(|e| fail(e.to_string()))?;
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    end.verify_for_usage(
        algorithms,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| fail(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("written")
    }

    #[test]
    fn a_second_run_signs_with_the_same_ca() {
        let dir = std::env::temp_dir().join(format!("am-certs-reuse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = write_dev_certs(&dir, &["a".into()], CaPolicy::Reuse).expect("first run");
        assert_eq!(first.ca, CaOrigin::Created);
        let a = read(&dir.join("a.pem"));
        let second = write_dev_certs(&dir, &["b".into()], CaPolicy::Reuse).expect("second run");
        assert_eq!(second.ca, CaOrigin::Reused);
        assert!(
            !second.written.contains(&dir.join("ca.pem")),
            "the CA is kept"
        );
        let ca = read(&dir.join("ca.pem"));
        verify_signed_by(&a, &ca).expect("the first run's certificate still verifies");
        verify_signed_by(&read(&dir.join("b.pem")), &ca).expect("the second run's verifies");

        let third = write_dev_certs(&dir, &["c".into()], CaPolicy::Replace).expect("new CA");
        assert_eq!(third.ca, CaOrigin::Replaced);
        let ca = read(&dir.join("ca.pem"));
        assert!(verify_signed_by(&a, &ca).is_err(), "a new CA is a new CA");
        verify_signed_by(&read(&dir.join("c.pem")), &ca).expect("signed by the new CA");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_ca_that_cannot_sign_is_refused_with_a_hint() {
        let dir = std::env::temp_dir().join(format!("am-certs-half-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_dev_certs(&dir, &[], CaPolicy::Reuse).expect("a CA");
        std::fs::remove_file(dir.join("ca.key")).expect("removed");
        let e = write_dev_certs(&dir, &["x".into()], CaPolicy::Reuse).expect_err("no key");
        assert!(e.to_string().contains("not ca.key"), "{e}");
        assert!(e.hint().is_some_and(|h| h.contains("--new-ca")));

        // A key of another CA.
        let other = DevCa::new("other").expect("ca");
        std::fs::write(dir.join("ca.key"), &other.pem().key).expect("written");
        let e = write_dev_certs(&dir, &["x".into()], CaPolicy::Reuse).expect_err("wrong key");
        assert!(e.to_string().contains("does not belong"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
