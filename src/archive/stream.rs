//! STREAM over ChaCha20-Poly1305 (as age does): the payload is cut into
//! fixed-size chunks, each sealed under the payload key with the nonce
//! `11-byte big-endian chunk counter || last-chunk flag`. Truncation,
//! reordering, trailing data and any flipped bit are errors.
//!
//! Chunks are independent, so [`StreamWriter`] and [`StreamReader`] seal
//! and open them on every core: a bounded job queue feeds worker threads and
//! results are put back in order, so memory stays constant whatever the
//! archive's size.
//!
//! The cipher is `ring`'s assembly implementation (the RustCrypto crate is
//! the differential check in the tests).
//!
//! Must never: release plaintext of a chunk that did not authenticate, or
//! report a clean end of stream before the last-flagged chunk.

use crossbeam_channel::{Receiver, Sender, bounded};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// Why the payload did not authenticate. Carried inside `io::Error`
/// (kind `InvalidData`) so that it passes through tar and zstd readers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A chunk failed to authenticate (flipped bit, reordering, wrong key).
    #[error("chunk {0} does not authenticate: the archive was modified or damaged")]
    Chunk(u64),
    /// The payload ends before its last chunk.
    #[error("the payload is truncated after {0} bytes")]
    Truncated(u64),
    /// An empty chunk where only a lone final chunk may be empty.
    #[error("chunk {0} is empty but not the only chunk")]
    EmptyChunk(u64),
}

impl StreamError {
    /// Find a `StreamError` inside an `io::Error`, however deeply the
    /// readers above (tar, zstd) wrapped it.
    pub fn find(e: &io::Error) -> Option<&StreamError> {
        let mut cur: &(dyn std::error::Error + 'static) = e.get_ref()?;
        loop {
            if let Some(s) = cur.downcast_ref::<StreamError>() {
                return Some(s);
            }
            if let Some(inner) = cur.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
                cur = inner;
                continue;
            }
            cur = cur.source()?;
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The payload key, shared read-only by the worker threads.
#[derive(Clone)]
pub struct PayloadKey(Arc<LessSafeKey>);

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadKey").finish_non_exhaustive()
    }
}

/// The 12-byte nonce of chunk `counter`.
pub fn nonce_bytes(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = last as u8;
    n
}

impl PayloadKey {
    /// Use 32 raw bytes (derived from the backup key and the archive salt).
    pub fn new(key: &[u8; 32]) -> Self {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        Self(Arc::new(LessSafeKey::new(k)))
    }

    /// Seal `buf` in place as chunk `counter`, appending the tag.
    pub fn seal_chunk(&self, counter: u64, last: bool, buf: &mut Vec<u8>) {
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter, last));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), buf)
            .expect("chunk within ChaCha20-Poly1305 limits");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Open chunk `counter` in place, leaving the plaintext in `buf`.
    pub fn open_chunk(
        &self,
        counter: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        if buf.len() < TAG_LEN {
            return Err(StreamError::Chunk(counter));
        }
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter, last));
        let n = self
            .0
            .open_in_place(nonce, Aad::empty(), buf)
            .map_err(|_| StreamError::Chunk(counter))?
            .len();
        buf.truncate(n);
        if n == 0 && counter > 0 {
            return Err(StreamError::EmptyChunk(counter));
        }
        Ok(())
    }
}

/// How many worker threads to use: one per core.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A fixed set of chunk buffers that travel from where chunks are filled
/// to where they are consumed and back. Filling blocks while all are in
/// flight, which bounds memory (including the reorder buffer when one
/// worker falls behind), and a steady stream allocates nothing.
fn buffer_pool(count: usize, capacity: usize) -> (BufferSource, BufferSink) {
    let (tx, rx) = bounded(count);
    for _ in 0..count {
        tx.send(Vec::with_capacity(capacity))
            .expect("room for every buffer");
    }
    (BufferSource(rx), BufferSink(tx))
}

/// Where chunk buffers are taken from.
struct BufferSource(Receiver<Vec<u8>>);

impl BufferSource {
    /// An empty buffer; `None` once the consuming side is gone.
    fn get(&self) -> Option<Vec<u8>> {
        let mut v = self.0.recv().ok()?;
        v.clear();
        Some(v)
    }
}

/// Where consumed chunk buffers go back to.
struct BufferSink(Sender<Vec<u8>>);

