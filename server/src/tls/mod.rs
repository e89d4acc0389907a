//! TLS on the client and peer ports, as etcd's `client/pkg/transport` does it.
//!
//! # What it owns
//!
//! - **Loading** what a port's flags name ([`TlsInfo`]): the serving certificate and key, the
//!   certificate this member presents when it dials, the trusted CAs and the CRL. [`PortTls::load`]
//!   reads and cross-checks them all before anything else starts, so a missing file, a key
//!   that does not match its certificate, a CA file without a certificate or a broken CRL is a
//!   one-line error naming the flag and the file ([`files`]).
//! - **Rotation**: a port's rustls configurations are rebuilt for the next connection once any
//!   of its files changes on disk (size or modification time), as etcd re-reads them per
//!   handshake. A rebuild that fails (a half-written file during rotation) keeps the last good
//!   configuration and logs why; connections already open keep theirs.
//! - **Who a certificate names** ([`identity`]): its CN, the auth user with `--client-cert-auth`,
//!   and the `--peer-cert-allowed-cn` check, which fails the handshake as etcd's does.
//! - **`--auto-tls`** certificates ([`auto`]).
//!
//! # Policy (etcd 3.4/3.5 semantics)
//!
//! - A configured trusted CA makes the port require a client certificate that chains to it
//!   (etcd 3.4 does so even without `--client-cert-auth`); it is checked for expiry and,
//!   with a CRL, for revocation of the presented certificate.
//! - TLS 1.2 is the minimum by default; TLS 1.0/1.1 are never offered. `--cipher-suites` limits
//!   the TLS 1.2 suites (TLS 1.3's are fixed, as in Go).
//! - A dialer verifies the server's certificate against the port's trusted CA (or the system
//!   bundle) and the URL's host, except for self-signed (`--auto-tls`) ports, whose dialers
//!   skip verification as etcd's do.
//!
//! madsim builds leave this module out: simulated sockets carry no TLS. The decisions that
//! matter (which CN is allowed, which user a certificate maps to) are plain functions in
//! [`identity`] with unit tests.

pub mod auto;
pub mod files;
pub mod identity;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{TlsInfo, TlsPolicy};
use files::{FileError, Flags};

pub use identity::common_name;

/// Which port a [`PortTls`] serves (for flag names in errors and ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

impl Port {
    fn flags(self) -> Flags {
        match self {
            Port::Client => Flags {
                cert: "cert-file",
                key: "key-file",
                dial_cert: "client-cert-file",
                dial_key: "client-key-file",
                ca: "trusted-ca-file",
                crl: "client-crl-file",
            },
            Port::Peer => Flags {
                cert: "peer-cert-file",
                key: "peer-key-file",
                dial_cert: "peer-client-cert-file",
                dial_key: "peer-client-key-file",
                ca: "peer-trusted-ca-file",
                crl: "peer-crl-file",
            },
        }
    }
}

/// The CryptoProvider for a policy: ring, with the TLS 1.2 suites `--cipher-suites` allows.
fn provider(policy: &TlsPolicy) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(allowed) = &policy.cipher_suites {
        provider.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => allowed
                .iter()
                .any(|name| *name == format!("{:?}", s.suite())),
        });
    }
    Arc::new(provider)
}

fn versions(policy: &TlsPolicy) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if !policy.min_tls13 {
        v.push(&rustls::version::TLS12);
    }
    if !policy.max_tls12 {
        v.push(&rustls::version::TLS13);
    }
    v
}

/// The files a configuration was built from, with their size and modification time.
type Stamp = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            let mark = meta.and_then(|m| Some((m.len(), m.modified().ok()?)));
            (p.clone(), mark)
        })
        .collect()
}

