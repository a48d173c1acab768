//! Archives in object stores, through the `object_store` crate: S3 and
//! S3-compatible stores (`s3://bucket/key`, `s3.rs`) and Azure Blob Storage
//! (`az://container/blob`, `azure.rs`). Everything but building the client
//! and the conditional completion is the same code for both.
//!
//! Sealing streams through a multipart upload: parts are cut on a
//! schedule that grows with the part number ([`part_size`]), a bounded
//! number are in flight at once ([`in_flight`]), and the object appears
//! only when the upload completes, after the last chunk. Dropping the sink
//! before [`commit`](ArchiveSink::commit) aborts the upload, and so does
//! [`crate::fsutil::remove_temporaries`] (an interrupted `seal`). Without
//! `force`, completion carries `If-None-Match: *`: the store itself
//! refuses to replace an object, with no check-then-write race. (Azure
//! keeps an aborted upload's blocks, unreadable, until it collects them.)
//!
//! Opening reads with ranged GETs, several ahead of the reader, each
//! pinned to the object's ETag so that a replaced object fails instead of
//! mixing two archives. `object_store` retries throttling, 5xx answers
//! and resets itself (a part is retried on its own; a completed part is
//! never sent again).
//!
//! Owns: the part-size schedule and the in-flight bound (together: peak
//! memory and the largest archive, [`MAX_ARCHIVE`]), and the conditional
//! completion request.
//!
//! Must never: let an object appear before the last part, replace an
//! object without `force`, or keep more than [`in_flight`] parts of memory.

use super::{ArchiveSink, ArchiveSource, StoreOptions};
use crate::error::{Error, Result};
use bytes::Bytes;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpRequest, ReqwestConnector,
};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

mod azure;
mod s3;

const MIB: usize = 1 << 20;

/// S3's limit on the parts of one upload (Azure's, 50,000 blocks, is
/// higher).
pub const MAX_PARTS: usize = 10_000;

/// The size of part `index` (0-based): 8 MiB for the first thousand
/// parts, 16 MiB for the next thousand, 32 MiB for the third, then
/// 64 MiB. Small archives upload in small parts; the largest reach
/// [`MAX_ARCHIVE`] within [`MAX_PARTS`].
pub fn part_size(index: usize) -> usize {
    match index {
        0..1000 => 8 * MIB,
        1000..2000 => 16 * MIB,
        2000..3000 => 32 * MIB,
        _ => 64 * MIB,
    }
}

/// How many parts of `size` bytes may be uploading at once: 128 MiB of
/// parts, and at most 8 requests. With the part being filled, at most
/// 192 MiB of archive is held whatever its size.
pub fn in_flight(size: usize) -> usize {
    (128 * MIB / size).clamp(1, 8)
}

/// The largest archive an upload can hold: 1000 parts each of 8, 16 and
/// 32 MiB, then 7000 of 64 MiB (504,000 MiB, about 492 GiB).
pub const MAX_ARCHIVE: u64 = (1000 * (8 + 16 + 32) + 7000 * 64) as u64 * MIB as u64;

/// How far ahead `open` reads: ranges of this size…
const RANGE: u64 = 8 * MIB as u64;
/// …this many at once (32 MiB in memory).
const AHEAD: usize = 4;
/// The first range: enough for a header with a few dozen slots, so
/// `inspect` usually costs one small request.
const FIRST_RANGE: u64 = 64 * 1024;
/// Where the header surely ends (its slot list is at most 1 MiB,
/// `MAX_SLOTS_LEN`): one request at a time until here, so `inspect` of
/// the largest header reads at most this much.
const HEADER_RANGE: u64 = 2 * MIB as u64;

/// How long an abort may take when a seal fails or is interrupted.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// One object in a store, and the runtime its requests run on.
pub struct Store {
    shared: Arc<Shared>,
}

/// A store's client: both the object calls and the multipart ones.
trait Backend: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Backend for T {}

/// The request `object_store` does not make, which each kind of store
/// makes its own way: completing an upload only if no object is there.
enum Completion {
    S3(s3::Completion),
    Azure(azure::Completion),
}

