//! Console sign-in: passwords (argon2id), the second factor (TOTP, RFC 6238, each code
//! good once; or a recovery code, each good once), sessions in a `__Host-` cookie
//! (`HttpOnly; Secure; SameSite=Strict`) with idle and absolute expiry, the lock that
//! follows failed attempts, and the CSRF token of every state-changing request.
//!
//! The cookie holds a 256-bit secret; the database holds its SHA-256. The CSRF token
//! is derived from the cookie's secret (SHA-256 with a label), so it is never stored
//! and a page from another origin, which cannot read the cookie, cannot know it. Before
//! sign-in the same holds for a pre-session cookie the sign-in page sets.

use std::net::SocketAddr;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::ACCEPT_LANGUAGE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use rand_core::RngCore;
use redoubt_proto::Timestamp;
use redoubt_proto::api::{CredentialId, Role};
use redoubt_store::ConsoleAccount;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Totp};

use super::i18n::{Lang, Tr};
use crate::error::ServiceError;
pub use crate::http::cookie;
use crate::http::{Admin, HttpState};
use crate::routes::Access;

/// The session cookie (`__Host-`: only over HTTPS, for this host, path `/`).
pub const SESSION_COOKIE: &str = "__Host-redoubt_console";
/// The pre-session cookie the sign-in form's CSRF token is derived from.
pub const PRE_COOKIE: &str = "__Host-redoubt_signin";
/// A session ends after this long without a request.
pub const IDLE_SECS: u64 = 30 * 60;
/// A session ends this long after sign-in, used or not.
pub const ABSOLUTE_SECS: u64 = 12 * 3600;
/// The session's last use is written at most this often.
const TOUCH_EVERY_SECS: i64 = 60;
/// Failed sign-ins an account may have before it is locked.
pub const FREE_FAILURES: u32 = 5;
/// The longest lock.
const MAX_LOCK_SECS: u64 = 3600;
/// Recovery codes made with an account.
pub const RECOVERY_CODES: usize = 10;
/// The issuer shown by authenticator apps.
const ISSUER: &str = "Redoubt";

/// Seconds an account is locked after `failures` failed sign-ins in a row: nothing for
/// the first five, then 30 s, doubling up to an hour.
pub fn lock_for(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        0
    } else {
        let doublings = (failures - FREE_FAILURES).min(20);
        (30u64 << doublings).min(MAX_LOCK_SECS)
    }
}

/// A new random secret (256 bits) as 64 hex digits.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// SHA-256 of a cookie's secret, as stored.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The CSRF token of the cookie secret `secret`.
pub fn csrf_of(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"redoubt console csrf v1\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Compares two strings in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A `Set-Cookie` value for `name` (`max_age` 0 clears it).
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Hashes a password with argon2id and a random salt (a PHC string).
pub fn hash_password(password: &str) -> Result<String, ServiceError> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("cannot hash a password: {e}")))
}

/// Whether `password` matches the PHC string `hash`.
pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of a password nobody has, verified against when the name is unknown so a
/// refusal takes as long either way.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&new_secret()).unwrap_or_default())
}

/// Checks a password and refuses weak ones.
pub fn check_new_password(password: &str) -> Result<(), &'static str> {
    if password.chars().count() < 12 {
        Err("account.password_short")
    } else if password.len() > 1024 {
        Err("account.password_long")
    } else {
        Ok(())
    }
}

/// The key TOTP secrets are sealed with: derived from the organization key, so a copy
/// of the database alone does not give anyone the second factors.
fn sealing_key(org: &ed25519_dalek::SigningKey) -> Aes256Gcm {
    let mut h = Sha256::new();
    h.update(b"redoubt console totp seal v1\0");
    h.update(org.to_bytes());
    let key: [u8; 32] = h.finalize().into();
    Aes256Gcm::new(&key.into())
}

