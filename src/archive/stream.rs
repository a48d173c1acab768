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
//! Chunks travel in batches (about 1 MiB) laid out exactly as on the wire:
//! each chunk in a slot of `S + 16` bytes, its tag right after it. So a
//! batch is read with one `readv` (sealing) or `read` (opening), sealed or
//! opened in place, and written with one `write` (sealing) or `writev`
//! (opening): no copies of our own, few system calls, and one channel
//! message per batch instead of per chunk.
//!
//! The cipher is `ring`'s assembly implementation (the RustCrypto crate is
//! the differential check in the tests).
//!
//! Must never: release plaintext of a chunk that did not authenticate, or
//! report a clean end of stream before the last-flagged chunk.

use crossbeam_channel::{Receiver, Sender, bounded};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::collections::BTreeMap;
use std::io::{self, BufRead, IoSlice, IoSliceMut, Read, Write};
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
        let len = buf.len();
        buf.resize(len + TAG_LEN, 0);
        self.seal_slot(counter, last, buf);
    }

    /// Seal chunk `counter` in place in `slot`: all but its last
    /// [`TAG_LEN`] bytes are the plaintext, the tag goes into those.
    fn seal_slot(&self, counter: u64, last: bool, slot: &mut [u8]) {
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter, last));
        let (data, tag_out) = slot.split_at_mut(slot.len() - TAG_LEN);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::empty(), data)
            .expect("chunk within ChaCha20-Poly1305 limits");
        tag_out.copy_from_slice(tag.as_ref());
    }

    /// Open chunk `counter` in place, leaving the plaintext in `buf`.
    pub fn open_chunk(
        &self,
        counter: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let n = self.open_slot(counter, last, buf)?;
        buf.truncate(n);
        Ok(())
    }

    /// Open chunk `counter` (ciphertext and tag, all of `slot`) in place;
    /// returns the plaintext length (the plaintext is at the start).
    fn open_slot(&self, counter: u64, last: bool, slot: &mut [u8]) -> Result<usize, StreamError> {
        if slot.len() < TAG_LEN {
            return Err(StreamError::Chunk(counter));
        }
        let nonce = Nonce::assume_unique_for_key(nonce_bytes(counter, last));
        let n = self
            .0
            .open_in_place(nonce, Aad::empty(), slot)
            .map_err(|_| StreamError::Chunk(counter))?
            .len();
        if n == 0 && counter > 0 {
            return Err(StreamError::EmptyChunk(counter));
        }
        Ok(n)
    }
}

/// How many worker threads to use: one per core.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Plaintext bytes per batch: large enough that system calls and channel
/// messages are rare, small enough that a batch stays in cache between
/// being read, sealed and written.
const BATCH_BYTES: usize = 1 << 20;

/// At most this many chunks per batch (small chunk sizes; also keeps the
/// `readv`/`writev` vectors far below the kernel's limit of 1024).
const MAX_BATCH_CHUNKS: usize = 64;

/// Batches in flight per worker thread (being filled, sealed or opened,
/// waiting to be written or read back).
const BATCHES_PER_WORKER: usize = 2;

/// Chunks in one batch for `chunk_size`.
fn batch_chunks(chunk_size: usize) -> usize {
    (BATCH_BYTES / chunk_size).clamp(1, MAX_BATCH_CHUNKS)
}

/// Consecutive chunks in one buffer, each in a slot of `chunk_size +
/// TAG_LEN` bytes, so that the sealed chunks are contiguous exactly as on
/// the wire. Only the stream's last chunk may be shorter than
/// `chunk_size`, so only a batch's final chunk can be.
#[derive(Default)]
struct Batch {
    /// Its place in the stream: 0, 1, 2…
    seq: u64,
    /// Index of its first chunk.
    first: u64,
    /// The slots; their length never changes (zeroed once, when the pool
    /// is made, and overwritten from then on).
    buf: Vec<u8>,
    /// Sealing: plaintext bytes in it, then the sealed bytes once sealed.
    /// Opening: bytes read from the wire.
    len: usize,
    /// Whether its final chunk is the stream's last.
    last: bool,
    /// Opening: chunks that authenticated, from the first.
    good: usize,
    /// Opening: why the chunk after the `good` ones is not released.
    error: Option<StreamError>,
}

