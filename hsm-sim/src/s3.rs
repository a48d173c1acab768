//! An S3 server for tests: moto in server mode (PyPI `moto[server]`,
//! installed into a virtual environment by `hsm-sim/install-deps.sh`), on
//! a free loopback port, one per fixture, with a bucket made; and a small
//! fault proxy in front of it that answers `503 SlowDown` to the first try
//! of each upload part (or `403` to every try of the part given to
//! `refuse_part`), counting what it saw.
//!
//! The proxy reads request bodies by Content-Length and answers by reading
//! moto's to the end: coffer's client and moto send no chunked bodies.
//!
//! The fixture talks to moto with plain unsigned HTTP (moto checks no
//! signature until authentication is switched on; with
//! [`S3Server::start_with_auth`] it enforces IAM policies after the first
//! few requests, which the fixture spends on setting up).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An IAM access key.
#[derive(Debug, Clone)]
pub struct AccessKey {
    /// `AWS_ACCESS_KEY_ID`.
    pub id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
}

/// The bucket every fixture makes.
pub const BUCKET: &str = "coffer-test";

/// A running moto S3 server.
pub struct S3Server {
    child: Child,
    port: u16,
}

/// moto's server, from the virtual environment `hsm-sim/install-deps.sh`
/// makes (`$COFFER_MOTO_VENV`, by default /opt/coffer-moto).
fn moto_server() -> PathBuf {
    let venv = std::env::var_os("COFFER_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/coffer-moto".into());
    let p = venv.join("bin/moto_server");
    assert!(
        p.exists(),
        "{} not found: run `bash hsm-sim/install-deps.sh` as root (it installs moto[server] into {})",
        p.display(),
        venv.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl S3Server {
    /// moto with authentication off, and [`BUCKET`] made.
    pub fn start() -> Self {
        let s = Self::spawn(&[]);
        s.request("PUT", &format!("/{BUCKET}"), &[], b"");
        s
    }

    /// moto enforcing signatures and IAM policies, with [`BUCKET`] made
    /// and two users: one allowed only what `policy` (an IAM policy
    /// document, JSON) allows, and one allowed everything. Returns their
    /// access keys. The fixture's own unsigned requests are refused from
    /// then on: reach the server with coffer and a key.
    pub fn start_with_auth(policy: &str) -> (Self, AccessKey, AccessKey) {
        // moto answers this many requests before it checks any: the
        // bucket, then three for each user.
        let s = Self::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "7")]);
        s.request("PUT", &format!("/{BUCKET}"), &[], b"");
        let limited = s.iam_user("limited", policy);
        let admin = s.iam_user(
            "admin",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        );
        (s, limited, admin)
    }

    /// An IAM user allowed what `policy` allows, and its access key.
    fn iam_user(&self, name: &str, policy: &str) -> AccessKey {
        let iam = |action: &str, extra: &str| {
            let body = format!("Action={action}&Version=2010-05-08&UserName={name}{extra}");
            // The credential scope names the service for moto's dispatch.
            self.request(
                "POST",
                "/",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    (
                        "Authorization",
                        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
                    ),
                ],
                body.as_bytes(),
            )
        };
        iam("CreateUser", "");
        let encoded = url_encode(policy);
        iam(
            "PutUserPolicy",
            &format!("&PolicyName=coffer&PolicyDocument={encoded}"),
        );
        let answer = iam("CreateAccessKey", "");
        let field = |tag: &str| {
            tags(&answer, tag)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no {tag} in moto's answer: {answer}"))
        };
        AccessKey {
            id: field("AccessKeyId"),
            secret: field("SecretAccessKey"),
        }
    }

    fn spawn(env: &[(&str, &str)]) -> Self {
        // The port is free when picked, but another test may take it before
        // moto binds it: then moto exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(moto_server());
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("start moto_server");
            let mut s = Self { child, port };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if s.child.try_wait().expect("moto_server's status").is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return s;
                }
                assert!(Instant::now() < deadline, "moto_server did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server exited at start five times (its port taken?)");
    }

    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment coffer needs to reach it (through `endpoint`, which
    /// may be a proxy in front of it), with the access key `key`.
    pub fn env_for(endpoint: &str, key: (&str, &str)) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", key.0),
            ("AWS_SECRET_ACCESS_KEY", key.1),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The environment to reach it directly, with moto's default key.
    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_for(&self.endpoint(), ("testing", "testing"))
    }

    /// `s3://BUCKET/key`.
    pub fn url(key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// One unsigned request; the answer's body (panics on a transport
    /// error, not on an error status).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let (_, _, body) = http(self.port, method, target, headers, body);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The keys of the objects in [`BUCKET`].
    pub fn objects(&self) -> Vec<String> {
        tags(
            &self.request("GET", &format!("/{BUCKET}?list-type=2"), &[], b""),
            "Key",
        )
    }

    /// The multipart uploads of [`BUCKET`] neither completed nor aborted.
    pub fn uploads(&self) -> Vec<String> {
        tags(
            &self.request("GET", &format!("/{BUCKET}?uploads"), &[], b""),
            "UploadId",
        )
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let (status, _, body) = http(self.port, "GET", &format!("/{BUCKET}/{key}"), &[], b"");
        assert_eq!(status, 200, "GET {key}: {}", String::from_utf8_lossy(&body));
        body
    }

    /// Start a fault proxy in front of this server.
    pub fn fault_proxy(&self) -> FaultProxy {
        FaultProxy::start(self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once('<').map(|(v, _)| v.to_owned()))
        .collect()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request on a fresh connection, closed after the answer:
/// status, headers, body. A Host header is added unless `headers` has one
/// (the proxy passes on the client's: signatures cover it).
fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r).expect("an answer");
    let status: u16 = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let mut body = Vec::new();
    r.read_to_end(&mut body).unwrap();
    (status, headers, body)
}

