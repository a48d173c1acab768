//! Where archives are written and read: local files, standard streams, and
//! (feature `object-storage`) object stores, behind one sink and one
//! source trait, so that `seal`, `open`, `verify` and `inspect` run the
//! same code whatever the place.
//!
//! Owns: naming a place ([`Location::parse`]), the atomic-appearance rule
//! for each kind of place (a file's temp-and-rename, an object's upload
//! completed only by [`ArchiveSink::commit`]), and the refusal to replace
//! what exists without `force`.
//!
//! Must never: read the environment (credentials and endpoints come in as
//! [`StoreOptions`], which the binary fills; the exceptions are beneath
//! `object_store`: its HTTP client, reqwest, honours `HTTPS_PROXY` and
//! `NO_PROXY` itself, and its Azure managed-identity client reads
//! `IDENTITY_HEADER`, docs/storage.md), make an archive visible
//! before its last chunk was written, or leave a partial one behind when
//! a seal fails or is interrupted.

use crate::error::{Error, Result};
use crate::fsutil;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[cfg(feature = "object-storage")]
pub mod object;

/// Where an archive is sealed to. Bytes written are not the archive until
/// [`commit`](ArchiveSink::commit) returns; dropping the sink without
/// committing discards them (removes the temp file, aborts the upload).
pub trait ArchiveSink: Write + Send {
    /// Make the archive appear at its place, whole. Atomic where the place
    /// allows it (a regular file, an object); for a stream (standard
    /// output, a FIFO) everything is already written.
    fn commit(self: Box<Self>) -> Result<()>;

    /// The local file being written, to leave out of a sealed folder
    /// (`seal DIR -o DIR/x`, `seal DIR -o - > DIR/x`).
    fn file_id(&self) -> Option<crate::archive::FileId> {
        None
    }
}

/// Where an archive is read from.
pub trait ArchiveSource: Send {
    /// Its size in bytes, when known before reading (a regular file, an
    /// object; not a pipe).
    fn len(&self) -> Option<u64>;

    /// Whether it is known to be empty.
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Its bytes from the start. An object is read with ranged requests,
    /// several ahead of the reader; a header alone costs one small request.
    fn into_reader(self: Box<Self>) -> Box<dyn Read + Send>;
}

/// A place named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: standard input or output.
    Standard,
    /// A local path.
    File(PathBuf),
    /// `SCHEME://…`: an object in a store.
    Object(String),
}

impl Location {
    /// `-`, a URL (`s3://bucket/key`, `az://container/blob`: anything starting with a scheme and
    /// `://`), or else a local path (`./s3://x` is a path).
    pub fn parse(arg: &Path) -> Location {
        if arg.as_os_str() == "-" {
            return Location::Standard;
        }
        if let Some(s) = arg.to_str()
            && let Some((scheme, _)) = s.split_once("://")
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Location::Object(s.to_owned());
        }
        Location::File(arg.to_path_buf())
    }
}

/// Credentials, endpoints and client settings for object stores, as
/// `(name, value)` pairs named as each store's own environment names them
/// (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AZURE_STORAGE_ACCOUNT_NAME`,
/// `AZURITE_BLOB_STORAGE_URL`, …). The
/// library reads no environment: the binary passes its own.
#[derive(Default, Clone)]
pub struct StoreOptions {
    pairs: Vec<(String, String)>,
}

impl StoreOptions {
    /// From `(name, value)` pairs; names not meant for a store are ignored.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            pairs: pairs
                .into_iter()
                .filter(|(k, _)| {
                    k.starts_with("AWS_")
                        || k.starts_with("AZURE_")
                        || k == "AZURITE_BLOB_STORAGE_URL"
                })
                .collect(),
        }
    }

    #[cfg_attr(not(feature = "object-storage"), allow(dead_code))]
    fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are secrets.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

/// A local file as a sink: a temp file beside the target, renamed over it
/// on commit; or, for a place that must never be replaced (a FIFO, a
/// character device, `/dev/fd/N`, standard output), that place itself.
pub struct FileSink {
    file: File,
    /// The temp file and the target it becomes; `None` when written in
    /// place.
    temp: Option<(fsutil::TempFile, PathBuf, bool)>,
}