impl BufferSink {
    fn put(&self, v: Vec<u8>) {
        if v.capacity() > 0 {
            let _ = self.0.try_send(v);
        }
    }
}

/// Buffers in flight per worker thread.
const BUFFERS_PER_WORKER: usize = 4;

struct Job {
    index: u64,
    last: bool,
    data: Vec<u8>,
}

type Done = (u64, bool, Result<Vec<u8>, StreamError>);

/// Seals everything written to it into `W` as STREAM chunks, in parallel.
/// Call [`StreamWriter::finish`]: dropping it without does not write the
/// last chunk, so the output does not authenticate.
pub struct StreamWriter<W: Write + Send + 'static> {
    chunk_size: usize,
    current: Vec<u8>,
    index: u64,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    buffers: BufferSource,
}

impl<W: Write + Send + 'static> StreamWriter<W> {
    /// Seal into `out` with `chunk_size`-byte chunks.
    pub fn new(key: PayloadKey, chunk_size: usize, out: W) -> Self {
        let n = workers();
        let (job_tx, job_rx) = bounded::<Job>(2 * n);
        let (done_tx, done_rx) = bounded::<Done>(2 * n);
        let workers = (0..n)
            .map(|_| {
                let (rx, tx, key) = (job_rx.clone(), done_tx.clone(), key.clone());
                std::thread::spawn(move || {
                    for mut job in rx {
                        key.seal_chunk(job.index, job.last, &mut job.data);
                        if tx.send((job.index, job.last, Ok(job.data))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let (buffers, sink) = buffer_pool(BUFFERS_PER_WORKER * n + 2, chunk_size + TAG_LEN);
        let writer = std::thread::spawn(move || write_in_order(done_rx, out, &sink));
        Self {
            chunk_size,
            current: buffers.get().expect("a fresh pool has buffers"),
            buffers,
            index: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn send(&mut self, last: bool) -> io::Result<()> {
        let Some(fresh) = self.buffers.get() else {
            return Err(self
                .join()
                .err()
                .unwrap_or_else(|| io::Error::other("archive writer stopped")));
        };
        let data = std::mem::replace(&mut self.current, fresh);
        let job = Job {
            index: self.index,
            last,
            data,
        };
        self.index += 1;
        let sent = self
            .jobs
            .as_ref()
            .map(|tx| tx.send(job).is_ok())
            .unwrap_or(false);
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error is the one to report.
            Err(self
                .join()
                .err()
                .unwrap_or_else(|| io::Error::other("archive writer stopped")))
        }
    }

    fn join(&mut self) -> io::Result<W> {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("archive writer panicked"))),
            None => Err(io::Error::other("archive writer already finished")),
        }
    }

    /// Read `input` to its end straight into chunk buffers (no copy
    /// through an intermediate buffer). Returns the bytes read.
    pub fn read_from<R: Read>(&mut self, input: &mut R) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.current.len() == self.chunk_size {
                // A full chunk: it is not the last one only if more follows.
                let mut probe = [0u8; 1];
                match input.read(&mut probe) {
                    Ok(0) => return Ok(total),
                    Ok(_) => {
                        self.send(false)?;
                        self.current.push(probe[0]);
                        total += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let start = self.current.len();
            self.current.resize(self.chunk_size, 0);
            let n = read_full(input, &mut self.current[start..]);
            let got = *n.as_ref().unwrap_or(&0);
            self.current.truncate(start + got);
            total += got as u64;
            n?;
            if start + got < self.chunk_size {
                return Ok(total);
            }
        }
    }

    /// Seal the last chunk, wait for every chunk to be written, and return
    /// the output (not yet flushed to disk: the caller fsyncs).
    pub fn finish(mut self) -> io::Result<W> {
        self.send(true)?;
        self.join()
    }
}

fn write_in_order<W: Write>(
    done: Receiver<Done>,
    mut out: W,
    buffers: &BufferSink,
) -> io::Result<W> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (index, _, data) in done {
        pending.insert(index, data.map_err(StreamError::into_io)?);
        while let Some(d) = pending.remove(&next) {
            out.write_all(&d)?;
            buffers.put(d);
            next += 1;
        }
    }
    out.flush()?;
    Ok(out)
}

impl<W: Write + Send + 'static> Write for StreamWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            if self.current.len() == self.chunk_size {
                // Only now do we know this full chunk is not the last.
                self.send(false)?;
            }
            let take = (self.chunk_size - self.current.len()).min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for StreamWriter<W> {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.join();
        }
    }
}

