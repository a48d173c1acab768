//! The key vault end to end: real `coffer vault serve` processes on
//! 127.0.0.1 (a free port each), a real SoftHSM token per test sealing the
//! server's secrets, SQLite storage.
// Runs the `coffer` binary, which needs feature `cli`.
#![cfg(all(feature = "vault-server", feature = "cli"))]

mod common;

use coffer::vault::VaultError;
use coffer::vault::client::Client;
use coffer::vault::protocol::{self, Suite, path};
use common::Home;
use common::vault::{Postgres, SOFTHSM, Server, Token};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse, Identifiers};
use predicates::prelude::PredicateBooleanExt;
use std::path::Path;
use std::process::Command;

fn setup(max: u32) -> (Home, Token, Server) {
    let home = Home::new();
    let token = Token::new();
    let server = Server::start(&token, &home.path("vault.db"), max);
    home.init();
    std::fs::write(home.path("pw"), "vault password\n").unwrap();
    std::fs::write(home.path("bad"), "not it\n").unwrap();
    home.coffer()
        .args([
            "enroll",
            "vault",
            "--url",
            &server.url,
            "--new-password-file",
        ])
        .arg(home.path("pw"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
        .success();
    (home, token, server)
}

fn open_with(home: &Home, pw: &str, out: &str) -> assert_cmd::assert::Assert {
    home.coffer()
        .args([
            "open",
            "a.cof",
            "-o",
            out,
            "--slot",
            "vault",
            "--password-file",
        ])
        .arg(home.path(pw))
        .assert()
}

fn seal(home: &Home) {
    std::fs::write(home.path("f.txt"), "kept safe").unwrap();
    home.coffer()
        .args([
            "seal",
            "f.txt",
            "-o",
            "a.cof",
            "--slot",
            "vault",
            "--password-file",
        ])
        .arg(home.path("pw"))
        .assert()
        .success();
}

#[test]
fn wrong_guesses_destroy_the_record_and_the_recovery_key_still_opens() {
    let (home, _token, _server) = setup(3);
    seal(&home);
    for left in [2, 1, 0] {
        open_with(&home, "bad", &format!("o{left}"))
            .code(3)
            .stderr(predicates::str::contains(format!("{left} guesses left")));
    }
    // The right password is now too late.
    open_with(&home, "pw", "late")
        .code(5)
        .stderr(predicates::str::contains("destroyed"));
    open_with(&home, "pw", "late2")
        .code(5)
        .stderr(predicates::str::contains("destroyed"));
    home.coffer()
        .args(["open", "a.cof", "-o", "rec", "--password-file"])
        .arg(home.path("pw"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
        .success();
}

#[test]
fn a_right_password_refunds_the_guesses() {
    let (home, _token, _server) = setup(3);
    seal(&home);
    open_with(&home, "bad", "o1").code(3);
    open_with(&home, "bad", "o2").code(3);
    open_with(&home, "pw", "ok").success();
    open_with(&home, "bad", "o3")
        .code(3)
        .stderr(predicates::str::contains("2 guesses left"));
}

#[test]
fn restart_keeps_records_counters_and_the_sealed_setup() {
    let (home, token, server) = setup(3);
    seal(&home);
    open_with(&home, "bad", "o1").code(3);
    drop(server);
    let server = Server::start(&token, &home.path("vault.db"), 3);
    // The restarted server has a new port and the keyring is MACed, so talk
    // to it directly with the slot's user id and pinned key.
    let keyring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.keyring()).unwrap()).unwrap();
    let slot = keyring["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "vault")
        .unwrap()
        .clone();
    let user = slot["user"].as_str().unwrap();
    let pinned = base64_decode(slot["server_key"].as_str().unwrap());
    let client = Client::new(&server.url, None).unwrap();
    // The counter survived: one guess was used, this is the second.
    match client.login(user, b"not it", &pinned, false) {
        Err(VaultError::WrongPassword { guesses_left }) => assert_eq!(guesses_left, 1),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The setup was unsealed from the HSM: same key, the right password works.
    client
        .login(user, b"vault password", &pinned, false)
        .unwrap();
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn post(url: &str, path: &str, body: &[u8]) -> (u16, String) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let mut r = agent
        .post(format!("{url}{path}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// Register a user straight through the library; returns (user, pinned key).
fn register(url: &str, password: &[u8]) -> (String, Vec<u8>) {
    let mut id = [0u8; 16];
    coffer::key::random_bytes(&mut id);
    let user = hex::encode(id);
    let reg = Client::new(url, None)
        .unwrap()
        .register(&user, password)
        .unwrap();
    (user, reg.server_key)
}

/// A login start through the raw protocol: (session, the finish message
/// for a right password, guesses left).
fn login_by_hand(url: &str, user: &str, password: &[u8]) -> (String, Vec<u8>, u32) {
    let start = ClientLogin::<Suite>::start(&mut rand_core::OsRng, password).unwrap();
    let req =
        serde_json::json!({"user": user, "message": protocol::b64(&start.message.serialize())});
    let (status, body) = post(url, path::LOGIN_START, req.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    let ans: protocol::LoginStartResponse = serde_json::from_str(&body).unwrap();
    let resp = CredentialResponse::<Suite>::deserialize(&base64_decode(&ans.message)).unwrap();
    let ksf = protocol::ksf();
    let fin = start
        .state
        .finish(
            password,
            resp,
            ClientLoginFinishParameters::new(None, Identifiers::default(), Some(&ksf)),
        )
        .unwrap();
    (
        ans.session,
        fin.message.serialize().to_vec(),
        ans.guesses_left,
    )
}

#[test]
fn malformed_oversized_and_replayed_messages_are_refused() {
    let home = Home::new();
    let token = Token::new();
    let server = Server::start(&token, &home.path("vault.db"), 5);
    let url = &server.url;
    let (user, pinned) = register(url, b"pw");

    let junk: &[(&str, &[u8])] = &[
        (path::LOGIN_START, b"not json"),
        (path::LOGIN_START, b"{}"),
        (path::LOGIN_START, br#"{"user":"zz","message":""}"#),
        (path::LOGIN_FINISH, br#"{"session":"00","message":"AAAA"}"#),
        (path::REGISTER_FINISH, br#"{"user":"00","message":"!!"}"#),
        (path::DELETE, b"[]"),
    ];
    for (p, body) in junk {
        let (status, _) = post(url, p, body);
        assert_eq!(status, 400, "{p} {:?}", String::from_utf8_lossy(body));
    }
    let bad_msg = format!(
        r#"{{"user":"{user}","message":"{}"}}"#,
        protocol::b64(&[0xffu8; 96])
    );
    assert_eq!(post(url, path::LOGIN_START, bad_msg.as_bytes()).0, 400);
    let big = vec![b'x'; protocol::MAX_BODY + 1];
    assert_eq!(post(url, path::LOGIN_START, &big).0, 413);
    assert_eq!(post(url, "/v1/nothing", b"{}").0, 404);
    let (status, body) = post(url, path::REGISTER_START, bad_msg.as_bytes());
    assert_eq!(status, 400, "{body}");

    // A login by hand, so that its finish can be replayed.
    let (session, fin, guesses_left) = login_by_hand(url, &user, b"pw");
    assert_eq!(guesses_left, 4, "malformed messages cost no guess");
    let finish = serde_json::json!({"session": session, "message": protocol::b64(&fin)});
    // A tampered finish is refused and burns the session.
    let mut tampered = fin.clone();
    tampered[0] ^= 1;
    let t = serde_json::json!({"session": session, "message": protocol::b64(&tampered)});
    let (status, _) = post(url, path::LOGIN_FINISH, t.to_string().as_bytes());
    assert!(status == 401 || status == 400, "{status}");
    // So the genuine finish, now a replay of a used session, is refused too.
    let (status, _) = post(url, path::LOGIN_FINISH, finish.to_string().as_bytes());
    assert_eq!(status, 400);
    // No refund happened: the next guess leaves 3.
    let c = Client::new(url, None).unwrap();
    match c.login(&user, b"wrong", &pinned, false) {
        Err(VaultError::WrongPassword { guesses_left }) => assert_eq!(guesses_left, 3),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A full valid login refunds; a replay of its finish is refused.
    c.login(&user, b"pw", &pinned, false).unwrap();
    match c.login(&user, b"wrong", &pinned, false) {
        Err(VaultError::WrongPassword { guesses_left }) => assert_eq!(guesses_left, 4),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The server is still alive and well.
    c.login(&user, b"pw", &pinned, false).unwrap();
    // Deleting takes a valid login; afterwards the record is gone.
    assert!(matches!(
        c.login(&user, b"wrong", &pinned, true),
        Err(VaultError::WrongPassword { .. })
    ));
    c.login(&user, b"pw", &pinned, true).unwrap();
    assert!(matches!(
        c.login(&user, b"pw", &pinned, false),
        Err(VaultError::Destroyed)
    ));
    // And its id cannot be registered again.
    assert!(
        Client::new(url, None)
            .unwrap()
            .register(&user, b"pw")
            .is_err()
    );
}

/// Of concurrent wrong logins: how many got an OPRF answer (a counted wrong
/// guess), and how many were told the record is destroyed.
fn outcomes<T>(results: &[Result<T, VaultError>]) -> (usize, usize) {
    let count = |f: fn(&VaultError) -> bool| {
        results
            .iter()
            .filter(|r| r.as_ref().err().is_some_and(f))
            .count()
    };
    (
        count(|e| matches!(e, VaultError::WrongPassword { .. })),
        count(|e| matches!(e, VaultError::Destroyed)),
    )
}

#[test]
fn fifty_concurrent_wrong_logins_get_at_most_max_answers_sqlite() {
    let home = Home::new();
    let token = Token::new();
    let max = 10;
    let server = Server::start(&token, &home.path("vault.db"), max);
    let (user, pinned) = register(&server.url, b"right");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    Client::new(&server.url, None)
                        .unwrap()
                        .login(&user, b"wrong", &pinned, false)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (answered, destroyed) = outcomes(&results);
    assert_eq!(answered, max as usize, "OPRF answers served");
    assert_eq!(answered + destroyed, 50);
    let c = Client::new(&server.url, None).unwrap();
    assert!(matches!(
        c.login(&user, b"right", &pinned, false),
        Err(VaultError::Destroyed)
    ));
}

#[test]
fn the_server_refuses_to_start_without_an_hsm_or_the_insecure_flag() {
    let home = Home::new();
    home.coffer()
        .args(["vault", "serve", "--listen", "127.0.0.1:0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--insecure-local-key"));
    home.coffer()
        .args([
            "vault",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-local-key",
        ])
        .assert()
        .failure()
        .stderr(predicates::str::contains("loopback"));
    // A TLS identity that is not one: a clear error naming the file.
    std::fs::write(home.path("junk.pem"), "not a certificate\n").unwrap();
    home.coffer()
        .args([
            "vault",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-local-key",
        ])
        .arg("--tls-cert")
        .arg(home.path("junk.pem"))
        .arg("--tls-key")
        .arg(home.path("junk.pem"))
        .assert()
        .failure()
        .stderr(
            predicates::str::contains("junk.pem")
                .and(predicates::str::contains("no PEM certificate")),
        );
}

#[test]
fn an_empty_password_file_costs_no_guess() {
    let (home, _token, _server) = setup(3);
    seal(&home);
    std::fs::write(home.path("empty"), "").unwrap();
    for out in ["e1", "e2", "e3"] {
        open_with(&home, "empty", out).code(3);
    }
    // None of the three reached the server: all guesses are left.
    open_with(&home, "bad", "o1")
        .code(3)
        .stderr(predicates::str::contains("2 guesses left"));
    open_with(&home, "pw", "ok").success();
}

/// Answers every confirmation with yes, as a person at a terminal would.
struct SaysYes(std::sync::Mutex<Vec<String>>);

impl coffer::ui::Ui for SaysYes {
    fn message(&self, _: &str) {}
    fn request_secret(&self, _: &str) -> Option<secrecy::SecretString> {
        None
    }
    fn confirm(&self, question: &str) -> bool {
        self.0.lock().unwrap().push(question.to_owned());
        true
    }
}

#[test]
fn a_confirmed_header_vault_slot_contacts_the_local_url_never_the_headers() {
    use coffer::slot::{self, Locators, UnlockOptions};
    let (home, _token, server) = setup(10);
    seal(&home);
    // The attacker points the header's copy elsewhere; a listener stands
    // in for their server.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    common::rewrite_header(&home.path("a.cof"), |_, slots| {
        for s in slots.iter_mut().filter(|s| s["kind"] == "vault") {
            s["url"] = trap_url.clone().into();
        }
    });
    let mut file = std::fs::File::open(home.path("a.cof")).unwrap();
    let header = coffer::archive::Header::read(&mut file).unwrap();
    let candidates = slot::archive_candidates(&[], false, &header.slots);
    let factors = slot::Factors::new().with(
        slot::FactorKind::Password,
        secrecy::SecretString::from("vault password"),
    );
    let ui = SaysYes(Default::default());
    let unlock = |locators: &Locators| {
        slot::unlock_with(
            &candidates,
            &UnlockOptions {
                selector: Some("vault"),
                factors: &factors,
                ui: &ui,
                locators,
                kdf_budget: slot::UNAUTHENTICATED_KDF_BUDGET,
            },
        )
    };
    // No local URL: not tried, even with a yes.
    let err = unlock(&Locators::default()).err().unwrap();
    assert!(err.to_string().contains("--vault-url"), "{err}");
    // With the owner's URL: the owner's server, after a yes naming it.
    let local = Locators {
        vault_url: Some(server.url.clone()),
        ..Locators::default()
    };
    let (bk, used) = unlock(&local).unwrap();
    assert_eq!(used.params.kind(), "vault");
    assert_eq!(
        coffer::sealing::SealingPublicKey::derive(&bk).key_id(),
        header.key_id
    );
    let asked = ui.0.lock().unwrap().clone();
    assert!(
        asked.len() == 1 && asked[0].contains(&server.url),
        "{asked:?}"
    );
    assert!(!asked[0].contains(&trap_url), "{asked:?}");
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the header's URL was contacted: {other:?}"),
    }
}

#[test]
fn fifty_concurrent_wrong_logins_across_two_replicas_share_one_limit_postgres() {
    let pg = Postgres::start();
    let token = Token::new();
    let max = 10;
    // Both keep the epoch in one TPM's counter, advancing it in turn.
    let tpm = EpochTpm::start();
    let args = tpm.args();
    // The first replica creates the token key (if absent), the schema,
    // the sealed setup and the epoch; the second finds and checks them.
    // (Started at once, SoftHSM itself sometimes fails to find its token
    // in one of them.)
    let a = Server::start_with(&token, &pg.url(), max, &args);
    let b = Server::start_with(&token, &pg.url(), max, &args);
    let (user, pinned) = register(&a.url, b"right");
    // The other replica knows the record and has the same key.
    Client::new(&b.url, None)
        .unwrap()
        .login(&user, b"right", &pinned, false)
        .unwrap();
    // A login started on one replica finishes on the other (no sticky
    // sessions needed), once.
    let (session, fin, _) = login_by_hand(&a.url, &user, b"right");
    let finish = serde_json::json!({"session": session, "message": protocol::b64(&fin)});
    assert_eq!(
        post(&b.url, path::LOGIN_FINISH, finish.to_string().as_bytes()).0,
        200
    );
    assert_eq!(
        post(&a.url, path::LOGIN_FINISH, finish.to_string().as_bytes()).0,
        400
    );
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let url = if i % 2 == 0 { &a.url } else { &b.url };
                let (user, pinned) = (&user, &pinned);
                s.spawn(move || {
                    Client::new(url, None)
                        .unwrap()
                        .login(user, b"wrong", pinned, false)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (answered, destroyed) = outcomes(&results);
    assert_eq!(
        answered, max as usize,
        "OPRF answers served across replicas"
    );
    assert_eq!(
        answered + destroyed,
        50,
        "{:?}",
        results
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect::<Vec<_>>()
    );
    for url in [&a.url, &b.url] {
        assert!(matches!(
            Client::new(url, None)
                .unwrap()
                .login(&user, b"right", &pinned, false),
            Err(VaultError::Destroyed)
        ));
    }
    // A trigger planted on the records (it could put rows back inside the
    // server's own transactions): a new replica refuses the database.
    pg.psql(
        "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
         CREATE TRIGGER keep BEFORE UPDATE ON records FOR EACH ROW EXECUTE FUNCTION keep();",
    );
    refused(&token, &pg.url(), &args, "trigger keep");
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a `localhost` certificate it signed, in a temp dir.
fn pki() -> tempfile::TempDir {
    let pki = tempfile::tempdir().unwrap();
    sh(
        pki.path(),
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -keyout ca.key -out ca.pem -subj /CN=coffer-test-ca -days 1 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -keyout leaf.key -out leaf.csr -subj /CN=localhost 2>/dev/null
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
           -out leaf.pem -days 1 -extfile ext 2>/dev/null",
    );
    pki
}

/// A vault server speaking HTTPS with the certificate from [`pki`], on
/// `listen`, plus `extra` arguments.
fn start_tls(token: &Token, db: &Path, pki: &Path, listen: &str, extra: &[&str]) -> Server {
    start_tls_as(token, db, pki, "leaf", listen, extra)
}

/// [`start_tls`] presenting `NAME.pem` (key `NAME.key`) of [`pki`].
fn start_tls_as(
    token: &Token,
    db: &Path,
    pki: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> Server {
    let mut args: Vec<std::ffi::OsString> = vec!["--listen".into(), listen.into()];
    args.push("--tls-cert".into());
    args.push(pki.join(format!("{name}.pem")).into());
    args.push("--tls-key".into());
    args.push(pki.join(format!("{name}.key")).into());
    args.extend(extra.iter().map(Into::into));
    Server::start_with(token, &format!("sqlite:{}", db.display()), 10, &args)
}

/// `enroll vault --url URL [--ca CA] --new-password-file pw`, unlocking
/// with the recovery key.
fn enroll_vault(home: &Home, url: &str, ca: Option<&Path>) -> assert_cmd::assert::Assert {
    let mut c = home.coffer();
    c.args(["enroll", "vault", "--url", url]);
    if let Some(ca) = ca {
        c.arg("--ca").arg(ca);
    }
    c.arg("--new-password-file")
        .arg(home.path("pw"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn enroll_and_unlock_over_https_with_a_private_ca() {
    let home = Home::new();
    let token = Token::new();
    let pki = pki();
    let server = start_tls(
        &token,
        &home.path("vault.db"),
        pki.path(),
        "127.0.0.1:0",
        &[],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let url = format!("https://localhost:{}", port_of(&server.url));
    home.init();
    std::fs::write(home.path("pw"), "vault password\n").unwrap();
    // Without the CA, the server's certificate is not trusted.
    enroll_vault(&home, &url, None)
        .code(5)
        .stderr(predicates::str::contains(
            "not signed by a CA coffer trusts (the Mozilla roots built into it, not this machine's store); for a private CA, enroll the slot with --ca FILE",
        ));
    enroll_vault(&home, &url, Some(&pki.path().join("ca.pem"))).success();
    seal(&home);
    open_with(&home, "pw", "out").success();
    assert_eq!(
        std::fs::read_to_string(home.path("out/f.txt")).unwrap(),
        "kept safe"
    );
}

/// A server presenting its CA's own certificate (a common mistake with a
/// private CA): the client trusting that CA is told what to change.
#[test]
fn a_ca_certificate_served_as_the_servers_own_says_what_to_do() {
    let home = Home::new();
    let token = Token::new();
    let pki = pki();
    let server = start_tls_as(
        &token,
        &home.path("vault.db"),
        pki.path(),
        "ca",
        "127.0.0.1:0",
        &[],
    );
    home.init();
    std::fs::write(home.path("pw"), "vault password\n").unwrap();
    let url = format!("https://localhost:{}", port_of(&server.url));
    enroll_vault(&home, &url, Some(&pki.path().join("ca.pem")))
        .code(5)
        .stderr(predicates::str::contains(
            "presents a CA certificate as its own: give the server a certificate signed by that CA",
        ));
}

#[test]
fn https_serves_beyond_loopback_and_plain_http_is_refused_there() {
    let home = Home::new();
    let token = Token::new();
    let pki = pki();
    // Without TLS, a wildcard address is refused, and says what to do.
    home.coffer()
        .env("SOFTHSM2_CONF", token.conf())
        .args(["vault", "serve", "--listen", "0.0.0.0:0", "--db"])
        .arg(home.path("vault.db"))
        .args(["--hsm-module", SOFTHSM])
        .args(["--hsm-uri", "pkcs11:token=vault-test;object=coffer-vault"])
        .arg("--hsm-pin-file")
        .arg(token.dir.path().join("pin"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("--tls-cert"));
    // With TLS it serves there; a client trusting the CA logs in.
    let server = start_tls(&token, &home.path("vault.db"), pki.path(), "0.0.0.0:0", &[]);
    assert!(server.url.starts_with("https://0.0.0.0:"), "{}", server.url);
    let url = format!("https://localhost:{}", port_of(&server.url));
    let ca = std::fs::read_to_string(pki.path().join("ca.pem")).unwrap();
    let client = Client::new(&url, Some(ca.as_bytes())).unwrap();
    let user = "0123456789abcdef0123456789abcdef";
    let reg = client.register(user, b"right").unwrap();
    client
        .login(user, b"right", &reg.server_key, false)
        .unwrap();
    // By an address the certificate does not list: refused, and says so.
    let elsewhere = format!("https://127.0.0.2:{}", port_of(&server.url));
    let err = Client::new(&elsewhere, Some(ca.as_bytes()))
        .unwrap()
        .login(user, b"right", &reg.server_key, false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not for this host name"), "{err}");
    // A client that does not trust the CA gets nowhere.
    assert!(matches!(
        Client::new(&url, None)
            .unwrap()
            .login(user, b"right", &reg.server_key, false),
        Err(VaultError::Untrusted { .. })
    ));
    // Plain HTTP to the TLS port is not answered as HTTP.
    let (status, _) = post_raw(port_of(&server.url), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!status.starts_with("HTTP/1.1 "), "{status:?}");
}

/// Send `bytes` to 127.0.0.1:`port`; the first line of what comes back (empty
/// when the server closes without a word) and whether it closed.
fn post_raw(port: u16, bytes: &[u8]) -> (String, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    let text = String::from_utf8_lossy(&got);
    (text.lines().next().unwrap_or("").to_owned(), closed)
}

/// Connections that open and then stall (half a request head, or a TLS
/// connection that never says hello) do not keep others out, and are
/// dropped after `--client-timeout`.
fn stalled_clients_neither_block_nor_stay(tls: bool) {
    use std::io::{Read, Write};
    let home = Home::new();
    let token = Token::new();
    let pki = pki();
    let extra = ["--client-timeout", "1", "--max-connections", "64"];
    let server = if tls {
        start_tls(
            &token,
            &home.path("vault.db"),
            pki.path(),
            "127.0.0.1:0",
            &extra,
        )
    } else {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        args.extend(extra);
        let db = format!("sqlite:{}", home.path("vault.db").display());
        Server::start_with(&token, &db, 10, &args)
    };
    let port = port_of(&server.url);
    // More stalled connections than the old thread-per-request server had
    // workers.
    let mut stalled: Vec<_> = (0..24)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            if !tls {
                s.write_all(b"POST /v1/login/start HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    let url = format!("{}://localhost:{port}", if tls { "https" } else { "http" });
    let ca = std::fs::read_to_string(pki.path().join("ca.pem")).unwrap();
    let client = Client::new(&url, tls.then_some(ca.as_bytes())).unwrap();
    let user = "00112233445566778899aabbccddeeff";
    let reg = client.register(user, b"right").unwrap();
    client
        .login(user, b"right", &reg.server_key, false)
        .unwrap();
    // Each stalled connection is closed by the server (the generous read
    // timeout only keeps a broken server from hanging the test).
    for s in &mut stalled {
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
            "a stalled connection stayed open: {r:?}"
        );
    }
    // A body that never comes: 408 (over TLS the same code path answers).
    if !tls {
        let (status, _) = post_raw(
            port,
            b"POST /v1/login/start HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        );
        assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
    }
}

#[test]
fn stalled_plain_clients_neither_block_nor_stay() {
    stalled_clients_neither_block_nor_stay(false);
}

#[test]
fn stalled_tls_clients_neither_block_nor_stay() {
    stalled_clients_neither_block_nor_stay(true);
}

/// Issue 13: an unbound `--password-file` is a local password slot's when
/// there is one; a vault slot, where a wrong password is a guess spent for
/// good, gets it only when chosen with `--slot` (or bound to it). Twelve
/// wrong unbound passwords (more than the server's 10) leave every guess;
/// `rotate` with an unbound password refuses rather than send it there.
#[test]
fn an_unbound_password_file_spends_no_vault_guess_unless_the_slot_was_chosen() {
    let (home, _token, _server) = setup(10);
    home.write("local", "local password\n");
    home.coffer()
        .args(["enroll", "password", "--label", "laptop"])
        .arg("--new-password-file")
        .arg(home.path("local"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
        .success();
    std::fs::write(home.path("f.txt"), "kept safe").unwrap();
    home.coffer()
        .args(["seal", "f.txt", "-o", "a.cof", "--recovery-key-file"])
        .arg(home.recovery_key())
        .assert()
        .success();
    let vault_id = home.keyring_json()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "vault")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let open = |factor: &[&str], out: &str| {
        home.coffer()
            .args(["open", "a.cof", "-o", out])
            .args(factor)
            .assert()
    };
    let bad = home.path("bad").display().to_string();
    for i in 0..12 {
        // Wrong for the password slot, which is all it went to.
        open(&["--password-file", &bad], &format!("u{i}"))
            .code(3)
            .stderr(predicates::str::contains("guesses left").not());
    }
    // rotate: the password slot re-wraps with it, the vault slot gets
    // nothing: refused, naming the vault slot, nothing changed.
    let before = std::fs::read(home.keyring()).unwrap();
    home.coffer()
        .args(["rotate", "--password-file"])
        .arg(home.path("local"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
        .code(5)
        .stderr(predicates::str::contains(format!("{vault_id} (vault)")))
        .stderr(predicates::str::contains("nothing was changed"));
    assert_eq!(std::fs::read(home.keyring()).unwrap(), before);
    // Chosen with --slot, the same unbound file goes to the vault and
    // spends one guess: the first of ten.
    open(&["--slot", "vault", "--password-file", &bad], "c1")
        .code(3)
        .stderr(predicates::str::contains("9 guesses left"));
    // Bound to it, by kind: the record is still there and opens.
    let right = format!("vault={}", home.path("pw").display());
    open(&["-v", "--password-file", &right], "ok")
        .success()
        .stderr(predicates::str::contains("(vault)"));
    assert_eq!(
        std::fs::read_to_string(home.path("ok/f.txt")).unwrap(),
        "kept safe"
    );
    // rotate --drop vault with the local password unbound: the vault slot
    // is left out, but its record is not sent that password to delete it
    // (a wrong one would spend a guess): it is kept, and said so.
    let vault = home.keyring_json()["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "vault")
        .unwrap()
        .clone();
    home.coffer()
        .args(["rotate", "--drop", "vault", "--password-file"])
        .arg(home.path("local"))
        .arg("--recovery-key-file")
        .arg(home.recovery_key())
        .assert()
        .success()
        .stderr(predicates::str::contains("was kept"));
    // The right login above reset the count: all 10 before this one,
    // 9 after (a delete attempt with the wrong password would leave 8).
    let client = Client::new(vault["url"].as_str().unwrap(), None).unwrap();
    let pinned = protocol::unb64(vault["server_key"].as_str().unwrap(), 64).unwrap();
    match client.login(vault["user"].as_str().unwrap(), b"wrong", &pinned, false) {
        Err(VaultError::WrongPassword { guesses_left }) => assert_eq!(guesses_left, 9),
        other => panic!("{other:?}"),
    }
}

/// The audit trail (`--log-format json`): one JSON line per registration,
/// login start, login finish and deletion, with the record's hashed id,
/// the outcome, the guesses left and the client's address; never the
/// record's id, a password, a protocol message or a session.
#[test]
fn every_registration_login_and_deletion_is_audited_and_nothing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new();
    let log_path = dir.path().join("audit.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let db = format!("sqlite:{}", dir.path().join("vault.db").display());
    let server = Server::start_logging(
        &token,
        &db,
        5,
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        log.into(),
    );
    let password = b"the audited password";
    let (user, key) = register(&server.url, password);
    let client = Client::new(&server.url, None).unwrap();
    assert!(matches!(
        client.login(&user, b"a wrong one", &key, false),
        Err(VaultError::WrongPassword { guesses_left: 4 })
    ));
    client.login(&user, password, &key, false).unwrap();
    client.login(&user, password, &key, true).unwrap();
    assert!(client.login(&user, password, &key, false).is_err());
    drop(server);

    let text = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v: &serde_json::Value| v["target"] == "coffer_vault::audit")
        .collect();
    let record = coffer::vault::server::audit_record(&user);
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["record"], record.as_str(), "{e}");
            assert_eq!(e["client"], "127.0.0.1", "{e}");
            (
                e["event"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("register_start", "ok"),
        ("register_finish", "ok"),
        // The wrong password: the server answers the start and never
        // hears a finish; it cannot know the password was wrong.
        ("login_start", "ok"),
        ("login_start", "ok"),
        ("login_finish", "ok"),
        ("login_start", "ok"),
        ("delete", "ok"),
        ("login_start", "destroyed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, want, "{text}");
    let guesses: Vec<Option<u64>> = events
        .iter()
        .filter(|e| e["event"] == "login_start")
        .map(|e| e["guesses_left"].as_u64())
        .collect();
    assert_eq!(guesses, [Some(4), Some(3), Some(4), None], "{text}");
    // Nothing that identifies or opens the record in clear (the server's
    // public key, in the start-up line, is public).
    for secret in [user.as_str(), "the audited password"] {
        assert!(!text.contains(secret), "the log holds {secret}: {text}");
    }
}

/// GET `path` from `base` (`http://ADDR`): status and body.
fn get(base: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The value of the series `name` (with its labels) in a scrape.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_what_the_server_knows_and_healthz_follows_the_database() {
    let pg = Postgres::start();
    let token = Token::new();
    let server = Server::start_with(
        &token,
        &pg.url(),
        2,
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
    );
    let m = server.metrics.clone().unwrap();
    assert_eq!(get(&m, "/healthz"), (200, "ok\n".into()));
    let (_, before) = get(&m, "/metrics");
    assert_eq!(metric(&before, "coffer_vault_guesses_charged_total"), 0.0);

    let client = Client::new(&server.url, None).unwrap();
    // One record: a wrong guess, a right one (a refund), a deletion.
    let (a, key_a) = register(&server.url, b"right");
    assert!(client.login(&a, b"wrong", &key_a, false).is_err());
    client.login(&a, b"right", &key_a, false).unwrap();
    client.login(&a, b"right", &key_a, true).unwrap();
    // Another: two wrong guesses, then a start that finds none left.
    let (b, key_b) = register(&server.url, b"right");
    for _ in 0..2 {
        assert!(client.login(&b, b"wrong", &key_b, false).is_err());
    }
    assert!(client.login(&b, b"right", &key_b, false).is_err());

    let (status, text) = get(&m, "/metrics");
    assert_eq!(status, 200);
    // Starts answered: a's three, b's two (the third found it destroyed).
    assert_eq!(metric(&text, "coffer_vault_guesses_charged_total"), 5.0);
    assert_eq!(metric(&text, "coffer_vault_guesses_refunded_total"), 1.0);
    // a deleted, b out of guesses.
    let destroyed = "coffer_vault_records_destroyed_total";
    assert_eq!(
        metric(&text, &format!("{destroyed}{{cause=\"deleted\"}}")),
        1.0
    );
    assert_eq!(
        metric(&text, &format!("{destroyed}{{cause=\"exhausted\"}}")),
        1.0
    );
    for family in [destroyed, "coffer_vault_guesses_charged_total"] {
        assert!(
            text.contains(&format!("# TYPE {family} counter\n")),
            "{text}"
        );
    }
    assert!(text.contains("# TYPE coffer_vault_request_duration_seconds histogram\n"));
    assert_eq!(metric(&text, "coffer_vault_database_errors_total"), 0.0);
    let count = "coffer_vault_request_duration_seconds_count";
    assert_eq!(
        metric(&text, &format!("{count}{{event=\"login_start\"}}")),
        6.0
    );
    assert_eq!(
        metric(&text, &format!("{count}{{event=\"register_finish\"}}")),
        2.0
    );
    let inf = "coffer_vault_request_duration_seconds_bucket{event=\"login_start\",le=\"+Inf\"}";
    assert_eq!(metric(&text, inf), 6.0);
    // Nothing from a request becomes a label: no record id in a scrape.
    assert!(!text.contains(&a) && !text.contains(&coffer::vault::server::audit_record(&a)));

    // The audit table on PostgreSQL checks, read row by row, read-only:
    // two registrations, six starts, two finishes (a refund, a deletion).
    let out = audit_verify(&token, &pg.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("12 entries in 1 chains"), "{said}");

    // The database goes away: health says so (once its last answer, kept
    // a second, is stale), and a login's failure counts.
    drop(pg);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(get(&m, "/healthz"), (503, "database unavailable\n".into()));
    assert!(client.login(&b, b"right", &key_b, false).is_err());
    let (_, text) = get(&m, "/metrics");
    assert!(metric(&text, "coffer_vault_database_errors_total") >= 1.0);
    assert_eq!(get(&m, "/nothing").0, 404);
}

/// A request of `method` to `path` on `base`: the status.
fn status_of(base: &str, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text[9..12].parse().unwrap()
}

#[test]
fn the_metrics_port_answers_only_what_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new();
    let db = format!("sqlite:{}", dir.path().join("vault.db").display());
    let server = Server::start_with(
        &token,
        &db,
        3,
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
    );
    let m = server.metrics.clone().unwrap();
    assert_eq!(status_of(&m, "POST", "/metrics"), 405);
    assert_eq!(status_of(&m, "DELETE", "/healthz"), 405);
    assert_eq!(status_of(&m, "GET", "/v1/login/start"), 404);
    // The vault's own port does not serve them.
    assert_ne!(status_of(&server.url, "GET", "/metrics"), 200);
    assert_eq!(get(&m, "/healthz"), (200, "ok\n".into()));
}

/// `coffer vault audit verify` on `db`, with the token's key.
fn audit_verify(token: &Token, db: &str) -> std::process::Output {
    Command::new(assert_cmd::cargo::cargo_bin("coffer"))
        .env("SOFTHSM2_CONF", token.conf())
        .args(["vault", "audit", "verify", "--db", db])
        .args(["--hsm-module", SOFTHSM])
        .args(["--hsm-uri", "pkcs11:token=vault-test;object=coffer-vault"])
        .arg("--hsm-pin-file")
        .arg(token.dir.path().join("pin"))
        .output()
        .unwrap()
}

#[test]
fn the_audit_table_chains_every_answer_and_its_check_names_the_first_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new();
    let path = dir.path().join("vault.db");
    let db = format!("sqlite:{}", path.display());
    let tpm = EpochTpm::start();
    // Two server processes in turn: two chains.
    for _ in 0..2 {
        let server = Server::start_with(&token, &db, 5, &tpm.args());
        let (user, key) = register(&server.url, b"right");
        let client = Client::new(&server.url, None).unwrap();
        assert!(client.login(&user, b"wrong", &key, false).is_err());
        client.login(&user, b"right", &key, false).unwrap();
    }
    let out = audit_verify(&token, &db);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per process: register start and finish, two login starts, a finish.
    assert!(said.contains("10 entries in 2 chains"), "{said}");
    assert!(said.contains("no sealed row missing"), "{said}");

    // The first chain's tail cut off (in a copy): the chains alone cannot
    // tell, the sum sealed with a later epoch does.
    let cut = dir.path().join("cut.db");
    copy_db(&path, &cut);
    {
        let conn = rusqlite::Connection::open(&cut).unwrap();
        let first: String = conn
            .query_row(
                "SELECT chain FROM audit_log ORDER BY rowid LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let n = conn
            .execute(
                "DELETE FROM audit_log WHERE chain = ?1 AND seq = (SELECT MAX(seq) FROM audit_log WHERE chain = ?1)",
                [&first],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let out = audit_verify(&token, &format!("sqlite:{}", cut.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("tail cut off"), "{err}");

    let conn = rusqlite::Connection::open(&path).unwrap();
    let row = |sql: &str| -> (String, i64) {
        conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
    };
    let check = |what: &str, want: &str| {
        let out = audit_verify(&token, &db);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}");
    };
    // A failed login made to look refused... or an outcome rewritten.
    let (chain, _) = row("SELECT chain, seq FROM audit_log WHERE seq = 3 LIMIT 1");
    let tx = |sql: &str| conn.execute(sql, []).unwrap();
    tx(&format!(
        "UPDATE audit_log SET outcome = 'unauthenticated' WHERE chain = '{chain}' AND seq = 3"
    ));
    check("altered", &format!("audit chain {chain} breaks at entry 3"));
    tx(&format!(
        "UPDATE audit_log SET outcome = 'ok' WHERE chain = '{chain}' AND seq = 3"
    ));
    assert!(audit_verify(&token, &db).status.success(), "restored");
    // A row removed from the middle.
    tx(&format!(
        "DELETE FROM audit_log WHERE chain = '{chain}' AND seq = 2"
    ));
    check(
        "removed",
        &format!("audit chain {chain} breaks at entry 3: expected entry 2"),
    );
}

/// A primary with a synchronous standby (`standby1`), both started, the
/// standby streaming synchronously; and the URL naming both.
fn replicated() -> (Postgres, Postgres, String) {
    let primary = Postgres::start_with(
        "-c wal_level=replica -c max_wal_senders=4 -c synchronous_standby_names=standby1 -c synchronous_commit=on",
    );
    let standby = Postgres::start_with_standby(&primary, "standby1");
    wait_until("the standby is synchronous", || {
        primary.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == "1"
    });
    let url = format!(
        "postgres://coffer@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    (primary, standby, url)
}

/// Wait (at most 60 s) until `done`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited in vain: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// One round of the failover test: a primary with a synchronous standby,
/// wrong-guess traffic, the primary killed mid-traffic, the standby
/// promoted; the vault reaches it through its multi-host URL. Every wait
/// is for progress (answers before, answers after), not for time.
fn failover_round(max: u32) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (primary, standby, url) = replicated();
    let token = Token::new();
    // The epoch in a TPM counter too: a failover must not look like a
    // rollback.
    let tpm = EpochTpm::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let server =
        Server::start_logging(&token, &url, max, &tpm.args(), log.reopen().unwrap().into());
    let users: Vec<(String, Vec<u8>)> = (0..3).map(|_| register(&server.url, b"right")).collect();
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        !said.contains("WARNING"),
        "synchronously replicated: {said}"
    );
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let promoted = std::sync::Arc::new(AtomicBool::new(false));
    let (before, after) = (
        std::sync::Arc::new(AtomicU64::new(0)),
        std::sync::Arc::new(AtomicU64::new(0)),
    );
    let traffic: Vec<_> = users
        .iter()
        .cloned()
        .map(|(user, key)| {
            let (url, stop) = (server.url.clone(), stop.clone());
            let (promoted, before, after) = (promoted.clone(), before.clone(), after.clone());
            std::thread::spawn(move || {
                let client = Client::new(&url, None).unwrap();
                let mut answered = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let was_promoted = promoted.load(Ordering::SeqCst);
                    match client.login(&user, b"wrong", &key, false) {
                        // The server answered the start: a guess it charged.
                        Err(VaultError::WrongPassword { .. }) => {
                            answered += 1;
                            let phase = if was_promoted { &after } else { &before };
                            phase.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                    }
                }
                (user, answered)
            })
        })
        .collect();
    wait_until("guesses answered by the primary", || {
        before.load(Ordering::SeqCst) >= 6
    });
    primary.kill();
    standby.promote();
    promoted.store(true, Ordering::SeqCst);
    // Answered again, by the promoted standby: the vault found it itself.
    wait_until("guesses answered after the promotion", || {
        after.load(Ordering::SeqCst) >= 6
    });
    stop.store(true, Ordering::SeqCst);
    for t in traffic {
        let (user, answered) = t.join().unwrap();
        let stored: i64 = standby
            .psql(&format!(
                "SELECT failed_guesses FROM records WHERE user_id = '{user}'"
            ))
            .parse()
            .unwrap();
        assert!(
            stored as u64 >= answered,
            "{user}: {answered} guesses answered, only {stored} on the promoted standby"
        );
        assert!(
            stored <= i64::from(max),
            "{user}: {stored} guesses charged, limit {max}"
        );
    }
    // The promoted database passes the rollback check against the counter.
    drop(server);
    let again = Server::start_with(&token, &standby.url(), max, &tpm.args());
    drop(again);
}

/// One login start, answered: the guesses left it says.
fn wrong_guess(url: &str, user: &str) -> u32 {
    let start = ClientLogin::<Suite>::start(&mut rand_core::OsRng, b"wrong").unwrap();
    let req =
        serde_json::json!({"user": user, "message": protocol::b64(&start.message.serialize())});
    let (status, body) = post(url, path::LOGIN_START, req.to_string().as_bytes());
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<protocol::LoginStartResponse>(&body)
        .unwrap()
        .guesses_left
}

/// A TPM for `--epoch-tpm` (swtpm), and the arguments that start a
/// server on loopback keeping its epoch there.
struct EpochTpm {
    _tpm: coffer_hsm_sim::SwTpm,
    tcti: String,
}

impl EpochTpm {
    fn start() -> Self {
        let tpm = coffer_hsm_sim::SwTpm::start();
        Self {
            tcti: tpm.tcti(),
            _tpm: tpm,
        }
    }

    fn args(&self) -> [&str; 4] {
        ["--listen", "127.0.0.1:0", "--epoch-tpm", &self.tcti]
    }
}

/// A folder for a vault's SQLite database: the folder, the file, its URL.
fn sqlite_vault() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    let url = format!("sqlite:{}", db.display());
    (dir, db, url)
}

/// The SQLite database `db` and its WAL files copied to `to` (a backup
/// of a stopped server).
fn copy_db(db: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (from, dest) = (
            format!("{}{suffix}", db.display()),
            format!("{}{suffix}", to.display()),
        );
        let _ = std::fs::remove_file(&dest);
        if Path::new(&from).exists() {
            std::fs::copy(&from, &dest).unwrap();
        }
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vault serve` refuses the database at `url`: exit 1, saying `want`.
fn refused(token: &Token, url: &str, args: &[&str], want: &str) {
    let out = common::vault::serve_until_exit(token, url, args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(want), "{}", stderr_of(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn a_restored_or_edited_database_is_refused_and_a_crash_never_locks_the_vault_out() {
    let token = Token::new();
    let tpm = EpochTpm::start();
    let (dir, db, url) = sqlite_vault();
    let epoch = tpm.args();
    let server = Server::start_with(&token, &url, 10, &epoch);
    let (user, _) = register(&server.url, b"right");
    // Stopped with SIGKILL, as a crash: the backup is what it left.
    drop(server);
    let backup = dir.path().join("backup.db");
    copy_db(&db, &backup);

    // Three wrong guesses answered, each after a crash-restart.
    for left in [9, 8, 7] {
        let server = Server::start_with(&token, &url, 10, &epoch);
        let guesses_left = wrong_guess(&server.url, &user);
        assert_eq!(guesses_left, left);
        drop(server);
    }
    let latest = dir.path().join("latest.db");
    copy_db(&db, &latest);

    // The backup put back: refused, naming the rollback; exit 1.
    copy_db(&backup, &db);
    refused(&token, &url, &epoch, "the database was rolled back");

    // The latest database with the record put back as it was in the
    // backup (an older copy of itself, its MAC valid): the record is not
    // the one sealed.
    copy_db(&latest, &db);
    {
        let old = rusqlite::Connection::open(&backup).unwrap();
        type Row = (
            Option<Vec<u8>>,
            i64,
            Option<i64>,
            i64,
            i64,
            Option<Vec<u8>>,
            Vec<u8>,
        );
        let row: Row = old
            .query_row(
                "SELECT registration, failed_guesses, destroyed, stamp, version, prev, mac FROM records WHERE user_id = ?1",
                [&user],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .unwrap();
        let n = rusqlite::Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE records SET registration = ?2, failed_guesses = ?3, destroyed = ?4, stamp = ?5, version = ?6, prev = ?7, mac = ?8 WHERE user_id = ?1",
                rusqlite::params![user, row.0, row.1, row.2, row.3, row.4, row.5, row.6],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    refused(&token, &url, &epoch, "not those sealed");

    // The latest database with the guesses reset by hand: refused.
    copy_db(&latest, &db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE records SET failed_guesses = 0", [])
        .unwrap();
    refused(&token, &url, &epoch, "does not carry its MAC");

    // The latest database with a trigger on the records: refused.
    copy_db(&latest, &db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TRIGGER keep AFTER UPDATE ON records BEGIN SELECT 1; END;")
        .unwrap();
    refused(
        &token,
        &url,
        &epoch,
        "runs code of its own on the vault's tables (trigger keep)",
    );

    // The latest database as it was: it starts and counts on.
    copy_db(&latest, &db);
    let server = Server::start_with(&token, &url, 10, &epoch);
    let guesses_left = wrong_guess(&server.url, &user);
    assert_eq!(guesses_left, 6);
    drop(server);

    // The operator may accept the old backup deliberately: adopting
    // seals it and exits, so that the flag cannot stay in a service's
    // command line and take every restored backup from then on.
    copy_db(&backup, &db);
    let adopt = [&epoch[..], &["--epoch-adopt"]].concat();
    let out = common::vault::serve_until_exit(&token, &url, &adopt);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("start the server again without --epoch-adopt"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    let server = Server::start_with(&token, &url, 10, &epoch);
    let guesses_left = wrong_guess(&server.url, &user);
    assert_eq!(guesses_left, 9, "the backup's count, adopted");
}

#[test]
fn an_nv_index_that_is_not_the_owners_plain_counter_is_refused() {
    let token = Token::new();
    let tpm = EpochTpm::start();
    let (_dir, _db, url) = sqlite_vault();
    for (index, attrs, want) in [
        ("0x01300001", "ownerread|ownerwrite", "is not a counter"),
        // May jump ahead after a power loss: the database would then look
        // rolled back.
        (
            "0x01300002",
            "ownerread|ownerwrite|nt=counter|orderly",
            "a counter coffer did not define",
        ),
        // Written with its own (empty) authorization: not the owner's alone.
        (
            "0x01300003",
            "ownerread|ownerwrite|authwrite|nt=counter",
            "a counter coffer did not define",
        ),
    ] {
        let defined = std::process::Command::new("tpm2_nvdefine")
            .args(["-T", &tpm.tcti, "-C", "o", "-s", "8", "-a", attrs, index])
            .env("TSS2_LOG", "all+none")
            .output()
            .unwrap();
        assert!(defined.status.success(), "{}", stderr_of(&defined));
        let args = [&tpm.args()[..], &["--epoch-nv-index", index]].concat();
        refused(&token, &url, &args, want);
    }
}

#[test]
fn a_registration_answered_is_never_lost_to_a_backup_from_before_it() {
    let token = Token::new();
    let tpm = EpochTpm::start();
    let (dir, db, url) = sqlite_vault();
    let epoch = tpm.args();
    let server = Server::start_with(&token, &url, 10, &epoch);
    register(&server.url, b"right");
    drop(server);
    let before = dir.path().join("before.db");
    copy_db(&db, &before);
    // Answered only once sealed: a database from before it is then
    // behind the counter (it used to be answered at once, and the backup
    // taken over it with nothing said).
    let server = Server::start_with(&token, &url, 10, &epoch);
    register(&server.url, b"other");
    drop(server);
    copy_db(&before, &db);
    refused(&token, &url, &epoch, "the database was rolled back");
}

#[test]
fn a_stale_epoch_row_put_back_while_the_server_runs_gets_no_answer() {
    let token = Token::new();
    let tpm = EpochTpm::start();
    let (_dir, db, url) = sqlite_vault();
    let server = Server::start_with(&token, &url, 10, &tpm.args());
    let (user, _) = register(&server.url, b"right");
    let read = || -> (i64, i64, Vec<u8>, Vec<u8>) {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT epoch, confirmed, sealed, mac FROM epoch", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap()
    };
    let stale = read();
    assert_eq!(wrong_guess(&server.url, &user), 9);
    assert_eq!(wrong_guess(&server.url, &user), 8);
    assert!(read().0 > stale.0, "the epoch advanced");
    // Put back while it runs: changes would be stamped with an epoch
    // sealed long ago, and answered at once.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE epoch SET epoch = ?1, confirmed = ?2, sealed = ?3, mac = ?4",
            rusqlite::params![stale.0, stale.1, stale.2, stale.3],
        )
        .unwrap();
    let start = ClientLogin::<Suite>::start(&mut rand_core::OsRng, b"wrong").unwrap();
    let req =
        serde_json::json!({"user": user, "message": protocol::b64(&start.message.serialize())});
    let (status, body) = post(&server.url, path::LOGIN_START, req.to_string().as_bytes());
    assert_eq!(status, 500, "not answered: {body}");
}

#[test]
fn crashes_mid_traffic_never_lock_the_vault_out() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let token = Token::new();
    let tpm = EpochTpm::start();
    let (_dir, _, url) = sqlite_vault();
    let epoch = tpm.args();
    let server = Server::start_with(&token, &url, 1000, &epoch);
    let users: Vec<(String, Vec<u8>)> = (0..2).map(|_| register(&server.url, b"right")).collect();
    drop(server);
    let answered = std::sync::Arc::new(AtomicU64::new(0));
    for round in 0..6u64 {
        let server = Server::start_with(&token, &url, 1000, &epoch);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let traffic: Vec<_> = users
            .iter()
            .cloned()
            .map(|(user, key)| {
                let (url, stop, answered) = (server.url.clone(), stop.clone(), answered.clone());
                std::thread::spawn(move || {
                    let client = Client::new(&url, None).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        if let Err(VaultError::WrongPassword { .. }) =
                            client.login(&user, b"wrong", &key, false)
                        {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        // SIGKILL at a different moment each round, guesses in flight.
        std::thread::sleep(std::time::Duration::from_millis(150 + 70 * round));
        drop(server);
        stop.store(true, Ordering::SeqCst);
        for t in traffic {
            t.join().unwrap();
        }
    }
    assert!(answered.load(Ordering::SeqCst) > 0, "guesses were answered");
    // Still starts, and every answered guess is counted.
    let _server = Server::start_with(&token, &url, 1000, &epoch);
    let stored: u64 = users
        .iter()
        .map(|(u, _)| u64::from(server_failed(&url, u)))
        .sum();
    assert!(
        stored >= answered.load(Ordering::SeqCst),
        "{stored} stored, {} answered",
        answered.load(Ordering::SeqCst)
    );
}

/// Unrefunded guesses of `user` in the SQLite database at `url`.
fn server_failed(url: &str, user: &str) -> u32 {
    let path = url.strip_prefix("sqlite:").unwrap();
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT failed_guesses FROM records WHERE user_id = ?1",
            [user],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u32
}

#[test]
fn a_failover_to_a_synchronous_standby_loses_no_answered_guess() {
    for _ in 0..2 {
        failover_round(1000);
    }
}

#[test]
fn a_guess_whose_wait_for_the_standby_was_cancelled_is_not_answered() {
    let (primary, standby, url) = replicated();
    let token = Token::new();
    let server = Server::start_db(&token, &url, 100);
    let (user, key) = register(&server.url, b"right");
    // The standby stops taking WAL: a commit on the primary waits for it.
    let receiver = standby.psql("SELECT pid FROM pg_stat_wal_receiver");
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &receiver])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let url = server.url.clone();
    let login = std::thread::spawn(move || {
        Client::new(&url, None)
            .unwrap()
            .login(&user, b"wrong", &key, false)
    });
    // The charge's commit waits for the standby; cancel the wait, as an
    // administrator's pg_cancel_backend would. PostgreSQL then reports
    // the commit done, with a WARNING: it is on the primary only.
    let mut waiting = String::new();
    wait_until("a commit waiting for the standby", || {
        waiting = primary.psql("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
        !waiting.is_empty()
    });
    assert_eq!(
        primary.psql(&format!("SELECT pg_cancel_backend({waiting})")),
        "t"
    );
    // The audit row's own commit waits too: let the standby go on.
    std::thread::sleep(std::time::Duration::from_millis(300));
    signal("-CONT");
    let answer = login.join().unwrap();
    assert!(
        !matches!(answer, Ok(_) | Err(VaultError::WrongPassword { .. })),
        "a guess committed on the primary only was answered: {answer:?}"
    );
}

#[test]
fn a_vault_on_an_unreplicated_database_says_so_at_start() {
    let pg = Postgres::start();
    let token = Token::new();
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start_logging(
        &token,
        &pg.url(),
        3,
        &["--listen", "127.0.0.1:0"],
        log.reopen().unwrap().into(),
    );
    drop(server);
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        said.contains("WARNING: the database is not synchronously replicated"),
        "{said}"
    );
}