/// A client as a kind of store builds it.
struct Built {
    store: Arc<dyn Backend>,
    /// Its HTTP settings, for the conditional completion's client.
    client: ClientOptions,
    completion: Completion,
    /// A setting the conditional completion cannot honour (it would send
    /// a different request than object_store's), named for the error.
    unconditional_only: Option<&'static str>,
}

/// Never derive `Debug` here: the clients' would print their credentials
/// (Azure's account key or SAS).
struct Shared {
    rt: Runtime,
    store: Arc<dyn Backend>,
    /// The same client settings as `store`'s, for the one request
    /// `object_store` does not make: the conditional completion.
    http: HttpClient,
    completion: Completion,
    /// A setting the conditional completion cannot honour (it would send
    /// a different request than object_store's), named for the error.
    unconditional_only: Option<&'static str>,
    path: ObjectPath,
    url: String,
}

impl Store {
    /// The object at `url` (`s3://bucket/key`, `az://container/blob`),
    /// with credentials, endpoint and client settings from `opts`.
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Store> {
        let (scheme, rest) = url.split_once("://").expect("Location::parse saw ://");
        // An S3 key may hold '?' and '#' (object_store encodes them).
        // Anywhere else they begin a query or fragment: never printed (a
        // pasted SAS's signature) and refused.
        let s3 = matches!(scheme, "s3" | "s3a");
        let shown = if s3 {
            url
        } else {
            url.split(['?', '#']).next().unwrap_or_default()
        };
        let usage = |what: &str| Error::Usage(format!("{shown}: {what}"));
        if shown.len() < url.len() {
            return Err(usage(
                "a URL's query or fragment is not read (a SAS or other credentials go in the environment: AZURE_STORAGE_SAS_KEY); name the blob without '?' or '#'",
            ));
        }
        let (form, azure) = match scheme {
            "s3" | "s3a" => ("s3://BUCKET/KEY", false),
            "az" | "azure" => ("az://CONTAINER/BLOB", true),
            "abfs" | "abfss" => {
                return Err(usage(
                    "name a blob as az://CONTAINER/BLOB, with the account in AZURE_STORAGE_ACCOUNT_NAME",
                ));
            }
            "gs" => {
                return Err(usage(
                    "Google Cloud Storage is not supported: coffer would stream into it through GCS's XML multipart uploads, which no GCS emulator implements, so it could not be tested (docs/storage.md); coffer reaches s3://bucket/key and az://container/blob",
                ));
            }
            _ => {
                return Err(usage(
                    "unknown kind of store (coffer reaches s3://bucket/key and az://container/blob)",
                ));
            }
        };
        let Some((bucket, key)) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        else {
            return Err(usage(&format!("name an object: {form}")));
        };
        // Fabric's OneLake names workspaces by Fabric's rules, not Azure's.
        let fabric = azure
            && opts
                .pairs()
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("AZURE_USE_FABRIC_ENDPOINT") && truthy(v));
        if !bucket_name_ok(bucket, azure, fabric) {
            return Err(usage(if azure {
                "not a container name (3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit; or $root, $web, $logs)"
            } else {
                "not a bucket name (letters, digits, '.', '-', '_' and ':'; not '.' or '..')"
            }));
        }
        if key.starts_with('/') || key.ends_with('/') {
            return Err(usage(&format!(
                "not a usable object key: it starts or ends with '/' (name one object: {form})"
            )));
        }
        let path =
            ObjectPath::parse(key).map_err(|e| usage(&format!("not a usable object key: {e}")))?;
        // object_store signs with ring; its HTTP client's TLS uses the
        // process's rustls provider, ring as everywhere in coffer. An
        // error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let built = if azure {
            azure::build(bucket, &path, opts, url)?
        } else {
            s3::build(bucket, opts, url)?
        };
        let http = ReqwestConnector::default()
            .connect(&built.client)
            .map_err(|e| store_error(url, &e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io("<object store runtime>", e))?;
        Ok(Store {
            shared: Arc::new(Shared {
                rt,
                store: built.store,
                http,
                completion: built.completion,
                unconditional_only: built.unconditional_only,
                path,
                url: url.to_owned(),
            }),
        })
    }

    /// A sink that uploads the archive, replacing an existing object only
    /// with `force`.
    pub fn sink(self, force: bool) -> Result<ObjectSink> {
        let sh = &self.shared;
        if let (false, Some(setting)) = (force, sh.unconditional_only) {
            return Err(Error::Usage(format!(
                "{}: with {setting} set, coffer cannot ask the store to refuse replacing an object; unset it, or give --force",
                sh.url
            )));
        }
        if !force {
            // Early, for a clear message before any upload; the store's
            // conditional completion is what enforces it. A bucket that
            // may be written but not read answers 403 here: on Azure, ask
            // by a write that creates nothing (`azure::taken`), since a
            // refused upload's blocks would stay under the name; on S3,
            // go on (the refused upload is aborted).
            match sh.rt.block_on(sh.store.head(&sh.path)) {
                Ok(_) => return Err(exists(&sh.url)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(_) => {
                    if let Completion::Azure(c) = &sh.completion
                        && sh.rt.block_on(azure::taken(sh, c)) == Some(true)
                    {
                        return Err(exists(&sh.url));
                    }
                }
            }
        }
        let tasks: Tasks = Arc::default();
        // Created and listed under one lock: no interruption falls between
        // the upload starting and its undo being known.
        let (upload, reg) = crate::fsutil::register_undo_with(&sh.url, || {
            let upload = sh
                .rt
                .block_on(sh.store.create_multipart(&sh.path))
                .map_err(|e| store_error(&sh.url, &e))?;
            let (sh, id, tasks) = (self.shared.clone(), upload.clone(), tasks.clone());
            let undo: Box<dyn FnOnce() + Send> = Box::new(move || abort(&sh, &id, &tasks));
            Ok((upload, undo))
        })?;
        Ok(ObjectSink {
            shared: self.shared,
            upload,
            tasks,
            force,
            buf: Vec::new(),
            next: 0,
            uploading: VecDeque::new(),
            parts: Vec::new(),
            reg: Some(reg),
        })
    }

    /// A source reading the object.
    pub fn source(self) -> Result<ObjectSource> {
        let sh = &self.shared;
        let meta = sh
            .rt
            .block_on(sh.store.head(&sh.path))
            .map_err(|e| store_error(&sh.url, &e))?;
        Ok(ObjectSource {
            shared: self.shared,
            size: meta.size,
            e_tag: meta.e_tag,
        })
    }
}

