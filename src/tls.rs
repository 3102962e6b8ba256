//! TLS on both sides of the gateway, built on rustls with the aws-lc-rs provider (the same
//! crypto as token signing). Not wired into the server yet; it backs `server.tls` and the
//! `https://` upstream settings.
//!
//! - [`ServerTls`]: the listener's certificate, served through a resolver that holds it in an
//!   `ArcSwap`, so [`ServerTls::reload`] swaps in a new cert/key pair atomically and a bad new
//!   pair leaves the old one serving. With `client_ca_file`, client certificates are required
//!   and verified (mTLS); [`ClientIdentity`] is what a verified client certificate says, as
//!   claims for the `tls.client` claim source.
//! - [`UpstreamTls`]: connections to `https://` upstreams. Certificate verification is always
//!   on: there is deliberately no switch to skip it.
//! - [`check_server_files`], [`check_cert_pair`], [`check_upstream_files`]: what
//!   `authgate check` reports (unreadable files, mismatched keys, expired certificates, and a
//!   warning two weeks before expiry).
//!
//! Only TLS 1.2 and 1.3 are offered. PEM is parsed by `rustls-pki-types`, certificate details
//! are read with `x509-parser`; nothing here parses or signs by hand. Errors ([`TlsError`]) are
//! one line naming the file and the problem, fit to show an operator as a config diagnostic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{
    AttributeTypeAndValue, FromDer, GeneralName, X509Certificate, X509Name,
};
use x509_parser::time::ASN1Time;

/// TLS 1.3 first; 1.2 for older clients and upstreams. Nothing older exists in rustls.
const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A certificate expiring within this window is a warning in `authgate check`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why TLS material could not be used. Each message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read the file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: invalid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: &'static str },
    #[error("{}: no certificate found in PEM", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found in PEM", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{}: invalid certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: certificate expired on {date}", path.display())]
    Expired { path: PathBuf, date: String },
    #[error("{}: certificate is not valid before {date}", path.display())]
    NotYetValid { path: PathBuf, date: String },
    #[error("{}: unusable CA certificate: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("{}: {missing} is not set; a client certificate needs both client_cert_file and client_key_file", present.display())]
    IncompleteClientCert {
        present: PathBuf,
        missing: &'static str,
    },
    #[error("server_name `{0}` is not a valid DNS name or IP address")]
    BadServerName(String),
    #[error("no system root certificates found: install the system CA bundle or set ca_file")]
    NoSystemRoots,
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The ALPN protocol a connection settled on. No ALPN at all means HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http1,
}

impl Alpn {
    /// What was negotiated on this connection (client or server side).
    pub fn of(conn: &CommonState) -> Alpn {
        match conn.alpn_protocol() {
            Some(b"h2") => Alpn::H2,
            _ => Alpn::Http1,
        }
    }
}

/// Offered on both sides, preferred first: HTTP/2 when the peer speaks it.
fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// The aws-lc-rs provider, passed explicitly everywhere so nothing depends on which provider
/// some other crate installed as the process default.
fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Reading PEM files
// ---------------------------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A short operator-facing reason (the library's own messages print raw bytes).
fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "bad base64 inside a section",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable PEM",
    }
}

/// Every certificate in a PEM file, in order (leaf first for a chain). Other sections, such as
/// a private key in a combined file, are skipped.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        e => TlsError::Pem {
            path: path.to_path_buf(),
            reason: pem_reason(&e),
        },
    })
}

/// Reads a cert chain and its key and proves they belong together: the key's public half must
/// be the leaf certificate's. Serving a key that does not match would fail every handshake.
fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert_path)?;
    let no_cert = || TlsError::NoCertificate {
        path: cert_path.to_path_buf(),
    };
    parse_cert(cert_path, chain.first().ok_or_else(no_cert)?)?;
    let key = read_key(key_path)?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.to_path_buf(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: cert_path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Trust anchors from a PEM bundle. Every certificate in it must be usable: a CA file with a
/// broken entry is a config mistake, not something to skip silently.
fn read_roots(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: format!("certificate #{}: {e}", i + 1),
        })?;
    }
    Ok((roots, certs))
}

fn parse_cert<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// The files behind `server.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key matching the leaf.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

