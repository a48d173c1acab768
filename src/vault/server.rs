//! The key vault server: HTTP/1.1 + JSON over TLS (rustls), or plain HTTP
//! on a loopback address, answering OPAQUE registration and login, counting guesses in the [`Store`] before any OPRF answer
//! leaves. The login state between start and finish is kept in the store
//! for [`SESSION_TTL`], sealed under a key derived from the server setup,
//! so that any replica can take the finish, once.
//!
//! Every registration, login start, login finish and deletion is audited:
//! one `tracing` event (target [`AUDIT_TARGET`]) with the record's hashed id,
//! the outcome, the guesses left (at a login start) and the client's
//! address. The binary writes them to stderr, as JSON with `--log-format
//! json`.
//!
//! Must never: answer a login start before its guess is committed; log a
//! request body, a session id, a password, an OPRF value or a key; panic on
//! a client's bytes.

use super::VaultError;
use super::audit::{AuditKey, Chain, Entry as AuditEntry};
use super::epoch::{Counter, EpochOptions, Epochs, StateKey};
use super::hsm::Sealer;
use super::metrics::Destroyed;
use super::protocol::{self, Suite, path};
use super::state::{State, Written};
use super::store::{LoginRecord, Store, Taken};
use crate::key::label;
use http_body_util::Full;
use hyper::body::Bytes;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginStartParameters, ServerRegistration, ServerSetup,
};
use rand_core::OsRng;
use ring::aead;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// How long a login start's state waits for its finish.
pub const SESSION_TTL: Duration = Duration::from_secs(60);

const SETUP_NAME: &str = "opaque-server-setup";

/// The vault's state, shared by the workers.
pub struct Vault {
    store: Arc<Store>,
    /// The key of the records' and the epoch's MACs (`epoch.rs`).
    state_key: Arc<StateKey>,
    /// The epoch's writer, when a counter keeps it.
    epochs: Option<Arc<Epochs>>,
    setup: ServerSetup<Suite>,
    max_guesses: u32,
    /// Seals login states at rest; derived from the setup, so every replica
    /// has it.
    session_key: aead::LessSafeKey,
    log: Log,
    metrics: crate::vault::metrics::Metrics,
    /// The audit table's chain key, and this process's chain.
    audit_key: AuditKey,
    chain: std::sync::Mutex<Chain>,
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

/// The `tracing` target of the audit events.
pub const AUDIT_TARGET: &str = "coffer_vault::audit";

/// What one audited request concerned, filled in as it is answered.
#[derive(Default)]
struct Audit {
    /// The record's id, hashed ([`audit_record`]).
    record: Option<String>,
    /// Guesses left, answered at a login start.
    guesses_left: Option<u32>,
}

/// A record's id as the audit trail names it: the first 16 bytes of
/// SHA-256("coffer/v1 vault audit record" ‖ 0x00 ‖ id), hex. Enough to
/// follow one record's history, without putting the id clients look the
/// record up by into log files.
pub fn audit_record(user: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(label::VAULT_AUDIT_RECORD)
        .chain_update([0u8])
        .chain_update(user.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// The outcome an audit event gives for an answer: `ok`, or the error code
/// sent to the client (`no-record`, `destroyed`, `unauthenticated`, ...).
fn outcome(reply: &Result<Reply, Reply>) -> String {
    match reply {
        Ok(_) => "ok".into(),
        Err((_, body)) => serde_json::from_str::<protocol::ErrorResponse>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| "error".into()),
    }
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
    /// With a counter in `epoch`, the database must pass the rollback
    /// check (`epoch.rs`), and every change is answered only once its
    /// epoch is sealed.
    pub fn open(
        store: Store,
        sealer: &Sealer,
        max_guesses: u32,
        log: Log,
        epoch: EpochOptions,
    ) -> Result<Self, VaultError> {
        let sealed = match store.secret(SETUP_NAME)? {
            Some(s) => s,
            None => {
                let fresh = ServerSetup::<Suite>::new(&mut OsRng);
                let plain = Zeroizing::new(fresh.serialize().to_vec());
                let sealed = sealer.seal(&plain, label::VAULT_SERVER_SETUP)?;
                store.put_secret_once(SETUP_NAME, &sealed)?
            }
        };
        let plain = sealer.unseal(&sealed, label::VAULT_SERVER_SETUP)?;
        let setup = ServerSetup::<Suite>::deserialize(&plain)
            .map_err(|e| VaultError::Seal(format!("the stored server setup is malformed: {e}")))?;
        let audit_key = AuditKey::derive(&plain);
        let foreign = store.foreign_objects()?;
        if !foreign.is_empty() {
            return Err(VaultError::Tampered(format!(
                "the database runs code of its own on the vault's tables ({}): not the vault's, and able to rewrite rows under it; remove it",
                foreign.join(", ")
            )));
        }
        let state_key = Arc::new(StateKey::derive(&plain));
        let store = Arc::new(store);
        let mut counter = epoch.counter;
        let now = State {
            store: &store,
            key: &state_key,
        }
        .prepare(
            counter.as_mut().map(|c| &mut **c as &mut dyn Counter),
            epoch.adopt,
        )?;
        let epochs = counter.map(|mut c| {
            let (store, key) = (store.clone(), state_key.clone());
            Epochs::start(
                now,
                move || {
                    State {
                        store: &store,
                        key: &key,
                    }
                    .advance(&mut *c)
                },
                log.clone(),
            )
        });
        let derived = crate::key::Kek::derive(None, &plain, label::VAULT_SESSION_STATE);
        let session_key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, derived.expose())
                .map_err(|_| VaultError::Seal("session key".into()))?,
        );
        Ok(Self {
            store,
            state_key,
            epochs,
            setup,
            max_guesses,
            session_key,
            log,
            metrics: Default::default(),
            audit_key,
            chain: Default::default(),
        })
    }