fn exists(url: &str) -> Error {
    Error::AlreadyExists {
        path: url.into(),
        hint: ": give --force to replace it".into(),
    }
}

/// `s` on one line: a store's message (Azure's has its request id and time
/// on lines of their own) never spreads over several.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An `object_store` failure as coffer's error, naming the object and,
/// for credentials, the settings of its kind of store.
fn store_error(url: &str, e: &object_store::Error) -> Error {
    use object_store::Error as E;
    let azure = url.starts_with("az");
    let (place, keys, policy) = if azure {
        (
            "blob or container",
            "AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, or AZURE_STORAGE_CLIENT_ID with AZURE_STORAGE_CLIENT_SECRET and AZURE_STORAGE_TENANT_ID",
            "the container's role assignments or the SAS's permissions",
        )
    } else {
        (
            "object or bucket",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN)",
            "the bucket's policy",
        )
    };
    let what = match e {
        E::NotFound { source, .. } => format!("no such {place} ({source})"),
        E::PermissionDenied { .. } => {
            format!("access denied; check the credentials and {policy} ({e})")
        }
        // Both fall back to the cloud's instance metadata service when
        // nothing else gives credentials.
        E::Generic { .. } if e.to_string().contains("169.254.169.254") => format!(
            "no credentials: set {keys}, or run on a cloud machine with a role or managed identity; the instance metadata service failed ({e})"
        ),
        E::Unauthenticated { .. } => format!(
            "the store refused the credentials (none found, or a wrong or expired key?): set {keys} ({e})"
        ),
        _ => e.to_string(),
    };
    Error::Storage {
        location: url.to_owned(),
        what: one_line(&what),
    }
}