/// Opens STREAM chunks read from `R`, in parallel, and reads back the
/// plaintext in order. Reaches end of file only after the last-flagged
/// chunk authenticated.
pub struct StreamReader {
    done: Receiver<Done>,
    pending: BTreeMap<u64, (bool, Result<Vec<u8>, StreamError>)>,
    next: u64,
    current: Vec<u8>,
    pos: usize,
    finished: bool,
    plaintext_len: u64,
    buffers: BufferSink,
}

/// Read until `buf` is full or the input ends; returns bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl StreamReader {
    /// Open the chunks read from `input` (positioned just after the header).
    pub fn new<R: Read + Send + 'static>(key: PayloadKey, chunk_size: usize, input: R) -> Self {
        let n = workers();
        let (job_tx, job_rx) = bounded::<Job>(2 * n);
        let (done_tx, done_rx) = bounded::<Done>(2 * n);
        for _ in 0..n {
            let (rx, tx, key) = (job_rx.clone(), done_tx.clone(), key.clone());
            std::thread::spawn(move || {
                for mut job in rx {
                    let r = key.open_chunk(job.index, job.last, &mut job.data);
                    if tx.send((job.index, job.last, r.map(|_| job.data))).is_err() {
                        return;
                    }
                }
            });
        }
        // Threads are detached: they end when the channels close. The input
        // thread may block reading stdin, so nothing waits for it.
        let (source, buffers) = buffer_pool(BUFFERS_PER_WORKER * n + 2, chunk_size + TAG_LEN);
        std::thread::spawn(move || read_chunks(input, chunk_size, job_tx, done_tx, &source));
        Self {
            done: done_rx,
            pending: BTreeMap::new(),
            next: 0,
            current: Vec::new(),
            pos: 0,
            finished: false,
            plaintext_len: 0,
            buffers,
        }
    }

    /// Plaintext bytes handed out so far.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Read to the end, authenticating every chunk, and discard the bytes.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    fn next_chunk(&mut self) -> io::Result<bool> {
        loop {
            if let Some((last, data)) = self.pending.remove(&self.next) {
                self.next += 1;
                let data = data.map_err(StreamError::into_io)?;
                self.finished = last;
                self.plaintext_len += data.len() as u64;
                self.buffers.put(std::mem::replace(&mut self.current, data));
                self.pos = 0;
                return Ok(true);
            }
            match self.done.recv() {
                Ok((index, last, data)) => {
                    self.pending.insert(index, (last, data));
                }
                // Every sender gone without a last chunk: cannot happen
                // unless a thread died; never report a clean end.
                Err(_) => return Err(StreamError::Truncated(self.plaintext_len).into_io()),
            }
        }
    }
}

fn read_chunks<R: Read>(
    mut input: R,
    chunk_size: usize,
    jobs: Sender<Job>,
    done: Sender<Done>,
    buffers: &BufferSource,
) {
    let full = chunk_size + TAG_LEN;
    let mut offset = 0u64;
    let fail = |index: u64, e: StreamError| {
        let _ = done.send((index, false, Err(e)));
    };
    let read = |input: &mut R| -> Result<Vec<u8>, ()> {
        let mut buf = buffers.get().ok_or(())?;
        buf.resize(full, 0);
        match read_full(input, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(_) => Err(()),
        }
    };
    let mut index = 0u64;
    let Ok(mut buf) = read(&mut input) else {
        return fail(0, StreamError::Truncated(0));
    };
    loop {
        if buf.len() < full {
            if buf.len() < TAG_LEN {
                return fail(index, StreamError::Truncated(offset));
            }
            let _ = jobs.send(Job {
                index,
                last: true,
                data: buf,
            });
            return;
        }
        let Ok(next) = read(&mut input) else {
            return fail(index, StreamError::Truncated(offset));
        };
        let last = next.is_empty();
        if jobs
            .send(Job {
                index,
                last,
                data: buf,
            })
            .is_err()
            || last
        {
            return;
        }
        offset += chunk_size as u64;
        index += 1;
        buf = next;
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl io::BufRead for StreamReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.current.len() {
            if self.finished {
                return Ok(&[]);
            }
            self.next_chunk()?;
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.current.len());
    }
}

