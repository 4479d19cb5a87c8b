//! The client side of the Redoubt API, shared by the agent and the CLI.
//!
//! [`pinned_tls_config`] builds a rustls configuration that trusts the server only
//! through the organization CA whose fingerprint was pinned (from the enrollment QR
//! code or `REDOUBT_CA_FINGERPRINT`); the system trust store is never consulted.
//! [`ServerClient`] speaks JSON over HTTPS and opens the device WebSocket on top of it.

use std::sync::Arc;
use std::time::Duration;

use redoubt_proto::Fingerprint;
use redoubt_proto::api::ApiError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use url::Url;

mod servers;
pub use servers::ServerList;

/// A WebSocket to the server over pinned TLS.
pub type DeviceSocket = WebSocketStream<TlsStream<TcpStream>>;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server's certificate does not chain to the pinned CA, or TLS failed.
    #[error("cannot reach {server}: {detail}")]
    Transport {
        /// The server URL.
        server: String,
        /// What failed.
        detail: String,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server's answer could not be read.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API error code when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Verifies the server's certificate against the one CA whose fingerprint is pinned.
///
/// The server sends its chain `[leaf, ca]`; the CA certificate is found by its
/// fingerprint and becomes the only trust anchor for ordinary WebPKI verification of
/// the leaf, including the host name.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Fingerprint::of_der(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate does not chain to the pinned organization CA {}",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA is unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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

/// A rustls client configuration that trusts only the CA with fingerprint `pin`.
pub fn pinned_tls_config(pin: Fingerprint, alpn: &[&[u8]]) -> ClientConfig {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { pin, provider }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A JSON-over-HTTPS client for one server, pinned to one CA.
#[derive(Clone)]
pub struct ServerClient {
    base: Url,
    pin: Fingerprint,
    /// The whole `Authorization` header value, when there is a credential.
    auth: Option<String>,
    http: reqwest::Client,
    /// The pinned TLS configuration of WebSocket connections (built once).
    ws_tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("base", &self.base.as_str())
            .field("pin", &self.pin)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ServerClient {
    /// A client for `base` (an `https://` URL) that trusts only the CA `pin`, sending
    /// `token` as a bearer credential when given.
    pub fn new(base: Url, pin: Fingerprint, token: Option<String>) -> Result<Self, ClientError> {
        install_crypto_provider();
        if base.scheme() != "https" {
            return Err(ClientError::Transport {
                server: base.to_string(),
                detail: "the server URL must start with https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pinned_tls_config(pin, &[b"http/1.1"]))
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Transport {
                server: base.to_string(),
                detail: e.to_string(),
            })?;
        Ok(ServerClient {
            base,
            pin,
            auth: token.map(|t| format!("Bearer {t}")),
            http,
            ws_tls: Arc::new(pinned_tls_config(pin, &[b"http/1.1"])),
        })
    }

    /// The same client sending `Authorization: <value>` instead (e.g. `Device <token>`).
    pub fn with_authorization(&self, value: String) -> ServerClient {
        ServerClient {
            auth: Some(value),
            ..self.clone()
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base.join(path).map_err(|e| ClientError::Transport {
            server: self.base.to_string(),
            detail: format!("bad path {path}: {e}"),
        })
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        // reqwest hides the TLS reason in the error's source chain; show all of it.
        ClientError::Transport {
            server: self.base.as_str().trim_end_matches('/').to_owned(),
            detail: e.to_string(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let bytes = self.send_raw(req).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn send_raw(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let req = match &self.auth {
            Some(v) => req.header(reqwest::header::AUTHORIZATION, v),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport(error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport(error_chain(&e)))?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            let err: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiError {
                code: "http_error".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
            Err(ClientError::Api {
                status: status.as_u16(),
                code: err.code,
                message: err.message,
            })
        }
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path)?)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)?).json(body)).await
    }

    /// `POST path` with raw bytes; the answer is JSON.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let req = self
            .http
            .post(self.url(path)?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(300))
            .body(body);
        self.send(req).await
    }

    /// `GET path`, the answer as raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let req = self
            .http
            .get(self.url(path)?)
            .timeout(Duration::from_secs(300));
        self.send_raw(req).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.put(self.url(path)?).json(body)).await
    }

    /// Opens a WebSocket at `path` over TLS pinned the same way.
    pub async fn websocket(&self, path: &str) -> Result<DeviceSocket, ClientError> {
        self.websocket_from(path, None).await
    }

    /// [`ServerClient::websocket`] from the local address `source` (a load generator
    /// spreads its connections over several loopback addresses this way).
    pub async fn websocket_from(
        &self,
        path: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<DeviceSocket, ClientError> {
        let mut url = self.url(path)?;
        let host = url
            .host_str()
            .ok_or_else(|| self.transport("server URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|e| self.transport(e))?;
        let connect = async {
            match source {
                None => TcpStream::connect((host.as_str(), port)).await,
                Some(local) => {
                    let remote = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .find(|a| a.is_ipv4() == local.is_ipv4())
                        .ok_or_else(|| {
                            std::io::Error::new(
                                std::io::ErrorKind::AddrNotAvailable,
                                "no server address of the source's family",
                            )
                        })?;
                    let socket = if local.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    socket.connect(remote).await
                }
            }
        };
        let tcp = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| self.transport("connection timed out"))?
            .map_err(|e| self.transport(e))?;
        let connector = tokio_rustls::TlsConnector::from(self.ws_tls.clone());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| self.transport(e))?;
        url.set_scheme("wss")
            .map_err(|_| self.transport("cannot build wss URL"))?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| self.transport(e))?;
        if let Some(v) = &self.auth {
            let value = v
                .parse()
                .map_err(|_| self.transport("credential is not a valid header value"))?;
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
                value,
            );
        }
        // Read 4 KiB at a time and flush every frame as it is sent: tungstenite's
        // defaults (a 128 KiB read buffer and a 128 KiB write buffer per socket) would
        // cost a phone, and a load generator holding thousands of sockets, far more than
        // the frames need. Larger frames are still read whole.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|e| self.transport(e))?;
        Ok(ws)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        cur = s.source();
    }
    out
}
