//! Archives: seal files, folders or a byte stream to the keyring's sealing
//! key (no factor needed), and open them again with the backup key
//! (docs/format.md §4, §8).
//!
//! Owns: the order of operations that keeps output safe. `seal` writes a
//! temp file beside the target and renames it only after the last chunk is
//! on disk; `open` unpacks into a temp folder (or file) beside the target
//! and renames it into place only after the final chunk authenticated. On
//! any error the temp output is removed and the target is untouched. The
//! temp output is listed for [`fsutil::remove_temporaries`], which the
//! program calls when a signal interrupts it. A target that must not be
//! replaced (a FIFO, a character device, `/dev/fd/N`) is written in place
//! as the payload authenticates, as standard output is.
//!
//! Must never: write outside the target folder, follow a symlink it wrote,
//! or overwrite an existing target unless asked (`force`).

pub mod header;
mod owner;
pub mod pack;
pub mod stream;
pub mod tar;
pub mod unpack;
mod xattrs;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::sealing::Sealer;
use crate::slot::SlotRecord;
pub use header::Header;
pub use pack::FileId;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use stream::{PayloadKey, StreamError, StreamReader, StreamWriter};
pub use unpack::UnpackOptions;

/// Something sealed or opened other than exactly as found, named so the
/// person can act on it (the command then exits with status 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The path concerned (on disk when sealing, in the archive when
    /// opening).
    pub path: PathBuf,
    /// Left out, or stored as it changed.
    pub kind: NoticeKind,
    /// What happened, for a person.
    pub what: String,
}

/// The two things a [`Notice`] can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Not sealed or not restored (or part of its metadata was not).
    Skipped,
    /// Changed while it was being sealed.
    Changed,
}

/// zstd level used when compressing (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;

/// Whether to compress the payload before encrypting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store as is.
    None,
    /// zstd, level [`ZSTD_LEVEL`].
    Zstd,
}

/// What to seal.
pub enum Source {
    /// Files and folders, each stored under its own name.
    Paths(Vec<PathBuf>),
    /// A byte stream (e.g. standard input), stored as is.
    Stream(Box<dyn Read + Send>),
}

/// Receives progress: plaintext bytes sealed or opened so far.
pub trait Progress: Sync {
    /// `n` more bytes were processed.
    fn advance(&self, n: u64);
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {
    fn advance(&self, _: u64) {}
}

/// Options for sealing.
#[derive(Debug, Clone, Copy)]
pub struct SealOptions {
    /// Compression of the payload.
    pub compression: Compression,
    /// Plaintext bytes per chunk (a power of two, 4 KiB to 4 MiB).
    pub chunk_size: u32,
}

impl Default for SealOptions {
    fn default() -> Self {
        Self {
            compression: Compression::None,
            chunk_size: header::DEFAULT_CHUNK,
        }
    }
}

struct Counting<'p, T> {
    inner: T,
    progress: &'p dyn Progress,
}

impl<T: Write> Write for Counting<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Counting<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Map an I/O error met while reading a payload: authentication failures
/// are corruption (exit 4), the rest are I/O errors on `path`.
fn payload_error(e: io::Error, path: &Path) -> Error {
    match StreamError::find(&e) {
        Some(s) => Error::ArchiveCorrupt {
            what: s.to_string(),
        },
        None => Error::io(path, e),
    }
}

