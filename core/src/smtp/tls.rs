//! STARTTLS (RFC 3207) and implicit TLS (RFC 8314) as a second sans-IO layer: the one place where
//! vmta calls rustls, for both sides of SMTP.
//!
//! [`TlsLayer`] sits between the socket's bytes and the SMTP session once `STARTTLS` was answered
//! `220` (or from the first byte, for implicit TLS): wire bytes in, plaintext out; plaintext in, wire
//! bytes out. It never touches a socket. The client session builds one with [`TlsLayer::new`]; a
//! server (vmta serve's listeners) with [`TlsLayer::new_server`] and a configuration from
//! [`server_config`] (certificate chain and key from PEM, no client certificates asked for).
//!
//! [`TlsSettings`] builds the two rustls client configurations a sender needs, once, to be shared by every
//! session (building a `ClientConfig` is expensive):
//!
//! - *verified*, for the `required` policy: the certificate chain is checked against the Mozilla roots of
//!   `webpki-roots` plus any configured CA certificates, for the MX host name sent as SNI.
//! - *opportunistic*, for the `opportunistic` policy (RFC 7435 "opportunistic security"): the handshake is
//!   authenticated cryptographically (the server must prove it holds the key in its certificate) but the
//!   certificate itself is not checked, because MX certificates often do not match and a failed check would
//!   only push the message back to plain text. This protects against passive eavesdroppers, not against an
//!   active attacker, exactly as Postfix's `may` level.
//!
//! Not implemented: DANE (RFC 7672) and MTA-STS (RFC 8461), client certificates.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore,
    ServerConnection, SignatureScheme,
};
use std::io::{Read, Write};
use std::sync::Arc;

/// Shared TLS client configurations, built once per process or engine.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    verified: Arc<ClientConfig>,
    opportunistic: Arc<ClientConfig>,
}

/// Why TLS settings could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettingsError(pub String);

impl std::fmt::Display for TlsSettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS settings: {}", self.0)
    }
}

impl std::error::Error for TlsSettingsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSettings {
    /// Settings trusting the webpki (Mozilla) roots and, in addition, the CA certificates in
    /// `extra_ca_pem` (PEM text holding one or more certificates).
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<TlsSettings, TlsSettingsError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            use rustls::pki_types::pem::PemObject;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsSettingsError(format!("bad CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsSettingsError(format!("bad CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(TlsSettingsError("no certificate in CA file".into()));
            }
        }
        let verified = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let opportunistic = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSettingsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OpportunisticVerifier {
                provider: provider(),
            }))
            .with_no_client_auth();
        Ok(TlsSettings {
            verified: Arc::new(verified),
            opportunistic: Arc::new(opportunistic),
        })
    }

    /// The configuration that verifies certificates.
    pub fn verified(&self) -> Arc<ClientConfig> {
        self.verified.clone()
    }

    /// The configuration for opportunistic TLS.
    pub fn opportunistic(&self) -> Arc<ClientConfig> {
        self.opportunistic.clone()
    }
}

/// Accepts any certificate chain but still checks the handshake signatures with the presented key.
#[derive(Debug)]
struct OpportunisticVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for OpportunisticVerifier {
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS failure, as text for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server certificate that can be replaced while connections are served: each handshake takes
/// the one in force when it starts (handshakes under way and open connections keep theirs).
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServerCert {
    /// Checks a certificate chain and private key in PEM (the key must be the first certificate's).
    pub fn parse(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsSettingsError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSettingsError(format!("bad certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(TlsSettingsError(
                "no certificate in the certificate file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsSettingsError(format!("bad private key PEM: {e}")))?;
        rustls::sign::CertifiedKey::from_der(chain, key, &provider())
            .map(Arc::new)
            .map_err(|e| TlsSettingsError(format!("certificate and key: {e}")))
    }

    /// Puts `key` (from [`ServerCert::parse`]) in force for the next handshake.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// [`server_config`] whose certificate can be replaced later through the [`ServerCert`] returned.
pub fn reloadable_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerCert>), TlsSettingsError> {
    let cert = Arc::new(ServerCert {
        current: std::sync::RwLock::new(ServerCert::parse(cert_chain_pem, key_pem)?),
    });
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSettingsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    Ok((Arc::new(config), cert))
}

/// A rustls server configuration for SMTP: the certificate chain and private key from PEM text, the
/// safe default protocol versions (TLS 1.2 and 1.3), no client certificates asked for.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsSettingsError> {
    reloadable_server_config(cert_chain_pem, key_pem).map(|(config, _)| config)
}

/// One TLS connection, client or server side, driven without I/O.
#[derive(Debug)]
pub struct TlsLayer {
    conn: Connection,
}

impl TlsLayer {
    /// Starts a client handshake for `server_name` (sent as SNI when it is a DNS name).
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<TlsLayer, TlsError> {
        let name = ServerName::try_from(server_name.trim_end_matches('.').to_string())
            .map_err(|e| TlsError(format!("invalid TLS server name {server_name:?}: {e}")))?;
        let conn = ClientConnection::new(config, name).map_err(|e| TlsError(e.to_string()))?;
        Ok(TlsLayer { conn: conn.into() })
    }

    /// Waits for a client's handshake, server side.
    pub fn new_server(config: Arc<rustls::ServerConfig>) -> Result<TlsLayer, TlsError> {
        let conn = ServerConnection::new(config).map_err(|e| TlsError(e.to_string()))?;
        Ok(TlsLayer { conn: conn.into() })
    }

    /// Feeds wire bytes; appends any plaintext they carry to `plaintext`.
    pub fn feed(&mut self, mut wire: &[u8], plaintext: &mut Vec<u8>) -> Result<(), TlsError> {
        while !wire.is_empty() {
            let n = self
                .conn
                .read_tls(&mut wire)
                .map_err(|e| TlsError(format!("TLS read: {e}")))?;
            if n == 0 {
                break;
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| TlsError(e.to_string()))?;
            if state.plaintext_bytes_to_read() > 0 {
                let mut reader = self.conn.reader();
                let start = plaintext.len();
                plaintext.resize(start + state.plaintext_bytes_to_read(), 0);
                let got = reader
                    .read(&mut plaintext[start..])
                    .map_err(|e| TlsError(format!("TLS plaintext: {e}")))?;
                plaintext.truncate(start + got);
            }
            if state.peer_has_closed() {
                break;
            }
        }
        Ok(())
    }

    /// Queues plaintext for encryption.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), TlsError> {
        self.conn
            .writer()
            .write_all(data)
            .map_err(|e| TlsError(format!("TLS write: {e}")))
    }

    /// Appends pending wire bytes (handshake or records) to `out`.
    pub fn drain_wire(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Is the handshake still going on?
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Sends a close_notify alert.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// The negotiated protocol version and cipher suite, once the handshake is done.
    pub fn describe(&self) -> (String, String) {
        let version = self
            .conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let suite = self
            .conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        (version, suite)
    }
}
