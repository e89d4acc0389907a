//! Reading PEM files for TLS: certificates, private keys, CAs and CRLs. Every error names the
//! flag and the file and says what is wrong with it, in one line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Flag names of one port, for messages.
#[derive(Clone, Copy, Debug)]
pub struct Flags {
    pub cert: &'static str,
    pub key: &'static str,
    pub dial_cert: &'static str,
    pub dial_key: &'static str,
    pub ca: &'static str,
    pub crl: &'static str,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {}: {reason}", path.display())]
pub struct FileError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl FileError {
    pub fn new(flag: &'static str, path: &Path, reason: impl Into<String>) -> FileError {
        FileError {
            flag,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError::new(flag, path, format!("cannot read: {e}")))
}

/// Every certificate in a PEM file; at least one.
pub fn certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(FileError::new(flag, path, "no certificate found"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            FileError::new(flag, path, "no private key found")
        }
        e => FileError::new(flag, path, format!("not a PEM private key: {e}")),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn key_pair(
    cert_flag: &'static str,
    cert_path: &Path,
    key_flag: &'static str,
    key_path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), FileError> {
    let chain = certs(cert_flag, cert_path)?;
    let private = key(key_flag, key_path)?;
    let mismatch = || {
        FileError::new(
            key_flag,
            key_path,
            format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        )
    };
    let certified = CertifiedKey::from_der(chain.clone(), private.clone_key(), provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => mismatch(),
            e => FileError::new(key_flag, key_path, format!("unusable key: {e}")),
        },
    )?;
    certified.keys_match().map_err(|_| mismatch())?;
    Ok((chain, private))
}

/// The CAs of a trusted-CA file; at least one must be usable.
pub fn roots(flag: &'static str, path: &Path) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(flag, path)? {
        roots
            .add(cert)
            .map_err(|e| FileError::new(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The system's CA bundle (Debian's `ca-certificates`), for dialers given no trusted CA, as
/// Go uses the system pool. Empty if there is none: every dial then fails verification.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    roots
}

/// The revocation lists in a CRL file, PEM or DER as Go's `x509.ParseCRL` takes; at least one.
pub fn crls(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, FileError> {
    let pem = read(flag, path)?;
    if !pem.starts_with(b"-----") && pem.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(pem)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(flag, path, format!("not a PEM CRL file: {e}")))?;
    if crls.is_empty() {
        return Err(FileError::new(
            flag,
            path,
            "no certificate revocation list found",
        ));
    }
    Ok(crls)
}