/// Serves whichever certificate is current. Every handshake loads it afresh, so a reload is
/// seen by the next connection and never by one already running.
struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The listener's TLS: certificate, optional client verification, and their reloads.
pub struct ServerTls {
    files: ServerTlsFiles,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    /// Rebuilt only when the client CA file changes (the verifier is part of the config).
    config: ArcSwap<ServerConfig>,
    /// The client CA certificates in force; the lock also serializes reloads.
    client_ca: Mutex<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate, key and (when set) client CA file, and builds the server config.
    pub fn load(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let provider = crypto();
        let key = load_certified_key(&files.cert_file, &files.key_file, &provider)?;
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::from_pointee(key),
        });
        let (client_roots, client_ca) = match &files.client_ca_file {
            Some(path) => {
                let (roots, certs) = read_roots(path)?;
                (Some((path.as_path(), roots)), certs)
            }
            None => (None, Vec::new()),
        };
        let config = server_config(&provider, &resolver, client_roots)?;
        Ok(ServerTls {
            files: files.clone(),
            provider,
            resolver,
            config: ArcSwap::from_pointee(config),
            client_ca: Mutex::new(client_ca),
        })
    }

    /// Re-reads the cert/key pair (and the client CA file) and swaps them in. Everything is
    /// read and checked before anything is swapped: on error the old material keeps serving.
    /// The server config is rebuilt only when the client CA certificates changed, so a
    /// certificate renewal keeps the session cache.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut client_ca = self
            .client_ca
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = load_certified_key(&self.files.cert_file, &self.files.key_file, &self.provider)?;
        let mut new_config = None;
        if let Some(path) = &self.files.client_ca_file {
            let (roots, certs) = read_roots(path)?;
            if certs != *client_ca {
                let config = server_config(&self.provider, &self.resolver, Some((path, roots)))?;
                new_config = Some((config, certs));
            }
        }
        self.resolver.current.store(Arc::new(key));
        if let Some((config, certs)) = new_config {
            self.config.store(Arc::new(config));
            *client_ca = certs;
        }
        Ok(())
    }

    /// An acceptor for the current config. Cheap (one `Arc`): take one per accepted connection
    /// so a reloaded client CA applies to new connections. (Certificate reloads reach even an
    /// acceptor taken earlier, through the resolver.)
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// The current server config.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// The files to watch: a change to any of them calls for [`ServerTls::reload`].
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.files.cert_file.clone(), self.files.key_file.clone()];
        files.extend(self.files.client_ca_file.iter().cloned());
        files
    }
}

