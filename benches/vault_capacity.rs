//! The vault server's capacity: guesses (login start + finish) per second
//! per core of the server, over TLS, with SQLite and with PostgreSQL.
//!
//! The client's Argon2 must not be what is measured, so the clients send
//! the cheap half of a login: a real OPAQUE start (one OPRF blinding),
//! then a finish carrying 64 random bytes where the key-confirmation MAC
//! goes. The server does all of a login's work — charges the guess in a
//! committed transaction, evaluates the OPRF, runs the AKE, stores the
//! sealed state, takes it back, checks the MAC — and answers 401, as for a
//! wrong password. Its CPU time is this process's, less what the client
//! threads used (each reads its own); PostgreSQL's and swtpm's are read
//! from their processes; so clients sharing the machine do not count.
//!
//! A third run keeps the epoch in swtpm's NV counter (`--epoch-tpm`,
//! rollback detection): every login start then waits for two advances of
//! the epoch, each a transaction and a TPM increment; swtpm's CPU is
//! counted beside the server's.
//!
//! `cargo bench --bench vault_capacity` (COFFER_BENCH_SECS, default 5;
//! PostgreSQL and swtpm through the test fixtures, which need them
//! installed).

#[path = "common/pki.rs"]
mod pki;

#[path = "../tests/common/vault.rs"]
#[allow(dead_code)]
mod fixtures;

use coffer::vault::hsm::Sealer;
use coffer::vault::protocol::{self, Suite, path};
use coffer::vault::server::{Server, Tls, Vault};
use coffer::vault::store::Store;
use opaque_ke::ClientLogin;
use std::time::{Duration, Instant};

const USERS: usize = 64;
const CLIENTS: usize = 4;

