//! Headless Chromium for the server's browser tests: `chromedriver` on a loopback port it
//! chose itself, one WebDriver session (fantoccini) against the real `redoubt-server`.
//!
//! A test file includes it with `mod browser;` (it is not a test target of its own):
//!
//! ```ignore
//! let browser = Browser::start(); // or Browser::start_with_language("ru")
//! browser.goto(&format!("{}/gate/lab/north-gate?key={key}", server.url));
//! browser.click("a.choose[href='?direction=in']");
//! let code = browser.read_qr("figure[data-direction='in'] svg");
//! browser.screenshot("gate.png");
//! ```
//!
//! **Blocking by design.** The tests are synchronous `#[test]` functions like the rest
//! of `tests/` (processes, `common::wait_for`): `Browser` holds a private current-thread
//! tokio runtime and every method blocks on it. Do not use it from inside a runtime
//! (`#[tokio::test]`, `block_on`): `start` refuses to. For what the helpers do not
//! cover, `client()` is the fantoccini session and `block_on` runs a future on the
//! runtime.
//!
//! **Failures panic** with what was asked and on which page, like the helpers of
//! `common`. The interaction helpers (`find`, `click`, `fill`, `text`, `read_qr`) wait
//! up to [`WAIT`] for their element, retrying while the page is still loading or
//! re-rendering (no such element, stale element: the gate page reloads itself);
//! `exists` answers at once. Nothing sleeps a fixed time: every wait polls a condition
//! with a deadline.
//!
//! **The processes.** Chromium is Debian's `/usr/bin/chromium` and `chromedriver`
//! Debian's `/usr/bin/chromedriver` (`apt-get install chromium chromium-driver`;
//! `REDOUBT_CHROMIUM` and `REDOUBT_CHROMEDRIVER` name others). chromedriver runs with
//! `--port=0` and prints the port it bound; `/status` is polled until it says ready. It
//! is started by a small `/bin/sh` guardian, the leader of a process group of its own
//! that chromedriver and Chromium join: when the guardian's standard input (a pipe this
//! process holds) closes — at `Drop`, or because the test process died, even of
//! `SIGKILL` — it kills chromedriver, reaps it, and kills whatever is left of the group.
//! `Drop` first closes the session (chromedriver quits Chromium and reaps it), then
//! closes that pipe and waits on the guardian. Each browser has a temporary directory
//! with a fresh profile (`--user-data-dir`), `HOME` and XDG directories (crash reports,
//! NSS database) and `chromedriver.log` (chromedriver's log, with Chromium's standard
//! error); it is kept, and its path printed, when the test panics.
//!
//! **Artifacts.** `screenshot(name)` writes a PNG to `$REDOUBT_SCREENSHOTS`, or else to
//! `target/console-screenshots/`, and prints its path.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long the interaction helpers wait for their element.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver and Chromium may take to start.
const STARTUP: Duration = Duration::from_secs(60);
/// How long closing the session may take at drop.
const CLOSE: Duration = Duration::from_secs(10);
/// Between two looks at a condition.
const POLL: Duration = Duration::from_millis(50);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `sh -c GUARDIAN CHROMEDRIVER ARGS…`: starts chromedriver, then waits for its own
/// standard input to close and takes the whole process group down with it.
const GUARDIAN: &str = r#""$0" "$@" </dev/null &
driver=$!
while read -r _line; do :; done
kill -s KILL "$driver" 2>/dev/null
wait "$driver"
kill -s KILL 0"#;

/// Chromium's flags: headless, no sandbox (tests run as root), nothing fetched from
/// Google, shared memory in `/tmp`.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// One headless Chromium driven through its own chromedriver. See the module's doc.
pub struct Browser {
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    guardian: Child,
    guardian_stdin: Option<ChildStdin>,
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
    startup: Duration,
    version: String,
}