/// Whether `name` may name a bucket (S3: letters, digits, `.`, `-`, `_`,
/// and Ceph's `tenant:bucket`, as old buckets and other stores allow;
/// never `.` or `..`, which a URL would resolve away) or an Azure
/// container (Azure's rule, or one of its `$` containers; on Fabric's
/// endpoint, only never `.` or `..`).
fn bucket_name_ok(name: &str, azure: bool, fabric: bool) -> bool {
    if fabric {
        return name != "." && name != "..";
    }
    if azure {
        let b = name.as_bytes();
        let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        return matches!(name, "$root" | "$web" | "$logs")
            || ((3..=63).contains(&b.len())
                && b.iter().all(|c| inner(c) || *c == b'-')
                && inner(&b[0])
                && inner(&b[b.len() - 1])
                && !name.contains("--"));
    }
    name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'))
}

/// A boolean setting as `object_store` reads one.
fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes" | "y"
    )
}

/// A failure inside `Write` or `Read`, carrying coffer's error so that
/// [`super::surface`] names the object once.
fn io_error(url: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(Error::Storage {
        location: url.to_owned(),
        what: one_line(&e.to_string()),
    })
}

/// The part uploads running, to cancel before an abort.
type Tasks = Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>;

/// The multipart upload of one archive.
pub struct ObjectSink {
    shared: Arc<Shared>,
    upload: MultipartId,
    tasks: Tasks,
    force: bool,
    /// The part being filled.
    buf: Vec<u8>,
    /// The index of the part being filled.
    next: usize,
    /// Parts sent, oldest first, not yet known to have arrived.
    uploading: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    /// Parts that arrived, in order.
    parts: Vec<PartId>,
    /// Listed for `remove_temporaries`, which aborts the upload; `None`
    /// once completed.
    reg: Option<crate::fsutil::TempRegistration>,
}

impl ObjectSink {
    /// Send the part being filled, then wait while too many are in flight.
    fn send_part(&mut self) -> io::Result<()> {
        if self.next >= MAX_PARTS {
            return Err(io_error(
                &self.shared.url,
                format!(
                    "the archive is larger than an upload can hold ({} GiB, {MAX_PARTS} parts)",
                    MAX_ARCHIVE >> 30
                ),
            ));
        }
        let size = part_size(self.next + 1);
        let data = std::mem::take(&mut self.buf);
        let (store, path, id, idx) = (
            self.shared.store.clone(),
            self.shared.path.clone(),
            self.upload.clone(),
            self.next,
        );
        let task = self.shared.rt.spawn(async move {
            store
                .put_part(&path, &id, idx, PutPayload::from(data))
                .await
        });
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task.abort_handle());
        }
        self.uploading.push_back(task);
        self.next += 1;
        // At most in_flight(size) parts upload while the next (of `size`
        // bytes, no smaller than any before it) fills.
        while self.uploading.len() > in_flight(size) {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        let Some(h) = self.uploading.pop_front() else {
            return Ok(());
        };
        let url = &self.shared.url;
        let part = self
            .shared
            .rt
            .block_on(h)
            .map_err(|e| io_error(url, e))?
            .map_err(|e| io::Error::other(store_error(url, &e)))?;
        self.parts.push(part);
        Ok(())
    }

    /// Complete the upload: the object appears. Without `force`, only if
    /// no object is there (`If-None-Match: *`, enforced by the store).
    fn complete(&self) -> Result<()> {
        let sh = &self.shared;
        if self.force {
            return sh
                .rt
                .block_on(
                    sh.store
                        .complete_multipart(&sh.path, &self.upload, self.parts.clone()),
                )
                .map(drop)
                .map_err(|e| match e {
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. } => store_error(&sh.url, &e),
                    // object_store retries the completion itself: after an
                    // answer lost on the way back, the retry finds the
                    // upload done (S3: no such upload, a 404; Azure: its
                    // blocks committed already, a 400).
                    _ => maybe_completed(store_error(&sh.url, &e)),
                });
        }
        sh.rt.block_on(async {
            match &sh.completion {
                Completion::S3(c) => s3::complete_if_absent(sh, c, &self.upload, &self.parts).await,
                Completion::Azure(c) => azure::complete_if_absent(sh, c, &self.parts).await,
            }
        })
    }
}