fn main() {
    let secs: u64 = std::env::var("COFFER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pki = pki::pki().expect("openssl could not make a certificate");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open_sqlite(&dir.path().join("vault.db")).unwrap();
    run("SQLite", sqlite, pki.path(), secs, None, None);
    let pg = fixtures::Postgres::start();
    let store = Store::open(&pg.url()).unwrap();
    run("PostgreSQL", store, pki.path(), secs, Some(&pg), None);
    let tpm = coffer_hsm_sim::SwTpm::start();
    let sqlite = Store::open_sqlite(&dir.path().join("epoch.db")).unwrap();
    run(
        "SQLite, epoch in swtpm",
        sqlite,
        pki.path(),
        secs,
        None,
        Some(&tpm),
    );
}

/// CPU seconds of every `swtpm` process (the fixture's is the only one
/// running during the bench).
fn swtpm_cpu() -> f64 {
    process_cpu("swtpm")
}

/// CPU seconds of `id` (this process, or the calling thread).
fn cpu(id: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(id);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds of every `postgres` process (the fixture's cluster is the
/// only one running during the bench).
fn postgres_cpu() -> f64 {
    process_cpu("postgres")
}

/// CPU seconds of every process named `name`.
fn process_cpu(name: &str) -> f64 {
    let mut ticks = 0u64;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            ticks += stat_ticks(&p.path().join("stat"));
        }
    }
    ticks as f64 / ticks_per_second()
}

/// utime + stime of a /proc stat file, in clock ticks.
fn stat_ticks(stat: &std::path::Path) -> u64 {
    let s = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

fn agent(ca: &[u8]) -> ureq::Agent {
    let certs: Vec<_> = ureq::tls::parse_pem(ca)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
        .build();
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .build(),
    )
}

fn post(agent: &ureq::Agent, url: &str, p: &str, body: String) -> (u16, String) {
    let mut r = agent
        .post(format!("{url}{p}"))
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn run(
    label: &str,
    store: Store,
    pki: &std::path::Path,
    secs: u64,
    pg: Option<&fixtures::Postgres>,
    tpm: Option<&coffer_hsm_sim::SwTpm>,
) {
    let key = tempfile::tempdir().unwrap();
    let sealer = Sealer::local_file(&key.path().join("key")).unwrap();
    let epoch = coffer::vault::epoch::EpochOptions {
        counter: tpm.map(|t| {
            Box::new(coffer::vault::epoch::TpmCounter::new(
                &t.tcti(),
                0x0130_c0ff,
            )) as Box<dyn coffer::vault::epoch::Counter>
        }),
        adopt: false,
    };
    let vault = Vault::open(
        store,
        &sealer,
        1000,
        std::sync::Arc::new(|m: &str| eprintln!("{m}")),
        epoch,
    )
    .unwrap();
    let tls = Tls::from_pem_files(&pki.join("leaf.pem"), &pki.join("leaf.key")).unwrap();
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), vault, Some(tls)).unwrap();
    let url = format!("https://localhost:{}", server.local_addr().unwrap().port());
    std::thread::spawn(move || server.run());
    let client = coffer::vault::client::Client::new(&url, Some(&ca)).unwrap();
    let users: Vec<String> = (0..USERS)
        .map(|i| {
            let user = format!("{i:032x}");
            client.register(&user, b"bench password").unwrap();
            user
        })
        .collect();

    let (cpu0, db0, tpm0) = (
        cpu(rustix::time::ClockId::ProcessCPUTime),
        pg.map_or(0.0, |_| postgres_cpu()),
        tpm.map_or(0.0, |_| swtpm_cpu()),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let (done, client_cpu): (usize, f64) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (url, ca, users) = (&url, &ca, &users);
                std::thread::Builder::new()
                    .name("bench-client".into())
                    .spawn_scoped(s, move || {
                        let agent = agent(ca);
                        let mut n = 0;
                        let mut i = c;
                        while Instant::now() < deadline {
                            let user = &users[i % USERS];
                            i += CLIENTS;
                            let start =
                                ClientLogin::<Suite>::start(&mut rand_core::OsRng, b"x").unwrap();
                            let req = serde_json::json!({
                                "user": user,
                                "message": protocol::b64(&start.message.serialize()),
                            });
                            let (status, body) =
                                post(&agent, url, path::LOGIN_START, req.to_string());
                            assert_eq!(status, 200, "{body}");
                            let ans: protocol::LoginStartResponse =
                                serde_json::from_str(&body).unwrap();
                            let mut mac = [0u8; 64];
                            coffer::key::random_bytes(&mut mac);
                            let fin = serde_json::json!({
                                "session": ans.session,
                                "message": protocol::b64(&mac),
                            });
                            let (status, body) =
                                post(&agent, url, path::LOGIN_FINISH, fin.to_string());
                            assert_eq!(status, 401, "{body}");
                            n += 1;
                        }
                        (n, cpu(rustix::time::ClockId::ThreadCPUTime))
                    })
                    .unwrap()
            })
            .collect();
        let (mut n, mut client_cpu) = (0, 0.0);
        for h in hs {
            let (done, used) = h.join().unwrap();
            n += done;
            client_cpu += used;
        }
        (n, client_cpu)
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu(rustix::time::ClockId::ProcessCPUTime) - cpu0 - client_cpu;
    let db = pg.map_or(0.0, |_| postgres_cpu() - db0);
    let tpm_cpu = tpm.map_or(0.0, |_| swtpm_cpu() - tpm0);
    let per_core = done as f64 / cpu;
    print!(
        "vault capacity, {label}, TLS, {CLIENTS} client threads: {done} guesses in {wall:.1} s = {:.0}/s; server CPU {cpu:.2} s = {per_core:.0} guesses/s per server core",
        done as f64 / wall
    );
    if pg.is_some() {
        println!(
            "; PostgreSQL CPU {db:.2} s ({:.0}% of server + database), {:.0} guesses/s per core of both",
            100.0 * db / (db + cpu),
            done as f64 / (cpu + db)
        );
    } else if tpm.is_some() {
        println!(
            " (the database is inside the server); swtpm CPU {tpm_cpu:.2} s, {:.0} guesses/s per core of both",
            done as f64 / (cpu + tpm_cpu)
        );
    } else {
        println!(" (the database is inside the server)");
    }
}
