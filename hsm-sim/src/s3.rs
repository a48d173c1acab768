//! An S3 server for tests: moto in server mode (PyPI `moto[server]`,
//! installed into a virtual environment by `hsm-sim/install-deps.sh`), on
//! a free loopback port, one per fixture, with a bucket made; a
//! [`FaultProxy`] goes in front of it on demand.
//!
//! The fixture talks to moto with plain unsigned HTTP (moto checks no
//! signature until authentication is switched on; with
//! [`S3Server::start_with_auth`] it enforces IAM policies after the first
//! few requests, which the fixture spends on setting up).

pub use crate::fault_proxy::{FaultProxy, ProxyLog};
use crate::fault_proxy::{free_port, http};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

pub(crate) fn tags(xml: &str, tag: &str) -> Vec<String> {
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
