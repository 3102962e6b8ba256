//! Test-only certificates, generated at test time (rcgen), and an HTTPS client (tokio-rustls
//! and hyper) that trusts them, presents a client certificate when asked and picks ALPN.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A test certificate authority.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate (chain) and its PEM key.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// The certificate, DER (for a rustls config of the test's own).
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap()
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn sign(&self, params: CertificateParams) -> Pair {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), with a recognizable serial.
    pub fn server(&self, names: &[&str], serial: u8) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "authgate test server");
        params.serial_number = Some(SerialNumber::from_slice(&[serial]));
        self.sign(params)
    }

    /// A server certificate for `localhost` valid from `days_from_now.0` to `days_from_now.1`
    /// days from now (negative: in the past).
    pub fn server_valid(&self, days_from_now: (i64, i64)) -> Pair {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let day = |d: i64| {
            let shift = std::time::Duration::from_secs(d.unsigned_abs() * 86_400);
            if d >= 0 {
                epoch + now + shift
            } else {
                epoch + now - shift
            }
        };
        params.not_before = day(days_from_now.0);
        params.not_after = day(days_from_now.1);
        self.sign(params)
    }

    /// A client certificate `CN=<cn>, O=Acme`.
    pub fn client(&self, cn: &str) -> Pair {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params)
    }
}

/// What an HTTPS request got back.
#[derive(Debug)]
pub struct HttpsReply {
    pub version: Version,
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The serial number of the certificate the server presented (its last byte).
    pub serial: u8,
}

/// One HTTPS request to `addr`, trusting `ca_pem`, offering `alpn`, presenting `client` when
/// given. `Err` when the handshake or the exchange fails.
pub async fn https_get(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Pair>,
    alpn: &[&[u8]],
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpsReply, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key =
                PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let serial = {
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no certificate")?;
        serial_of(leaf)
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut req = Request::get(format!("https://localhost:{}{path}", addr.port()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        parts.uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        if !parts.headers.contains_key("host") {
            parts.headers.insert(
                "host",
                format!("localhost:{}", addr.port()).parse().unwrap(),
            );
        }
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(HttpsReply {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body,
        serial,
    })
}

/// The last byte of a certificate's serial number (tests use one-byte serials).
fn serial_of(cert: &CertificateDer<'_>) -> u8 {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(cert)
        .map(|(_, c)| c.tbs_certificate.raw_serial().last().copied().unwrap_or(0))
        .unwrap_or(0)
}