/// Seals a TOTP secret for the database (nonce ‖ ciphertext).
pub fn seal_totp(org: &ed25519_dalek::SigningKey, secret: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let mut nonce = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let ct = sealing_key(org)
        .encrypt(&Nonce::from(nonce), secret)
        .map_err(|_| ServiceError::Internal("cannot seal a TOTP secret".into()))?;
    Ok([&nonce[..], &ct].concat())
}

/// Opens a sealed TOTP secret.
pub fn open_totp(org: &ed25519_dalek::SigningKey, sealed: &[u8]) -> Result<Vec<u8>, ServiceError> {
    if sealed.len() < 12 + 16 {
        return Err(ServiceError::Internal(
            "a sealed TOTP secret is too short".into(),
        ));
    }
    let (nonce, ct) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce
        .try_into()
        .map_err(|_| ServiceError::Internal("a sealed TOTP secret is too short".into()))?;
    sealing_key(org)
        .decrypt(&Nonce::from(nonce), ct)
        .map_err(|_| {
            ServiceError::Internal(
                "a TOTP secret does not open with this organization's key".into(),
            )
        })
}

/// The TOTP generator of `account` with `secret` (SHA-1, 6 digits, 30 s, one step of
/// skew either way: what authenticator apps support).
pub fn totp(account: &str, secret: Vec<u8>) -> Result<Totp, ServiceError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_account_name(account.replace(':', "_"))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| ServiceError::Internal(format!("cannot make a TOTP generator: {e}")))
}

/// A new account's second factor: the TOTP secret (160 bits), its `otpauth://` URL for
/// the authenticator app, and recovery codes (each 60 bits, `xxxxx-xxxxx-xxxxx`).
pub struct NewFactor {
    /// The raw secret.
    pub secret: Vec<u8>,
    /// `otpauth://totp/…`
    pub url: String,
    /// The recovery codes, shown once.
    pub recovery: Vec<String>,
}

impl NewFactor {
    /// Makes one for `account`.
    pub fn new(account: &str) -> Result<NewFactor, ServiceError> {
        let mut secret = vec![0u8; 20];
        rand_core::OsRng.fill_bytes(&mut secret);
        let url = totp(account, secret.clone())?
            .to_url()
            .map_err(|e| ServiceError::Internal(format!("cannot make the otpauth URL: {e}")))?;
        let recovery = (0..RECOVERY_CODES)
            .map(|_| {
                let mut b = [0u8; 8];
                rand_core::OsRng.fill_bytes(&mut b);
                let h = hex::encode(b);
                format!("{}-{}-{}", &h[0..5], &h[5..10], &h[10..15])
            })
            .collect();
        Ok(NewFactor {
            secret,
            url,
            recovery,
        })
    }

    /// SHA-256 of each recovery code, as stored.
    pub fn recovery_hashes(&self) -> Vec<[u8; 32]> {
        self.recovery.iter().map(|c| recovery_hash(c)).collect()
    }
}

/// SHA-256 of a recovery code as typed (case, spaces and dashes do not matter).
pub fn recovery_hash(code: &str) -> [u8; 32] {
    let norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Sha256::digest(format!("redoubt console recovery v1\0{norm}").as_bytes()).into()
}

/// What a sign-in attempt decided.
pub enum Verdict {
    /// Password and code good: the account and the factor to spend.
    Good(Box<ConsoleAccount>, redoubt_store::SecondFactor),
    /// Something was wrong (which, the caller does not say): the account, if the name
    /// exists, whose failures count.
    Bad(Option<Box<ConsoleAccount>>),
    /// The account is locked until then.
    Locked(Timestamp),
}