/// A cookie as the browser holds it (HttpOnly ones included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserCookie {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// The path it is scoped to.
    pub path: Option<String>,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `Secure`.
    pub secure: bool,
    /// `SameSite`: `Strict`, `Lax` or `None`; absent when the server set none.
    pub same_site: Option<String>,
}

/// What a form posted from the page (`Browser::post_form`) got back, after redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormResponse {
    /// The final status.
    pub status: u16,
    /// Whether a redirect was followed.
    pub redirected: bool,
    /// The final URL.
    pub url: String,
    /// The final body.
    pub body: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium in English (`en-US`).
    pub fn start() -> Browser {
        Browser::start_with_language("en-US")
    }

    /// Starts chromedriver and a headless Chromium whose language (`--lang`, and the
    /// `Accept-Language` it sends: `intl.accept_languages`) is `lang`, e.g. `ru`.
    pub fn start_with_language(lang: &str) -> Browser {
        let began = Instant::now();
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "Browser blocks on a runtime of its own: use it from a synchronous #[test], \
             not from inside a tokio runtime"
        );
        let chromium = program("REDOUBT_CHROMIUM", CHROMIUM);
        let driver = program("REDOUBT_CHROMEDRIVER", CHROMEDRIVER);
        for p in [&chromium, &driver] {
            assert!(
                p.is_file(),
                "the browser tests need headless Chromium and chromedriver, and {} is missing: \
                 install the Debian packages as root (`apt-get install chromium chromium-driver`; \
                 `cargo xtask test` does it), or name other binaries with REDOUBT_CHROMIUM and \
                 REDOUBT_CHROMEDRIVER",
                p.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("redoubt-browser-")
            .tempdir()
            .unwrap();
        let log = dir.path().join("chromedriver.log");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut guardian = Command::new("/bin/sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg(&driver)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .arg("--append-log")
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let stdout = guardian.stdout.take().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // From here on, a panic drops `browser`, which takes the processes down.
        let mut browser = Browser {
            client: None,
            rt,
            guardian_stdin: guardian.stdin.take(),
            guardian,
            dir: Some(dir),
            log,
            startup: Duration::ZERO,
            version: String::new(),
        };
        let port = browser.driver_port(stdout, began + STARTUP);
        browser.wait_ready(port, began + STARTUP);
        let profile = browser.dir.as_ref().unwrap().path().join("profile");
        let caps = capabilities(&chromium, &profile, lang);
        let url = format!("http://127.0.0.1:{port}");
        let connected = browser.rt.block_on(async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            tokio::time::timeout(
                (began + STARTUP).saturating_duration_since(Instant::now()),
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url),
            )
            .await
        });
        let client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "chromedriver could not start {}: {e}\n{}",
                chromium.display(),
                browser.log_tail()
            ),
            Err(_) => panic!(
                "Chromium did not start within {STARTUP:?}\n{}",
                browser.log_tail()
            ),
        };
        browser.version = client
            .capabilities()
            .and_then(|c| c.get("browserVersion"))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        browser.client = Some(client);
        browser.startup = began.elapsed();
        eprintln!(
            "browser: Chromium {} ready in {} ms (chromedriver on port {port})",
            browser.version,
            browser.startup.as_millis()
        );
        browser
    }

    /// Reads chromedriver's standard output until it says which port it bound
    /// (`ChromeDriver was started successfully on port N.`), then keeps draining it.
    fn driver_port(&self, stdout: std::process::ChildStdout, deadline: Instant) -> u16 {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(port) = line
                        .split_once("started successfully on port ")
                        .and_then(|(_, p)| p.trim().trim_end_matches('.').parse().ok())
                    {
                        return port;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "chromedriver did not say which port it bound within {STARTUP:?}\n{}",
                    self.log_tail()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "chromedriver exited before saying which port it bound\n{}",
                    self.log_tail()
                ),
            }
        }
    }

    /// Polls chromedriver's `/status` until it says `"ready": true`.
    fn wait_ready(&self, port: u16, deadline: Instant) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if status_ready(addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} was not ready within {STARTUP:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// How long `start` took (chromedriver, its readiness, Chromium, the session).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Chromium's version, as chromedriver reported it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// chromedriver's log (with Chromium's standard error), while the browser lives.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The fantoccini session, for what the helpers do not cover (with `block_on`).
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser session is open")
    }

    /// Runs a future (e.g. of `client()`) on the browser's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Opens `url` and waits for it to load (following redirects).
    pub fn goto(&self, url: &str) {
        if let Err(e) = self.rt.block_on(self.client().goto(url)) {
            panic!("cannot open {url}: {e}");
        }
    }

    /// Loads the current page again.
    pub fn reload(&self) {
        if let Err(e) = self.rt.block_on(self.client().refresh()) {
            panic!("cannot reload {}: {e}", self.here());
        }
    }

    /// The address bar.
    pub fn current_url(&self) -> url::Url {
        self.rt
            .block_on(self.client().current_url())
            .unwrap_or_else(|e| panic!("cannot read the current URL: {e}"))
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.rt
            .block_on(self.client().source())
            .unwrap_or_else(|e| panic!("cannot read the page of {}: {e}", self.here()))
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it. An element
    /// goes stale when the page reloads: prefer the helpers that take a selector.
    pub fn find(&self, css: &str) -> Element {
        self.retry(&format!("find `{css}`"), WAIT, |c| async move {
            c.find(Locator::Css(css)).await
        })
    }

    /// Whether an element matches `css` now (no waiting).
    pub fn exists(&self, css: &str) -> bool {
        !self
            .rt
            .block_on(self.client().find_all(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("cannot look for `{css}` on {}: {e}", self.here()))
            .is_empty()
    }

    /// Clicks the first element matching `css` (waiting up to [`WAIT`] for it to be
    /// there and clickable). A click that navigates returns once the new page loaded.
    pub fn click(&self, css: &str) {
        self.retry(&format!("click `{css}`"), WAIT, |c| async move {
            c.find(Locator::Css(css)).await?.click().await
        })
    }

    /// Replaces the value of the field matching `css` with `text`, typed as keys.
    pub fn fill(&self, css: &str, text: &str) {
        self.retry(&format!("fill `{css}`"), WAIT, |c| async move {
            let field = c.find(Locator::Css(css)).await?;
            field.clear().await?;
            field.send_keys(text).await
        })
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.retry(&format!("read the text of `{css}`"), WAIT, |c| async move {
            c.find(Locator::Css(css)).await?.text().await
        })
    }

    /// Waits until the first element matching `css` shows `needle` in its text, and
    /// returns that text; panics with the last text seen after `timeout`.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(no such element)");
        loop {
            let seen = self
                .rt
                .block_on(async { self.client().find(Locator::Css(css)).await?.text().await });
            match seen {
                Ok(text) if text.contains(needle) => return text,
                Ok(text) => last = format!("{text:?}"),
                Err(e) if transient(&e) => {}
                Err(e) => panic!("cannot read `{css}` on {}: {e}", self.here()),
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for `{css}` to show {needle:?} on {}; \
                 last seen: {last}",
                self.here()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Resizes the window (e.g. to a tablet's width).
    pub fn set_size(&self, width: u32, height: u32) {
        if let Err(e) = self
            .rt
            .block_on(self.client().set_window_size(width, height))
        {
            panic!("cannot resize the window to {width}×{height}: {e}");
        }
    }

    /// Saves a PNG of the viewport as `name` (`.png` added when missing) in the
    /// artifacts directory ([`artifacts_dir`]), prints its path and returns it.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .rt
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("cannot take a screenshot of {}: {e}", self.here()));
        save_artifact(name, &png)
    }

    /// The text of the QR code shown in the first element matching `css`: a screenshot
    /// of that element, decoded. Panics when it holds no readable code (the screenshot
    /// is then saved among the artifacts as `read_qr-failed.png`).
    pub fn read_qr(&self, css: &str) -> String {
        let png = self.retry(
            &format!("take a screenshot of `{css}`"),
            WAIT,
            |c| async move { c.find(Locator::Css(css)).await?.screenshot().await },
        );
        decode_qr_png(&png).unwrap_or_else(|e| {
            let saved = save_artifact("read_qr-failed.png", &png);
            panic!(
                "no QR code read in `{css}` on {}: {e:#} (the element's screenshot: {})",
                self.here(),
                saved.display()
            )
        })
    }

    /// Runs `script` in the page (`arguments[i]` are `args`; a returned promise is
    /// awaited) and returns what it returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.client().execute(script, args))
            .unwrap_or_else(|e| panic!("script failed on {}: {e}\n{script}", self.here()))
    }

    /// The cookies the browser would send to the current page, HttpOnly ones included.
    pub fn cookies(&self) -> Vec<BrowserCookie> {
        self.rt
            .block_on(self.client().get_all_cookies())
            .unwrap_or_else(|e| panic!("cannot read the cookies of {}: {e}", self.here()))
            .iter()
            .map(|c| BrowserCookie {
                name: c.name().to_owned(),
                value: c.value().to_owned(),
                path: c.path().map(str::to_owned),
                http_only: c.http_only().unwrap_or(false),
                secure: c.secure().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
            })
            .collect()
    }

    /// The cookie `name` of the current page, if the browser holds one.
    pub fn cookie(&self, name: &str) -> Option<BrowserCookie> {
        self.cookies().into_iter().find(|c| c.name == name)
    }

    /// Posts `fields` as `application/x-www-form-urlencoded` to `url` from the page
    /// (`fetch` with the page's cookies, `credentials: 'same-origin'`), following
    /// redirects: the way to forge a request the page's own forms would not send.
    pub fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> FormResponse {
        let pairs: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
        let answer = self.execute(
            "return fetch(arguments[0], {method: 'POST', body: new URLSearchParams(arguments[1]), \
             credentials: 'same-origin'}).then(async r => ({status: r.status, \
             redirected: r.redirected, url: r.url, body: await r.text()}));",
            vec![json!(url), Value::Array(pairs)],
        );
        FormResponse {
            status: answer["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or_else(|| panic!("fetch answered no status: {answer}")),
            redirected: answer["redirected"].as_bool().unwrap_or(false),
            url: answer["url"].as_str().unwrap_or_default().to_owned(),
            body: answer["body"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// Runs `step` until it succeeds, retrying for up to `timeout` while it fails the
    /// way a page that is still loading or re-rendering makes it fail.
    fn retry<'a, T, F, Fut>(&'a self, what: &str, timeout: Duration, mut step: F) -> T
    where
        F: FnMut(&'a Client) -> Fut,
        Fut: Future<Output = Result<T, CmdError>> + 'a,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match self.rt.block_on(step(self.client())) {
                Ok(v) => return v,
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(e) => panic!("cannot {what} on {}: {e}", self.here()),
            }
        }
    }

    /// The current URL for an error message, never failing.
    fn here(&self) -> String {
        match &self.client {
            Some(c) => self
                .rt
                .block_on(c.current_url())
                .map_or_else(|e| format!("(unknown page: {e})"), |u| u.to_string()),
            None => "(no session)".into(),
        }
    }

    /// The end of chromedriver's log, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "chromedriver's log ({}), last lines:\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first: chromedriver quits Chromium and reaps it.
        if let Some(client) = self.client.take()
            && tokio::runtime::Handle::try_current().is_err()
        {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(CLOSE, client.close()).await });
        }
        // Then the guardian takes down chromedriver and anything left in its group.
        drop(self.guardian_stdin.take());
        let deadline = Instant::now() + CLOSE;
        while matches!(self.guardian.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                // Not yet reaped, so its process group id cannot have been reused.
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_child(&self.guardian),
                    rustix::process::Signal::KILL,
                );
                let _ = self.guardian.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "browser: chromedriver's log kept at {}",
                kept.join("chromedriver.log").display()
            );
        }
    }
}

