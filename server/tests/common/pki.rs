//! Certificates for TLS tests, made in the test with rcgen: a CA, member certificates (server
//! and client usage, SANs 127.0.0.1 and localhost, as kubeadm's etcd certificates), client
//! certificates with a chosen CN, expired ones, and a CRL revoking chosen serials.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, written as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: u64,
}

/// A CA that issues certificates into a directory.
pub struct Pki {
    dir: PathBuf,
    name: String,
    params: CertificateParams,
    key: KeyPair,
    pub ca: PathBuf,
    next_serial: std::cell::Cell<u64>,
}

impl Pki {
    /// A new CA named `name`; its certificate is `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            params,
            key,
            ca,
            next_serial: std::cell::Cell::new(100),
        }
    }

    fn issue(
        &self,
        file: &str,
        cn: &str,
        sans: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
        not_after: OffsetDateTime,
    ) -> CertFiles {
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = OffsetDateTime::now_utc() - Duration::days(2);
        params.not_after = not_after;
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{file}.pem", self.name)),
            key: self.dir.join(format!("{}-{file}-key.pem", self.name)),
            serial,
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A member certificate: serves and dials (server and client usage), for 127.0.0.1.
    pub fn member(&self, file: &str, cn: &str) -> CertFiles {
        self.issue(
            file,
            cn,
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            OffsetDateTime::now_utc() + Duration::days(30),
        )
    }

    /// A client certificate whose CN is `cn`.
    pub fn client(&self, file: &str, cn: &str) -> CertFiles {
        self.issue(
            file,
            cn,
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            OffsetDateTime::now_utc() + Duration::days(30),
        )
    }

    /// A client certificate that expired yesterday.
    pub fn expired_client(&self, file: &str, cn: &str) -> CertFiles {
        self.issue(
            file,
            cn,
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            OffsetDateTime::now_utc() - Duration::days(1),
        )
    }

    /// A CRL revoking `revoked`, written to `<dir>/<name>-crl.pem`.
    pub fn crl(&self, revoked: &[&CertFiles]) -> PathBuf {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: now - Duration::hours(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.params, &self.key);
        let crl = params.signed_by(&issuer).expect("sign CRL");
        let path = self.dir.join(format!("{}-crl.pem", self.name));
        std::fs::write(&path, crl.pem().expect("crl pem")).expect("write CRL");
        path
    }
}
