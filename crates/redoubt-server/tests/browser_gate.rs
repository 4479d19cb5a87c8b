//! The gate terminal in a real browser (headless Chromium, `mod browser`): the link an
//! officer created leaves no key in the address bar, the QR code the page shows decodes
//! to a check-in code signed by that checkpoint's key, and a revoked credential shows the
//! no-credential page at the next load.
#![allow(clippy::unwrap_used)]

mod browser;
mod common;

use browser::{Browser, WAIT};
use common::Server;
use redoubt_proto::envelope::decode_public_key;
use redoubt_proto::{CheckpointCode, Direction, Timestamp};
use serde_json::Value;

/// The public key of `checkpoint` in `zones show` output.
fn checkpoint_key(zone: &Value, checkpoint: &str) -> ed25519_dalek::VerifyingKey {
    let key = zone["checkpoint_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == checkpoint)
        .unwrap_or_else(|| panic!("no key of {checkpoint} in {zone}"));
    decode_public_key(key["public_key"].as_str().unwrap()).unwrap()
}

/// Checks that `text` is a check-in code of `lab` at `north-gate`, valid now and signed
/// by that checkpoint's key (the checks the agent makes offline, from its bundle).
fn assert_check_in_code(text: &str, zone: &Value) {
    let code = CheckpointCode::decode(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(code.code.zone.as_str(), "lab");
    assert_eq!(code.code.checkpoint.as_str(), "north-gate");
    assert_eq!(code.code.direction, Direction::In);
    let now = Timestamp::now();
    assert!(
        code.code.not_before <= now.plus_secs(1) && now <= code.code.not_after,
        "not valid now ({}): {:?}",
        now.unix(),
        code.code
    );
    assert!(code.signed_by(&checkpoint_key(zone, "north-gate")));
    assert!(
        !code.signed_by(&checkpoint_key(zone, "south-gate")),
        "each checkpoint signs with its own key"
    );
}

#[test]
fn the_gate_page_shows_a_check_in_code_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"), &[]);
    let file = tmp.path().join("lab.toml");
    std::fs::write(
        &file,
        "name = \"lab\"\ndescription = \"test zone\"\nmode = \"secure-site\"\n\
         checkpoints = [\"north-gate\", \"south-gate\"]\n",
    )
    .unwrap();
    server.cli_json(&["zones", "apply", file.to_str().unwrap()]);
    let zone = server.cli_json(&["zones", "show", "lab"]);
    let gate = server.cli_json(&["zones", "gate", "lab", "north-gate"]);
    let link = gate["url"].as_str().unwrap();
    let key = &link[link.find("key=").unwrap() + 4..];
    let id = gate["id"].as_str().unwrap();

    let browser = Browser::start();
    // The link sets the cookie and redirects: the key is no longer in the address bar.
    browser.goto(link);
    let here = browser.current_url();
    assert_eq!(here.path(), "/gate/lab/north-gate");
    assert_eq!(here.query(), None, "{here}");
    assert!(!here.as_str().contains(key));
    let cookie = browser.cookie("redoubt_gate").unwrap();
    assert_eq!(cookie.value, key, "the cookie holds the credential");
    assert!(cookie.http_only && cookie.secure, "{cookie:?}");
    assert_eq!(cookie.path.as_deref(), Some("/gate/lab/north-gate"));
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"));
    // No code before a direction is chosen.
    assert!(
        browser
            .text("h1")
            .contains("Zone lab — checkpoint north-gate")
    );
    assert!(!browser.exists("svg"));

    browser.click("a.choose[href='?direction=in']");
    browser.wait_for_text("figcaption", "CHECK IN", WAIT);
    assert_eq!(browser.current_url().query(), Some("direction=in"));
    assert!(!browser.exists("figure[data-direction='out']"));
    let code = browser.read_qr("figure[data-direction='in'] svg");
    assert_eq!(
        code,
        browser.text("figure .text"),
        "the QR code is the code shown"
    );
    assert_check_in_code(&code, &zone);
    browser.screenshot("gate.png");
    // A tablet held upright: the code is still readable.
    browser.set_size(800, 1280);
    let upright = browser.read_qr("figure[data-direction='in'] svg");
    assert_check_in_code(&upright, &zone);
    browser.screenshot("gate-tablet.png");
    // The gate takes no forms: a post from the page, with its cookie, is refused.
    let posted = browser.post_form(browser.current_url().as_str(), &[("direction", "out")]);
    assert_eq!(posted.status, 405, "{posted:?}");

    // Revoked: the next load of the page shows no code, only the no-credential page.
    server.cli_json(&["zones", "gate-revoke", "lab", id]);
    browser.reload();
    browser.wait_for_text("h1", "no valid credential", WAIT);
    assert!(!browser.exists("svg"));
    assert!(!browser.source().contains("RDZ1."));
    server.stop();
}

/// The harness itself: a browser started in Russian asks for Russian (what the console
/// picks its default language from), seen by a plain HTTP listener on loopback.
#[test]
fn a_browser_started_in_a_language_asks_for_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut head = Vec::new();
            let mut byte = [0; 1];
            while !head.ends_with(b"\r\n\r\n")
                && std::io::Read::read(&mut stream, &mut byte).unwrap() == 1
            {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let language = head
                .lines()
                .find_map(|l| l.strip_prefix("accept-language:"))
                .map(|v| v.trim().to_owned());
            std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\
                  connection: close\r\n\r\n<p>hello</p>\n",
            )
            .unwrap();
            if tx.send(language).is_err() {
                break;
            }
        }
    });
    let browser = Browser::start_with_language("ru");
    browser.goto(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(browser.text("p"), "hello");
    assert_eq!(rx.recv().unwrap().as_deref(), Some("ru"));
    assert_eq!(
        browser.execute("return navigator.languages", vec![]),
        serde_json::json!(["ru"])
    );
}