/// The program `var` names, or `default`.
fn program(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The session's capabilities: Chromium headless, its profile in `profile`, the
/// language `lang`, and the server's certificate accepted (it is issued by the
/// organization's own CA, which the browser does not know).
fn capabilities(chromium: &Path, profile: &Path, lang: &str) -> Capabilities {
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--lang={lang}"));
    serde_json::from_value(json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
            "prefs": { "intl": { "accept_languages": lang } },
        },
    }))
    .unwrap()
}

/// Whether chromedriver at `addr` answers `/status` with `"ready": true`.
fn status_ready(addr: SocketAddr) -> bool {
    status_body(addr).is_some_and(|body| {
        serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true)
    })
}

/// The body of `GET /status`, read up to its `Content-Length`: chromedriver answers
/// `Connection: close` but keeps the connection open (and HTTP/1.0 gets nothing).
fn status_body(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            if answer.len() >= end + 4 + length {
                return Some(answer[end + 4..end + 4 + length].to_vec());
            }
        }
        match stream.read(&mut chunk).ok()? {
            0 => return None,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Errors a page that is loading or re-rendering gives: worth another try.
fn transient(e: &CmdError) -> bool {
    matches!(
        e,
        CmdError::Standard(w) if matches!(
            w.error,
            ErrorStatus::NoSuchElement
                | ErrorStatus::StaleElementReference
                | ErrorStatus::ElementNotInteractable
                | ErrorStatus::ElementClickIntercepted
        )
    )
}

/// Where screenshots go: `$REDOUBT_SCREENSHOTS`, or `target/console-screenshots/`.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("REDOUBT_SCREENSHOTS").map_or_else(
        || {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("CARGO_TARGET_TMPDIR is inside the target directory")
                .join("console-screenshots")
        },
        PathBuf::from,
    )
}