    /// The keys to check the database `store` with, read only (`vault
    /// audit verify`): the audit chain key ([`super::audit::verify`]) and
    /// the state key of the rollback check ([`Vault::check_epoch`]), both
    /// from the stored server setup, unsealed once.
    pub fn check_keys(store: &Store, sealer: &Sealer) -> Result<(AuditKey, StateKey), VaultError> {
        let sealed = store.secret(SETUP_NAME)?.ok_or_else(|| {
            VaultError::Store("no server setup in this database: not a vault's".into())
        })?;
        let plain = sealer.unseal(&sealed, label::VAULT_SERVER_SETUP)?;
        Ok((AuditKey::derive(&plain), StateKey::derive(&plain)))
    }

    /// The whole rollback check of `store` (`epoch.rs`), without the
    /// counter: its epoch, or `None` if it has none yet. Reads only.
    pub fn check_epoch(store: &Store, key: &StateKey) -> Result<Option<i64>, VaultError> {
        State { store, key }.check()
    }

    /// Append the audit row of one answered request to this process's
    /// chain, under its lock: rows are stored in their chain's order.
    fn audit_row(
        &self,
        event: &str,
        record: &str,
        outcome: &str,
        guesses_left: Option<u32>,
        client: &str,
    ) -> Result<(), VaultError> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let entry = AuditEntry {
            chain: chain.id().to_owned(),
            seq: chain.next_seq(),
            at: crate::slot::now_unix() as i64,
            event: event.to_owned(),
            record: record.to_owned(),
            outcome: outcome.to_owned(),
            guesses_left,
            client: client.to_owned(),
        };
        let mac = chain.mac(&self.audit_key, &entry);
        if let Err(e) = self.state().append_audit(&entry, &mac) {
            // Whether the row was stored is unknown (a commit whose answer
            // was lost, a failover): go on in a new chain, never reusing a
            // place.
            *chain = Chain::new();
            return Err(e);
        }
        chain.appended(mac);
        Ok(())
    }

    /// A failure on our side: the operator hears the cause, the client
    /// only a 500.
    fn internal(&self, e: VaultError) -> Reply {
        self.metrics.database_error();
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

    /// The records, under the state key.
    fn state(&self) -> State<'_> {
        State {
            store: &self.store,
            key: &self.state_key,
        }
    }

    /// Wait until a change may be answered (`epoch.rs`): its epoch is
    /// sealed and confirmed twice over, and its record still holds what it
    /// wrote (or later). At once without a counter.
    fn sealed(&self, written: Option<Written>) -> Result<(), Reply> {
        match (&self.epochs, written) {
            (Some(e), Some(w)) => e
                .wait_sealed(w.stamp)
                .and_then(|()| self.state().still_written(&w))
                .map_err(|e| self.internal(e)),
            _ => Ok(()),
        }
    }

    /// This server's counters (`/metrics`).
    pub fn metrics(&self) -> &crate::vault::metrics::Metrics {
        &self.metrics
    }

    /// Whether the vault can answer: its database does (`/healthz`).
    pub fn healthy(&self) -> Result<(), VaultError> {
        self.store.ping()
    }

    /// Answer one request from `client`, and audit it.
    pub fn handle(
        &self,
        method: &str,
        url: &str,
        body: &[u8],
        client: Option<SocketAddr>,
    ) -> Reply {
        if method != "POST" {
            return err(405, "method-not-allowed");
        }
        let started = std::time::Instant::now();
        let mut audit = Audit::default();
        let (event, r) = match url {
            path::REGISTER_START => ("register_start", self.register_start(body, &mut audit)),
            path::REGISTER_FINISH => ("register_finish", self.register_finish(body, &mut audit)),
            path::LOGIN_START => ("login_start", self.login_start(body, &mut audit)),
            path::LOGIN_FINISH => ("login_finish", self.login_finish(body, false, &mut audit)),
            path::DELETE => ("delete", self.login_finish(body, true, &mut audit)),
            _ => return err(404, "not-found"),
        };
        let mut outcome = outcome(&r);
        let record = audit.record.as_deref().unwrap_or("-");
        let client = client.map_or_else(|| "-".to_owned(), |a| a.ip().to_string());
        // No answer without its audit row: a request whose row cannot be
        // stored is answered 500 (a guess it charged stays charged).
        let r = match self.audit_row(event, record, &outcome, audit.guesses_left, &client) {
            Ok(()) => r,
            // Already a 500 (and counted): only say why the row failed too.
            Err(e) if outcome == "internal" => {
                (self.log)(&format!("internal error: {e}"));
                r
            }
            Err(e) => {
                outcome = "internal".into();
                Err(self.internal(e))
            }
        };
        self.metrics.observe(event, started.elapsed());
        if r.is_ok() && event == "login_start" {
            self.metrics.guess_charged();
        }
        match audit.guesses_left {
            Some(guesses_left) => tracing::info!(
                target: AUDIT_TARGET,
                event,
                record,
                outcome,
                guesses_left,
                client,
            ),
            None => tracing::info!(target: AUDIT_TARGET, event, record, outcome, client),
        }
        r.unwrap_or_else(|e| e)
    }

    fn register_start(&self, body: &[u8], audit: &mut Audit) -> Result<Reply, Reply> {
        let req: protocol::StartRequest = parse(body)?;
        let user = user_of(&req.user)?;
        audit.record = Some(audit_record(&req.user));
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

    fn register_finish(&self, body: &[u8], audit: &mut Audit) -> Result<Reply, Reply> {
        let req: protocol::RegisterFinishRequest = parse(body)?;
        user_of(&req.user)?;
        audit.record = Some(audit_record(&req.user));
        let msg = protocol::unb64(&req.message, 1024).ok_or_else(bad)?;
        let upload = RegistrationUpload::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        let record = ServerRegistration::finish(upload);
        let (stored, written) = self
            .state()
            .register(&req.user, &record.serialize())
            .map_err(|e| self.internal(e))?;
        if !stored {
            return Err(err(409, "exists"));
        }
        // A registration answered is sealed too: a database restored from
        // before it is then refused, instead of losing it unseen.
        self.sealed(written)?;
        Ok((200, "{}".into()))
    }

    fn login_start(&self, body: &[u8], audit: &mut Audit) -> Result<Reply, Reply> {
        let req: protocol::StartRequest = parse(body)?;
        let user = user_of(&req.user)?;
        audit.record = Some(audit_record(&req.user));
        let msg = protocol::unb64(&req.message, 256).ok_or_else(bad)?;
        // Parse everything before counting: a malformed message costs no guess.
        let request = CredentialRequest::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        let (found, stamp) = self
            .state()
            .login_start(&req.user, self.max_guesses)
            .map_err(|e| self.internal(e))?;
        // Nothing is answered about a charge before its epoch is sealed.
        self.sealed(stamp)?;
        let (registration, guesses_left) = match found {
            LoginRecord::Missing => return Err(err(404, "no-record")),
            LoginRecord::Destroyed => return Err(err(410, "destroyed")),
            LoginRecord::Exhausted => {
                self.metrics.record_destroyed(Destroyed::Exhausted);
                return Err(err(410, "destroyed"));
            }
            LoginRecord::Found {
                registration,
                guesses_left,
            } => (registration, guesses_left),
        };
        audit.guesses_left = Some(guesses_left);
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
        let swept = self
            .store
            .put_session(&session, &req.user, &sealed, expires)
            .map_err(|e| self.internal(e))?;
        self.metrics.sessions_expired(swept);
        Ok(json(
            200,
            &protocol::LoginStartResponse {
                session,
                message: protocol::b64(&start.message.serialize()),
                guesses_left,
            },
        ))
    }

    fn login_finish(&self, body: &[u8], delete: bool, audit: &mut Audit) -> Result<Reply, Reply> {
        let req: protocol::LoginFinishRequest = parse(body)?;
        let msg = protocol::unb64(&req.message, 256).ok_or_else(bad)?;
        let fin = CredentialFinalization::<Suite>::deserialize(&msg).map_err(|_| bad())?;
        if protocol::parse_user(&req.session).is_none() {
            return Err(err(400, "bad-session"));
        }
        // One use per session: a replayed finish finds nothing.
        let (user, sealed) = match self
            .store
            .take_session(&req.session)
            .map_err(|e| self.internal(e))?
        {
            Taken::Live { user, state } => (user, state),
            Taken::Expired => {
                self.metrics.sessions_expired(1);
                return Err(err(400, "bad-session"));
            }
            Taken::Missing => return Err(err(400, "bad-session")),
        };
        audit.record = Some(audit_record(&user));
        let state = self
            .unseal_state(&req.session, &user, &sealed)
            .and_then(|s| ServerLogin::<Suite>::deserialize(&s).ok())
            .ok_or_else(|| err(400, "bad-session"))?;
        if state.finish(fin).is_err() {
            return Err(err(401, "unauthenticated"));
        }
        // Counted only when this request changed the record: a record
        // destroyed meanwhile (its guesses spent by others, or a second
        // deletion) is neither refunded nor destroyed again.
        if delete {
            let (destroyed, stamp) = self.state().destroy(&user).map_err(|e| self.internal(e))?;
            self.sealed(stamp)?;
            if destroyed {
                self.metrics.record_destroyed(Destroyed::Deleted);
            }
        } else if self
            .state()
            .login_succeeded(&user)
            .map_err(|e| self.internal(e))?
            .0
        {
            self.metrics.guesses_refunded();
        }
        Ok((200, "{}".into()))
    }
}

