//! The key vault server: HTTP + JSON on a loopback address (put a TLS
//! reverse proxy in front for anything else), answering OPAQUE registration
//! and login, counting guesses in the [`Store`] before any OPRF answer
//! leaves. The login state between start and finish is kept in the store
//! for [`SESSION_TTL`], sealed under a key derived from the server setup,
//! so that any replica can take the finish, once.
//!
//! Must never: answer a login start before its guess is committed; log a
//! request body, a session id or a secret; panic on a client's bytes.

use super::VaultError;
use super::hsm::Sealer;
use super::protocol::{self, Suite, path};
use super::store::{LoginRecord, Store};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginStartParameters, ServerRegistration, ServerSetup,
};
use rand_core::OsRng;
use ring::aead;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// How long a login start's state waits for its finish.
pub const SESSION_TTL: Duration = Duration::from_secs(60);

/// Worker threads answering requests.
pub const WORKERS: usize = 8;

const SETUP_NAME: &str = "opaque-server-setup";
const SETUP_AAD: &[u8] = b"coffer/v1 vault opaque-server-setup";
const SESSION_KEY_INFO: &[u8] = b"coffer/v1 vault session state key";

/// The vault's state, shared by the workers.
pub struct Vault {
    store: Store,
    setup: ServerSetup<Suite>,
    max_guesses: u32,
    /// Seals login states at rest; derived from the setup, so every replica
    /// has it.
    session_key: aead::LessSafeKey,
    log: Log,
}

/// An HTTP answer: status and JSON body.
type Reply = (u16, String);

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    (
        status,
        serde_json::to_string(v).unwrap_or_else(|_| "{}".into()),
    )
}

fn err(status: u16, code: &str) -> Reply {
    json(status, &protocol::ErrorResponse { error: code.into() })
}

fn bad() -> Reply {
    err(400, "bad-request")
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|_| bad())
}

fn user_of(s: &str) -> Result<[u8; protocol::USER_ID_LEN], Reply> {
    protocol::parse_user(s).ok_or_else(bad)
}

/// Where the server reports failures for its operator (the library never
/// prints; the command line passes one that writes to stderr).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

