//! The vault client: OPAQUE registration and login against a vault server,
//! over HTTPS (or plain HTTP to a loopback address), giving the OPAQUE
//! export key from which the slot derives its KEK.
//!
//! Must never: send the password; accept a server whose key differs from
//! the one pinned at enrollment; put the export key in an error or `Debug`.

use super::VaultError;
use super::protocol::{self, Suite, path};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand_core::OsRng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read, bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// What registration gives.
pub struct Registered {
    /// The OPAQUE export key (secret).
    pub export_key: Zeroizing<Vec<u8>>,
    /// The server's public key, to pin.
    pub server_key: Vec<u8>,
}

/// A connection to one vault server.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    /// Whether it trusts a CA given with `--ca` rather than the built-in
    /// roots (for what a refused certificate's message advises).
    own_ca: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may be used: `https://`, or `http://` to a loopback host.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url}: a vault URL starts with https://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // `http://[::1]@192.0.2.2/` is user info `[::1]` at host 192.0.2.2:
    // no user info, and nothing a URL parser might read another way.
    if authority.contains(['@', '\\', '%']) {
        return Err(format!(
            "{url}: a plain-http vault URL is scheme, loopback host and port only"
        ));
    }
    let host = match authority.strip_prefix('[') {
        Some(h) => match h.split_once(']') {
            Some((h, port)) if port.is_empty() || port.starts_with(':') => h,
            _ => "",
        },
        None => authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "{url}: plain http is for loopback addresses only; use https://"
        ))
    }
}

/// Why the server's certificate was refused, in words that say what to
/// do; `None` when the failure is not about the certificate. `own_ca`:
/// whether the client trusts a CA given with `--ca` (kept in the slot)
/// rather than the roots built into coffer.
fn untrusted_because(e: &ureq::Error, own_ca: bool) -> Option<String> {
    use rustls::CertificateError as C;
    let tls = match e {
        ureq::Error::Rustls(t) => t,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    let rustls::Error::InvalidCertificate(c) = tls else {
        return None;
    };
    const UNKNOWN_CA: &str = "its TLS certificate is not signed by a CA coffer trusts (the \
        Mozilla roots built into it, not this machine's store); for a private CA, enroll the \
        slot with --ca FILE (the CA's certificate, PEM), or check that the server sends its \
        intermediate certificates";
    const NOT_THE_CA: &str = "its TLS certificate is not signed by the CA given with --ca at \
        enrollment (kept in the slot): give the server a certificate from that CA, or enroll \
        the slot again with the CA that signs it";
    const CA_AS_SERVER: &str = "it presents a CA certificate as its own: give the server a \
        certificate signed by that CA (--tls-cert), and the CA's to clients (--ca)";
    Some(match c {
        C::UnknownIssuer if own_ca => NOT_THE_CA.into(),
        C::UnknownIssuer => UNKNOWN_CA.into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "its TLS certificate is not for this host name ({c}); use a URL with a name it lists"
        ),
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            format!(
                "its TLS certificate is outside its validity period ({c}); renew it, or check this machine's clock"
            )
        }
        C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => CA_AS_SERVER.into(),
        other => format!("its TLS certificate is refused ({other})"),
    })
}