impl FileSink {
    /// A sink for `path`. An existing `path` is replaced only with
    /// `force`; a FIFO, character device or `/dev/fd/N` is written in
    /// place ([`fsutil::open_in_place`]), without `force`.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        if let Some(file) = fsutil::open_in_place(path)? {
            return Ok(Self::stream(file));
        }
        fsutil::refuse_existing(path, force)?;
        let tmp = fsutil::temp_beside(path)?;
        let file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        Ok(Self {
            file,
            temp: Some((tmp, path.to_path_buf(), force)),
        })
    }

    /// An open file written as a stream (standard output).
    pub fn stream(file: File) -> Self {
        Self { file, temp: None }
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ArchiveSink for FileSink {
    fn commit(self: Box<Self>) -> Result<()> {
        match self.temp {
            // Chunks are written whole and unbuffered: nothing to flush.
            None => Ok(()),
            Some((tmp, path, force)) => {
                self.file.sync_all().map_err(|e| Error::io(&path, e))?;
                fsutil::persist(tmp, &path, force)
            }
        }
    }

    fn file_id(&self) -> Option<crate::archive::FileId> {
        crate::archive::file_id(&self.file).ok()
    }
}

/// A local file or a stream as a source.
pub struct FileSource {
    file: File,
    len: Option<u64>,
}

impl FileSource {
    /// The file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        Ok(Self { file, len })
    }

    /// An open file read as a stream (standard input), size unknown.
    pub fn stream(file: File) -> Self {
        Self { file, len: None }
    }
}

impl ArchiveSource for FileSource {
    fn len(&self) -> Option<u64> {
        self.len
    }
    fn into_reader(self: Box<Self>) -> Box<dyn Read + Send> {
        Box::new(self.file)
    }
}

/// The coffer error an I/O error carries, if it carries one (a store's
/// answer, raised through `Write` or `Read`); otherwise `e` unchanged. So
/// a refused upload reads "s3://b/k: access denied …", not wrapped in the
/// stream's own name.
pub fn surface(e: Error) -> Error {
    match e {
        Error::Io { path, source } => {
            if source.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                let inner = source.into_inner().expect("checked above");
                *inner.downcast::<Error>().expect("checked above")
            } else {
                Error::Io { path, source }
            }
        }
        e => e,
    }
}

/// A sink for an object URL (`s3://bucket/key`, `az://container/blob`), replacing an existing
/// object only with `force`.
pub fn object_sink(url: &str, force: bool, opts: &StoreOptions) -> Result<Box<dyn ArchiveSink>> {
    #[cfg(feature = "object-storage")]
    {
        Ok(Box::new(object::Store::open(url, opts)?.sink(force)?))
    }
    #[cfg(not(feature = "object-storage"))]
    {
        let _ = (force, opts);
        Err(no_object_storage(url))
    }
}

/// A source for an object URL.
pub fn object_source(url: &str, opts: &StoreOptions) -> Result<Box<dyn ArchiveSource>> {
    #[cfg(feature = "object-storage")]
    {
        Ok(Box::new(object::Store::open(url, opts)?.source()?))
    }
    #[cfg(not(feature = "object-storage"))]
    {
        let _ = opts;
        Err(no_object_storage(url))
    }
}

#[cfg(not(feature = "object-storage"))]
fn no_object_storage(url: &str) -> Error {
    Error::Usage(format!(
        "{url}: this build of coffer has no object storage (cargo feature `object-storage`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_places() {
        assert_eq!(Location::parse(Path::new("-")), Location::Standard);
        assert_eq!(
            Location::parse(Path::new("s3://b/k.coffer")),
            Location::Object("s3://b/k.coffer".into())
        );
        for path in [
            "./s3://b/k",
            "a.coffer",
            "/tmp/x",
            "1s3://x",
            "s 3://x",
            "://x",
        ] {
            assert_eq!(
                Location::parse(Path::new(path)),
                Location::File(path.into()),
                "{path}"
            );
        }
    }

    #[test]
    fn options_keep_only_store_names_and_never_show_values() {
        let o = StoreOptions::from_pairs([
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "hunter2".to_owned()),
            ("AZURE_STORAGE_ACCOUNT_KEY".to_owned(), "hunter3".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ]);
        assert_eq!(o.pairs().len(), 2);
        assert!(!format!("{o:?}").contains("hunter"));
    }
}
