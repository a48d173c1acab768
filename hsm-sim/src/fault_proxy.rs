//! A fault-injecting HTTP proxy for the object-store fixtures, and the
//! plain HTTP/1.1 client they talk to their servers with.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A loopback port free when asked (another process may take it before
/// it is bound: callers retry).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One HTTP/1.1 request on a fresh connection, closed after the answer:
/// status, headers, body. A Host header is added unless `headers` has one
/// (the proxy passes on the client's: signatures cover it).
pub(crate) fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
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
pub(crate) fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
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
    /// Requests per part, in arrival order: the status answered. A part
    /// is its S3 part number, or an Azure block's rank among the blocks
    /// seen (1 for the first block id to arrive).
    pub tries: HashMap<u32, Vec<u16>>,
    /// Azure block ids, in the order first seen.
    pub blocks: Vec<String>,
    /// Errors the proxy itself answered.
    pub faults: usize,
    /// The part number refused with 403 every time ([`FaultProxy::refuse_part`]).
    pub refuse: Option<u32>,
}

/// A proxy in front of a store that answers 503 to the first try of every
/// part upload (S3's `UploadPart`, Azure's `Put Block`) and passes
/// everything else (and every retry) to the store, logging each request;
/// or 403, every try, to the part given to [`FaultProxy::refuse_part`].
///
/// It reads request bodies by Content-Length and answers by reading the
/// store's to the end: coffer's client, moto and Azurite send no chunked
/// bodies.
pub struct FaultProxy {
    port: u16,
    log: Arc<Mutex<ProxyLog>>,
}

impl FaultProxy {
    pub(crate) fn start(upstream: u16) -> Self {
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
        let part = (method == "PUT").then(|| part_of(target, log)).flatten();
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

/// The part a request uploads: S3's `partNumber`, or the rank of Azure's
/// `blockid` among those seen.
fn part_of(target: &str, log: &Mutex<ProxyLog>) -> Option<u32> {
    let mut query = target.split(['?', '&']);
    query.next();
    for q in query {
        if let Some(n) = q.strip_prefix("partNumber=") {
            return n.parse().ok();
        }
        if let Some(id) = q.strip_prefix("blockid=") {
            let mut l = log.lock().unwrap();
            let rank = match l.blocks.iter().position(|b| b == id) {
                Some(i) => i,
                None => {
                    l.blocks.push(id.to_owned());
                    l.blocks.len() - 1
                }
            };
            return Some(rank as u32 + 1);
        }
    }
    None
}
