//! [`StreamWriter`]: seals what is written to it (or read in with
//! [`StreamWriter::read_from`]) in batches on worker threads, and writes
//! the sealed batches in order on a writer thread.
//!
//! Must never: give a chunk the last flag before it knows no input follows,
//! or report success before every chunk is written.

use super::batch::{
    BATCHES_PER_WORKER, Batch, BufferSink, BufferSource, batch_chunks, buffer_pool,
};
use super::{ChunkCipher, PayloadKey, TAG_LEN, workers};
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::BTreeMap;
use std::io::{self, IoSliceMut, Read, Write};
use std::thread::JoinHandle;

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
    /// Seal into `out` with `chunk_size`-byte chunks. Fails only when the
    /// system's OpenSSL cannot seal with ChaCha20-Poly1305.
    pub fn new(key: PayloadKey, chunk_size: usize, out: W) -> io::Result<Self> {
        Self::with_batch(key, chunk_size, batch_chunks(chunk_size), out)
    }

    /// As `new`, with `per_batch` chunks in a batch (the tests use a few).
    pub(super) fn with_batch(
        key: PayloadKey,
        chunk_size: usize,
        per_batch: usize,
        out: W,
    ) -> io::Result<Self> {
        let n = workers();
        let ciphers = (0..n)
            .map(|_| key.sealer())
            .collect::<io::Result<Vec<_>>>()?;
        let (job_tx, job_rx) = bounded::<Batch>(n);
        let (done_tx, done_rx) = bounded::<Batch>(n);
        let workers = ciphers
            .into_iter()
            .map(|mut cipher| {
                let (rx, tx) = (job_rx.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    for mut batch in rx {
                        seal_batch(&mut cipher, chunk_size, &mut batch);
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
        Ok(Self {
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
        })
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
        let mut worker_died = false;
        for w in self.workers.drain(..) {
            worker_died |= w.join().is_err();
        }
        let written = match self.writer.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("archive writer panicked"))),
            None => Err(io::Error::other("archive writer already finished")),
        };
        // A batch a dead worker held was never written.
        if worker_died && written.is_ok() {
            return Err(io::Error::other("a sealing thread died"));
        }
        written
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

/// Seal every chunk of `batch` in its slot; marks it failed if the
/// cipher fails on one.
fn seal_batch(cipher: &mut ChunkCipher, chunk_size: usize, batch: &mut Batch) {
    let chunks = batch.len.div_ceil(chunk_size).max(1);
    let slot = chunk_size + TAG_LEN;
    for (i, s) in batch.buf.chunks_mut(slot).take(chunks).enumerate() {
        let len = (batch.len - i * chunk_size).min(chunk_size);
        let last = batch.last && i + 1 == chunks;
        if !cipher.seal_slot(batch.first + i as u64, last, &mut s[..len + TAG_LEN]) {
            batch.failed = true;
            return;
        }
    }
    // The sealed chunks are contiguous: every slot is full but the final
    // one, and nothing follows it.
    batch.len += chunks * TAG_LEN;
}

/// Write sealed batches in order, each with one `write`.
pub(super) fn write_in_order<W: Write>(
    done: Receiver<Batch>,
    mut out: W,
    buffers: &BufferSink,
) -> io::Result<W> {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Batch> = BTreeMap::new();
    for batch in done {
        if batch.failed {
            // Returning drops the buffer pool's sink: the filling side
            // then stops with this error instead of waiting for buffers.
            return Err(io::Error::other(format!(
                "OpenSSL failed to seal a chunk of batch {}",
                batch.seq
            )));
        }
        pending.insert(batch.seq, batch);
        while let Some(b) = pending.remove(&next) {
            out.write_all(&b.buf[..b.len])?;
            buffers.put(b);
            next += 1;
        }
    }
    // Every batch sent was written: one missing (its worker died) leaves
    // the ones after it here.
    if !pending.is_empty() {
        return Err(io::Error::other("a sealed batch was lost"));
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