/// Writes `bytes` as `name` (`.png` added when missing) in [`artifacts_dir`].
fn save_artifact(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let mut path = dir.join(name);
    if path.extension().is_none_or(|e| e != "png") {
        path.set_extension("png");
    }
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("browser: screenshot {}", path.display());
    path
}

/// The text of the one QR code in a PNG image (greyscale, RGB or RGBA, any depth;
/// transparency over white).
pub fn decode_qr_png(png_bytes: &[u8]) -> anyhow::Result<String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().context("not a PNG image")?;
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .context("the PNG image is too large")?
    ];
    let info = reader.next_frame(&mut buf).context("a corrupt PNG image")?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("a palette PNG was not expanded"),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let luma = |x: usize, y: usize| -> u8 {
        let p = &buf[y * info.line_size + x * channels..][..channels];
        let (v, alpha) = match *p {
            [v] => (u32::from(v), 255),
            [v, a] => (u32::from(v), u32::from(a)),
            [r, g, b] => (rgb_luma(r, g, b), 255),
            [r, g, b, a] => (rgb_luma(r, g, b), u32::from(a)),
            _ => (255, 255),
        };
        // Over a white background; at most 255.
        u8::try_from((v * alpha + 255 * (255 - alpha)) / 255).unwrap_or(255)
    };
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, luma);
    match img.detect_grids().as_slice() {
        [] => bail!("no QR code found in the {w}×{h} image"),
        [grid] => grid
            .decode()
            .map(|(_, text)| text)
            .map_err(|e| anyhow!("a QR code was found in the {w}×{h} image but not read: {e}")),
        many => bail!(
            "{} QR codes found in the {w}×{h} image, not one",
            many.len()
        ),
    }
}

/// ITU-R BT.601 luma of an sRGB pixel.
fn rgb_luma(r: u8, g: u8, b: u8) -> u32 {
    (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)) / 1000
}