/// Judges a sign-in attempt (no write: the caller records the outcome).
pub fn judge(
    org: &ed25519_dalek::SigningKey,
    account: Option<ConsoleAccount>,
    password: &str,
    code: &str,
    now: Timestamp,
) -> Result<Verdict, ServiceError> {
    let Some(account) = account.filter(|a| a.disabled_at.is_none()) else {
        // As slow as a real check.
        let _ = password_matches(password, decoy_hash());
        return Ok(Verdict::Bad(None));
    };
    if account.locked_until > now {
        return Ok(Verdict::Locked(account.locked_until));
    }
    if !password_matches(password, &account.password_hash) {
        return Ok(Verdict::Bad(Some(Box::new(account))));
    }
    let code = code.trim();
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let factor = if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let secret = open_totp(org, &account.totp_sealed)?;
        totp(&account.name, secret)?
            .check(&digits, now.unix().max(0) as u64)
            .map(|step| redoubt_store::SecondFactor::Totp(step as i64))
    } else if !code.is_empty() && code.len() <= 64 {
        Some(redoubt_store::SecondFactor::Recovery(recovery_hash(code)))
    } else {
        None
    };
    Ok(match factor {
        // A TOTP step already used is refused when the store spends it.
        Some(f) => Verdict::Good(Box::new(account), f),
        None => Verdict::Bad(Some(Box::new(account))),
    })
}

/// A signed-in officer: the session, the account, and what the page needs.
pub struct Officer {
    /// The account.
    pub account: ConsoleAccount,
    /// SHA-256 of the session cookie's secret.
    pub token_hash: [u8; 32],
    /// The session's CSRF token (put in every form).
    pub csrf: String,
    /// The session's absolute expiry.
    pub expires_at: Timestamp,
    /// The client's address.
    pub source: String,
    /// The language the pages are in.
    pub lang: Lang,
}

impl Officer {
    /// The words of the officer's language.
    pub fn tr(&self) -> Tr {
        Tr { lang: self.lang }
    }

    /// Whether the officer's role may do what `needed` may.
    pub fn can(&self, needed: Role) -> bool {
        self.account.role.permits(needed)
    }

    /// The officer as the admin the services take (`console:NAME` in the audit log).
    pub fn admin(&self) -> Admin {
        Admin {
            id: CredentialId::from_hash(&self.token_hash),
            expires_at: self.expires_at,
            name: self.account.name.clone(),
            role: self.account.role,
            source: self.source.clone(),
            console: true,
        }
    }
}

/// The language of a request without a session: the pre-session cookie's choice, else
/// the browser's.
pub fn browser_lang(headers: &HeaderMap) -> Lang {
    cookie(headers, "redoubt_lang")
        .and_then(|l| Lang::from_tag(&l))
        .unwrap_or_else(|| {
            Lang::from_accept_language(headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()))
        })
}

/// Why a request has no officer.
pub enum NoOfficer {
    /// Not signed in (or the session ended): to the sign-in page.
    SignIn(String),
    /// Signed in, but the role may not call this route.
    Forbidden(Lang),
    /// The database failed.
    Failed(ServiceError),
}

