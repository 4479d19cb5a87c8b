//! Making console accounts: the first one by `redoubt-server admin create` on the
//! server's machine, the others by owners in the console. Either way the account gets a
//! password (chosen, or a random one shown once), a TOTP secret sealed with the
//! organization key, and recovery codes stored by hash; the making is audited in the
//! same transaction.

use ed25519_dalek::SigningKey;
use redoubt_proto::Timestamp;
use redoubt_proto::api::Role;
use redoubt_store::{NewConsoleAccount, Store};

use super::auth::{self, NewFactor};
use crate::app::App;
use crate::audit::Who;
use crate::error::ServiceError;

/// A new account's secrets, to show once.
pub struct Made {
    /// Its password (the one chosen, or the random one made).
    pub password: String,
    /// Its second factor.
    pub factor: NewFactor,
}

/// A random first password: 20 characters from an alphabet without look-alikes
/// (about 110 bits).
pub fn random_password() -> String {
    use rand_core::RngCore;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        let mut b = [0u8; 1];
        rand_core::OsRng.fill_bytes(&mut b);
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        if (b[0] as usize) < limit {
            out.push(ALPHABET[b[0] as usize % ALPHABET.len()] as char);
        }
    }
    out
}

/// Makes account `name` with `role` through the running server's services.
pub async fn create(
    app: &App,
    by: &Who,
    name: &str,
    role: Role,
    password: Option<String>,
) -> Result<Made, ServiceError> {
    create_in(&app.store, &app.keys.org_signing, by, name, role, password).await
}

/// Makes account `name` with `role` in `store`.
pub async fn create_in(
    store: &Store,
    org: &SigningKey,
    by: &Who,
    name: &str,
    role: Role,
    password: Option<String>,
) -> Result<Made, ServiceError> {
    if !super::pages::valid_account_name(name) {
        return Err(ServiceError::BadRequest(
            "an account name is 1 to 64 letters, digits, '.', '_', '-' or '@'".into(),
        ));
    }
    let password = match password {
        Some(p) => {
            auth::check_new_password(&p).map_err(|_| {
                ServiceError::BadRequest("a password has 12 to 1024 characters".into())
            })?;
            p
        }
        None => random_password(),
    };
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))??;
    let factor = NewFactor::new(name)?;
    let sealed = auth::seal_totp(org, &factor.secret)?;
    let drafts = [by.draft(
        "console.account_create",
        None,
        serde_json::json!({"name": name, "role": role.as_str()}),
    )];
    store
        .create_console_account(
            &NewConsoleAccount {
                name,
                role,
                password_hash: &hash,
                totp_sealed: &sealed,
                recovery_hashes: &factor.recovery_hashes(),
                created_by: &by.actor,
            },
            Timestamp::now(),
            &drafts,
            &crate::audit::sign_with(org),
        )
        .await?;
    Ok(Made { password, factor })
}

/// Gives account `id` a new random password, second factor and recovery codes (an
/// owner's help for someone who lost theirs); its sessions end.
pub async fn reset(app: &App, by: &Who, id: i64) -> Result<(String, Made), ServiceError> {
    let account = app
        .store
        .console_account(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("no console account {id}")))?;
    let password = random_password();
    let pw = password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))??;
    let factor = NewFactor::new(&account.name)?;
    let sealed = auth::seal_totp(&app.keys.org_signing, &factor.secret)?;
    let drafts = [by.draft(
        "console.account_reset",
        None,
        serde_json::json!({"name": account.name}),
    )];
    app.store
        .reset_console_account(
            id,
            &hash,
            &sealed,
            &factor.recovery_hashes(),
            Timestamp::now(),
            &drafts,
            &crate::audit::signer(app),
        )
        .await?;
    Ok((account.name, Made { password, factor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_passwords_are_long_and_differ() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(auth::check_new_password(&a).is_ok());
    }
}