/// How a store answered a conditional completion.
enum Verdict {
    /// The object appeared.
    Done,
    /// An object is there: nothing was replaced.
    Exists,
    /// The upload is gone (after a lost answer: completed by an earlier
    /// try?).
    Gone,
    /// Worth another try.
    Transient,
    /// Anything else: an error to report.
    Failed,
}

/// Send the conditional completion `request` makes (built and signed
/// anew for each try), judging each answer with `judge`. Retried on
/// transient answers and transport errors; an existing object on the
/// first try is [`exists`]; after a retry, an existing object or a gone
/// upload may both mean an earlier try completed it (its answer lost),
/// and the message says so.
async fn complete_conditionally<F, Fut>(
    sh: &Shared,
    mut request: F,
    judge: fn(u16, &str) -> Verdict,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<HttpRequest>>,
{
    let fail = |what: String| Error::Storage {
        location: sh.url.clone(),
        what: one_line(&what),
    };
    let mut last = String::new();
    // Whether a try may have reached the store with its answer lost.
    let mut lost = false;
    for attempt in 0..6u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let response = match sh.http.execute(request().await?).await {
            Ok(r) => r,
            Err(e) => {
                last = e.to_string();
                lost = true;
                continue;
            }
        };
        let status = response.status();
        let text = match response.into_body().bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                last = e.to_string();
                lost = true;
                continue;
            }
        };
        match judge(status.as_u16(), &text) {
            Verdict::Done => return Ok(()),
            Verdict::Exists if attempt == 0 => return Err(exists(&sh.url)),
            Verdict::Exists | Verdict::Gone if attempt > 0 => {
                return Err(fail(format!(
                    "completing the upload, retried: {status}: {}; if an earlier try completed it (its answer lost), the object is this archive, whole: check it with `coffer verify`",
                    describe(&text)
                )));
            }
            Verdict::Transient => last = format!("{status}: {}", describe(&text)),
            _ => {
                return Err(fail(format!(
                    "completing the upload: {status}: {}",
                    describe(&text)
                )));
            }
        }
    }
    let failed = fail(format!(
        "completing the upload failed 6 times; last: {last}"
    ));
    Err(if lost {
        maybe_completed(failed)
    } else {
        failed
    })
}

/// A completion's error when a try may have gone through unanswered: the
/// object may be there, and be this archive.
fn maybe_completed(e: Error) -> Error {
    match e {
        Error::Storage { location, what } => Error::Storage {
            location,
            what: format!(
                "{what}; a try whose answer was lost may have completed it: then the object is this archive, whole (check it with `coffer verify`)"
            ),
        },
        e => e,
    }
}

/// The text of the first `<tag>` in an S3 or Azure answer.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_owned())
}

/// An error answer as "Code: Message" (the message's first line: Azure's
/// go on with a request id and a time), or its first 200 bytes.
fn describe(xml: &str) -> String {
    match (xml_text(xml, "Code"), xml_text(xml, "Message")) {
        (Some(c), Some(m)) => format!("{c}: {}", m.lines().next().unwrap_or("")),
        (Some(c), None) => c,
        _ => xml.chars().take(200).collect(),
    }
}

impl Write for ObjectSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(part_size(self.next));
        }
        let room = part_size(self.next) - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == part_size(self.next) {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArchiveSink for ObjectSink {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let url = self.shared.url.clone();
        let io = |e| Error::io(&url, e);
        // The last part may be short; an archive never ends on an empty
        // one unless its size is a multiple of the part size.
        if !self.buf.is_empty() || self.next == 0 {
            self.send_part().map_err(io)?;
        }
        while !self.uploading.is_empty() {
            self.wait_oldest().map_err(io)?;
        }
        // Under the registration's lock: an interruption now waits for
        // the completion, and never aborts an upload half completed.
        let reg = self.reg.take().expect("registered until completed");
        // A failed completion aborts under the same lock: an interruption
        // meanwhile waits for the abort instead of skipping it.
        reg.commit(|| {
            self.complete().inspect_err(|_| {
                abort(&self.shared, &self.upload, &self.tasks);
            })
        })
    }
}

