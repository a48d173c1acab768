//! Vault logins per second on loopback: an in-process server (SQLite,
//! local key file) and client threads each running full OPAQUE logins
//! (client Argon2id included, as a real unlock pays it), then the same
//! with wrong passwords (the server's per-guess cost: a committed counter
//! update plus one OPRF evaluation and AKE message).
//!
//! Both over plain HTTP and over the server's own TLS (a certificate made
//! by `openssl`).
//!
//! `cargo bench --bench vault_logins` (COFFER_BENCH_SECS, default 5).

#[path = "common/pki.rs"]
mod pki;

use coffer::vault::VaultError;
use coffer::vault::client::Client;
use coffer::vault::hsm::Sealer;
use coffer::vault::server::{Server, Tls, Vault};
use coffer::vault::store::Store;
use std::time::{Duration, Instant};

fn main() {
    let secs: u64 = std::env::var("COFFER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    bench("HTTP", secs, None);
    match pki::pki() {
        Some(pki) => bench("HTTPS", secs, Some(pki.path())),
        None => println!("vault logins over HTTPS: skipped (openssl cannot make a certificate)"),
    }
}

/// Full logins for `secs` seconds per password, one client thread per core,
/// against a fresh in-process server (TLS when `pki` is given).
fn bench(transport: &str, secs: u64, pki: Option<&std::path::Path>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::local_file(&dir.path().join("key")).unwrap();
    let store = Store::open_sqlite(&dir.path().join("vault.db")).unwrap();
    let vault = Vault::open(
        store,
        &sealer,
        u32::MAX,
        std::sync::Arc::new(|m: &str| eprintln!("{m}")),
        Default::default(),
    )
    .unwrap();
    let tls = pki.map(|p| Tls::from_pem_files(&p.join("leaf.pem"), &p.join("leaf.key")).unwrap());
    let ca = pki.map(|p| std::fs::read(p.join("ca.pem")).unwrap());
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), vault, tls).unwrap();
    let port = server.local_addr().unwrap().port();
    let url = match pki {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    std::thread::spawn(move || server.run());

    let client = Client::new(&url, ca.as_deref()).unwrap();
    let users: Vec<_> = (0..threads)
        .map(|i| {
            let user = format!("{i:032x}");
            let reg = client.register(&user, b"bench password").unwrap();
            (user, reg.server_key)
        })
        .collect();

    for (label, password) in [
        ("right password", &b"bench password"[..]),
        ("wrong password", &b"not the password"[..]),
    ] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = Instant::now();
        let done: usize = std::thread::scope(|s| {
            let hs: Vec<_> = users
                .iter()
                .map(|(user, key)| {
                    let (url, ca) = (&url, &ca);
                    s.spawn(move || {
                        let c = Client::new(url, ca.as_deref()).unwrap();
                        let mut n = 0;
                        while Instant::now() < deadline {
                            match c.login(user, password, key, false) {
                                Ok(_) | Err(VaultError::WrongPassword { .. }) => n += 1,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        n
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let secs = start.elapsed().as_secs_f64();
        println!(
            "vault logins over {transport}, {label}, {threads} client threads: {done} in {secs:.1} s = {:.1}/s",
            done as f64 / secs
        );
    }
}