/// A fixed set of batch buffers that travel from where chunks are filled
/// to where they are consumed and back. Filling blocks while all are in
/// flight, which bounds memory (including the reorder buffer when one
/// worker falls behind), and a steady stream allocates nothing.
fn buffer_pool(count: usize, capacity: usize) -> (BufferSource, BufferSink) {
    let (tx, rx) = bounded(count);
    for _ in 0..count {
        let batch = Batch {
            buf: vec![0; capacity],
            ..Batch::default()
        };
        tx.send(batch).expect("room for every buffer");
    }
    (BufferSource(rx), BufferSink(tx))
}

/// Where batch buffers are taken from.
struct BufferSource(Receiver<Batch>);

impl BufferSource {
    /// An empty batch; `None` once the consuming side is gone.
    fn get(&self) -> Option<Batch> {
        let mut b = self.0.recv().ok()?;
        b.len = 0;
        b.last = false;
        b.good = 0;
        b.error = None;
        Some(b)
    }
}

/// Where consumed batch buffers go back to.
struct BufferSink(Sender<Batch>);

impl BufferSink {
    fn put(&self, b: Batch) {
        if !b.buf.is_empty() {
            let _ = self.0.try_send(b);
        }
    }
}

/// Seals everything written to it into `W` as STREAM chunks, in parallel.
/// Call [`StreamWriter::finish`]: dropping it without does not write the
/// last chunk, so the output does not authenticate.
pub struct StreamWriter<W: Write + Send + 'static> {
    chunk_size: usize,
    /// Plaintext bytes a batch holds.
    batch_plain: usize,
    /// The batch being filled.
    current: Batch,
    /// A batch taken to learn whether input follows a full `current`, kept
    /// when none did.
    spare: Option<Batch>,
    /// Index of the first chunk of `current`.
    index: u64,
    /// Sequence number of `current`.
    seq: u64,
    jobs: Option<Sender<Batch>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<io::Result<W>>>,
    buffers: BufferSource,
}