/// TLS 1.2/1.3, ALPN `h2` then `http/1.1`, the reloadable resolver, and client certificates
/// required and verified against `client_roots` (read from the file named) when given.
fn server_config(
    provider: &Arc<CryptoProvider>,
    resolver: &Arc<CertResolver>,
    client_roots: Option<(&Path, RootCertStore)>,
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match client_roots {
        Some((path, roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::BadCa {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = alpn_protocols();
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Client identity (mTLS)
// ---------------------------------------------------------------------------------------------

/// What a verified client certificate says about its holder: the `tls.client` claim source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject as an RFC 4514 string, most specific first: `CN=alice,O=Acme`.
    pub subject: String,
    /// The subject's (first) common name.
    pub common_name: Option<String>,
    /// Subject alternative names of type DNS.
    pub dns_names: Vec<String>,
    /// Subject alternative names of type email (rfc822Name).
    pub emails: Vec<String>,
    /// Subject alternative names of type URI (e.g. SPIFFE ids).
    pub uris: Vec<String>,
    /// SHA-256 of the certificate's DER, lowercase hex without separators.
    pub fingerprint_sha256: String,
}

impl ClientIdentity {
    /// The identity of a connection's verified peer, if it presented a certificate.
    pub fn of(conn: &CommonState) -> Option<ClientIdentity> {
        client_identity(conn.peer_certificates()?)
    }

    /// The claims object for `tls.client`: `subject`, `cn` (absent without a CN), `dns`,
    /// `email`, `uri` (arrays) and `fingerprint_sha256`.
    pub fn as_claims(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let list = |items: &[String]| Value::from(items.to_vec());
        let mut claims = serde_json::Map::new();
        claims.insert("subject".into(), Value::from(self.subject.clone()));
        if let Some(cn) = &self.common_name {
            claims.insert("cn".into(), Value::from(cn.clone()));
        }
        claims.insert("dns".into(), list(&self.dns_names));
        claims.insert("email".into(), list(&self.emails));
        claims.insert("uri".into(), list(&self.uris));
        claims.insert(
            "fingerprint_sha256".into(),
            Value::from(self.fingerprint_sha256.clone()),
        );
        claims
    }
}

/// The identity in a peer's leaf certificate (the first of `certs`). Call it only on a chain
/// rustls has verified; `None` when there is no certificate or it does not parse.
pub fn client_identity(certs: &[CertificateDer<'_>]) -> Option<ClientIdentity> {
    let der = certs.first()?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut identity = ClientIdentity {
        subject: rfc4514(cert.subject()),
        common_name,
        dns_names: Vec::new(),
        emails: Vec::new(),
        uris: Vec::new(),
        fingerprint_sha256: sha256_hex(der),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) => identity.dns_names.push((*s).to_owned()),
                GeneralName::RFC822Name(s) => identity.emails.push((*s).to_owned()),
                GeneralName::URI(s) => identity.uris.push((*s).to_owned()),
                _ => {}
            }
        }
    }
    Some(identity)
}

/// RFC 4514: RDNs in reverse of their encoded order, `+` between the attributes of a
/// multi-valued RDN, the standard short names (other types as dotted OIDs), and values
/// escaped. Non-string values are written `#` + hex of their DER, as the RFC says.
fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(rfc4514_attribute)
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// One `type=value` of a distinguished name.
fn rfc4514_attribute(attr: &AttributeTypeAndValue<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::ToDer;
    let value = match attr.as_str() {
        Ok(s) => escape_rfc4514(s),
        Err(_) => format!(
            "#{}",
            hex(&attr.attr_value().to_der_vec().unwrap_or_default())
        ),
    };
    format!(
        "{}={value}",
        attribute_name(&attr.attr_type().to_id_string())
    )
}

/// The short names RFC 4514 §3 defines; every other attribute type is its dotted OID.
fn attribute_name(oid: &str) -> String {
    let short = match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => other,
    };
    short.to_owned()
}

/// RFC 4514 §2.4: backslash before `"+,;<>\`, a leading `#` or space and a trailing space;
/// NUL as `\00`.
fn escape_rfc4514(value: &str) -> String {
    let last = value.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => out.push('\\'),
            '#' if i == 0 => out.push('\\'),
            ' ' if i == 0 || i == last => out.push('\\'),
            '\0' => {
                out.push_str("\\00");
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The certificate fingerprint: SHA-256 of the DER, as [`hex`].
fn sha256_hex(der: &CertificateDer<'_>) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref()).as_ref())
}

/// Lowercase hex, no separators.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

// ---------------------------------------------------------------------------------------------
// Upstream (client) side
// ---------------------------------------------------------------------------------------------

/// The TLS settings of an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsSettings {
    /// Trust only these roots; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// A client certificate to present (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// The name sent as SNI and required in the upstream's certificate; the URL's host when
    /// unset.
    pub server_name: Option<String>,
}

/// How to open TLS connections to one upstream. Verification of the upstream's certificate
/// (chain and name) is always on.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// Builds the client config: roots, optional client certificate, ALPN `h2`, `http/1.1`.
    pub fn new(settings: &UpstreamTlsSettings) -> Result<UpstreamTls, TlsError> {
        let server_name = match &settings.server_name {
            Some(name) => {
                Some(server_name(name).ok_or_else(|| TlsError::BadServerName(name.clone()))?)
            }
            None => None,
        };
        let provider = crypto();
        let roots = match &settings.ca_file {
            Some(path) => read_roots(path)?.0,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match client_pair(settings)? {
            Some((cert, key)) => {
                let certified = load_certified_key(cert, key, &provider)?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn_protocols();
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// TLS over an open TCP connection to `host` (the URL's host: a DNS name or an IP
    /// address, brackets allowed). `server_name`, when set, replaces `host` for SNI and the
    /// certificate's name check. Returns the stream and the negotiated protocol. No timeout
    /// of its own: the caller bounds the connect.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Alpn)> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name(host).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{host}` is not a valid TLS server name"),
                )
            })?,
        };
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        let alpn = Alpn::of(stream.get_ref().1);
        Ok((stream, alpn))
    }

    /// The client config (for a connector that does its own connecting).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// A DNS name or IP address (an IPv6 literal may keep its URL brackets).
fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// The operating system's trust store. Unparsable entries are skipped (system bundles carry
/// odd certificates); an empty result is an error, since nothing could ever verify.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// Both client-certificate files, or neither: one alone is a config mistake.
fn client_pair(settings: &UpstreamTlsSettings) -> Result<Option<(&Path, &Path)>, TlsError> {
    match (&settings.client_cert_file, &settings.client_key_file) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(cert), None) => Err(TlsError::IncompleteClientCert {
            present: cert.clone(),
            missing: "client_key_file",
        }),
        (None, Some(key)) => Err(TlsError::IncompleteClientCert {
            present: key.clone(),
            missing: "client_cert_file",
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks for `authgate check`
// ---------------------------------------------------------------------------------------------

/// Checks `server.tls` as of `now`: files readable and parsable, key matching the leaf, leaf
/// within its validity period, and the client CA file (if any) usable. Returns warnings for
/// certificates expiring within [`EXPIRY_WARNING`].
pub fn check_server_files(
    files: &ServerTlsFiles,
    now: SystemTime,
) -> Result<Vec<String>, TlsError> {
    let mut warnings = check_cert_pair(&files.cert_file, &files.key_file, now)?;
    if let Some(path) = &files.client_ca_file {
        warnings.extend(check_ca_file(path, now)?);
    }
    Ok(warnings)
}

/// Checks one certificate/key pair (the server's, or a client certificate for an upstream).
pub fn check_cert_pair(cert: &Path, key: &Path, now: SystemTime) -> Result<Vec<String>, TlsError> {
    let certified = load_certified_key(cert, key, &crypto())?;
    let leaf = certified
        .end_entity_cert()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    let leaf = parse_cert(cert, leaf)?;
    check_validity(cert, &leaf, now).map(|w| w.into_iter().collect())
}

/// Checks an upstream's TLS settings: everything [`UpstreamTls::new`] needs, plus the dates of
/// the client certificate (an error when outside its validity) and of the CA file's
/// certificates (warnings).
pub fn check_upstream_files(
    settings: &UpstreamTlsSettings,
    now: SystemTime,
) -> Result<Vec<String>, TlsError> {
    UpstreamTls::new(settings)?;
    let mut warnings = Vec::new();
    if let Some((cert, key)) = client_pair(settings)? {
        warnings.extend(check_cert_pair(cert, key, now)?);
    }
    if let Some(path) = &settings.ca_file {
        warnings.extend(check_ca_file(path, now)?);
    }
    Ok(warnings)
}

/// A CA file must be usable as trust anchors; a CA certificate that has expired or expires
/// soon is a warning (bundles often carry old entries next to current ones).
fn check_ca_file(path: &Path, now: SystemTime) -> Result<Vec<String>, TlsError> {
    let (_, certs) = read_roots(path)?;
    let mut warnings = Vec::new();
    for der in &certs {
        let cert = parse_cert(path, der)?;
        match check_validity(path, &cert, now) {
            Ok(warning) => warnings.extend(warning),
            Err(e) => warnings.push(format!("{e} (CA {})", rfc4514(cert.subject()))),
        }
    }
    Ok(warnings)
}

/// An error outside the validity period; a warning when it ends within [`EXPIRY_WARNING`].
fn check_validity(
    path: &Path,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<Option<String>, TlsError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            date: date(&validity.not_before),
        });
    }
    let left = validity.not_after.timestamp().saturating_sub(now);
    if left < 0 {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            date: date(&validity.not_after),
        });
    }
    let window = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    if left >= window {
        return Ok(None);
    }
    let days = match left / 86_400 {
        0 => "within a day".to_owned(),
        1 => "in 1 day".to_owned(),
        n => format!("in {n} days"),
    };
    Ok(Some(format!(
        "{}: certificate expires on {} ({days})",
        path.display(),
        date(&validity.not_after)
    )))
}

