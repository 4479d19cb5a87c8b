//! The messenger's connection to the server: a device session opened by signing a
//! fresh challenge with the messenger key and showing the device key's delegation of it
//! (the token lives in memory only; the device key is never used here), JSON calls
//! under `/api/v1/messenger`, blob transfer, and the push WebSocket. A call that meets
//! an expired session (401) opens a new one and is retried once. A server that does not
//! answer is left for the next of the organization's addresses (the session grant
//! carries them; the messenger keeps them for its next start), with a new session there.

use ed25519_dalek::{Signer, SigningKey};
use redoubt_client::{ClientError, DeviceSocket, ServerClient, ServerList};
use redoubt_device::PublicIdentity;
use redoubt_proto::envelope::encode_signature;
use redoubt_proto::messaging::{
    Challenge, MessengerLimits, SessionGranted, SessionRequest, session_message,
};
use redoubt_proto::{DeviceId, Fingerprint, SignedEnvelope, Timestamp, UserName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use url::Url;

/// Prefix of the messenger API.
pub const MESSENGER: &str = "/api/v1/messenger";

/// An authenticated connection to the server.
pub struct Net {
    servers: std::sync::Mutex<ServerList>,
    pin: Fingerprint,
    device_id: DeviceId,
    key: SigningKey,
    delegation: SignedEnvelope,
    session: Mutex<Option<(ServerClient, SessionGranted)>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("server", &self.server().as_str())
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn is_unauthorized(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 401, .. })
}

/// The server did not answer at all (as opposed to answering with an error).
fn is_unreachable(e: &ClientError) -> bool {
    matches!(e, ClientError::Transport { .. })
}

impl Net {
    /// A connection for the messenger of the device `identity`, proving itself with
    /// the messenger key `key` that `delegation` (signed by the device key) names.
    pub fn new(
        identity: &PublicIdentity,
        key: SigningKey,
        delegation: SignedEnvelope,
    ) -> Result<Net, ClientError> {
        ServerClient::new(identity.server.clone(), identity.ca_fingerprint, None)?;
        Ok(Net {
            servers: std::sync::Mutex::new(ServerList::new(identity.server.clone())),
            pin: identity.ca_fingerprint,
            device_id: identity.device_id.clone(),
            key,
            delegation,
            session: Mutex::new(None),
        })
    }

    fn list(&self) -> std::sync::MutexGuard<'_, ServerList> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server address in use.
    pub fn server(&self) -> Url {
        self.list().current().clone()
    }

    /// Every server address known, in the order they are tried.
    pub fn servers(&self) -> Vec<Url> {
        self.list().all().to_vec()
    }

    /// Takes the organization's list of server addresses.
    pub fn learn_servers(&self, urls: &[Url]) {
        self.list().learn(urls);
    }

    /// Opens a session unless a fresh one is held; returns the client that carries it.
    /// A server that does not answer is left for the next address, each tried once.
    async fn client(&self) -> Result<(ServerClient, SessionGranted), ClientError> {
        let mut held = self.session.lock().await;
        if let Some((c, g)) = held.as_ref()
            && g.expires_at > Timestamp::now().plus_secs(30)
        {
            return Ok((c.clone(), g.clone()));
        }
        let mut attempts = self.list().all().len();
        loop {
            let base = ServerClient::new(self.server(), self.pin, None)?;
            match self.open_session(&base).await {
                Ok((client, granted)) => {
                    let mut list = self.list();
                    list.succeeded();
                    list.learn(&granted.servers);
                    drop(list);
                    *held = Some((client.clone(), granted.clone()));
                    return Ok((client, granted));
                }
                Err(e) if is_unreachable(&e) && attempts > 1 => {
                    attempts -= 1;
                    let next = {
                        let mut list = self.list();
                        list.failed();
                        list.current().clone()
                    };
                    tracing::warn!(error = %e, next = %next, "the server does not answer; trying the next one");
                }
                Err(e) => {
                    // Start the next attempt from the next address.
                    if is_unreachable(&e) {
                        self.list().failed();
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Opens a session on `base`: a fresh challenge signed with the messenger key.
    async fn open_session(
        &self,
        base: &ServerClient,
    ) -> Result<(ServerClient, SessionGranted), ClientError> {
        let challenge: Challenge = base
            .post("/api/v1/device/challenge", &serde_json::json!({}))
            .await?;
        let signature = self
            .key
            .sign(&session_message(&challenge.nonce, &self.device_id));
        let granted: SessionGranted = base
            .post(
                "/api/v1/device/session",
                &SessionRequest {
                    device_id: self.device_id.clone(),
                    nonce: challenge.nonce,
                    signature: encode_signature(&signature),
                    delegation: self.delegation.clone(),
                },
            )
            .await?;
        let client = base.with_authorization(format!("Device {}", granted.token));
        Ok((client, granted))
    }

    async fn forget_session(&self) {
        *self.session.lock().await = None;
    }

    /// The server's limits (opens a session if needed).
    pub async fn limits(&self) -> Result<MessengerLimits, ClientError> {
        Ok(self.client().await?.1.limits)
    }

    /// The device's owner as the server knows it.
    pub async fn user(&self) -> Result<UserName, ClientError> {
        Ok(self.client().await?.1.user)
    }

    /// Runs `call` with the session's client; on 401 (session expired or the server
    /// restarted) opens a new session and runs it once more; a server that stopped
    /// answering is left for the next address, with a new session there.
    async fn with_session<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(ServerClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let (c, _) = self.client().await?;
        match call(c).await {
            Err(e) if is_unauthorized(&e) => {
                self.forget_session().await;
                call(self.client().await?.0).await
            }
            Err(e) if is_unreachable(&e) && self.list().all().len() > 1 => {
                tracing::warn!(error = %e, "the server stopped answering; trying the next one");
                self.forget_session().await;
                self.list().failed();
                call(self.client().await?.0).await
            }
            other => other,
        }
    }

    /// `GET /api/v1/messenger{path}`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let full = format!("{MESSENGER}{path}");
        self.with_session(|c| {
            let full = full.clone();
            async move { c.get(&full).await }
        })
        .await
    }

    /// `POST /api/v1/messenger{path}` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let full = format!("{MESSENGER}{path}");
        let body = serde_json::to_value(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.with_session(|c| {
            let (full, body) = (full.clone(), body.clone());
            async move { c.post(&full, &body).await }
        })
        .await
    }

    /// Uploads bytes to `POST /api/v1/messenger{path}`.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let full = format!("{MESSENGER}{path}");
        self.with_session(|c| {
            let (full, body) = (full.clone(), body.clone());
            async move { c.post_bytes(&full, body).await }
        })
        .await
    }

    /// Downloads `GET /api/v1/messenger{path}`.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let full = format!("{MESSENGER}{path}");
        self.with_session(|c| {
            let full = full.clone();
            async move { c.get_bytes(&full).await }
        })
        .await
    }

    /// Opens the push channel (on the next server if this one stopped answering).
    pub async fn push_channel(&self) -> Result<DeviceSocket, ClientError> {
        let (c, _) = self.client().await?;
        match c.websocket(&format!("{MESSENGER}/ws")).await {
            Err(e) if is_unreachable(&e) && self.list().all().len() > 1 => {
                self.forget_session().await;
                self.list().failed();
                let (c, _) = self.client().await?;
                c.websocket(&format!("{MESSENGER}/ws")).await
            }
            other => other,
        }
    }
}