impl<W: Write + Send + 'static> StreamWriter<W> {
    /// Seal into `out` with `chunk_size`-byte chunks.
    pub fn new(key: PayloadKey, chunk_size: usize, out: W) -> Self {
        Self::with_batch(key, chunk_size, batch_chunks(chunk_size), out)
    }

    fn with_batch(key: PayloadKey, chunk_size: usize, per_batch: usize, out: W) -> Self {
        let n = workers();
        let (job_tx, job_rx) = bounded::<Batch>(n);
        let (done_tx, done_rx) = bounded::<Batch>(n);
        let workers = (0..n)
            .map(|_| {
                let (rx, tx, key) = (job_rx.clone(), done_tx.clone(), key.clone());
                std::thread::spawn(move || {
                    for mut batch in rx {
                        seal_batch(&key, chunk_size, &mut batch);
                        if tx.send(batch).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let (buffers, sink) = buffer_pool(
            BATCHES_PER_WORKER * n + 2,
            per_batch * (chunk_size + TAG_LEN),
        );
        let writer = std::thread::spawn(move || write_in_order(done_rx, out, &sink));
        Self {
            chunk_size,
            batch_plain: per_batch * chunk_size,
            current: buffers.get().expect("a fresh pool has buffers"),
            spare: None,
            buffers,
            index: 0,
            seq: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    /// An empty batch: the spare if there is one, else one from the pool
    /// (waiting while all are in flight).
    fn fresh(&mut self) -> io::Result<Batch> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        match self.buffers.get() {
            Some(b) => Ok(b),
            None => Err(self.stopped()),
        }
    }

    /// The writer stopped: its error is the one to report.
    fn stopped(&mut self) -> io::Error {
        self.join()
            .err()
            .unwrap_or_else(|| io::Error::other("archive writer stopped"))
    }

    /// Hand `batch` to the workers; `last` if it ends the stream.
    fn dispatch(&mut self, mut batch: Batch, last: bool) -> io::Result<()> {
        batch.seq = self.seq;
        batch.first = self.index;
        batch.last = last;
        self.seq += 1;
        self.index += batch.len.div_ceil(self.chunk_size).max(1) as u64;
        let sent = self
            .jobs
            .as_ref()
            .map(|tx| tx.send(batch).is_ok())
            .unwrap_or(false);
        if sent { Ok(()) } else { Err(self.stopped()) }
    }

    /// Send the full `current` batch (more input follows) and start a new one.
    fn send_full(&mut self) -> io::Result<()> {
        let fresh = self.fresh()?;
        let full = std::mem::replace(&mut self.current, fresh);
        self.dispatch(full, false)
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

    /// Read `input` to its end straight into chunk slots, a batch per
    /// `readv` (no copy through an intermediate buffer). Returns the bytes
    /// read.
    pub fn read_from<R: Read>(&mut self, input: &mut R) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.current.len == self.batch_plain {
                // A full batch: its final chunk is not the last one only if
                // more follows, so read into the next batch first.
                let mut next = self.fresh()?;
                let got = read_into_slots(input, &mut next, self.chunk_size)?;
                if got == 0 {
                    self.spare = Some(next);
                    return Ok(total);
                }
                total += got as u64;
                let full = std::mem::replace(&mut self.current, next);
                self.dispatch(full, false)?;
                continue;
            }
            let got = read_into_slots(input, &mut self.current, self.chunk_size)?;
            if got == 0 {
                return Ok(total);
            }
            total += got as u64;
        }
    }

    /// Seal the last chunk, wait for every chunk to be written, and return
    /// the output (not yet flushed to disk: the caller fsyncs).
    pub fn finish(mut self) -> io::Result<W> {
        let last = std::mem::take(&mut self.current);
        self.dispatch(last, true)?;
        self.join()
    }
}

/// Read once (a `readv` for files and pipes) into the free plaintext room
/// of `batch`'s slots; returns the bytes read, 0 at end of input.
fn read_into_slots<R: Read>(
    input: &mut R,
    batch: &mut Batch,
    chunk_size: usize,
) -> io::Result<usize> {
    let slot = chunk_size + TAG_LEN;
    let (filled_chunks, offset) = (batch.len / chunk_size, batch.len % chunk_size);
    let mut bufs: Vec<IoSliceMut<'_>> = batch.buf[filled_chunks * slot..]
        .chunks_mut(slot)
        .map(|s| IoSliceMut::new(&mut s[..chunk_size]))
        .collect();
    let mut bufs = &mut bufs[..];
    IoSliceMut::advance_slices(&mut bufs, offset);
    let n = loop {
        match input.read_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    batch.len += n;
    Ok(n)
}

/// Seal every chunk of `batch` in its slot.
fn seal_batch(key: &PayloadKey, chunk_size: usize, batch: &mut Batch) {
    let chunks = batch.len.div_ceil(chunk_size).max(1);
    let slot = chunk_size + TAG_LEN;
    for (i, s) in batch.buf.chunks_mut(slot).take(chunks).enumerate() {
        let len = (batch.len - i * chunk_size).min(chunk_size);
        let last = batch.last && i + 1 == chunks;
        key.seal_slot(batch.first + i as u64, last, &mut s[..len + TAG_LEN]);
    }
    // The sealed chunks are contiguous: every slot is full but the final
    // one, and nothing follows it.
    batch.len += chunks * TAG_LEN;
}

/// Write sealed batches in order, each with one `write`.
fn write_in_order<W: Write>(
    done: Receiver<Batch>,
    mut out: W,
    buffers: &BufferSink,
) -> io::Result<W> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Batch> = BTreeMap::new();
    for batch in done {
        pending.insert(batch.seq, batch);
        while let Some(b) = pending.remove(&next) {
            out.write_all(&b.buf[..b.len])?;
            buffers.put(b);
            next += 1;
        }
    }
    out.flush()?;
    Ok(out)
}

impl<W: Write + Send + 'static> Write for StreamWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        let slot = self.chunk_size + TAG_LEN;
        while !buf.is_empty() {
            if self.current.len == self.batch_plain {
                // Only now do we know this full batch does not end the stream.
                self.send_full()?;
            }
            let (chunk, offset) = (
                self.current.len / self.chunk_size,
                self.current.len % self.chunk_size,
            );
            let take = (self.chunk_size - offset).min(buf.len());
            let at = chunk * slot + offset;
            self.current.buf[at..at + take].copy_from_slice(&buf[..take]);
            self.current.len += take;
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
    done: Receiver<Batch>,
    pending: BTreeMap<u64, Batch>,
    /// Sequence number of the next batch to take from `pending`.
    next: u64,
    chunk_size: usize,
    /// The batch being read back; `chunk` and `pos` say where.
    current: Batch,
    /// Chunk of `current` being read back.
    chunk: usize,
    /// Position in that chunk's plaintext.
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
        Self::with_batch(key, chunk_size, batch_chunks(chunk_size), input)
    }

    fn with_batch<R: Read + Send + 'static>(
        key: PayloadKey,
        chunk_size: usize,
        per_batch: usize,
        input: R,
    ) -> Self {
        let n = workers();
        let (job_tx, job_rx) = bounded::<Batch>(n);
        let (done_tx, done_rx) = bounded::<Batch>(n);
        for _ in 0..n {
            let (rx, tx, key) = (job_rx.clone(), done_tx.clone(), key.clone());
            std::thread::spawn(move || {
                for mut batch in rx {
                    open_batch(&key, chunk_size, &mut batch);
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            });
        }
        // Threads are detached: they end when the channels close. The input
        // thread may block reading stdin, so nothing waits for it.
        let (source, buffers) = buffer_pool(
            BATCHES_PER_WORKER * n + 2,
            per_batch * (chunk_size + TAG_LEN),
        );
        std::thread::spawn(move || read_batches(input, chunk_size, job_tx, done_tx, &source));
        Self {
            done: done_rx,
            pending: BTreeMap::new(),
            next: 0,
            chunk_size,
            current: Batch::default(),
            chunk: 0,
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

    /// The plaintext of chunk `i` of the current batch, whole.
    fn plaintext(&self, i: usize) -> &[u8] {
        let slot = self.chunk_size + TAG_LEN;
        let start = i * slot;
        let len = (self.current.len - start).min(slot) - TAG_LEN;
        &self.current.buf[start..start + len]
    }

    /// Move to the next batch in order once the current one is read back;
    /// reports the error that ended the current one, if any.
    fn next_batch(&mut self) -> io::Result<()> {
        if let Some(e) = &self.current.error {
            return Err(e.clone().into_io());
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                self.buffers.put(std::mem::replace(&mut self.current, b));
                self.chunk = 0;
                self.pos = 0;
                return Ok(());
            }
            match self.done.recv() {
                Ok(b) => {
                    self.pending.insert(b.seq, b);
                }
                // Every sender gone without a last chunk: cannot happen
                // unless a thread died; never report a clean end.
                Err(_) => return Err(StreamError::Truncated(self.plaintext_len).into_io()),
            }
        }
    }
}

/// Open every chunk of `batch` in its slot, stopping at the first that
/// does not authenticate.
fn open_batch(key: &PayloadKey, chunk_size: usize, batch: &mut Batch) {
    let slot = chunk_size + TAG_LEN;
    let chunks = batch.len.div_ceil(slot);
    for (i, s) in batch.buf[..batch.len].chunks_mut(slot).enumerate() {
        let last = batch.last && i + 1 == chunks;
        if let Err(e) = key.open_slot(batch.first + i as u64, last, s) {
            batch.error = Some(e);
            return;
        }
        batch.good = i + 1;
    }
}

/// Read the payload into batches of whole chunks and hand them to the
/// workers. A batch whose final chunk is too short to hold a tag carries
/// the truncation as its error, after the chunks before it.
fn read_batches<R: Read>(
    mut input: R,
    chunk_size: usize,
    jobs: Sender<Batch>,
    done: Sender<Batch>,
    buffers: &BufferSource,
) {
    let slot = chunk_size + TAG_LEN;
    let (mut seq, mut first) = (0u64, 0u64);
    // An error in place of batch `seq` (whose first chunk is `first`),
    // straight to the reader.
    let fail = |seq: u64, first: u64, e: StreamError| {
        let _ = done.send(Batch {
            seq,
            first,
            error: Some(e),
            ..Batch::default()
        });
    };
    let Some(mut batch) = buffers.get() else {
        return;
    };
    match read_full(&mut input, &mut batch.buf) {
        Ok(n) => batch.len = n,
        Err(_) => return fail(0, 0, StreamError::Truncated(0)),
    }
    loop {
        batch.seq = seq;
        batch.first = first;
        if batch.len < batch.buf.len() {
            // The input ended within this batch: its final chunk is the
            // last, unless too short to be a chunk at all.
            let tail = batch.len % slot;
            if (1..TAG_LEN).contains(&tail) || batch.len == 0 {
                let full = batch.len / slot;
                batch.len -= tail;
                batch.error = Some(StreamError::Truncated(
                    (first + full as u64) * chunk_size as u64,
                ));
            } else {
                batch.last = true;
            }
            let _ = jobs.send(batch);
            return;
        }
        // A full batch ends the stream only if nothing follows: read on
        // before handing it over (one `read`, then the rest once the
        // workers have the batch).
        let Some(mut next) = buffers.get() else {
            return;
        };
        let got = loop {
            match input.read(&mut next.buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    return fail(
                        seq,
                        first,
                        StreamError::Truncated(first * chunk_size as u64),
                    );
                }
                Ok(n) => break n,
            }
        };
        batch.last = got == 0;
        let last = batch.last;
        let chunks = batch.len / slot;
        if jobs.send(batch).is_err() || last {
            return;
        }
        seq += 1;
        first += chunks as u64;
        match read_full(&mut input, &mut next.buf[got..]) {
            Ok(n) => next.len = got + n,
            Err(_) => {
                return fail(
                    seq,
                    first,
                    StreamError::Truncated(first * chunk_size as u64),
                );
            }
        }
        batch = next;
    }
}

/// Write all of `bufs`, as few `writev` calls as the output allows.
fn write_all_vectored<W: Write>(out: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    // Skip leading empty slices: a write of nothing would look like WriteZero.
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
        loop {
            if self.chunk < self.current.good {
                if self.pos < self.plaintext(self.chunk).len() {
                    break;
                }
                self.chunk += 1;
                self.pos = 0;
                continue;
            }
            if self.finished {
                return Ok(&[]);
            }
            if self.current.last && self.current.error.is_none() {
                self.finished = true;
                continue;
            }
            self.next_batch()?;
        }
        Ok(&self.plaintext(self.chunk)[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        let len = if self.chunk < self.current.good {
            self.plaintext(self.chunk).len()
        } else {
            0
        };
        let n = n.min(len - self.pos);
        self.pos += n;
        self.plaintext_len += n as u64;
    }
}

impl StreamReader {
    /// Write the plaintext to `out` a batch at a time (one `writev`), each
    /// chunk only after it authenticated. Returns the bytes written.
    pub fn copy_to<W: Write>(
        &mut self,
        out: &mut W,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            if self.fill_buf()?.is_empty() {
                return Ok(total);
            }
            let mut slices: Vec<IoSlice<'_>> = (self.chunk..self.current.good)
                .map(|i| IoSlice::new(self.plaintext(i)))
                .collect();
            let mut view = &mut slices[..];
            IoSlice::advance_slices(&mut view, self.pos);
            let n: usize = view.iter().map(|s| s.len()).sum();
            write_all_vectored(out, view)?;
            // Everything up to the last authenticated chunk is out.
            self.chunk = self.current.good;
            self.pos = 0;
            self.plaintext_len += n as u64;
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

/// Batches of a few chunks, so that short inputs cross many batch
/// boundaries (the public constructors put up to 64 chunks in one).
#[cfg(test)]
mod batch_tests {
    use super::*;

    const CS: usize = 64;
    const PER_BATCH: usize = 3;

    fn key() -> PayloadKey {
        PayloadKey::new(&[42; 32])
    }

    /// Hands out at most `step` bytes per read, to split batches unevenly.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// The reference: chunk by chunk, one `seal_chunk` each.
    fn reference(data: &[u8]) -> Vec<u8> {
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(CS).collect()
        };
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let mut buf = p.to_vec();
            key().seal_chunk(i as u64, i + 1 == pieces.len(), &mut buf);
            out.extend(buf);
        }
        out
    }

    fn open(ct: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let input = io::Cursor::new(ct.to_vec());
        let mut r = StreamReader::with_batch(key(), CS, PER_BATCH, input);
        let mut out = Vec::new();
        if step == 0 {
            r.copy_to(&mut out, &mut |_| {})?;
        } else {
            // Small reads through `Read`, as tar and zstd do.
            let mut buf = vec![0; step];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        Ok(out)
    }

    #[test]
    fn read_from_and_write_match_chunk_by_chunk_sealing() {
        for len in [
            0,
            1,
            CS,
            3 * CS,
            3 * CS + 1,
            6 * CS,
            7 * CS - 1,
            20 * CS + 5,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let expected = reference(&data);
            for step in [1, 5, CS, 2 * CS + 3, 1000] {
                let mut w = StreamWriter::with_batch(key(), CS, PER_BATCH, Vec::new());
                assert_eq!(w.read_from(&mut Trickle(&data, step)).unwrap(), len as u64);
                assert_eq!(
                    w.finish().unwrap(),
                    expected,
                    "read_from len {len} step {step}"
                );
                let mut w = StreamWriter::with_batch(key(), CS, PER_BATCH, Vec::new());
                for piece in data.chunks(step) {
                    w.write_all(piece).unwrap();
                }
                assert_eq!(w.finish().unwrap(), expected, "write len {len} step {step}");
            }
            for step in [0, 1, 100] {
                assert_eq!(open(&expected, step).unwrap(), data, "open len {len}");
            }
        }
    }

    #[test]
    fn damage_is_detected_across_batches() {
        let data = vec![3u8; 7 * CS + 20];
        let ct = reference(&data);
        for cut in 0..ct.len() {
            assert!(open(&ct[..cut], 0).is_err(), "cut at {cut} accepted");
        }
        for byte in (0..ct.len()).step_by(13) {
            let mut bad = ct.clone();
            bad[byte] ^= 1;
            assert!(open(&bad, 0).is_err(), "flip at {byte} accepted");
        }
        let mut longer = ct.clone();
        longer.push(0);
        assert!(open(&longer, 0).is_err());
    }

    /// Chunks before a damaged one are released, nothing from it on.
    #[test]
    fn plaintext_stops_at_the_damaged_chunk() {
        let data: Vec<u8> = (0..8 * CS).map(|i| i as u8).collect();
        let mut ct = reference(&data);
        ct[4 * (CS + TAG_LEN) + 2] ^= 1;
        let mut r = StreamReader::with_batch(key(), CS, PER_BATCH, io::Cursor::new(ct));
        let mut out = Vec::new();
        let e = r.copy_to(&mut out, &mut |_| {}).unwrap_err();
        assert_eq!(StreamError::find(&e), Some(&StreamError::Chunk(4)));
        assert_eq!(out, &data[..4 * CS]);
    }
}