/// A configuration rebuilt when its files change.
struct Reloading<T> {
    current: Mutex<(Stamp, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn get(
        &self,
        paths: &[PathBuf],
        what: &str,
        build: impl FnOnce() -> Result<T, FileError>,
    ) -> Arc<T> {
        let now = stamp(paths);
        let mut current = self.current.lock().expect("tls config lock");
        if current.0 != now {
            match build() {
                Ok(config) => {
                    tracing::info!(what, "certificate files changed: new connections use them");
                    *current = (now, Arc::new(config));
                }
                Err(e) => {
                    // Keep serving with the last good files; try again on the next change.
                    tracing::warn!(what, error = %e, "reloading certificate files failed; keeping the previous ones");
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }
}

/// One port's TLS: what it serves and how this member dials such a port.
pub struct PortTls {
    port: Port,
    info: TlsInfo,
    policy: TlsPolicy,
    server: Reloading<ServerConfig>,
    client: Reloading<ClientConfig>,
}

impl std::fmt::Debug for PortTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTls")
            .field("port", &self.port)
            .field("info", &self.info)
            .finish()
    }
}

impl PortTls {
    /// Reads and checks every file the port's flags name; the first problem is the error.
    pub fn load(port: Port, info: TlsInfo, policy: TlsPolicy) -> Result<PortTls, FileError> {
        let server = server_config(port, &info, &policy)?;
        let client = client_config(port, &info, &policy)?;
        let paths = server_files(&info);
        let dial_paths = client_files(&info);
        Ok(PortTls {
            port,
            server: Reloading {
                current: Mutex::new((stamp(&paths), Arc::new(server))),
            },
            client: Reloading {
                current: Mutex::new((stamp(&dial_paths), Arc::new(client))),
            },
            info,
            policy,
        })
    }

    pub fn info(&self) -> &TlsInfo {
        &self.info
    }

    /// The acceptor for the next connection (files re-read if they changed).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.server.get(&server_files(&self.info), "serving", || {
            server_config(self.port, &self.info, &self.policy)
        });
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// The connector for the next dial (files re-read if they changed).
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client_config())
    }

    /// The dialing configuration, for clients that bring their own connector.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.get(&client_files(&self.info), "dialing", || {
            client_config(self.port, &self.info, &self.policy)
        })
    }
}

fn server_files(info: &TlsInfo) -> Vec<PathBuf> {
    let mut v = vec![info.cert_file.clone(), info.key_file.clone()];
    v.extend(info.trusted_ca_file.clone());
    v.extend(info.crl_file.clone());
    v
}

fn client_files(info: &TlsInfo) -> Vec<PathBuf> {
    let mut v = vec![info.dial_cert_file.clone(), info.dial_key_file.clone()];
    v.extend(info.trusted_ca_file.clone());
    v
}

