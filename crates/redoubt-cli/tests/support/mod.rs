//! Helpers for the integration tests: running the real `redoubt` binary with a clean
//! environment, and a tiny HTTPS server behind its own CA that answers canned JSON.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A token the tests pass in; it must never show up in any output.
pub const TOKEN: &str = "tok_do-not-print-me-3f9a";

/// What a finished `redoubt` run produced.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts a failure whose stderr is one `error: ...` message containing all of
    /// `needles`, and that the token leaked nowhere.
    pub fn fails_with(&self, needles: &[&str]) {
        assert!(!self.success, "expected failure, got {self:#?}");
        assert!(self.stderr.starts_with("error: "), "{self:#?}");
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "missing {needle:?} in {self:#?}"
            );
        }
        self.no_token();
    }

    /// Asserts success and returns stdout.
    pub fn succeeds(&self) -> &str {
        assert!(self.success, "expected success, got {self:#?}");
        self.no_token();
        &self.stdout
    }

    fn no_token(&self) {
        assert!(
            !self.stdout.contains(TOKEN) && !self.stderr.contains(TOKEN),
            "token leaked: {self:#?}"
        );
    }
}

/// Runs `redoubt args...` with no `REDOUBT_*` variables except `env`.
pub fn redoubt(args: &[&str], env: &[(&str, &str)]) -> Run {
    redoubt_in(None, args, env)
}

/// Like [`redoubt`], in directory `dir`.
pub fn redoubt_in(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redoubt"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REDOUBT_") {
            cmd.env_remove(key);
        }
    }
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("spawn redoubt");
    Run {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fingerprint that matches no certificate.
pub fn wrong_fingerprint() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// A local port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One request the fake server received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A canned answer: method, path, status, JSON body.
pub type Route = (&'static str, String, u16, String);

/// An HTTPS server on 127.0.0.1 whose certificate chain is `[leaf, ca]`, like the real
/// server's, answering each request from a fixed route table.
pub struct FakeServer {
    pub url: String,
    pub fingerprint: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    pub fn start(routes: Vec<Route>) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let fingerprint = redoubt_proto::Fingerprint::of_der(ca_cert.der()).to_string();

        let chain: Vec<CertificateDer<'static>> =
            vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        {
            let requests = requests.clone();
            std::thread::spawn(move || {
                for tcp in listener.incoming().flatten() {
                    let (config, routes, requests) =
                        (config.clone(), routes.clone(), requests.clone());
                    std::thread::spawn(move || {
                        // Handshake failures (a client refusing our chain) end here.
                        let _ = serve(tcp, config, &routes, &requests);
                    });
                }
            });
        }
        FakeServer {
            url: format!("https://127.0.0.1:{port}"),
            fingerprint,
            requests,
        }
    }

    /// The environment a client of this server needs.
    pub fn env(&self) -> [(&str, &str); 3] {
        [
            ("REDOUBT_SERVER", self.url.as_str()),
            ("REDOUBT_CA_FINGERPRINT", self.fingerprint.as_str()),
            ("REDOUBT_TOKEN", TOKEN),
        ]
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    routes: &[Route],
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut authorization) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (status, answer) = routes
        .iter()
        .find(|(m, p, _, _)| *m == method && *p == path)
        .map(|(_, _, s, b)| (*s, b.clone()))
        .unwrap_or((
            404,
            r#"{"code":"not_found","message":"no such route"}"#.to_owned(),
        ));
    requests.lock().expect("lock").push(Request {
        method,
        path,
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let stream = reader.get_mut();
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()?;
    stream.conn.send_close_notify();
    stream.conn.complete_io(&mut stream.sock)?;
    Ok(())
}