impl Vault {
    /// Open the vault: load (or create, seal and store) the OPAQUE server
    /// setup.
    pub fn open(
        store: Store,
        sealer: &Sealer,
        max_guesses: u32,
        log: Log,
    ) -> Result<Self, VaultError> {
        let sealed = match store.secret(SETUP_NAME)? {
            Some(s) => s,
            None => {
                let fresh = ServerSetup::<Suite>::new(&mut OsRng);
                let plain = Zeroizing::new(fresh.serialize().to_vec());
                let sealed = sealer.seal(&plain, SETUP_AAD)?;
                store.put_secret_once(SETUP_NAME, &sealed)?
            }
        };
        let plain = sealer.unseal(&sealed, SETUP_AAD)?;
        let setup = ServerSetup::<Suite>::deserialize(&plain)
            .map_err(|e| VaultError::Seal(format!("the stored server setup is malformed: {e}")))?;
        let derived = crate::key::Kek::derive(None, &plain, SESSION_KEY_INFO);
        let session_key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, derived.expose())
                .map_err(|_| VaultError::Seal("session key".into()))?,
        );
        Ok(Self {
            store,
            setup,
            max_guesses,
            session_key,
            log,
        })
    }

    /// A failure on our side: the operator hears the cause, the client
    /// only a 500.
    fn internal(&self, e: VaultError) -> Reply {
        (self.log)(&format!("internal error: {e}"));
        err(500, "internal")
    }

    fn seal_state(&self, id: &str, user: &str, state: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        crate::key::random_bytes(&mut nonce);
        let mut buf = state.to_vec();
        let aad = format!("{id}/{user}");
        self.session_key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any short input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        buf.zeroize();
        out
    }

    fn unseal_state(&self, id: &str, user: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, body) = sealed.split_at_checked(12)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let aad = format!("{id}/{user}");
        let n = self
            .session_key
            .open_in_place(
                aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                aead::Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }

    /// The server's OPAQUE public key (clients pin it).
    pub fn public_key(&self) -> Vec<u8> {
        self.setup.keypair().public().serialize().to_vec()
    }

    /// The store (for operators and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Answer one request.
    pub fn handle(&self, method: &str, url: &str, body: &[u8]) -> Reply {
        if method != "POST" {
            return err(405, "method-not-allowed");
        }
        let r = match url {
            path::REGISTER_START => self.register_start(body),
            path::REGISTER_FINISH => self.register_finish(body),
            path::LOGIN_START => self.login_start(body),
            path::LOGIN_FINISH => self.login_finish(body, false),
            path::DELETE => self.login_finish(body, true),
            _ => Err(err(404, "not-found")),
        };
        r.unwrap_or_else(|e| e)
    }

    fn register_start(&self, body: &[u8]) -> Result<Reply, Reply> {
        let req: protocol::StartRequest = parse(body)?;
        let user = user_of(&req.user)?;
        let msg = protocol::unb64(&req.message, 256).ok_or_else(bad)?;
        let msg = RegistrationRequest::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        if self.store.exists(&req.user).map_err(|e| self.internal(e))? {
            return Err(err(409, "exists"));
        }
        let start =
            ServerRegistration::<Suite>::start(&self.setup, msg, &user).map_err(|_| bad())?;
        Ok(json(
            200,
            &protocol::RegisterStartResponse {
                message: protocol::b64(&start.message.serialize()),
            },
        ))
    }

    fn register_finish(&self, body: &[u8]) -> Result<Reply, Reply> {
        let req: protocol::RegisterFinishRequest = parse(body)?;
        user_of(&req.user)?;
        let msg = protocol::unb64(&req.message, 1024).ok_or_else(bad)?;
        let upload = RegistrationUpload::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        let record = ServerRegistration::finish(upload);
        if !self
            .store
            .register(&req.user, &record.serialize())
            .map_err(|e| self.internal(e))?
        {
            return Err(err(409, "exists"));
        }
        Ok((200, "{}".into()))
    }

    fn login_start(&self, body: &[u8]) -> Result<Reply, Reply> {
        let req: protocol::StartRequest = parse(body)?;
        let user = user_of(&req.user)?;
        let msg = protocol::unb64(&req.message, 256).ok_or_else(bad)?;
        // Parse everything before counting: a malformed message costs no guess.
        let request = CredentialRequest::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        let (registration, guesses_left) = match self
            .store
            .login_start(&req.user, self.max_guesses)
            .map_err(|e| self.internal(e))?
        {
            LoginRecord::Missing => return Err(err(404, "no-record")),
            LoginRecord::Destroyed => return Err(err(410, "destroyed")),
            LoginRecord::Found {
                registration,
                guesses_left,
            } => (registration, guesses_left),
        };
        let registration = ServerRegistration::<Suite>::deserialize(&registration)
            .map_err(|e| self.internal(VaultError::Store(format!("stored record: {e}"))))?;
        let start = ServerLogin::start(
            &mut OsRng,
            &self.setup,
            Some(registration),
            request,
            &user,
            ServerLoginStartParameters::default(),
        )
        .map_err(|_| bad())?;
        let mut id = [0u8; 16];
        crate::key::random_bytes(&mut id);
        let session = hex::encode(id);
        let state = Zeroizing::new(start.state.serialize().to_vec());
        let sealed = self.seal_state(&session, &req.user, &state);
        let expires = (crate::slot::now_unix() + SESSION_TTL.as_secs()) as i64;
        self.store
            .put_session(&session, &req.user, &sealed, expires)
            .map_err(|e| self.internal(e))?;
        Ok(json(
            200,
            &protocol::LoginStartResponse {
                session,
                message: protocol::b64(&start.message.serialize()),
                guesses_left,
            },
        ))
    }

    fn login_finish(&self, body: &[u8], delete: bool) -> Result<Reply, Reply> {
        let req: protocol::LoginFinishRequest = parse(body)?;
        let msg = protocol::unb64(&req.message, 256).ok_or_else(bad)?;
        let fin = CredentialFinalization::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        if protocol::parse_user(&req.session).is_none() {
            return Err(err(400, "bad-session"));
        }
        // One use per session: a replayed finish finds nothing.
        let (user, sealed) = self
            .store
            .take_session(&req.session)
            .map_err(|e| self.internal(e))?
            .ok_or_else(|| err(400, "bad-session"))?;
        let state = self
            .unseal_state(&req.session, &user, &sealed)
            .and_then(|s| ServerLogin::<Suite>::deserialize(&s).ok())
            .ok_or_else(|| err(400, "bad-session"))?;
        if state.finish(fin).is_err() {
            return Err(err(401, "unauthenticated"));
        }
        if delete {
            self.store.destroy(&user).map_err(|e| self.internal(e))?;
        } else {
            self.store
                .login_succeeded(&user)
                .map_err(|e| self.internal(e))?;
        }
        Ok((200, "{}".into()))
    }
}