/// Seal `source` with `sealer` into `out` (format 2: no factor needed,
/// only the keyring's public key and sealer key); the header carries
/// `slots`.
/// Files in `exclude` (the archive itself, standard output) are left out of
/// folders. Returns `out` after the last chunk was written (not yet
/// fsynced), and what was not sealed exactly as found.
pub fn seal<W: Write + Send + 'static>(
    sealer: &Sealer,
    slots: &[SlotRecord],
    source: Source,
    opts: SealOptions,
    mut out: W,
    exclude: &[FileId],
    progress: &dyn Progress,
) -> Result<(W, Vec<Notice>)> {
    let mut notices = Vec::new();
    let mut flags = 0;
    if matches!(source, Source::Paths(_)) {
        flags |= header::FLAG_TAR;
    }
    if opts.compression == Compression::Zstd {
        flags |= header::FLAG_ZSTD;
    }
    let (header, payload_key) = Header::seal(sealer, flags, opts.chunk_size, slots.to_vec());
    let out_err = |e| Error::io("<archive output>", e);
    payload_key.check_sealing().map_err(cipher_err)?;
    out.write_all(&header.to_bytes()).map_err(out_err)?;
    let mut sw =
        StreamWriter::new(payload_key, opts.chunk_size as usize, out).map_err(cipher_err)?;
    // Progress counts the content (the tar stream or the stream sealed),
    // before compression: what `open` gives back.
    let sw = match (opts.compression, source) {
        // The common stream case reads straight into chunk buffers.
        (Compression::None, Source::Stream(mut r)) => {
            let n = sw.read_from(&mut r).map_err(|e| Error::io("<input>", e))?;
            progress.advance(n);
            sw
        }
        (Compression::None, source) => {
            let counted = Counting {
                inner: sw,
                progress,
            };
            write_source(source, counted, exclude, &mut notices)?.inner
        }
        (Compression::Zstd, source) => {
            let enc = zstd::Encoder::new(sw, ZSTD_LEVEL).map_err(out_err)?;
            let counted = Counting {
                inner: enc,
                progress,
            };
            write_source(source, counted, exclude, &mut notices)?
                .inner
                .finish()
                .map_err(out_err)?
        }
    };
    Ok((sw.finish().map_err(out_err)?, notices))
}

fn write_source<W: Write>(
    source: Source,
    mut w: W,
    exclude: &[FileId],
    notices: &mut Vec<Notice>,
) -> Result<W> {
    match source {
        Source::Paths(paths) => pack::pack(&paths, w, exclude, notices),
        Source::Stream(mut r) => {
            io::copy(&mut r, &mut w).map_err(|e| Error::io("<input>", e))?;
            Ok(w)
        }
    }
}

/// Seal into `sink` and commit it: the archive appears at its place
/// (a file, an object) only after the last chunk was written, and not at
/// all when this fails (the sink is dropped uncommitted). A local file the
/// sink writes is left out of sealed folders. Returns what was not sealed
/// exactly as found.
pub fn seal_to(
    sealer: &Sealer,
    slots: &[SlotRecord],
    source: Source,
    opts: SealOptions,
    sink: Box<dyn crate::storage::ArchiveSink>,
    progress: &dyn Progress,
) -> Result<Vec<Notice>> {
    let exclude: Vec<FileId> = sink.file_id().into_iter().collect();
    let (sink, notices) = seal(sealer, slots, source, opts, sink, &exclude, progress)
        .map_err(crate::storage::surface)?;
    sink.commit().map_err(crate::storage::surface)?;
    Ok(notices)
}

/// Seal into the file `path` ([`crate::storage::FileSink`]: a temp file
/// beside it, fsynced, then renamed; an existing `path` replaced only with
/// `force`; a FIFO, character device or `/dev/fd/N` written in place).
pub fn seal_to_path(
    sealer: &Sealer,
    slots: &[SlotRecord],
    source: Source,
    opts: SealOptions,
    path: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<Vec<Notice>> {
    let sink = crate::storage::FileSink::create(path, force)?;
    seal_to(sealer, slots, source, opts, Box::new(sink), progress)
}

/// The device and inode of an open file, to leave it out of a seal.
pub fn file_id(f: &std::fs::File) -> io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// The payload cipher could not be set up (the system's OpenSSL refuses
/// ChaCha20-Poly1305).
fn cipher_err(e: io::Error) -> Error {
    Error::io("the system's OpenSSL", e)
}

/// The payload of an archive as a reader: authenticated, decompressed.
/// Reaches end of file only after the last chunk authenticated.
///
/// Here and in [`verify`], [`open_to_writer`] and [`open_to_path`], `key`
/// is the payload key of `header`: [`Header::open`] gives it from the
/// backup key (which also authenticates the header), the unlock agent
/// from its own copy ([`crate::agent`]).
pub fn payload<R: Read + Send + 'static>(
    header: &Header,
    key: &PayloadKey,
    input: R,
) -> Result<Box<dyn Read + Send>> {
    let sr =
        StreamReader::new(key.clone(), header.chunk_size as usize, input).map_err(cipher_err)?;
    Ok(if header.flags & header::FLAG_ZSTD != 0 {
        Box::new(DrainOnEof(
            zstd::Decoder::new(sr).map_err(|e| Error::io("<archive>", e))?,
        ))
    } else {
        Box::new(sr)
    })
}

