//! Test harness: spawns the real `redoubt-server`, `redoubt` and `redoubt-agent`
//! binaries against temp directories on port 0, and waits on conditions with deadlines.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory holding the workspace's binaries (next to `redoubt-server`).
pub fn bin(name: &str) -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_redoubt-server"));
    let p = server.with_file_name(name);
    assert!(
        p.exists(),
        "{} is not built; run the whole test suite with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Polls `f` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends a signal to a process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for a child to exit within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for("process exit", timeout, || child.try_wait().unwrap())
}

/// A running `redoubt-server`.
pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    pub url: String,
    pub fingerprint: String,
    pub owner_token: String,
    pub env: Vec<(String, String)>,
    stdout: mpsc::Receiver<String>,
}

impl Server {
    /// Starts a server on `data` with extra `REDOUBT_*` settings, and an owner token.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        let mut server = Server::launch(data, env);
        server.owner_token = server.admin_token("test-owner", "owner");
        server
    }

    /// Starts a server on a data directory that already holds `owner_token`, creating
    /// nothing (so starting it appends nothing to the audit log).
    pub fn restart(data: &Path, owner_token: &str) -> Server {
        let mut server = Server::launch(data, &[]);
        server.owner_token = owner_token.to_owned();
        server
    }

    fn launch(data: &Path, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cmd = Command::new(bin("redoubt-server"));
        cmd.arg("serve");
        if !env.iter().any(|(k, _)| k == "REDOUBT_LISTEN") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--data")
            .arg(data)
            .envs(env.iter().cloned())
            .env("REDOUBT_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log_file(&data.with_extension("log")))
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut url = None;
        let mut fingerprint = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while url.is_none() || fingerprint.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("server did not print its address and fingerprint");
            if let Some(u) = line.strip_prefix("Redoubt server listening on ") {
                url = Some(u.trim().to_owned());
            }
            if let Some(f) = line.strip_prefix("CA fingerprint: ") {
                fingerprint = Some(f.trim().to_owned());
            }
        }
        Server {
            child,
            data: data.to_owned(),
            url: url.unwrap(),
            fingerprint: fingerprint.unwrap(),
            owner_token: String::new(),
            env,
            stdout: rx,
        }
    }

    /// Creates an admin token with the offline command.
    pub fn admin_token(&self, name: &str, role: &str) -> String {
        let out = Command::new(bin("redoubt-server"))
            .args(["admin-token", "--name", name, "--role", role, "--data"])
            .arg(&self.data)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "admin-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs the admin CLI with this server's address, fingerprint and `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("redoubt"))
            .args(args)
            .env("REDOUBT_SERVER", &self.url)
            .env("REDOUBT_TOKEN", token)
            .env("REDOUBT_CA_FINGERPRINT", &self.fingerprint)
            .output()
            .unwrap()
    }

    /// Runs the admin CLI as owner; asserts success; parses `--json` output.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli_as(&self.owner_token, &all);
        assert!(
            out.status.success(),
            "redoubt {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "redoubt {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// A fresh enrollment URL for `user`.
    pub fn enrollment_url(&self, user: &str) -> String {
        self.cli_json(&["enroll", "create", "--user", user])["url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The console's view of a device.
    pub fn device(&self, id: &str) -> Value {
        self.cli_json(&["devices", "show", id])
    }

    /// Stops the server with SIGTERM and checks it exits cleanly.
    pub fn stop(mut self) {
        signal(&self.child, "TERM");
        let status = wait_exit(&mut self.child, Duration::from_secs(20));
        if !status.success() {
            let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
            let panic: Vec<&str> = log
                .lines()
                .skip_while(|l| !l.contains("panicked"))
                .take(3)
                .collect();
            panic!(
                "server exited with {status} after SIGTERM: {}",
                panic.join("\n")
            );
        }
    }

    /// Kills the server without warning.
    pub fn kill(mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Lines the server printed since start.
    pub fn printed(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// An agent's state directory.
pub struct Agent {
    pub state: PathBuf,
    pub run: Option<Child>,
}

impl Agent {
    pub fn new(state: PathBuf) -> Agent {
        Agent { state, run: None }
    }

    /// Runs `redoubt-agent ARGS --state DIR`.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(bin("redoubt-agent"))
            .args(args)
            .arg("--state")
            .arg(&self.state)
            .output()
            .unwrap()
    }

    /// The messenger directory enrollment wrote (`STATE/messenger/`).
    pub fn messenger(&self) -> PathBuf {
        self.state.join("messenger")
    }

    /// Enrolls; returns the device id.
    pub fn enroll(&self, url: &str) -> String {
        let out = self.cmd(&["enroll", url, "--json"]);
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["device_id"].as_str().unwrap().to_owned()
    }

    /// Starts `redoubt-agent run` with a fast hardware re-check.
    pub fn start(&mut self) {
        let child = Command::new(bin("redoubt-agent"))
            .args(["run", "--recheck-ms", "200", "--state"])
            .arg(&self.state)
            .env("REDOUBT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log_file(&self.state.with_extension("log")))
            .spawn()
            .unwrap();
        self.run = Some(child);
    }

    /// Stops the running agent with SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.run.take() {
            signal(&c, "TERM");
            let status = wait_exit(&mut c, Duration::from_secs(20));
            assert!(status.success(), "agent exited with {status} after SIGTERM");
        }
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        let out = self.cmd(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `sim show --json`.
    pub fn sim(&self) -> Value {
        let out = self.cmd(&["sim", "show", "--json"]);
        assert!(
            out.status.success(),
            "sim show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `sim set CAP VALUE`.
    pub fn sim_set(&self, target: &str, value: &str) {
        let out = self.cmd(&["sim", "set", target, value]);
        assert!(
            out.status.success(),
            "sim set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.run.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// Appends a process's stderr to `path` (read back by the no-secrets-in-logs test).
pub fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    Stdio::from(f)
}

/// stderr of a command, lossy.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A raw HTTPS client pinned to the server's CA, for requests the CLI would never send.
pub struct Http {
    client: reqwest::Client,
    base: String,
    rt: tokio::runtime::Runtime,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(redoubt_client::pinned_tls_config(
                server.fingerprint.parse().unwrap(),
                &[b"http/1.1"],
            ))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Http {
            client,
            base: server.url.clone(),
            rt,
        }
    }

    /// Sends a request; returns status and body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .request(method.parse().unwrap(), format!("{}{path}", self.base))
                .header("content-type", "application/json");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }
}

impl Http {
    /// Any request with the given headers and body; returns status and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .request(method.parse().unwrap(), format!("{}{path}", self.base))
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.body(b.to_vec());
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    }

    /// A GET with extra headers; returns status, response headers (lowercase names) and body.
    pub fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<(String, String)>, String) {
        self.rt.block_on(async {
            let mut req = self.client.get(format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let hs = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            (status, hs, resp.text().await.unwrap())
        })
    }
}

impl Http {
    /// Sends a JSON request with a raw `Authorization` header; returns status and body.
    pub fn send_auth(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
        body: &serde_json::Value,
    ) -> (u16, Value) {
        self.rt.block_on(async {
            let resp = self
                .client
                .request(method.parse().unwrap(), format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .header("authorization", authorization)
                .body(serde_json::to_vec(body).unwrap())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    /// Opens a device session the way the phone's messenger does (a challenge signed
    /// with the messenger key, with its delegation, from the messenger directory of the
    /// agent state dir `state`); returns the `Authorization` header value.
    pub fn device_session(&self, state: &Path, device_id: &str) -> String {
        use ed25519_dalek::Signer as _;
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let dir = state.join("messenger");
        let delegation: Value =
            serde_json::from_slice(&std::fs::read(dir.join("messenger-delegation.json")).unwrap())
                .unwrap();
        let pem = std::fs::read_to_string(dir.join("messenger-key.pem")).unwrap();
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
        let (status, challenge) = self.send_auth(
            "POST",
            "/api/v1/device/challenge",
            "",
            &serde_json::json!({}),
        );
        assert_eq!(status, 200, "{challenge}");
        let nonce = challenge["nonce"].as_str().unwrap().to_owned();
        let device: redoubt_proto::DeviceId = device_id.parse().unwrap();
        let signature = redoubt_proto::envelope::encode_signature(
            &key.sign(&redoubt_proto::messaging::session_message(&nonce, &device)),
        );
        let (status, granted) = self.send_auth(
            "POST",
            "/api/v1/device/session",
            "",
            &serde_json::json!({
                "device_id": device_id,
                "nonce": nonce,
                "signature": signature,
                "delegation": delegation,
            }),
        );
        assert_eq!(status, 200, "{granted}");
        format!("Device {}", granted["token"].as_str().unwrap())
    }
}

/// `redoubt --json chat --state DIR ARGS`, not yet run.
pub fn chat_cmd(state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("redoubt"));
    cmd.arg("--json")
        .arg("chat")
        .arg("--state")
        .arg(state)
        .args(args);
    cmd
}

/// Runs `redoubt --json chat --state DIR ARGS`; asserts success; parses the JSON.
pub fn chat(state: &Path, args: &[&str]) -> Value {
    let out = chat_cmd(state, args).output().unwrap();
    assert!(
        out.status.success(),
        "redoubt chat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "redoubt chat {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn texts(read: &Value) -> Vec<String> {
    read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

pub fn random_text(tag: &str) -> String {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{tag}-{hex}")
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// A device-session call's outcome as `(status, body)`: 200 and the answer, or the
/// API error's status with `{"code", "message"}` (any other failure panics).
pub fn answer<T: serde::Serialize>(r: Result<T, redoubt_client::ClientError>) -> (u16, Value) {
    match r {
        Ok(v) => (200, serde_json::to_value(v).unwrap()),
        Err(redoubt_client::ClientError::Api {
            status,
            code,
            message,
            ..
        }) => (
            status,
            serde_json::json!({"code": code, "message": message}),
        ),
        Err(e) => panic!("{e}"),
    }
}

/// The value of a metric series (name with its labels, as exposed) on `/metrics`,
/// read with the owner token; 0 when it is not exposed yet.
pub fn metric(server: &Server, series: &str) -> f64 {
    let (status, body) = Http::new(server).send("GET", "/metrics", Some(&server.owner_token), None);
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A web console account made with `redoubt-server admin create`, with what it was
/// given once: its password, its TOTP generator and its recovery codes.
pub struct ConsoleAccount {
    pub name: String,
    pub password: String,
    pub totp: totp_rs::Totp,
    pub recovery: Vec<String>,
}

impl ConsoleAccount {
    /// The TOTP code of the current 30-second step.
    pub fn code(&self) -> String {
        self.totp.generate_current().to_string()
    }

    /// A TOTP code that has not been used yet: waits for the next step when the
    /// current one was (a code is good once).
    pub fn fresh_code(&self, used: &mut Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let c = self.code();
            if !used.contains(&c) {
                used.push(c.clone());
                return c;
            }
            assert!(Instant::now() < deadline, "no new TOTP step within 40 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Server {
    /// Makes a console account offline (`redoubt-server admin create`, the password
    /// given on standard input) and reads its second factor from the output.
    pub fn console_account(&self, name: &str, role: &str) -> ConsoleAccount {
        use std::io::Write;
        let password = format!("pass-{name}-{}", random_text("pw"));
        let mut child = Command::new(bin("redoubt-server"))
            .args([
                "admin",
                "create",
                "--name",
                name,
                "--role",
                role,
                "--password-stdin",
                "--data",
            ])
            .arg(&self.data)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "admin create: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let url = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("otpauth://"))
            .expect("admin create printed no otpauth URL");
        let recovery = text
            .lines()
            .map(str::trim)
            .filter(|l| l.len() == 17 && l.matches('-').count() == 2)
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert_eq!(recovery.len(), 10, "{text}");
        ConsoleAccount {
            name: name.to_owned(),
            password,
            totp: totp_rs::Totp::from_url(url).unwrap(),
            recovery,
        }
    }
}

/// A signed-in console session: its cookie and CSRF token.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    pub cookie: String,
    pub csrf: String,
}

/// The value of `name="csrf"` in a page.
pub fn csrf_in(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("no CSRF field in the page")
        + 19;
    page[at..at + 64].to_owned()
}

impl Http {
    /// Any request; returns status, headers (lowercase names) and body.
    pub fn request_full(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Vec<(String, String)>, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .request(method.parse().unwrap(), format!("{}{path}", self.base));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req.body(b.to_vec());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let hs = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect::<Vec<(String, String)>>();
            // A stream of server-sent events does not end: its body is not read.
            if hs
                .iter()
                .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
            {
                return (status, hs, String::new());
            }
            (status, hs, resp.text().await.unwrap())
        })
    }

    /// The sign-in page's pre-session cookie and CSRF token, as a browser gets them.
    pub fn console_pre_session(&self) -> ConsoleSession {
        let (status, headers, page) = self.request_full("GET", "/console/login", &[], None);
        assert_eq!(status, 200, "{page}");
        ConsoleSession {
            cookie: set_cookie(&headers, "__Host-redoubt_signin"),
            csrf: csrf_in(&page),
        }
    }

    /// Signs in to the console with a password and `code` (TOTP or recovery code).
    pub fn console_sign_in(&self, account: &ConsoleAccount, code: &str) -> ConsoleSession {
        let pre = self.console_pre_session();
        let form = format!(
            "csrf={}&name={}&password={}&code={}",
            pre.csrf, account.name, account.password, code
        );
        let (status, headers, page) = self.request_full(
            "POST",
            "/console/login",
            &[
                ("cookie", &pre.cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(form.as_bytes()),
        );
        assert_eq!(status, 303, "sign-in refused: {page}");
        let cookie = set_cookie(&headers, "__Host-redoubt_console");
        let (status, _, page) = self.request_full("GET", "/console", &[("cookie", &cookie)], None);
        assert_eq!(status, 200, "{page}");
        ConsoleSession {
            cookie,
            csrf: csrf_in(&page),
        }
    }
}

/// `NAME=VALUE` of the `Set-Cookie` header setting cookie `name`.
pub fn set_cookie(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().trim().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie for {name} in {headers:?}"))
}