/// Cancel the part uploads still running (their requests are dropped
/// unfinished, so the store keeps none of them), then abort the upload.
/// Best effort, within [`ABORT_TIMEOUT`]: what a failed abort leaves, the
/// bucket's lifecycle rule removes (docs/storage.md).
fn abort(sh: &Shared, upload: &MultipartId, tasks: &Tasks) {
    for t in tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        t.abort();
    }
    sh.rt.block_on(async {
        // The timer is made inside the runtime: it needs its context.
        let _ =
            tokio::time::timeout(ABORT_TIMEOUT, sh.store.abort_multipart(&sh.path, upload)).await;
    });
}

impl Drop for ObjectSink {
    fn drop(&mut self) {
        if let Some(reg) = self.reg.take() {
            abort(&self.shared, &self.upload, &self.tasks);
            drop(reg);
        }
    }
}

/// An object read with ranged GETs.
pub struct ObjectSource {
    shared: Arc<Shared>,
    size: u64,
    e_tag: Option<String>,
}

impl ArchiveSource for ObjectSource {
    fn len(&self) -> Option<u64> {
        Some(self.size)
    }

    fn into_reader(self: Box<Self>) -> Box<dyn Read + Send> {
        Box::new(Prefetch {
            source: *self,
            next: 0,
            ahead: VecDeque::new(),
            current: Bytes::new(),
        })
    }
}

/// Reads an object in order, with up to [`AHEAD`] ranged GETs running.
struct Prefetch {
    source: ObjectSource,
    /// Where the next range to ask for starts.
    next: u64,
    ahead: VecDeque<JoinHandle<object_store::Result<Bytes>>>,
    current: Bytes,
}

impl Prefetch {
    fn ask(&mut self) {
        // 64 KiB, then to 2 MiB, one at a time: a header costs no more;
        // past it, 8 MiB ranges, AHEAD at once.
        let depth = if self.next < HEADER_RANGE { 1 } else { AHEAD };
        while self.ahead.len() < depth && self.next < self.source.size {
            let end = match self.next {
                0 => FIRST_RANGE,
                n if n < HEADER_RANGE => HEADER_RANGE,
                n => n + RANGE,
            };
            let range = self.next..end.min(self.source.size);
            self.next = range.end;
            let sh = &self.source.shared;
            let (store, path) = (sh.store.clone(), sh.path.clone());
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                if_match: self.source.e_tag.clone(),
                ..GetOptions::default()
            };
            self.ahead.push_back(
                sh.rt
                    .spawn(async move { store.get_opts(&path, options).await?.bytes().await }),
            );
        }
    }
}

impl Read for Prefetch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            self.ask();
            let Some(h) = self.ahead.pop_front() else {
                return Ok(0);
            };
            let sh = &self.source.shared;
            self.current = sh
                .rt
                .block_on(h)
                .map_err(|e| io_error(&sh.url, e))?
                .map_err(|e| io::Error::other(store_error(&sh.url, &e)))?;
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_reaches_the_documented_maximum_within_the_part_limit() {
        let total: u64 = (0..MAX_PARTS).map(|i| part_size(i) as u64).sum();
        assert_eq!(total, MAX_ARCHIVE);
        for i in 0..MAX_PARTS {
            let size = part_size(i);
            assert!(
                size >= 5 * MIB,
                "S3's smallest part (but the last) is 5 MiB"
            );
            // Parts in flight, plus the one being filled.
            assert!(in_flight(size) * size + size <= 192 * MIB);
        }
    }

    #[test]
    fn error_answers_are_read() {
        let xml =
            "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>";
        assert_eq!(describe(xml), "AccessDenied: no");
        assert_eq!(xml_text("<x/>", "Code"), None);
    }
}