/// A bound, not yet running, server.
pub struct Server {
    http: tiny_http::Server,
    vault: Arc<Vault>,
}

impl Server {
    /// Bind `listen`, which must be a loopback address: plain HTTP goes no
    /// further than this machine (a TLS reverse proxy serves the rest).
    pub fn bind(listen: SocketAddr, vault: Vault) -> Result<Self, VaultError> {
        if !listen.ip().is_loopback() {
            return Err(VaultError::Protocol(format!(
                "{listen} is not a loopback address: the vault speaks plain HTTP, so it listens on 127.0.0.1 or ::1 behind a TLS reverse proxy"
            )));
        }
        let http = tiny_http::Server::http(listen)
            .map_err(|e| VaultError::Protocol(format!("cannot listen on {listen}: {e}")))?;
        Ok(Self {
            http,
            vault: Arc::new(vault),
        })
    }

    /// The address actually bound (for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.http.server_addr().to_ip()
    }

    /// Answer requests until the process ends.
    pub fn run(self) {
        let http = Arc::new(self.http);
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (http, vault) = (http.clone(), self.vault.clone());
                std::thread::spawn(move || {
                    while let Ok(req) = http.recv() {
                        serve_one(&vault, req);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
}

fn serve_one(vault: &Vault, mut req: tiny_http::Request) {
    let (status, body) = if req.body_length().is_some_and(|n| n > protocol::MAX_BODY) {
        err(413, "too-large")
    } else {
        let mut body = Vec::new();
        let read = req
            .as_reader()
            .take(protocol::MAX_BODY as u64 + 1)
            .read_to_end(&mut body);
        if read.is_err() {
            bad()
        } else if body.len() > protocol::MAX_BODY {
            err(413, "too-large")
        } else {
            let method = req.method().as_str().to_owned();
            let url = req.url().to_owned();
            vault.handle(&method, &url, &body)
        }
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header");
    let _ = req.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn vault(dir: &Path) -> Vault {
        let sealer = Sealer::local_file(&dir.join("key")).unwrap();
        let store = Store::open_sqlite(&dir.join("db")).unwrap();
        Vault::open(store, &sealer, 3, Arc::new(|_: &str| {})).unwrap()
    }

    #[test]
    fn the_setup_is_stored_sealed_and_reloads_to_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let key = v.public_key();
        let sealed = v.store().secret(SETUP_NAME).unwrap().unwrap();
        let plain = v.setup.serialize();
        assert!(
            !sealed
                .windows(32)
                .any(|w| plain.windows(32).any(|p| p == w)),
            "the setup is in the database in the clear"
        );
        drop(v);
        assert_eq!(vault(dir.path()).public_key(), key);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Every endpoint, on arbitrary bytes and on JSON-shaped junk:
        /// a 4xx answer, never a panic, never a counted guess.
        #[test]
        fn arbitrary_requests_get_4xx(
            which in 0usize..6,
            body in prop::collection::vec(any::<u8>(), 0..600),
            // Shorter than a CredentialRequest (96 bytes), so never a real login.
            msg in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let v = vault(dir.path());
            let paths = [
                path::REGISTER_START, path::REGISTER_FINISH, path::LOGIN_START,
                path::LOGIN_FINISH, path::DELETE, "/x",
            ];
            let user = "00112233445566778899aabbccddeeff";
            v.store().register(user, b"not a record").unwrap();
            let (status, _) = v.handle("POST", paths[which], &body);
            prop_assert!((400..500).contains(&status), "{status}");
            let json = format!(
                r#"{{"user":"{user}","session":"{user}","message":"{}"}}"#,
                protocol::b64(&msg)
            );
            let (status, _) = v.handle("POST", paths[which], json.as_bytes());
            prop_assert!((400..500).contains(&status), "{status}");
            prop_assert_eq!(v.store().failed_guesses(user).unwrap(), Some(0));
        }
    }
}