/// `YYYY-MM-DD` (UTC).
fn date(time: &ASN1Time) -> String {
    let t = time.to_datetime();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, SanType, SerialNumber,
        SignatureAlgorithm, date_time_ymd,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn new_ca(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A certificate signed by a CA, with its key.
    struct Leaf {
        cert: String,
        key: KeyPair,
        der: CertificateDer<'static>,
    }

    impl Leaf {
        fn key_pem(&self) -> String {
            self.key.serialize_pem()
        }
    }

    fn leaf(ca: &Ca, params: CertificateParams, alg: &'static SignatureAlgorithm) -> Leaf {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &**ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key,
            der: cert.der().clone(),
        }
    }

    /// For `localhost` and `127.0.0.1`, with a recognizable serial.
    fn server_params(serial: u8) -> CertificateParams {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from_slice(&[serial]));
        params
    }

    fn server_leaf(ca: &Ca, serial: u8) -> Leaf {
        leaf(ca, server_params(serial), &PKCS_ECDSA_P256_SHA256)
    }

    /// `CN=<cn>,O=Acme` with one SAN of each kind the identity reads.
    fn client_leaf(ca: &Ca, cn: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::DnsName(format!("{cn}.acme.example").try_into().unwrap()),
            SanType::Rfc822Name(format!("{cn}@acme.example").try_into().unwrap()),
            SanType::URI(format!("spiffe://acme.example/{cn}").try_into().unwrap()),
        ];
        leaf(ca, params, &PKCS_ECDSA_P256_SHA256)
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().unwrap())
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn server_files(&self, leaf: &Leaf, client_ca: Option<&Ca>) -> ServerTlsFiles {
            ServerTlsFiles {
                cert_file: self.write("server.crt", &leaf.cert),
                key_file: self.write("server.key", &leaf.key_pem()),
                client_ca_file: client_ca.map(|ca| self.write("client-ca.pem", &ca.pem())),
            }
        }

        fn upstream(
            &self,
            ca: &Ca,
            client: Option<&Leaf>,
            server_name: Option<&str>,
        ) -> UpstreamTls {
            UpstreamTls::new(&UpstreamTlsSettings {
                ca_file: Some(self.write("upstream-ca.pem", &ca.pem())),
                client_cert_file: client.map(|c| self.write("client.crt", &c.cert)),
                client_key_file: client.map(|c| self.write("client.key", &c.key_pem())),
                server_name: server_name.map(str::to_owned),
            })
            .unwrap()
        }
    }

    /// What each end of a handshake saw.
    struct Outcome {
        /// ALPN and the server's certificate chain, once a byte from the server was read.
        client: io::Result<(Alpn, Vec<CertificateDer<'static>>)>,
        /// ALPN and the verified client identity.
        server: io::Result<(Alpn, Option<ClientIdentity>)>,
    }

    /// A real handshake over loopback TCP, then two bytes from server to client: with TLS 1.3
    /// the client finishes before the server has judged its certificate, so a refusal shows
    /// on the client only when it reads.
    async fn handshake(acceptor: TlsAcceptor, upstream: &UpstreamTls, host: &str) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let seen = (
                Alpn::of(tls.get_ref().1),
                ClientIdentity::of(tls.get_ref().1),
            );
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            Ok::<_, io::Error>(seen)
        });
        let client = async {
            let tcp = TcpStream::connect(addr).await?;
            let (mut tls, alpn) = upstream.connect(host, tcp).await?;
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .to_vec();
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await?;
            Ok((alpn, chain))
        };
        let limit = Duration::from_secs(20);
        let client = tokio::time::timeout(limit, client)
            .await
            .expect("client timed out");
        let server = tokio::time::timeout(limit, server)
            .await
            .expect("server timed out")
            .unwrap();
        Outcome { client, server }
    }

    fn serial_of(chain: &[CertificateDer<'_>]) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
        cert.raw_serial().to_vec()
    }

    /// The serial a new client sees. New as in a new client config: a client that resumes a
    /// session is not sent the certificate again and reports the one it saw first.
    async fn served_serial(acceptor: TlsAcceptor, dir: &Dir, ca: &Ca) -> Vec<u8> {
        let upstream = dir.upstream(ca, None, None);
        let outcome = handshake(acceptor, &upstream, "localhost").await;
        serial_of(&outcome.client.unwrap().1)
    }

    #[tokio::test]
    async fn alpn_prefers_h2_and_falls_back_to_http1() {
        let (dir, ca) = (Dir::new(), new_ca("Test CA"));
        let tls = ServerTls::load(&dir.server_files(&server_leaf(&ca, 1), None)).unwrap();
        let upstream = dir.upstream(&ca, None, None);

        let outcome = handshake(tls.acceptor(), &upstream, "localhost").await;
        assert_eq!(outcome.client.unwrap().0, Alpn::H2);
        assert_eq!(outcome.server.unwrap(), (Alpn::H2, None));

        // A client that offers only HTTP/1.1 gets it, and `connect` reports it.
        let mut config = (*upstream.config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http1 = UpstreamTls {
            config: Arc::new(config),
            server_name: None,
        };
        let outcome = handshake(tls.acceptor(), &http1, "localhost").await;
        assert_eq!(outcome.client.unwrap().0, Alpn::Http1);
        assert_eq!(outcome.server.unwrap().0, Alpn::Http1);
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_and_keeps_it_on_a_bad_pair() {
        let (dir, ca) = (Dir::new(), new_ca("Test CA"));
        let files = dir.server_files(&server_leaf(&ca, 1), None);
        let tls = ServerTls::load(&files).unwrap();
        let early_acceptor = tls.acceptor();
        assert_eq!(served_serial(tls.acceptor(), &dir, &ca).await, [1]);

        let renewed = server_leaf(&ca, 2);
        dir.write("server.crt", &renewed.cert);
        dir.write("server.key", &renewed.key_pem());
        tls.reload().unwrap();
        assert_eq!(served_serial(tls.acceptor(), &dir, &ca).await, [2]);
        // An acceptor taken before the reload serves the new certificate too.
        assert_eq!(served_serial(early_acceptor, &dir, &ca).await, [2]);

        // A certificate with somebody else's key: refused, the old pair keeps serving.
        dir.write("server.crt", &server_leaf(&ca, 3).cert);
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert_eq!(served_serial(tls.acceptor(), &dir, &ca).await, [2]);

        // Garbage and a missing key file: the same.
        dir.write("server.crt", "not a certificate\n");
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        dir.write("server.crt", &renewed.cert);
        std::fs::remove_file(&files.key_file).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert_eq!(served_serial(tls.acceptor(), &dir, &ca).await, [2]);
        assert_eq!(
            tls.files(),
            vec![files.cert_file.clone(), files.key_file.clone()]
        );
    }

    #[tokio::test]
    async fn mtls_accepts_a_client_of_the_ca_and_reads_its_identity() {
        let dir = Dir::new();
        let (server_ca, client_ca) = (new_ca("Server CA"), new_ca("Client CA"));
        let tls = ServerTls::load(&dir.server_files(&server_leaf(&server_ca, 1), Some(&client_ca)))
            .unwrap();
        let alice = client_leaf(&client_ca, "alice");
        let upstream = dir.upstream(&server_ca, Some(&alice), None);

        let outcome = handshake(tls.acceptor(), &upstream, "localhost").await;
        assert!(outcome.client.is_ok());
        let (_, identity) = outcome.server.unwrap();
        let identity = identity.unwrap();
        let fingerprint =
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, alice.der.as_ref()).as_ref());
        assert_eq!(
            identity,
            ClientIdentity {
                subject: "CN=alice,O=Acme".into(),
                common_name: Some("alice".into()),
                dns_names: vec!["alice.acme.example".into()],
                emails: vec!["alice@acme.example".into()],
                uris: vec!["spiffe://acme.example/alice".into()],
                fingerprint_sha256: fingerprint.clone(),
            }
        );
        assert_eq!(fingerprint.len(), 64);
        assert_eq!(
            serde_json::Value::Object(identity.as_claims()),
            serde_json::json!({
                "subject": "CN=alice,O=Acme",
                "cn": "alice",
                "dns": ["alice.acme.example"],
                "email": ["alice@acme.example"],
                "uri": ["spiffe://acme.example/alice"],
                "fingerprint_sha256": fingerprint,
            })
        );
    }

    #[tokio::test]
    async fn mtls_refuses_a_client_without_a_certificate_or_from_another_ca() {
        let dir = Dir::new();
        let (server_ca, client_ca, other_ca) =
            (new_ca("Server CA"), new_ca("Client CA"), new_ca("Other CA"));
        let tls = ServerTls::load(&dir.server_files(&server_leaf(&server_ca, 1), Some(&client_ca)))
            .unwrap();

        let anonymous = dir.upstream(&server_ca, None, None);
        let outcome = handshake(tls.acceptor(), &anonymous, "localhost").await;
        assert!(outcome.server.is_err());
        assert!(outcome.client.is_err());

        let mallory = client_leaf(&other_ca, "mallory");
        let stranger = dir.upstream(&server_ca, Some(&mallory), None);
        let outcome = handshake(tls.acceptor(), &stranger, "localhost").await;
        assert!(outcome.server.is_err());
        assert!(outcome.client.is_err());
    }

    #[tokio::test]
    async fn reloading_the_client_ca_changes_who_gets_in() {
        let dir = Dir::new();
        let (server_ca, old_ca, new_ca_) =
            (new_ca("Server CA"), new_ca("Old CA"), new_ca("New CA"));
        let files = dir.server_files(&server_leaf(&server_ca, 1), Some(&old_ca));
        let tls = ServerTls::load(&files).unwrap();
        let old_client = dir.upstream(&server_ca, Some(&client_leaf(&old_ca, "old")), None);
        let new_client = dir.upstream(&server_ca, Some(&client_leaf(&new_ca_, "new")), None);
        assert!(
            handshake(tls.acceptor(), &old_client, "localhost")
                .await
                .server
                .is_ok()
        );
        assert!(
            handshake(tls.acceptor(), &new_client, "localhost")
                .await
                .server
                .is_err()
        );

        dir.write("client-ca.pem", &new_ca_.pem());
        tls.reload().unwrap();
        assert!(
            handshake(tls.acceptor(), &old_client, "localhost")
                .await
                .server
                .is_err()
        );
        let outcome = handshake(tls.acceptor(), &new_client, "localhost").await;
        assert_eq!(
            outcome.server.unwrap().1.unwrap().common_name.as_deref(),
            Some("new")
        );

        // A broken CA file is refused and the CA in force stays.
        dir.write("client-ca.pem", "");
        assert!(matches!(tls.reload(), Err(TlsError::NoCertificate { .. })));
        assert!(
            handshake(tls.acceptor(), &new_client, "localhost")
                .await
                .server
                .is_ok()
        );
        assert_eq!(tls.files().len(), 3);
    }

    #[tokio::test]
    async fn upstream_verifies_the_name_and_the_ca() {
        let dir = Dir::new();
        let (ca, unknown_ca) = (new_ca("Test CA"), new_ca("Unknown CA"));
        let tls = ServerTls::load(&dir.server_files(&server_leaf(&ca, 1), None)).unwrap();

        // An IP address as host is checked against the certificate's IP SAN.
        let by_ip = dir.upstream(&ca, None, None);
        assert!(
            handshake(tls.acceptor(), &by_ip, "127.0.0.1")
                .await
                .client
                .is_ok()
        );
        // server_name replaces the host for SNI and the name check.
        let named = dir.upstream(&ca, None, Some("localhost"));
        assert!(
            handshake(tls.acceptor(), &named, "upstream.invalid")
                .await
                .client
                .is_ok()
        );
        let wrong_name = dir.upstream(&ca, None, Some("app.internal"));
        let outcome = handshake(tls.acceptor(), &wrong_name, "127.0.0.1").await;
        let err = outcome.client.unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
        // A host that is no name at all.
        assert!(
            handshake(tls.acceptor(), &by_ip, "not a host")
                .await
                .client
                .is_err()
        );

        let untrusting = dir.upstream(&unknown_ca, None, None);
        assert!(
            handshake(tls.acceptor(), &untrusting, "localhost")
                .await
                .client
                .is_err()
        );
        // The system's roots (where the machine has a CA bundle) do not know the test CA either.
        if let Ok(system) = UpstreamTls::new(&UpstreamTlsSettings::default()) {
            assert!(
                handshake(tls.acceptor(), &system, "localhost")
                    .await
                    .client
                    .is_err()
            );
        }
    }

    #[test]
    fn upstream_settings_are_validated() {
        let dir = Dir::new();
        let alice = client_leaf(&new_ca("Client CA"), "alice");
        let cert = dir.write("gw.crt", &alice.cert);
        let settings = UpstreamTlsSettings {
            client_cert_file: Some(cert.clone()),
            ..Default::default()
        };
        let err = UpstreamTls::new(&settings).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: client_key_file is not set; a client certificate needs both client_cert_file and client_key_file",
                cert.display()
            )
        );
        let settings = UpstreamTlsSettings {
            server_name: Some("not a name".into()),
            ..Default::default()
        };
        let err = UpstreamTls::new(&settings).unwrap_err();
        assert_eq!(
            err.to_string(),
            "server_name `not a name` is not a valid DNS name or IP address"
        );
        let missing = dir.0.path().join("missing.pem");
        let settings = UpstreamTlsSettings {
            ca_file: Some(missing.clone()),
            ..Default::default()
        };
        let err = UpstreamTls::new(&settings).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read the file: ", missing.display())),
            "{err}"
        );
        // The client's own key must match its certificate.
        let settings = UpstreamTlsSettings {
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(
                dir.write("gw.key", &KeyPair::generate().unwrap().serialize_pem()),
            ),
            ..Default::default()
        };
        assert!(matches!(
            UpstreamTls::new(&settings),
            Err(TlsError::KeyMismatch { .. })
        ));
    }

    /// PEM of `der` under `label` (for the PKCS#1 and SEC1 encodings rcgen does not write).
    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// An RSA PKCS#8 key's inner RSAPrivateKey: its PKCS#1 form.
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        let (_, info) = x509_parser::der_parser::parse_der(pkcs8).unwrap();
        info.as_sequence().unwrap()[2].as_slice().unwrap().to_vec()
    }

    /// An EC P-256 PKCS#8 key as a SEC1 ECPrivateKey (with its curve).
    fn sec1_of(pkcs8: &[u8]) -> Vec<u8> {
        use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).unwrap();
        let der: EcPrivateKeyRfc5915Der<'_> = key.private_key().as_der().unwrap();
        der.as_ref().to_vec()
    }

    #[tokio::test]
    async fn rsa_ecdsa_and_ed25519_keys_load_in_every_encoding() {
        let (dir, ca) = (Dir::new(), new_ca("Test CA"));
        let upstream = dir.upstream(&ca, None, None);
        let rsa = leaf(&ca, server_params(1), &PKCS_RSA_SHA256);
        let ecdsa = leaf(&ca, server_params(2), &PKCS_ECDSA_P256_SHA256);
        let ed25519 = leaf(&ca, server_params(3), &PKCS_ED25519);
        let cases = [
            ("RSA PKCS#8", &rsa, rsa.key_pem()),
            (
                "RSA PKCS#1",
                &rsa,
                pem("RSA PRIVATE KEY", &pkcs1_of(rsa.key.serialized_der())),
            ),
            ("ECDSA PKCS#8", &ecdsa, ecdsa.key_pem()),
            (
                "ECDSA SEC1",
                &ecdsa,
                pem("EC PRIVATE KEY", &sec1_of(ecdsa.key.serialized_der())),
            ),
            ("Ed25519 PKCS#8", &ed25519, ed25519.key_pem()),
        ];
        for (what, leaf, key_pem) in cases {
            let files = ServerTlsFiles {
                cert_file: dir.write("server.crt", &leaf.cert),
                key_file: dir.write("server.key", &key_pem),
                client_ca_file: None,
            };
            let tls = ServerTls::load(&files).unwrap_or_else(|e| panic!("{what}: {e}"));
            let outcome = handshake(tls.acceptor(), &upstream, "localhost").await;
            assert_eq!(
                outcome.client.map(|(_, chain)| chain[0].clone()).ok(),
                Some(leaf.der.clone()),
                "{what}"
            );
        }
    }

    fn at(year: i32, month: u8, day: u8) -> SystemTime {
        let secs = date_time_ymd(year, month, day).unix_timestamp();
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    /// A pair valid from 2029-01-01 to 2030-01-06, written as gw.crt / gw.key.
    fn dated_pair(dir: &Dir, ca: &Ca) -> ServerTlsFiles {
        let mut params = server_params(1);
        params.not_before = date_time_ymd(2029, 1, 1);
        params.not_after = date_time_ymd(2030, 1, 6);
        let leaf = leaf(ca, params, &PKCS_ECDSA_P256_SHA256);
        ServerTlsFiles {
            cert_file: dir.write("gw.crt", &leaf.cert),
            key_file: dir.write("gw.key", &leaf.key_pem()),
            client_ca_file: Some(dir.write("ca.pem", &ca.pem())),
        }
    }

    #[test]
    fn check_warns_before_expiry_and_refuses_outside_validity() {
        let (dir, ca) = (Dir::new(), new_ca("Test CA"));
        let files = dated_pair(&dir, &ca);
        let cert = files.cert_file.display();

        assert_eq!(
            check_server_files(&files, at(2029, 6, 1)).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            check_server_files(&files, at(2030, 1, 1)).unwrap(),
            vec![format!(
                "{cert}: certificate expires on 2030-01-06 (in 5 days)"
            )]
        );
        let err = check_server_files(&files, at(2030, 1, 7)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{cert}: certificate expired on 2030-01-06")
        );
        let err = check_cert_pair(&files.cert_file, &files.key_file, at(2028, 12, 31)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{cert}: certificate is not valid before 2029-01-01")
        );

        // The same checks for an upstream's client certificate.
        let settings = UpstreamTlsSettings {
            ca_file: files.client_ca_file.clone(),
            client_cert_file: Some(files.cert_file.clone()),
            client_key_file: Some(files.key_file.clone()),
            server_name: None,
        };
        assert_eq!(
            check_upstream_files(&settings, at(2030, 1, 1))
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            check_upstream_files(&settings, at(2031, 1, 1)),
            Err(TlsError::Expired { .. })
        ));
    }

    #[test]
    fn check_refuses_a_mismatched_key_and_unusable_files() {
        let (dir, ca) = (Dir::new(), new_ca("Test CA"));
        let mut files = dated_pair(&dir, &ca);
        let now = at(2029, 6, 1);
        let (cert, key) = (files.cert_file.clone(), files.key_file.clone());

        dir.write("gw.key", &KeyPair::generate().unwrap().serialize_pem());
        let err = check_server_files(&files, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: the private key does not match the certificate in {}",
                key.display(),
                cert.display()
            )
        );

        files.key_file = cert.clone();
        let err = check_server_files(&files, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no private key found in PEM", cert.display())
        );

        let empty = dir.write("empty.pem", "");
        let err = check_cert_pair(&empty, &key, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no certificate found in PEM", empty.display())
        );

        let broken = dir.write("broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let err = check_cert_pair(&broken, &key, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: invalid PEM: a section has no END line",
                broken.display()
            )
        );

        let junk = dir.write("junk.pem", &pem("CERTIFICATE", b"not DER"));
        let err = check_cert_pair(&junk, &key, now).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: invalid certificate: ", junk.display())),
            "{err}"
        );

        let missing = dir.0.path().join("missing.crt");
        let err = check_cert_pair(&missing, &key, now).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read the file: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn subjects_are_written_as_rfc4514() {
        let ca = new_ca("Test CA");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme; \"Labs\"");
        params
            .distinguished_name
            .push(DnType::CommonName, "#Doe, John+1 ");
        let escaped = leaf(&ca, params, &PKCS_ECDSA_P256_SHA256);
        let identity = client_identity(std::slice::from_ref(&escaped.der)).unwrap();
        assert_eq!(
            identity.subject,
            r#"CN=\#Doe\, John\+1\ ,O=Acme\; \"Labs\",C=DE"#
        );
        assert_eq!(identity.common_name.as_deref(), Some("#Doe, John+1 "));
        assert!(
            identity.dns_names.is_empty() && identity.emails.is_empty() && identity.uris.is_empty()
        );

        // No CN: no `cn` claim at all, so a rule on it cannot match by accident.
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        let no_cn = leaf(&ca, params, &PKCS_ECDSA_P256_SHA256);
        let identity = client_identity(&[no_cn.der]).unwrap();
        assert_eq!(identity.subject, "O=Acme");
        assert!(!identity.as_claims().contains_key("cn"));
        assert_eq!(client_identity(&[]), None);
        assert_eq!(
            client_identity(&[CertificateDer::from(b"junk".to_vec())]),
            None
        );
    }

    #[test]
    fn host_names_and_ip_literals_become_server_names() {
        let ip = |s: &str| matches!(server_name(s), Some(ServerName::IpAddress(_)));
        let dns = |s: &str| matches!(server_name(s), Some(ServerName::DnsName(_)));
        assert!(ip("127.0.0.1") && ip("::1") && ip("[::1]"));
        assert!(dns("app.internal") && dns("localhost"));
        assert!(server_name("not a host").is_none() && server_name("").is_none());
    }
}