/// The start line and headers of a request or answer; `None` at EOF.
fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let start = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Some((start, headers))
}

/// What the fault proxy saw.
#[derive(Default, Debug, Clone)]
pub struct ProxyLog {
    /// Every request: `METHOD TARGET` and its `Range` header, if any.
    pub requests: Vec<String>,
    /// Requests per part number, in arrival order: the status answered.
    pub tries: HashMap<u32, Vec<u16>>,
    /// Errors the proxy itself answered.
    pub faults: usize,
    /// The part number refused with 403 every time ([`FaultProxy::refuse_part`]).
    pub refuse: Option<u32>,
}

/// A proxy that answers `503 SlowDown` to the first try of every
/// `UploadPart` and passes everything else (and every retry) to moto,
/// logging each request.
pub struct FaultProxy {
    port: u16,
    log: Arc<Mutex<ProxyLog>>,
}

impl FaultProxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let shared = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = shared.clone();
                std::thread::spawn(move || serve(conn, upstream, &log));
            }
        });
        Self { port, log }
    }

    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuse part `n` with `403 AccessDenied`, every try: a permanent
    /// error in the middle of an upload.
    pub fn refuse_part(&self, n: u32) {
        self.log.lock().unwrap().refuse = Some(n);
    }

    /// What it saw so far.
    pub fn log(&self) -> ProxyLog {
        self.log.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, upstream: u16, log: &Mutex<ProxyLog>) {
    let mut out = conn.try_clone().expect("clone the connection");
    let mut r = BufReader::new(conn);
    while let Some((start, headers)) = read_head(&mut r) {
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = start.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let range = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("range"))
            .map(|(_, v)| format!(" {v}"))
            .unwrap_or_default();
        log.lock()
            .unwrap()
            .requests
            .push(format!("{method} {target}{range}"));
        let part = (method == "PUT")
            .then(|| {
                target.split(['?', '&']).find_map(|q| {
                    q.strip_prefix("partNumber=")
                        .and_then(|n| n.parse::<u32>().ok())
                })
            })
            .flatten();
        if let Some(n) = part {
            let mut l = log.lock().unwrap();
            // 503 to the first try of each part; 403, for good, to the
            // part refused.
            let refused = l.refuse == Some(n);
            if refused || !l.tries.contains_key(&n) {
                let (status, code) = if refused {
                    ("403 Forbidden", "AccessDenied")
                } else {
                    ("503 Slow Down", "SlowDown")
                };
                l.tries
                    .entry(n)
                    .or_default()
                    .push(status[..3].parse().unwrap());
                l.faults += 1;
                drop(l);
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
                );
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if out.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("content-length") && !k.eq_ignore_ascii_case("connection")
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, answer_headers, answer) = http(upstream, method, target, &headers, &body);
        if let Some(n) = part {
            log.lock().unwrap().tries.entry(n).or_default().push(status);
        }
        let mut head = format!("HTTP/1.1 {status} X\r\n");
        for (k, v) in &answer_headers {
            if !k.eq_ignore_ascii_case("content-length")
                && !k.eq_ignore_ascii_case("connection")
                && !k.eq_ignore_ascii_case("transfer-encoding")
            {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        // A HEAD answer says the object's length and carries no body.
        let length = if method == "HEAD" {
            answer_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "0".into())
        } else {
            answer.len().to_string()
        };
        head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
        if out.write_all(head.as_bytes()).is_err()
            || (method != "HEAD" && out.write_all(&answer).is_err())
        {
            return;
        }
    }
}