/// zstd stops reading at the end of its frame; keep reading the stream
/// beneath to its authenticated end, so trailing chunks are checked too.
struct DrainOnEof(zstd::Decoder<'static, io::BufReader<StreamReader>>);

impl Read for DrainOnEof {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let rest = self.0.get_mut().get_mut().drain()?;
            let buffered = self.0.get_mut().buffer().len() as u64;
            if rest + buffered != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data after the end of the compressed payload",
                ));
            }
        }
        Ok(n)
    }
}

/// Authenticate every chunk and write nothing. Returns the plaintext
/// length (after decompression).
///
/// For a folder archive this also runs `open`'s own checks over every tar
/// entry ([`unpack::validate`]): an archive that verifies, opens.
pub fn verify<R: Read + Send + 'static>(
    header: &Header,
    key: &PayloadKey,
    input: R,
    progress: &dyn Progress,
) -> Result<u64> {
    let p = payload(header, key, input)?;
    let total = std::sync::atomic::AtomicU64::new(0);
    let tally = Tally {
        total: &total,
        progress,
    };
    let mut counted = Counting {
        inner: p,
        progress: &tally,
    };
    let at = Path::new("<archive>");
    if header.flags & header::FLAG_TAR != 0 {
        let (rest, _) = unpack::validate(&mut counted).map_err(stream_corrupt)?;
        io::copy(rest, &mut io::sink()).map_err(|e| payload_error(e, at))?;
    } else {
        io::copy(&mut counted, &mut io::sink()).map_err(|e| payload_error(e, at))?;
    }
    Ok(total.load(std::sync::atomic::Ordering::Relaxed))
}

/// Counts what it passes on.
struct Tally<'p> {
    total: &'p std::sync::atomic::AtomicU64,
    progress: &'p dyn Progress,
}

impl Progress for Tally<'_> {
    fn advance(&self, n: u64) {
        self.total
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.progress.advance(n);
    }
}

/// An I/O error from beneath a tar reader that is an authentication
/// failure is corruption (exit 4).
fn stream_corrupt(e: Error) -> Error {
    match e {
        Error::Io { source, path } => match StreamError::find(&source) {
            Some(s) => Error::ArchiveCorrupt {
                what: s.to_string(),
            },
            None => Error::Io { path, source },
        },
        e => e,
    }
}

/// Open into `out` as the plaintext is authenticated, chunk by chunk
/// (a tar payload is written as the tar stream). The caller must treat the
/// output as void unless this returns `Ok`.
pub fn open_to_writer<R: Read + Send + 'static, W: Write>(
    header: &Header,
    key: &PayloadKey,
    input: R,
    out: &mut W,
    progress: &dyn Progress,
) -> Result<u64> {
    let n = if header.flags & header::FLAG_ZSTD == 0 {
        StreamReader::new(key.clone(), header.chunk_size as usize, input)
            .map_err(cipher_err)?
            .copy_to(out, &mut |n| progress.advance(n))
    } else {
        let p = payload(header, key, input)?;
        io::copy(&mut Counting { inner: p, progress }, out)
    }
    .map_err(|e| payload_error(e, Path::new("<output>")))?;
    out.flush().map_err(|e| Error::io("<output>", e))?;
    Ok(n)
}

