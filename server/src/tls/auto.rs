//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate for the port, generated at the
//! first start into the data dir's `fixtures/client` or `fixtures/peer` (as etcd's `SelfCert`
//! does) and reused while it exists. Its names are the hosts of the port's URLs; it is valid
//! for `--self-signed-cert-validity` years. The key file is readable by its owner only.

use std::path::Path;

use super::files::FileError;

/// Makes sure `cert`/`key` exist, generating a self-signed pair for `hosts` if either is missing.
pub fn ensure(
    cert: &Path,
    key: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<(), FileError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let fail =
        |path: &Path, e: &dyn std::fmt::Display| FileError::new("auto-tls", path, e.to_string());
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    names.sort();
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).map_err(|e| fail(cert, &e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "strata");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let pair = rcgen::KeyPair::generate().map_err(|e| fail(key, &e))?;
    let certificate = params.self_signed(&pair).map_err(|e| fail(cert, &e))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;
    }
    write_private(key, pair.serialize_pem().as_bytes()).map_err(|e| fail(key, &e))?;
    std::fs::write(cert, certificate.pem()).map_err(|e| fail(cert, &e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate (--auto-tls)");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
