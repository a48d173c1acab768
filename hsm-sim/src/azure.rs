//! An Azure Blob Storage server for tests: Azurite, the emulator Microsoft
//! maintains (npm `azurite`, installed by `hsm-sim/install-deps.sh`), on
//! a free loopback port, one per fixture, in memory, with a container
//! made; a [`FaultProxy`] goes in front of it on demand.
//!
//! Azurite checks every request's signature, so the fixture signs its
//! own with the emulator's well-known account key (SharedKey).

pub use crate::fault_proxy::FaultProxy;
use crate::fault_proxy::{free_port, http};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The container every fixture makes.
pub const CONTAINER: &str = "coffer-test";

/// Azurite's account and its well-known key (public: Microsoft documents
/// both).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite blob service.
pub struct AzureServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Azurite's blob service, from the folder `hsm-sim/install-deps.sh`
/// installs it into (`$COFFER_AZURITE_DIR`, by default
/// /opt/coffer-azurite).
fn azurite_blob() -> PathBuf {
    let dir = std::env::var_os("COFFER_AZURITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/coffer-azurite".into());
    let p = dir.join("node_modules/.bin/azurite-blob");
    assert!(
        p.exists(),
        "{} not found: run `bash hsm-sim/install-deps.sh` as root (it installs azurite into {})",
        p.display(),
        dir.display()
    );
    p
}

impl AzureServer {
    /// Azurite, in memory, with [`CONTAINER`] made.
    pub fn start() -> Self {
        // The port is free when picked, but another test may take it before
        // Azurite binds it: then Azurite exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("a folder for azurite");
            let child = Command::new(azurite_blob())
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--inMemoryPersistence",
                    // Azurite reports usage to Microsoft unless told not
                    // to: a test contacts no host.
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start azurite-blob (is node installed? bash hsm-sim/install-deps.sh)");
            let mut s = Self {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let up = loop {
                if s.child.try_wait().expect("azurite's status").is_some() {
                    break false;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                assert!(Instant::now() < deadline, "azurite did not come up");
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                let (status, body) =
                    s.request("PUT", &format!("/{CONTAINER}"), "restype=container", &[]);
                assert_eq!(status, 201, "create the container: {body}");
                return s;
            }
        }
        panic!("azurite exited at start five times (its port taken?)");
    }

    /// Its address, `http://127.0.0.1:PORT` (the account's endpoint is
    /// this and `/devstoreaccount1`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment coffer needs to reach it through `endpoint` (this
    /// server's, or a proxy's in front of it), naming the account's
    /// endpoint and key as for any Azure account.
    pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY),
            ("AZURE_STORAGE_ENDPOINT", &format!("{endpoint}/{ACCOUNT}")),
            ("AZURE_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The environment to reach it directly, as Azurite's users do:
    /// emulator mode at its address.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// `az://CONTAINER/blob`.
    pub fn url(blob: &str) -> String {
        format!("az://{CONTAINER}/{blob}")
    }

    /// The blobs of [`CONTAINER`] (committed ones: what a reader sees).
    pub fn objects(&self) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{CONTAINER}"),
            "comp=list&restype=container",
            &[],
        );
        assert_eq!(status, 200, "list the container: {body}");
        crate::s3::tags(&body, "Name")
    }

    /// Blobs that hold uncommitted blocks: uploads never completed, which
    /// Azure has no call to discard (it collects them a week after the
    /// name's last write). Blobs of uncommitted blocks alone, and
    /// committed blobs with uncommitted blocks beside (an upload refused
    /// at completion, the name being taken).
    pub fn uncommitted(&self) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{CONTAINER}"),
            "comp=list&include=uncommittedblobs&restype=container",
            &[],
        );
        assert_eq!(status, 200, "list the container: {body}");
        let committed = self.objects();
        crate::s3::tags(&body, "Name")
            .into_iter()
            .filter(|n| !committed.contains(n) || self.has_uncommitted_blocks(n))
            .collect()
    }

    /// Whether committed blob `blob` has uncommitted blocks too.
    fn has_uncommitted_blocks(&self, blob: &str) -> bool {
        let (status, body) = self.request(
            "GET",
            &format!("/{CONTAINER}/{blob}"),
            "blocklisttype=uncommitted&comp=blocklist",
            &[],
        );
        assert_eq!(status, 200, "the block list of {blob}: {body}");
        let list = body
            .split_once("<UncommittedBlocks>")
            .map_or("", |(_, rest)| rest);
        list.contains("<Block>")
    }

    /// A blob's bytes.
    pub fn get(&self, blob: &str) -> Vec<u8> {
        let (status, body) = self.request_bytes("GET", &format!("/{CONTAINER}/{blob}"), "", &[]);
        assert_eq!(
            status,
            200,
            "GET {blob}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// An account shared access signature for blobs, allowing
    /// `permissions` (`r`ead, `w`rite, `c`reate, …) on objects until 2099,
    /// as the query string `AZURE_STORAGE_SAS_KEY` takes.
    pub fn sas(&self, permissions: &str) -> String {
        // The string to sign of versions before 2020-12-06 (no encryption
        // scope): account, permissions, services, resource types, start,
        // expiry, IP range, protocols, version.
        let (version, expiry) = ("2019-12-12", "2099-01-01T00:00:00Z");
        let to_sign = format!("{ACCOUNT}\n{permissions}\nb\no\n\n{expiry}\n\n\n{version}\n");
        let signature = sign(&to_sign);
        let encoded: String = signature
            .bytes()
            .map(|b| match b {
                b'+' => "%2B".to_owned(),
                b'/' => "%2F".to_owned(),
                b'=' => "%3D".to_owned(),
                b => (b as char).to_string(),
            })
            .collect();
        format!("sv={version}&ss=b&srt=o&sp={permissions}&se={expiry}&sig={encoded}")
    }

    /// Start a fault proxy in front of this server.
    pub fn fault_proxy(&self) -> FaultProxy {
        FaultProxy::start(self.port)
    }

    fn request(&self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, String) {
        let (status, body) = self.request_bytes(method, path, query, body);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One request signed with the account key (SharedKey); `path` is
    /// beneath the account, `query` sorted by name.
    fn request_bytes(&self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut resource = format!("/{ACCOUNT}/{ACCOUNT}{path}");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let signature = sign(&to_sign);
        let target = if query.is_empty() {
            format!("/{ACCOUNT}{path}")
        } else {
            format!("/{ACCOUNT}{path}?{query}")
        };
        let authorization = format!("SharedKey {ACCOUNT}:{signature}");
        let (status, _, body) = http(
            self.port,
            method,
            &target,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("Authorization", &authorization),
            ],
            body,
        );
        (status, body)
    }
}

impl Drop for AzureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base64 HMAC-SHA256 of `text` under the account key.
fn sign(text: &str) -> String {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &STANDARD.decode(KEY).expect("the key is base64"),
    );
    STANDARD.encode(ring::hmac::sign(&key, text.as_bytes()))
}

/// `t` as an HTTP date (RFC 7231): `Sun, 29 Nov 2026 21:34:12 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[month as usize - 1],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_http_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(
            super::http_date(UNIX_EPOCH + Duration::from_secs(1_795_988_052)),
            "Sun, 29 Nov 2026 21:34:12 GMT"
        );
        assert_eq!(
            super::http_date(UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
