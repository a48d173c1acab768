//! [`StreamReader`]: reads whole chunks from the input in batches on a
//! reading thread, opens them on worker threads, and hands back plaintext
//! in order, through `Read`/`BufRead` or [`StreamReader::copy_to`].
//!
//! Must never: release plaintext of a chunk that did not authenticate, or
//! report end of file before the last-flagged chunk authenticated.

use super::batch::{
    BATCHES_PER_WORKER, Batch, BufferSink, BufferSource, batch_chunks, buffer_pool,
};
use super::{ChunkCipher, PayloadKey, StreamError, TAG_LEN, workers};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::BTreeMap;
use std::io::{self, BufRead, IoSlice, Read, Write};

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
    /// Fails only when the system's OpenSSL cannot open ChaCha20-Poly1305.
    pub fn new<R: Read + Send + 'static>(
        key: PayloadKey,
        chunk_size: usize,
        input: R,
    ) -> io::Result<Self> {
        Self::with_batch(key, chunk_size, batch_chunks(chunk_size), input)
    }

    /// As `new`, with `per_batch` chunks in a batch (the tests use a few).
    pub(super) fn with_batch<R: Read + Send + 'static>(
        key: PayloadKey,
        chunk_size: usize,
        per_batch: usize,
        input: R,
    ) -> io::Result<Self> {
        let n = workers();
        let ciphers = (0..n)
            .map(|_| key.opener())
            .collect::<io::Result<Vec<_>>>()?;
        let (job_tx, job_rx) = bounded::<Batch>(n);
        let (done_tx, done_rx) = bounded::<Batch>(n);
        for mut cipher in ciphers {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for mut batch in rx {
                    open_batch(&mut cipher, chunk_size, &mut batch);
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
        Ok(Self {
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
        })
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
fn open_batch(cipher: &mut ChunkCipher, chunk_size: usize, batch: &mut Batch) {
    let slot = chunk_size + TAG_LEN;
    let chunks = batch.len.div_ceil(slot);
    for (i, s) in batch.buf[..batch.len].chunks_mut(slot).enumerate() {
        let last = batch.last && i + 1 == chunks;
        if let Err(e) = cipher.open_slot(batch.first + i as u64, last, s) {
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