impl IntoResponse for NoOfficer {
    fn into_response(self) -> Response {
        match self {
            NoOfficer::SignIn(next) => {
                let target = if next.starts_with("/console") && !next.starts_with("/console/login")
                {
                    format!(
                        "/console/login?next={}",
                        url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                    )
                } else {
                    "/console/login".to_owned()
                };
                Redirect::to(&target).into_response()
            }
            NoOfficer::Forbidden(lang) => super::error_page(
                Tr { lang },
                axum::http::StatusCode::FORBIDDEN,
                "error.forbidden",
            ),
            NoOfficer::Failed(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<HttpState> for Officer {
    type Rejection = NoOfficer;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let next = if parts.method == Method::GET {
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(NoOfficer::SignIn(next));
        };
        let hash = secret_hash(&secret);
        let now = Timestamp::now();
        let session = state
            .app
            .store
            .console_session(&hash, now, IDLE_SECS)
            .await
            .map_err(|e| NoOfficer::Failed(e.into()))?
            .ok_or(NoOfficer::SignIn(next))?;
        let lang = session
            .account
            .language
            .as_deref()
            .and_then(Lang::from_tag)
            .unwrap_or_else(|| browser_lang(&parts.headers));
        // The route table decides which roles may call a route, before any body is read.
        match state.access_of(parts) {
            Some(Access::Console(roles)) if roles.contains(&session.account.role) => {}
            _ => return Err(NoOfficer::Forbidden(lang)),
        }
        if now.unix() - session.last_seen_at.unix() >= TOUCH_EVERY_SECS {
            state
                .app
                .store
                .touch_console_session(&hash, now)
                .await
                .map_err(|e| NoOfficer::Failed(e.into()))?;
        }
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        Ok(Officer {
            csrf: csrf_of(&secret),
            account: session.account,
            token_hash: hash,
            expires_at: session.expires_at,
            source,
            lang,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_grows_then_stops_at_an_hour() {
        let locks: Vec<u64> = (0..14).map(lock_for).collect();
        assert_eq!(
            locks,
            [0, 0, 0, 0, 0, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        );
        assert_eq!(lock_for(u32::MAX), 3600);
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_organization_key() {
        let org = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let sealed = seal_totp(&org, b"0123456789abcdefghij").unwrap();
        assert_eq!(open_totp(&org, &sealed).unwrap(), b"0123456789abcdefghij");
        assert!(open_totp(&other, &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_totp(&org, &tampered).is_err());
        assert!(open_totp(&org, &sealed[..10]).is_err());
    }

    #[test]
    fn codes_are_judged_by_the_clock_and_recovery_codes_by_hash() {
        let org = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let f = NewFactor::new("alice").unwrap();
        assert!(
            f.url.starts_with("otpauth://totp/Redoubt:alice?"),
            "{}",
            f.url
        );
        let account = |locked_until| ConsoleAccount {
            id: 1,
            name: "alice".into(),
            role: Role::Owner,
            password_hash: hash_password("correct horse battery").unwrap(),
            totp_sealed: seal_totp(&org, &f.secret).unwrap(),
            totp_last_step: 0,
            language: None,
            created_at: Timestamp(0),
            created_by: "test".into(),
            disabled_at: None,
            failed_attempts: 0,
            locked_until: Timestamp(locked_until),
            last_sign_in_at: None,
        };
        let now = Timestamp(1_800_000_000);
        let generator = totp("alice", f.secret.clone()).unwrap();
        let code = generator.generate(now.unix() as u64).to_string();
        let good = |v: Verdict| matches!(v, Verdict::Good(..));
        assert!(good(
            judge(&org, Some(account(0)), "correct horse battery", &code, now).unwrap()
        ));
        // The code of two steps ago, a wrong password, a wrong code: refused alike.
        let old = generator.generate(now.unix() as u64 - 60).to_string();
        for (pw, c) in [
            ("correct horse battery", old.as_str()),
            ("wrong", code.as_str()),
            ("correct horse battery", "000000"),
            ("correct horse battery", ""),
        ] {
            if c == "000000" && code == "000000" {
                continue;
            }
            assert!(matches!(
                judge(&org, Some(account(0)), pw, c, now).unwrap(),
                Verdict::Bad(Some(_))
            ));
        }
        assert!(matches!(
            judge(&org, None, "x", &code, now).unwrap(),
            Verdict::Bad(None)
        ));
        assert!(matches!(
            judge(
                &org,
                Some(account(now.unix() + 5)),
                "correct horse battery",
                &code,
                now
            )
            .unwrap(),
            Verdict::Locked(_)
        ));
        // A recovery code as typed, whatever its case and dashes.
        let typed = f.recovery[0].to_uppercase().replace('-', " ");
        match judge(&org, Some(account(0)), "correct horse battery", &typed, now).unwrap() {
            Verdict::Good(_, redoubt_store::SecondFactor::Recovery(h)) => {
                assert_eq!(h, f.recovery_hashes()[0]);
            }
            _ => panic!("the recovery code was not taken"),
        }
    }

    #[test]
    fn the_csrf_token_follows_the_cookie() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert!(same(&csrf_of(&a), &csrf_of(&a)));
        assert!(!same(&csrf_of(&a), &csrf_of(&b)));
        assert!(!same("abc", "abcd"));
    }
}
