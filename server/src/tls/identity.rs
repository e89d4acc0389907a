//! Who a verified certificate names, and which names a port accepts.
//!
//! - With `--client-cert-auth`, a request that carries no token is authorised as the user the
//!   client certificate's subject CN names (etcd's `AuthInfoFromTLS`). A certificate without a
//!   CN names nobody, and such a request is refused as etcd refuses it ("user name is empty").
//! - With `--peer-cert-allowed-cn`, a peer whose certificate has another CN fails the handshake
//!   (etcd checks it in its `VerifyPeerCertificate` callback), so not one frame of it is read.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// The subject CN of a DER certificate, if it has one.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Whether a peer certificate with `cn` may connect when `allowed` is configured.
pub fn cn_allowed(allowed: Option<&str>, cn: Option<&str>) -> bool {
    match allowed {
        None => true,
        Some(want) => cn == Some(want),
    }
}

/// The auth user a client certificate names with `--client-cert-auth` on: its CN, if any.
pub fn cert_user(client_cert_auth: bool, leaf: Option<&[u8]>) -> Option<String> {
    if !client_cert_auth {
        return None;
    }
    common_name(leaf?).filter(|cn| !cn.is_empty())
}

/// A client verifier that also requires the leaf's CN to be `cn`.
#[derive(Debug)]
pub struct AllowedCn {
    inner: Arc<dyn ClientCertVerifier>,
    cn: String,
}

impl AllowedCn {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, cn: String) -> AllowedCn {
        AllowedCn { inner, cn }
    }
}

impl ClientCertVerifier for AllowedCn {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cn = common_name(end_entity);
        if !cn_allowed(Some(&self.cn), cn.as_deref()) {
            return Err(rustls::Error::General(format!(
                "peer certificate CN {:?} is not the allowed CN {:?} (--peer-cert-allowed-cn)",
                cn.unwrap_or_default(),
                self.cn
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_cn(cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_cn_names_the_user_only_with_client_cert_auth() {
        let alice = cert_with_cn(Some("alice"));
        assert_eq!(common_name(&alice).as_deref(), Some("alice"));
        assert_eq!(cert_user(true, Some(&alice)).as_deref(), Some("alice"));
        assert_eq!(cert_user(false, Some(&alice)), None);
        assert_eq!(cert_user(true, None), None, "no certificate");
        let nameless = cert_with_cn(None);
        assert_eq!(cert_user(true, Some(&nameless)), None, "no CN: no user");
        assert_eq!(common_name(b"garbage"), None);
    }

    #[test]
    fn only_the_allowed_cn_may_be_a_peer() {
        assert!(cn_allowed(None, None));
        assert!(cn_allowed(None, Some("anyone")));
        assert!(cn_allowed(Some("etcd-peer"), Some("etcd-peer")));
        assert!(!cn_allowed(Some("etcd-peer"), Some("intruder")));
        assert!(!cn_allowed(Some("etcd-peer"), None));
        assert!(
            !cn_allowed(Some("etcd-peer"), Some("etcd-peer2")),
            "whole name, not prefix"
        );
    }
}