impl Client {
    /// A client for the server at `url`, trusting `ca` (PEM) instead of
    /// the system roots when given.
    pub fn new(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, VaultError> {
        check_url(url).map_err(VaultError::Protocol)?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = ca_pem {
            let certs: Vec<_> = ureq::tls::parse_pem(pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(VaultError::Protocol("--ca holds no PEM certificate".into()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .tls_config(tls.build())
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            url: url.trim_end_matches('/').to_owned(),
            own_ca: ca_pem.is_some(),
        })
    }

    /// A transport failure: a certificate coffer will not trust (saying
    /// what to do), or the server unreachable.
    fn failed(&self, e: ureq::Error) -> VaultError {
        match untrusted_because(&e, self.own_ca) {
            Some(why) => VaultError::Untrusted {
                url: self.url.clone(),
                why,
            },
            None => VaultError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            },
        }
    }

    fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        req: &Q,
    ) -> Result<A, VaultError> {
        let body = serde_json::to_string(req).expect("requests serialize");
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| self.failed(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| VaultError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        if status == 200 {
            return serde_json::from_str(&text)
                .map_err(|e| VaultError::Protocol(format!("answer to {path}: {e}")));
        }
        let code = serde_json::from_str::<protocol::ErrorResponse>(&text)
            .map(|e| e.error)
            .unwrap_or_default();
        Err(match (status, code.as_str()) {
            (410, _) | (_, "destroyed") => VaultError::Destroyed,
            (404, "no-record") => VaultError::NoRecord,
            _ => VaultError::Protocol(format!("{path}: HTTP {status} {code}")),
        })
    }

    /// Register `password` for `user` (hex id); refuses a taken id.
    pub fn register(&self, user: &str, password: &[u8]) -> Result<Registered, VaultError> {
        let start = ClientRegistration::<Suite>::start(&mut OsRng, password)
            .map_err(|e| VaultError::Protocol(e.to_string()))?;
        let answer: protocol::RegisterStartResponse = self.post(
            path::REGISTER_START,
            &protocol::StartRequest {
                user: user.into(),
                message: protocol::b64(&start.message.serialize()),
            },
        )?;
        let msg = protocol::unb64(&answer.message, 1024)
            .and_then(|b| RegistrationResponse::<Suite>::deserialize(&b).ok())
            .ok_or_else(|| VaultError::Protocol("malformed registration response".into()))?;
        let ksf = protocol::ksf();
        let fin = start
            .state
            .finish(
                &mut OsRng,
                password,
                msg,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .map_err(|e| VaultError::Protocol(e.to_string()))?;
        let _: serde_json::Value = self.post(
            path::REGISTER_FINISH,
            &protocol::RegisterFinishRequest {
                user: user.into(),
                message: protocol::b64(&fin.message.serialize()),
            },
        )?;
        Ok(Registered {
            export_key: Zeroizing::new(fin.export_key.to_vec()),
            server_key: fin.server_s_pk.serialize().to_vec(),
        })
    }

    /// Log in as `user`; the export key if `password` is right and the
    /// server's key is `pinned`. With `delete`, the record is then deleted.
    pub fn login(
        &self,
        user: &str,
        password: &[u8],
        pinned: &[u8],
        delete: bool,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let start = ClientLogin::<Suite>::start(&mut OsRng, password)
            .map_err(|e| VaultError::Protocol(e.to_string()))?;
        let answer: protocol::LoginStartResponse = self.post(
            path::LOGIN_START,
            &protocol::StartRequest {
                user: user.into(),
                message: protocol::b64(&start.message.serialize()),
            },
        )?;
        let msg = protocol::unb64(&answer.message, 1024)
            .and_then(|b| CredentialResponse::<Suite>::deserialize(&b).ok())
            .ok_or_else(|| VaultError::Protocol("malformed credential response".into()))?;
        let ksf = protocol::ksf();
        let fin = match start.state.finish(
            password,
            msg,
            ClientLoginFinishParameters::new(None, Identifiers::default(), Some(&ksf)),
        ) {
            Ok(f) => f,
            Err(opaque_ke::errors::ProtocolError::InvalidLoginError) => {
                return Err(VaultError::WrongPassword {
                    guesses_left: answer.guesses_left,
                });
            }
            Err(e) => return Err(VaultError::Protocol(e.to_string())),
        };
        if fin.server_s_pk.serialize()[..] != pinned[..] {
            return Err(VaultError::KeyMismatch);
        }
        let export_key = Zeroizing::new(fin.export_key.to_vec());
        let _: serde_json::Value = self.post(
            if delete {
                path::DELETE
            } else {
                path::LOGIN_FINISH
            },
            &protocol::LoginFinishRequest {
                session: answer.session,
                message: protocol::b64(&fin.message.serialize()),
            },
        )?;
        Ok(export_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://[::1]:80/").is_ok());
        assert!(check_url("http://localhost").is_ok());
        assert!(check_url("https://vault.example").is_ok());
        assert!(check_url("http://vault.example").is_err());
        assert!(check_url("http://10.0.0.1:80").is_err());
        assert!(check_url("ftp://x").is_err());
        // User info hides the real host.
        assert!(check_url("http://[::1]@192.0.2.2:8740").is_err());
        assert!(check_url("http://127.0.0.1@192.0.2.2/").is_err());
        assert!(check_url("http://localhost:1@192.0.2.2").is_err());
        assert!(check_url("http://[::1]x:80").is_err());
        assert!(check_url("http://127.0.0.1:80?x=@y").is_ok());
    }
}
