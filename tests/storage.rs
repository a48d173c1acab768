//! Archives on object storage, against moto's S3 server and Azurite, the
//! Azure Blob Storage emulator (real servers written by others;
//! coffer_hsm_sim starts one per test), and a fault proxy in front of
//! them. What both must do is written once, generic over [`Store`], and
//! run against each (`mod s3`, `mod azure` at the end).
#![cfg(feature = "object-storage")]

mod common;

use coffer_hsm_sim::AzureServer;
use coffer_hsm_sim::fault_proxy::FaultProxy;
use coffer_hsm_sim::s3::{BUCKET, S3Server};
use common::Home;
use std::io::Write;
use std::process::{Command, Stdio};

/// A home with a keyring whose `coffer` reaches the store with `env`.
fn run(h: &Home, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut c = h.coffer();
    c.envs(env.iter().map(|(k, v)| (k, v))).args(args);
    c.output().unwrap()
}

/// `coffer open URL -o -` with the recovery key.
fn open_to_stdout(h: &Home, env: &[(String, String)], url: &str) -> std::process::Output {
    run(
        h,
        env,
        &[
            "open",
            url,
            "-o",
            "-",
            "--recovery-key-file",
            "recovery.txt",
        ],
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether a part upload's status says it was stored (S3 answers 200,
/// Azure 201).
fn stored(status: u16) -> bool {
    (200..300).contains(&status)
}

fn random(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut v = vec![0; n];
    ring::rand::SystemRandom::new().fill(&mut v).unwrap();
    v
}

/// Seal `data` as a stream into `url`; the command's output.
fn seal_stream(
    h: &Home,
    env: &[(String, String)],
    data: &[u8],
    url: &str,
    more: &[&str],
) -> std::process::Output {
    let mut c = h.coffer();
    c.envs(env.iter().map(|(k, v)| (k, v)))
        .args(["seal", "-", "-o", url])
        .args(more)
        .write_stdin(data.to_vec());
    c.output().unwrap()
}

/// A store fixture, as the tests below use it.
trait Store: Sized {
    fn start() -> Self;
    /// The environment that reaches it directly.
    fn env(&self) -> Vec<(String, String)>;
    /// The environment that reaches it through `proxy`.
    fn env_via(proxy: &FaultProxy) -> Vec<(String, String)>;
    fn url(key: &str) -> String;
    /// Objects a reader sees.
    fn objects(&self) -> Vec<String>;
    fn get(&self, key: &str) -> Vec<u8>;
    fn fault_proxy(&self) -> FaultProxy;
    /// Uploads neither completed nor aborted: S3's multipart uploads,
    /// Azure's blobs of uncommitted blocks.
    fn uploads(&self) -> Vec<String>;
    /// Whether an abort removes what an upload stored. Azure has no abort:
    /// an upload's uncommitted blocks stay, never readable, until Azure
    /// collects them a week later (docs/storage.md says so).
    const ABORT_REMOVES_PARTS: bool;
    /// Whether a logged request (`METHOD TARGET`) completes an upload.
    fn is_completion(request: &str) -> bool;
}

impl Store for S3Server {
    fn start() -> Self {
        S3Server::start()
    }
    fn env(&self) -> Vec<(String, String)> {
        S3Server::env(self)
    }
    fn env_via(proxy: &FaultProxy) -> Vec<(String, String)> {
        S3Server::env_for(&proxy.endpoint(), ("testing", "testing"))
    }
    fn url(key: &str) -> String {
        S3Server::url(key)
    }
    fn objects(&self) -> Vec<String> {
        S3Server::objects(self)
    }
    fn get(&self, key: &str) -> Vec<u8> {
        S3Server::get(self, key)
    }
    fn fault_proxy(&self) -> FaultProxy {
        S3Server::fault_proxy(self)
    }
    fn uploads(&self) -> Vec<String> {
        S3Server::uploads(self)
    }
    const ABORT_REMOVES_PARTS: bool = true;
    fn is_completion(request: &str) -> bool {
        request.starts_with("POST") && request.contains("uploadId=")
    }
}

impl Store for AzureServer {
    fn start() -> Self {
        AzureServer::start()
    }
    fn env(&self) -> Vec<(String, String)> {
        AzureServer::env(self)
    }
    fn env_via(proxy: &FaultProxy) -> Vec<(String, String)> {
        AzureServer::env_for(&proxy.endpoint())
    }
    fn url(key: &str) -> String {
        AzureServer::url(key)
    }
    fn objects(&self) -> Vec<String> {
        AzureServer::objects(self)
    }
    fn get(&self, key: &str) -> Vec<u8> {
        AzureServer::get(self, key)
    }
    fn fault_proxy(&self) -> FaultProxy {
        AzureServer::fault_proxy(self)
    }
    fn uploads(&self) -> Vec<String> {
        AzureServer::uncommitted(self)
    }
    const ABORT_REMOVES_PARTS: bool = false;
    fn is_completion(request: &str) -> bool {
        request.starts_with("PUT") && request.contains("comp=blocklist")
    }
}

fn seal_open_verify_inspect_a_folder_and_a_stream<S: Store>() {
    let store = S::start();
    let env = store.env();
    let h = Home::new();
    h.init();
    let tree = h.path("docs");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "hello").unwrap();
    std::fs::write(tree.join("sub/big"), random(3 << 20)).unwrap();
    let url = S::url("host/2026-11-29.coffer");
    let out = run(&h, &env, &["seal", tree.to_str().unwrap(), "-o", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(store.objects(), ["host/2026-11-29.coffer"]);
    assert!(store.uploads().is_empty(), "the upload completed");

    let out = run(&h, &env, &["inspect", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("format version 2"));
    let out = run(
        &h,
        &env,
        &["verify", &url, "--recovery-key-file", "recovery.txt"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &h,
        &env,
        &[
            "open",
            &url,
            "-o",
            "restored",
            "--recovery-key-file",
            "recovery.txt",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    common::tree::assert_same(
        &tree,
        &h.path("restored/docs"),
        common::tree::Ignore::default(),
    );

    // A stream of several parts (8 MiB each), read back through `-o -`.
    let data = random(20 << 20);
    let url = S::url("stream.coffer");
    let out = seal_stream(&h, &env, &data, &url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = open_to_stdout(&h, &env, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "the stream came back whole");
    // The object is exactly what a local seal writes: same format.
    std::fs::write(h.path("copy.coffer"), store.get("stream.coffer")).unwrap();
    let out = run(
        &h,
        &[],
        &[
            "verify",
            "copy.coffer",
            "--recovery-key-file",
            "recovery.txt",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

fn inspect_reads_only_the_header_and_open_reads_ahead_in_ranges<S: Store>() {
    let store = S::start();
    let proxy = store.fault_proxy();
    let h = Home::new();
    h.init();
    let env = S::env_via(&proxy);
    // Put the archive in place without the proxy (no part faults).
    let data = random(20 << 20);
    let out = seal_stream(&h, &store.env(), &data, &S::url("a.coffer"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&h, &env, &["inspect", &S::url("a.coffer")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets: Vec<String> = proxy
        .log()
        .requests
        .into_iter()
        .filter(|r| r.starts_with("GET"))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(
        gets[0].ends_with("/a.coffer bytes=0-65535"),
        "one GET of the first 64 KiB: {gets:?}"
    );

    let out = open_to_stdout(&h, &env, &S::url("a.coffer"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data);
    // Parallel, so in any order: sorted, they tile the object, 64 KiB
    // first, then to 2 MiB, then 8 MiB ranges to the end.
    let mut ranges: Vec<(u64, u64)> = proxy
        .log()
        .requests
        .iter()
        .filter(|r| r.starts_with("GET"))
        .skip(1)
        .map(|r| {
            let (a, b) = r.rsplit_once("bytes=").unwrap().1.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse::<u64>().unwrap() + 1)
        })
        .collect();
    ranges.sort();
    let size = store.get("a.coffer").len() as u64;
    assert_eq!(ranges.first().map(|r| r.0), Some(0), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.1), Some(size), "{ranges:?}");
    for (i, w) in ranges.windows(2).enumerate() {
        assert_eq!(w[0].1, w[1].0, "contiguous: {ranges:?}");
        let want = match i {
            0 => 65536,
            1 => (2 << 20) - 65536,
            _ => 8 << 20,
        };
        assert_eq!(w[0].1 - w[0].0, want, "{ranges:?}");
    }
}

fn an_existing_object_is_replaced_only_with_force<S: Store>() {
    let store = S::start();
    let env = store.env();
    let h = Home::new();
    h.init();
    let url = S::url("a.coffer");
    assert!(seal_stream(&h, &env, b"first", &url, &[]).status.success());
    let before = store.get("a.coffer");
    let out = seal_stream(&h, &env, b"second", &url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(store.get("a.coffer"), before, "left alone");
    assert!(store.uploads().is_empty(), "nothing left behind");
    let out = seal_stream(&h, &env, b"second", &url, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(store.get("a.coffer"), before, "replaced");
    let out = open_to_stdout(&h, &env, &url);
    assert_eq!(out.stdout, b"second");
}

fn a_part_refused_once_is_retried_alone_and_never_sent_again<S: Store>() {
    let store = S::start();
    let proxy = store.fault_proxy();
    let env = S::env_via(&proxy);
    let h = Home::new();
    h.init();
    let data = random(20 << 20);
    let out = seal_stream(&h, &env, &data, &S::url("a.coffer"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = proxy.log();
    assert_eq!(
        log.faults, 3,
        "each of the 3 parts was refused once: {log:?}"
    );
    for (part, tries) in &log.tries {
        assert!(
            matches!(tries[..], [503, ok] if stored(ok)),
            "part {part}: one refusal, one retry, nothing after: {tries:?}"
        );
    }
    let out = open_to_stdout(&h, &store.env(), &S::url("a.coffer"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "the archive is whole");
}

fn a_seal_that_fails_mid_upload_leaves_no_object<S: Store>() {
    let store = S::start();
    let proxy = store.fault_proxy();
    proxy.refuse_part(2);
    let env = S::env_via(&proxy);
    let h = Home::new();
    h.init();
    let url = S::url("a.coffer");
    let out = seal_stream(&h, &env, &random(30 << 20), &url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!("coffer: {url}: access denied")),
        "{said}"
    );
    assert_eq!(
        said.matches(url.as_str()).count(),
        1,
        "the URL said once: {said}"
    );
    assert!(
        proxy.log().tries[&2].iter().all(|s| *s == 403),
        "part 2 was refused"
    );
    assert!(store.objects().is_empty(), "no object appeared");
    parts_left_as_documented(&store, "a.coffer");
}

/// After an aborted upload of `key`: on S3 no parts; on Azure, which has
/// no abort, its uncommitted blocks, unreadable (docs/storage.md).
fn parts_left_as_documented<S: Store>(store: &S, key: &str) {
    if S::ABORT_REMOVES_PARTS {
        assert!(
            store.uploads().is_empty(),
            "the upload was aborted: no parts left"
        );
    } else {
        assert_eq!(
            store.uploads(),
            [key],
            "Azure keeps the uncommitted blocks until it collects them"
        );
    }
}

/// `coffer seal - -o URL` reaching the store through `env`, its standard
/// input a pipe the caller holds.
///
/// The signals the tests send are reset to their default first (coreutils'
/// `env --default-signal`): a test run started in the background inherits
/// SIGINT ignored, and coffer rightly keeps an inherited ignore.
fn spawn_seal(h: &Home, env: &[(String, String)], url: &str) -> std::process::Child {
    let mut c = Command::new("env");
    c.env_clear()
        .env("COFFER_KEYRING", h.keyring())
        .env("HOME", h.dir.path())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--default-signal=INT,TERM,HUP")
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args(["seal", "-", "-o", url])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Wait (at most 30 s) until `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited in vain: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Wait for `child` to end by itself (at most 30 s; else kill it and fail).
fn ended(mut child: std::process::Child, why: &str) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the seal did not end: {why}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn an_interrupted_seal_leaves_no_object<S: Store>() {
    use rustix::process::{Pid, Signal, kill_process};
    let store = S::start();
    let proxy = store.fault_proxy();
    let env = S::env_via(&proxy);
    let h = Home::new();
    h.init();
    for (signal, status) in [(Signal::TERM, 143), (Signal::INT, 130)] {
        let mut child = spawn_seal(&h, &env, &S::url("cut.coffer"));
        let mut stdin = child.stdin.take().unwrap();
        // Two parts and more, then nothing while the pipe stays open: only
        // the signal can end the seal.
        stdin.write_all(&random(20 << 20)).unwrap();
        wait_for("a part stored", || {
            proxy
                .log()
                .tries
                .values()
                .any(|t| t.iter().any(|s| stored(*s)))
        });
        kill_process(Pid::from_child(&child), signal).unwrap();
        let out = ended(child, &format!("{signal:?}"));
        drop(stdin);
        assert_eq!(out.status.code(), Some(status), "{}", stderr(&out));
        assert!(store.objects().is_empty(), "no object appeared");
        parts_left_as_documented(&store, "cut.coffer");
    }
}

fn the_store_refuses_to_replace_an_object_made_while_the_upload_ran<S: Store>() {
    let store = S::start();
    let proxy = store.fault_proxy();
    let env = S::env_via(&proxy);
    let h = Home::new();
    h.init();
    let url = S::url("race.coffer");
    let mut child = spawn_seal(&h, &env, &url);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random(10 << 20)).unwrap();
    // Past the early check: a part is stored. Then someone else writes.
    wait_for("a part stored", || {
        proxy
            .log()
            .tries
            .values()
            .any(|t| t.iter().any(|s| stored(*s)))
    });
    let other = seal_stream(&h, &store.env(), b"someone else's", &url, &[]);
    assert!(other.status.success(), "{}", stderr(&other));
    let theirs = store.get("race.coffer");
    drop(stdin);
    let out = ended(child, "end of input");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(store.get("race.coffer"), theirs, "left alone");
    // (On Azure the aborted upload's blocks now hang on the other writer's
    // blob, discarded at its next completion or after a week.)
    if S::ABORT_REMOVES_PARTS {
        assert!(store.uploads().is_empty(), "the upload was aborted");
    }
    let completions: Vec<String> = proxy
        .log()
        .requests
        .into_iter()
        .filter(|r| S::is_completion(r))
        .collect();
    assert_eq!(
        completions.len(),
        1,
        "refused by the store: {completions:?}"
    );
}

#[test]
fn store_errors_are_clear_and_exit_1() {
    let s3 = S3Server::start();
    let env = s3.env();
    let h = Home::new();
    h.init();
    let out = seal_stream(&h, &env, b"x", "s3://no-such-bucket/a.coffer", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("s3://no-such-bucket/a.coffer: no such object or bucket"),
        "{}",
        stderr(&out)
    );
    let out = run(&h, &env, &["verify", &S3Server::url("missing.coffer")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such object"), "{}", stderr(&out));
    for (url, what) in [
        ("s3://bucket-only", "name an object"),
        (
            "gs://bucket/a.coffer",
            "Google Cloud Storage is not supported",
        ),
        (
            "abfss://c@acct.dfs.core.windows.net/a",
            "az://CONTAINER/BLOB",
        ),
        ("ftp://host/a.coffer", "unknown kind of store"),
        // A SAS pasted into the URL: refused, and its signature unsaid.
        ("az://coffer/a.coffer?sv=1&sig=SECRET", "query or fragment"),
        (
            "https://acct.blob.core.windows.net/c/a?sig=SECRET",
            "query or fragment",
        ),
        // Names a URL would resolve elsewhere ($root's blob "x.coffer",
        // or blob "dir").
        ("az://../x.coffer", "not a container name"),
        ("az://Coffer/x.coffer", "not a container name"),
        ("az://coffer/dir/", "starts or ends with '/'"),
        ("az://coffer//x", "starts or ends with '/'"),
        ("s3://../x.coffer", "not a bucket name"),
        ("az://$web/x?.coffer", "query or fragment"),
    ] {
        let out = seal_stream(&h, &env, b"x", url, &[]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains(what), "{url}: {}", stderr(&out));
        assert!(!stderr(&out).contains("SECRET"), "{}", stderr(&out));
    }
    let out = run(&h, &env, &["open", "x.coffer", "-o", &S3Server::url("out")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run(
        &h,
        &env,
        &["open", "x.coffer", "-o", "az://c/out?sig=SECRET"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains("SECRET"), "{}", stderr(&out));
    assert!(s3.objects().is_empty() && s3.uploads().is_empty());
}

#[test]
fn a_seal_only_host_seals_into_a_bucket_it_cannot_read() {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":["s3:PutObject","s3:AbortMultipartUpload"],"Resource":"arn:aws:s3:::{BUCKET}/*"}}]}}"#
    );
    let (s3, sealer_key, admin_key) = S3Server::start_with_auth(&policy);
    let host = S3Server::env_for(&s3.endpoint(), (&sealer_key.id, &sealer_key.secret));
    let admin = S3Server::env_for(&s3.endpoint(), (&admin_key.id, &admin_key.secret));
    a_seal_only_host_seals_where_it_cannot_read(&admin, &host, S3Server::url);
    assert!(s3.uploads().is_empty(), "the refused upload was aborted");
}

#[test]
fn a_seal_only_host_seals_into_an_azure_container_it_cannot_read() {
    let az = AzureServer::start();
    let admin = AzureServer::env_for(&az.endpoint());
    // A shared access signature that may create and write blobs, not read.
    let mut host: Vec<_> = admin
        .iter()
        .filter(|(k, _)| k != "AZURE_STORAGE_ACCOUNT_KEY")
        .cloned()
        .collect();
    host.push(("AZURE_STORAGE_SAS_KEY".into(), az.sas("cw")));
    a_seal_only_host_seals_where_it_cannot_read(&admin, &host, AzureServer::url);
    // Azure cannot abort: the host, refused a HEAD, learns the name is
    // taken by a write that creates nothing, before uploading any block
    // (which would stay under the owner's archive for a week).
    assert!(az.uncommitted().is_empty(), "{:?}", az.uncommitted());
}

/// The owner seals with `admin`; a host with a seal-only keyring and the
/// write-only `host` credentials is refused a read, seals, and cannot
/// replace the owner's archive.
fn a_seal_only_host_seals_where_it_cannot_read(
    admin: &[(String, String)],
    host: &[(String, String)],
    url: fn(&str) -> String,
) {
    let (admin, host) = (admin.to_vec(), host.to_vec());
    let h = Home::new();
    h.init();
    h.export_seal_only("nightly", "host-keyring.json")
        .assert()
        .success();
    let host_home = Home::new();
    std::fs::copy(h.path("host-keyring.json"), host_home.keyring()).unwrap();

    // The owner's archive is there; the host may not read it: the test
    // cannot pass for a bucket that lets everyone in.
    let earlier = url("earlier.coffer");
    let out = seal_stream(&h, &admin, b"owner's", &earlier, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&host_home, &host, &["inspect", &earlier]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));

    // The host seals nightly; the owner opens it.
    let data = random(12 << 20);
    let nightly = url("nightly/2026-11-29.coffer");
    let out = seal_stream(&host_home, &host, &data, &nightly, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = open_to_stdout(&h, &admin, &nightly);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data);

    // It may not read whether an object exists: S3 refuses the
    // replacement at completion (If-None-Match), Azure already when asked
    // by a write that creates nothing; the owner's archive is untouched.
    let out = seal_stream(&host_home, &host, b"over", &earlier, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = open_to_stdout(&h, &admin, &earlier);
    assert_eq!(out.stdout, b"owner's");
}

#[test]
fn azure_errors_are_clear_and_exit_1() {
    let az = AzureServer::start();
    let env = az.env();
    let h = Home::new();
    h.init();
    let out = seal_stream(&h, &env, b"x", "az://no-such-container/a.coffer", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).lines().count(),
        1,
        "one line: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("az://no-such-container/a.coffer: no such blob or container"),
        "{}",
        stderr(&out)
    );
    let out = run(&h, &env, &["inspect", &AzureServer::url("missing.coffer")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such blob"), "{}", stderr(&out));
    // A wrong key: the store refuses it.
    let mut wrong = AzureServer::env_for(&az.endpoint());
    wrong[1].1 = "d3Jvbmc=".into();
    let out = run(
        &h,
        &wrong,
        &["inspect", &AzureServer::url("missing.coffer")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the credentials") || stderr(&out).contains("access denied"),
        "{}",
        stderr(&out)
    );
    // Two kinds of credential: object_store would use one and ignore the
    // other (a write-only SAS beside a broader key), so neither is used.
    let mut both = AzureServer::env_for(&az.endpoint());
    both.push(("AZURE_STORAGE_SAS_KEY".into(), az.sas("cw")));
    let out = seal_stream(&h, &both, b"x", &AzureServer::url("two.coffer"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "more than one kind of Azure credential is set (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY)"
        ),
        "{}",
        stderr(&out)
    );
    assert!(az.uncommitted().is_empty(), "nothing sent");
    // Chosen by AZURE_CREDENTIAL_TYPE, as object_store reads it: the SAS.
    both.push(("AZURE_CREDENTIAL_TYPE".into(), "sas_token".into()));
    let out = seal_stream(&h, &both, b"x", &AzureServer::url("two.coffer"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The write-only SAS it is, not the account key: no read.
    let out = run(&h, &both, &["inspect", &AzureServer::url("two.coffer")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));
    // Other tools' names are not taken silently.
    let out = run(
        &h,
        &[("AZURE_STORAGE_ACCOUNT".into(), "acct".into())],
        &["inspect", &AzureServer::url("a.coffer")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("set AZURE_STORAGE_ACCOUNT_NAME"),
        "{}",
        stderr(&out)
    );
    // No account named, no emulator: said before any request.
    let out = run(&h, &[], &["inspect", &AzureServer::url("a.coffer")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("AZURE_STORAGE_ACCOUNT_NAME"),
        "{}",
        stderr(&out)
    );
    assert_eq!(az.objects(), ["two.coffer"], "only the SAS's archive");
}

/// Each scenario against each store.
macro_rules! against {
    ($store:ident: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                super::$name::<$store>()
            }
        )*
    };
}

mod s3 {
    use coffer_hsm_sim::S3Server;
    against!(S3Server:
        seal_open_verify_inspect_a_folder_and_a_stream,
        inspect_reads_only_the_header_and_open_reads_ahead_in_ranges,
        an_existing_object_is_replaced_only_with_force,
        a_part_refused_once_is_retried_alone_and_never_sent_again,
        a_seal_that_fails_mid_upload_leaves_no_object,
        an_interrupted_seal_leaves_no_object,
        the_store_refuses_to_replace_an_object_made_while_the_upload_ran,
    );
}

mod azure {
    use coffer_hsm_sim::AzureServer;
    against!(AzureServer:
        seal_open_verify_inspect_a_folder_and_a_stream,
        inspect_reads_only_the_header_and_open_reads_ahead_in_ranges,
        an_existing_object_is_replaced_only_with_force,
        a_part_refused_once_is_retried_alone_and_never_sent_again,
        a_seal_that_fails_mid_upload_leaves_no_object,
        an_interrupted_seal_leaves_no_object,
        the_store_refuses_to_replace_an_object_made_while_the_upload_ran,
    );
}