/// Open into `dst`: a folder for a tar payload, a file for a stream. The
/// output appears at `dst` only after everything authenticated; an existing
/// `dst` is replaced only with `force`. A FIFO, character device or
/// `/dev/fd/N` is written in place as by [`open_to_writer`] (a tar payload
/// as its tar stream), without `force`: the caller must treat what was
/// written as void unless this returns `Ok`. Returns what was not restored
/// exactly (devices when not root, metadata the file system refused).
pub fn open_to_path<R: Read + Send + 'static>(
    header: &Header,
    key: &PayloadKey,
    input: R,
    dst: &Path,
    force: bool,
    opts: UnpackOptions,
    progress: &dyn Progress,
) -> Result<Vec<Notice>> {
    if let Some(mut file) = fsutil::open_in_place(dst)? {
        open_to_writer(header, key, input, &mut file, progress)?;
        return Ok(Vec::new());
    }
    fsutil::refuse_existing(dst, force)?;
    let p = payload(header, key, input)?;
    let mut counted = Counting { inner: p, progress };
    if header.flags & header::FLAG_TAR == 0 {
        let mut tmp = fsutil::temp_beside(dst)?;
        io::copy(&mut counted, &mut tmp).map_err(|e| payload_error(e, dst))?;
        fsutil::persist(tmp, dst, force)?;
        return Ok(Vec::new());
    }
    let parent = fsutil::parent_dir(dst);
    let name = dst
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a folder name", dst.display())))?
        .to_string_lossy()
        .into_owned();
    let tmp = fsutil::temp_dir_in(&parent, &format!("{name}.tmp-"))?;
    let mut notices = Vec::new();
    let unpacked = unpack::unpack(&mut counted, tmp.path(), opts, &mut notices)
        .map_err(stream_corrupt)
        // Everything up to the last chunk must authenticate before the
        // folder becomes visible (the tar reader has read to the end
        // already; this checks nothing is left).
        .and_then(|(rest, _)| {
            io::copy(rest, &mut io::sink())
                .map(drop)
                .map_err(|e| payload_error(e, dst))
        });
    if let Err(e) = unpacked {
        // Folders the archive made read-only must not keep the half-made
        // tree from being removed.
        fsutil::make_removable(tmp.path());
        return Err(e);
    }
    replace_dir(tmp, dst, force)?;
    Ok(notices)
}

fn replace_dir(tmp: fsutil::TempDir, dst: &Path, force: bool) -> Result<()> {
    let parent = fsutil::parent_dir(dst);
    // The old target is moved aside into a temp folder that removes it
    // (also when interrupted after the commit).
    let aside = if force && dst.symlink_metadata().is_ok() {
        Some(fsutil::temp_dir_in(&parent, ".coffer-replaced-")?)
    } else {
        None
    };
    let (tmp, reg) = tmp.into_parts();
    reg.commit(|| {
        if let Some(a) = &aside {
            std::fs::rename(dst, a.path().join("old")).map_err(|e| Error::io(dst, e))?;
        }
        let kept = tmp.keep();
        // Without --force, never onto something made there meanwhile
        // (a plain rename would replace an empty folder).
        let renamed = match force {
            true => std::fs::rename(&kept, dst).map_err(|e| Error::io(dst, e)),
            false => fsutil::rename_noreplace(&kept, dst),
        };
        if let Err(e) = renamed {
            fsutil::make_removable(&kept);
            let _ = std::fs::remove_dir_all(&kept);
            if let Some(a) = &aside {
                let _ = std::fs::rename(a.path().join("old"), dst);
            }
            return Err(e);
        }
        Ok(())
    })?;
    if let Some(a) = &aside {
        // The old tree may hold folders it made read-only.
        fsutil::make_removable(a.path());
    }
    drop(aside);
    fsutil::sync_dir(&parent)
}