fn server_config(
    port: Port,
    info: &TlsInfo,
    policy: &TlsPolicy,
) -> Result<ServerConfig, FileError> {
    let flags = port.flags();
    let provider = provider(policy);
    let (certs, key) = files::key_pair(
        flags.cert,
        &info.cert_file,
        flags.key,
        &info.key_file,
        &provider,
    )?;
    let verifier = match &info.trusted_ca_file {
        None => {
            if let Some(crl) = &info.crl_file {
                return Err(FileError::new(
                    flags.crl,
                    crl,
                    format!("a CRL needs --{} (the CA it revokes for)", flags.ca),
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        }
        Some(ca) => {
            let roots = files::roots(flags.ca, ca)?;
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &info.crl_file {
                builder = builder
                    .with_crls(files::crls(flags.crl, crl)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier = builder
                .build()
                .map_err(|e| FileError::new(flags.ca, ca, e.to_string()))?;
            match &info.allowed_cn {
                Some(cn) => Arc::new(identity::AllowedCn::new(verifier, cn.clone())),
                None => verifier,
            }
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(policy))
        .map_err(|e| FileError::new(flags.cert, &info.cert_file, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| FileError::new(flags.key, &info.key_file, e.to_string()))?;
    if port == Port::Client {
        // gRPC clients require HTTP/2 by ALPN; curl and the gateway may speak HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

fn client_config(
    port: Port,
    info: &TlsInfo,
    policy: &TlsPolicy,
) -> Result<ClientConfig, FileError> {
    let flags = port.flags();
    let provider = provider(policy);
    let (certs, key) = files::key_pair(
        flags.dial_cert,
        &info.dial_cert_file,
        flags.dial_key,
        &info.dial_key_file,
        &provider,
    )?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(policy))
        .map_err(|e| FileError::new(flags.cert, &info.cert_file, e.to_string()))?;
    let builder = if info.self_signed {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
    } else {
        let roots = match &info.trusted_ca_file {
            Some(ca) => files::roots(flags.ca, ca)?,
            None => files::system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| FileError::new(flags.dial_key, &info.dial_key_file, e.to_string()))?;
    if port == Port::Client {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(config)
}

/// The name a dialer checks the server's certificate against: the URL's host.
pub fn server_name(host_port: &str) -> Result<ServerName<'static>, String> {
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))
}

/// etcd's `InsecureSkipVerify` for self-signed (`--auto-tls`) ports: any certificate is
/// accepted, but the handshake signatures are still checked (the peer holds the key).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Everything TLS a member needs, loaded at start.
#[derive(Debug, Default, Clone)]
pub struct MemberTls {
    pub client: Option<Arc<PortTls>>,
    pub peer: Option<Arc<PortTls>>,
}

impl MemberTls {
    /// Generates `--auto-tls` certificates where asked, then loads both ports' files.
    pub fn load(
        security: &crate::config::Security,
        client_hosts: &[String],
        peer_hosts: &[String],
    ) -> Result<MemberTls, FileError> {
        let load = |port: Port, info: &Option<TlsInfo>, hosts: &[String]| -> Result<_, FileError> {
            let Some(info) = info else { return Ok(None) };
            if info.self_signed {
                auto::ensure(
                    &info.cert_file,
                    &info.key_file,
                    hosts,
                    security.self_signed_validity_years,
                )?;
            }
            PortTls::load(port, info.clone(), security.policy.clone()).map(|t| Some(Arc::new(t)))
        };
        Ok(MemberTls {
            client: load(Port::Client, &security.client, client_hosts)?,
            peer: load(Port::Peer, &security.peer, peer_hosts)?,
        })
    }
}

/// The rate-limited log of refused handshakes: one line a second at most, with the count of
/// those not logged, so a flood of bad clients cannot flood the log.
#[derive(Debug, Default)]
pub struct HandshakeLog {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl HandshakeLog {
    pub fn new() -> HandshakeLog {
        HandshakeLog::default()
    }

    pub fn refused(&self, port: Port, remote: std::net::SocketAddr, error: &dyn std::fmt::Display) {
        let mut state = self.state.lock().expect("handshake log lock");
        let now = std::time::Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last).as_secs() < 1)
        {
            state.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        tracing::warn!(
            port = ?port,
            %remote,
            %error,
            suppressed,
            "rejected connection: TLS handshake failed"
        );
    }
}

/// A lazy gRPC channel to an `https://` client URL, dialed with this member's client identity
/// (for requests forwarded to the leader). tonic is given the URL as `http://` so that its
/// own TLS stays out of the way; the connector below does the handshake.
pub fn grpc_channel(tls: Arc<PortTls>, url: &str) -> Result<tonic::transport::Channel, String> {
    let plain = match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => return crate::api::plain_channel(url),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(plain).map_err(|e| e.to_string())?;
    let connector = tower::service_fn(move |uri: axum::http::Uri| {
        let tls = tls.clone();
        async move {
            let host_port = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?;
            let tcp = tokio::net::TcpStream::connect(&host_port).await?;
            let _ = tcp.set_nodelay(true);
            let name = server_name(&host_port).map_err(std::io::Error::other)?;
            let stream = tls.connector().connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}