impl StreamReader {
    /// Write the plaintext to `out` chunk by chunk, each chunk only after
    /// it authenticated. Returns the bytes written.
    pub fn copy_to<W: Write>(
        &mut self,
        out: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let chunk = self.fill_buf()?;
            if chunk.is_empty() {
                return Ok(total);
            }
            let n = chunk.len();
            out.write_all(chunk)?;
            self.consume(n);
            total += n as u64;
            progress(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: usize = 64;

    fn seal(data: &[u8], key: &PayloadKey) -> Vec<u8> {
        let mut w = StreamWriter::new(key.clone(), CS, Vec::new());
        // Write in odd pieces to exercise chunk boundaries.
        for piece in data.chunks(7) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn open(ct: Vec<u8>, key: &PayloadKey) -> io::Result<Vec<u8>> {
        let mut r = StreamReader::new(key.clone(), CS, io::Cursor::new(ct));
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn key() -> PayloadKey {
        PayloadKey::new(&[42; 32])
    }

    fn err_of(r: io::Result<Vec<u8>>) -> StreamError {
        let e = r.unwrap_err();
        StreamError::find(&e)
            .cloned()
            .unwrap_or_else(|| panic!("not a stream error: {e}"))
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        for len in [0, 1, CS - 1, CS, CS + 1, 2 * CS, 5 * CS + 3, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = seal(&data, &key());
            let chunks = len.div_ceil(CS).max(1);
            assert_eq!(ct.len(), len + chunks * TAG_LEN, "len {len}");
            assert_eq!(open(ct, &key()).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn truncation_at_every_boundary_and_mid_chunk_is_detected() {
        let data = vec![7u8; 3 * CS + 10];
        let ct = seal(&data, &key());
        for cut in 0..ct.len() {
            let r = open(ct[..cut].to_vec(), &key());
            assert!(r.is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let data = vec![1u8; 2 * CS + 5];
        let ct = seal(&data, &key());
        for byte in 0..ct.len() {
            let mut bad = ct.clone();
            bad[byte] ^= 0x10;
            assert!(
                matches!(err_of(open(bad, &key())), StreamError::Chunk(_)),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn swapped_chunks_and_trailing_data_are_detected() {
        let data: Vec<u8> = (0..3 * CS).map(|i| i as u8).collect();
        let ct = seal(&data, &key());
        let f = CS + TAG_LEN;
        let mut swapped = ct.clone();
        swapped[..f].copy_from_slice(&ct[f..2 * f]);
        swapped[f..2 * f].copy_from_slice(&ct[..f]);
        assert!(matches!(
            err_of(open(swapped, &key())),
            StreamError::Chunk(0)
        ));
        let mut longer = ct.clone();
        longer.extend_from_slice(b"extra");
        assert!(open(longer, &key()).is_err());
        // A whole extra chunk sealed by the same key is refused too.
        let mut extended = ct[..3 * f].to_vec();
        extended.extend_from_slice(&ct[2 * f..3 * f]);
        assert!(open(extended, &key()).is_err());
        // Dropping the final chunk at a boundary: chunk 1 was not sealed as last.
        assert!(matches!(
            err_of(open(ct[..2 * f].to_vec(), &key())),
            StreamError::Chunk(1)
        ));
    }

    #[test]
    fn wrong_key_fails_on_the_first_chunk() {
        let ct = seal(b"secret", &key());
        assert_eq!(
            err_of(open(ct, &PayloadKey::new(&[1; 32]))),
            StreamError::Chunk(0)
        );
    }

    /// Differential check: ring and the RustCrypto crate agree byte for byte
    /// on every chunk (same key, nonce, plaintext).
    #[test]
    fn ring_and_rustcrypto_produce_identical_chunks() {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let raw = [9u8; 32];
        let rc = chacha20poly1305::ChaCha20Poly1305::new(&raw.into());
        let data: Vec<u8> = (0..3 * CS + 17).map(|i| (i * 31) as u8).collect();
        let ct = seal(&data, &PayloadKey::new(&raw));
        let mut expected = Vec::new();
        let pieces: Vec<&[u8]> = data.chunks(CS).collect();
        for (i, p) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let nonce = nonce_bytes(i as u64, last);
            expected.extend(rc.encrypt(&nonce.into(), *p).unwrap());
        }
        assert_eq!(ct, expected);
    }
}
