//! HTTPS for the sandbox: Microsoft's own auth libraries refuse an authority that is not https,
//! and the Graph SDKs send tokens only to https hosts, so `steward sandbox` can serve TLS.
//!
//! The certificate comes from PEM files (`--tls-cert/--tls-key`) or is made on start: a private
//! certificate authority and a server certificate it signs for `localhost`, `127.0.0.1`, `::1`
//! and any other names asked for (rcgen's default validity, 1975 to 4096). Clients trust the authority's certificate (written to a file
//! whose path is printed): `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE` for Python, `NODE_EXTRA_CA_CERTS`
//! for Node. A CA plus a leaf (rather than one self-signed leaf) is what strict verifiers such as
//! OpenSSL's X509_STRICT mode accept as a trust anchor and a server certificate.
//!
//! The listener hands axum connections whose handshake is done; handshakes run in their own tasks
//! (with a deadline) so a slow or silent client never holds up the others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}: {source}; fix: give a readable PEM file")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the TLS certificate file {path} holds no PEM certificate ({reason}); fix: give the server certificate (then any intermediates) in PEM"
    )]
    Cert { path: String, reason: String },
    #[error(
        "the TLS key file {path} holds no PEM private key ({reason}); fix: give the certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1)"
    )]
    Key { path: String, reason: String },
    #[error("the TLS certificate and key do not make a usable server configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("cannot write the sandbox's CA certificate to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A TLS identity for the sandbox's listener.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    /// The PEM certificate a client should trust: the made-up CA's, or the given chain's.
    trust_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads a certificate chain and its private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |what, p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                what,
                path: p.display().to_string(),
                source,
            })
        };
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Cert {
                path: cert.display().to_string(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Cert {
                path: cert.display().to_string(),
                reason: "no CERTIFICATE block".to_owned(),
            });
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        let trust_pem = String::from_utf8_lossy(&cert_pem).into_owned();
        Self::build(chain, key_der, trust_pem)
    }

    /// Makes a private CA and a server certificate it signs for `localhost`, `127.0.0.1`, `::1`
    /// and `extra_names` (host names or IP addresses).
    pub fn self_signed(extra_names: &[String]) -> Result<Self, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Steward sandbox CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Generate)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for n in extra_names {
            if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
                names.push(n.clone());
            }
        }
        let mut leaf_params = CertificateParams::new(names).map_err(TlsError::Generate)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "Steward sandbox");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().map_err(TlsError::Generate)?;
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .map_err(TlsError::Generate)?;
        let chain = vec![leaf.der().clone(), ca_cert.der().clone()];
        let key_der =
            PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| TlsError::Key {
                path: "(generated)".to_owned(),
                reason: e.to_owned(),
            })?;
        Self::build(chain, key_der, ca_cert.pem())
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust_pem: String,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        // Both, as Microsoft's endpoints do: Python's httpx negotiates h2 when it can.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            trust_pem,
        })
    }

    /// The PEM certificate clients should trust (the made-up CA's, or the given chain).
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// Writes [`Tls::trust_pem`] to `path`.
    pub fn write_trust_pem(&self, path: &Path) -> Result<(), TlsError> {
        std::fs::write(path, &self.trust_pem).map_err(|source| TlsError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// A TCP listener that hands out connections after their TLS handshake.
pub(crate) struct TlsListener {
    local: SocketAddr,
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, tls: &Tls) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls.config.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, as axum's own loop does.
                        tracing::warn!(error = %e, "sandbox TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            rx,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task holds a sender for as long as this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