/// The server's TLS identity: a certificate chain and its private key.
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Load a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, VaultError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &Path, e: &dyn std::fmt::Display| {
            VaultError::Protocol(format!("TLS: {}: {e}", what.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(cert, &e))?;
        if chain.is_empty() {
            return Err(bad(cert, &"no PEM certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| {
                VaultError::Protocol(format!(
                    "TLS: {} and {} do not make a usable identity: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest wait for a TLS handshake, a request's headers, or its body
    /// (a client too slow for this is dropped, so that slow clients
    /// cannot hold the server's connections).
    pub io_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest life of one connection, keep-alive included.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            io_timeout: Duration::from_secs(10),
            max_connections: 256,
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

/// A bound, not yet running, server: HTTPS when given a [`Tls`] identity,
/// plain HTTP on a loopback address otherwise.
pub struct Server {
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    vault: Arc<Vault>,
    limits: Limits,
    /// `/metrics` and `/healthz`, plain HTTP ([`Server::with_metrics`]).
    metrics: Option<std::net::TcpListener>,
}

impl Server {
    /// Bind `listen`. Without `tls` the address must be a loopback one:
    /// plain HTTP goes no further than this machine.
    pub fn bind(listen: SocketAddr, vault: Vault, tls: Option<Tls>) -> Result<Self, VaultError> {
        if tls.is_none() && !listen.ip().is_loopback() {
            return Err(VaultError::Protocol(format!(
                "{listen} is not a loopback address: plain HTTP is for 127.0.0.1 or ::1 only; give --tls-cert and --tls-key to serve HTTPS"
            )));
        }
        let listener = std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| VaultError::Protocol(format!("cannot listen on {listen}: {e}")))?;
        Ok(Self {
            listener,
            tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config)),
            vault: Arc::new(vault),
            limits: Limits::default(),
            metrics: None,
        })
    }

    /// Also serve `/metrics` (Prometheus text format) and `/healthz` (200
    /// when the database answers, 503 otherwise) on `listen`, in plain
    /// HTTP: they carry no secret and no record id, but bind an address
    /// only the monitoring can reach.
    pub fn with_metrics(mut self, listen: SocketAddr) -> Result<Self, VaultError> {
        let listener = std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| VaultError::Protocol(format!("cannot listen on {listen}: {e}")))?;
        self.metrics = Some(listener);
        Ok(self)
    }

    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Replace the default [`Limits`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound (for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The URL clients reach this server at (as bound: a wildcard address
    /// stays one).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.local_addr() {
            Some(a) => format!("{scheme}://{a}"),
            None => format!("{scheme}://?"),
        }
    }

    /// Answer requests until the process ends.
    pub fn run(self) -> Result<(), VaultError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("coffer-vault")
            .build()
            .map_err(|e| VaultError::Protocol(format!("cannot start the server runtime: {e}")))?;
        runtime.block_on(self.accept_loop())
    }

    async fn accept_loop(self) -> Result<(), VaultError> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|e| VaultError::Protocol(format!("cannot listen: {e}")))?;
        if let Some(metrics) = self.metrics {
            let listener = tokio::net::TcpListener::from_std(metrics)
                .map_err(|e| VaultError::Protocol(format!("cannot listen: {e}")))?;
            tokio::spawn(serve_metrics(listener, self.vault.clone(), self.limits));
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: say so, breathe, go on.
                    (self.vault.log)(&format!("accepting a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (vault, tls, limits) = (self.vault.clone(), self.tls.clone(), self.limits);
            tokio::spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                let served = async {
                    match tls {
                        None => serve_http(stream, vault, limits, client).await,
                        Some(tls) => {
                            if let Ok(Ok(stream)) =
                                tokio::time::timeout(limits.io_timeout, tls.accept(stream)).await
                            {
                                serve_http(stream, vault, limits, client).await;
                            }
                        }
                    }
                };
                let _ = tokio::time::timeout(limits.connection_lifetime, served).await;
            });
        }
    }
}

async fn serve_http<S>(stream: S, vault: Arc<Vault>, limits: Limits, client: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let vault = vault.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(vault, req, limits, client).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.io_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// `/metrics` and `/healthz`, each connection on its own task with the
/// same time limits as the vault's, at most [`METRICS_CONNECTIONS`] at
/// once: the port has no authentication, so it may cost the vault little.
async fn serve_metrics(listener: tokio::net::TcpListener, vault: Arc<Vault>, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    let health = Arc::new(Health::default());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                (vault.log)(&format!("accepting a metrics connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (vault, health) = (vault.clone(), health.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let (vault, health) = (vault.clone(), health.clone());
                async move {
                    let (status, body) = match (req.method().as_str(), req.uri().path()) {
                        ("GET", "/metrics") => (200, vault.metrics().render()),
                        ("GET", "/healthz") => match health.check(&vault).await {
                            true => (200, "ok\n".to_owned()),
                            false => (503, "database unavailable\n".to_owned()),
                        },
                        ("GET", _) => (404, "not found\n".to_owned()),
                        _ => (405, "method not allowed\n".to_owned()),
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                        .expect("a well-formed answer");
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.io_timeout)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_lifetime, served).await;
        });
    }
}

/// Connections the metrics port serves at once.
const METRICS_CONNECTIONS: usize = 4;
/// How long a health answer is reused.
const HEALTH_FRESH: Duration = Duration::from_secs(1);
/// How long the database may take to answer a health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The database health check: one at a time, its answer reused for
/// [`HEALTH_FRESH`], so probes cannot queue behind the vault's own
/// requests on the store's lock; a database that does not answer within
/// [`HEALTH_TIMEOUT`] is unhealthy, and no second check starts while the
/// first is still stuck.
#[derive(Default)]
struct Health {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    stuck: Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    async fn check(&self, vault: &Arc<Vault>) -> bool {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < HEALTH_FRESH
        {
            return ok;
        }
        let ok = if self.stuck.load(Ordering::SeqCst) {
            false
        } else {
            self.stuck.store(true, Ordering::SeqCst);
            let (v, stuck) = (vault.clone(), self.stuck.clone());
            let ping = tokio::task::spawn_blocking(move || {
                let r = v.healthy();
                stuck.store(false, Ordering::SeqCst);
                if let Err(e) = &r {
                    (v.log)(&format!("health check: {e}"));
                }
                r.is_ok()
            });
            matches!(
                tokio::time::timeout(HEALTH_TIMEOUT, ping).await,
                Ok(Ok(true))
            )
        };
        *last = Some((std::time::Instant::now(), ok));
        ok
    }
}

/// Request head and read buffer (hyper's smallest allowed).
const MAX_HEAD: usize = 8192;

async fn answer(
    vault: Arc<Vault>,
    req: hyper::Request<hyper::body::Incoming>,
    limits: Limits,
    client: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    let (status, body) = match read_body(body, limits.io_timeout).await {
        Err(reply) => reply,
        Ok(body) => {
            let method = head.method.as_str().to_owned();
            let path = head.uri.path().to_owned();
            tokio::task::spawn_blocking(move || vault.handle(&method, &path, &body, Some(client)))
                .await
                .unwrap_or_else(|_| err(500, "internal"))
        }
    };
    let mut reply = hyper::Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

/// A request body of at most [`protocol::MAX_BODY`] bytes, read within
/// `timeout`.
async fn read_body(body: hyper::body::Incoming, timeout: Duration) -> Result<Bytes, Reply> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, protocol::MAX_BODY);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(err(408, "timeout")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(err(413, "too-large")),
        Ok(Err(_)) => Err(bad()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn vault(dir: &Path) -> Vault {
        let sealer = Sealer::local_file(&dir.join("key")).unwrap();
        let store = Store::open_sqlite(&dir.join("db")).unwrap();
        Vault::open(
            store,
            &sealer,
            3,
            Arc::new(|_: &str| {}),
            Default::default(),
        )
        .unwrap()
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

    #[test]
    fn the_store_tells_expired_login_sessions_from_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path());
        let past = crate::slot::now_unix() as i64 - 1;
        let later = past + 3600;
        // A finish after the session's time: expired (counted), and gone.
        v.store().put_session("a", "u", b"s", past).unwrap();
        assert!(matches!(
            v.store().take_session("a").unwrap(),
            Taken::Expired
        ));
        assert!(matches!(
            v.store().take_session("a").unwrap(),
            Taken::Missing
        ));
        // Expired ones no finish came for: swept (and counted) by the next
        // login start.
        v.store().put_session("b", "u", b"s", past).unwrap();
        assert_eq!(v.store().put_session("c", "u", b"s", later).unwrap(), 1);
        assert!(matches!(
            v.store().take_session("c").unwrap(),
            Taken::Live { .. }
        ));
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
            v.state().register(user, b"not a record").unwrap();
            let (status, _) = v.handle("POST", paths[which], &body, None);
            prop_assert!((400..500).contains(&status), "{status}");
            let json = format!(
                r#"{{"user":"{user}","session":"{user}","message":"{}"}}"#,
                protocol::b64(&msg)
            );
            let (status, _) = v.handle("POST", paths[which], json.as_bytes(), None);
            prop_assert!((400..500).contains(&status), "{status}");
            prop_assert_eq!(v.store().failed_guesses(user).unwrap(), Some(0));
        }
    }
}
