//! Batches: consecutive chunks in one buffer laid out exactly as on the
//! wire, and the fixed pool of buffers they travel in between the thread
//! that fills them, the workers, and the thread that consumes them.
//!
//! Must never: allocate per batch on a steady stream, or let more buffers
//! than the pool holds be in flight (that bound is the memory bound).

use super::StreamError;
use crossbeam_channel::{Receiver, Sender, bounded};

/// Plaintext bytes per batch: large enough that system calls and channel
/// messages are rare, small enough that a batch stays in cache between
/// being read, sealed and written.
const BATCH_BYTES: usize = 1 << 20;

/// At most this many chunks per batch (small chunk sizes; also keeps the
/// `readv`/`writev` vectors far below the kernel's limit of 1024).
const MAX_BATCH_CHUNKS: usize = 64;

/// Batches in flight per worker thread (being filled, sealed or opened,
/// waiting to be written or read back).
pub(super) const BATCHES_PER_WORKER: usize = 2;

/// Chunks in one batch for `chunk_size`.
pub(super) fn batch_chunks(chunk_size: usize) -> usize {
    (BATCH_BYTES / chunk_size).clamp(1, MAX_BATCH_CHUNKS)
}

/// Consecutive chunks in one buffer, each in a slot of `chunk_size +
/// TAG_LEN` bytes, so that the sealed chunks are contiguous exactly as on
/// the wire. Only the stream's last chunk may be shorter than
/// `chunk_size`, so only a batch's final chunk can be.
#[derive(Default)]
pub(super) struct Batch {
    /// Its place in the stream: 0, 1, 2…
    pub(super) seq: u64,
    /// Index of its first chunk.
    pub(super) first: u64,
    /// The slots; their length never changes (zeroed once, when the pool
    /// is made, and overwritten from then on).
    pub(super) buf: Vec<u8>,
    /// Sealing: plaintext bytes in it, then the sealed bytes once sealed.
    /// Opening: bytes read from the wire.
    pub(super) len: usize,
    /// Whether its final chunk is the stream's last.
    pub(super) last: bool,
    /// Opening: chunks that authenticated, from the first.
    pub(super) good: usize,
    /// Opening: why the chunk after the `good` ones is not released.
    pub(super) error: Option<StreamError>,
    /// Sealing: the cipher failed on a chunk, so the batch must not be
    /// written (nor anything after it).
    pub(super) failed: bool,
}

/// A fixed set of batch buffers that travel from where chunks are filled
/// to where they are consumed and back. Filling blocks while all are in
/// flight, which bounds memory (including the reorder buffer when one
/// worker falls behind), and a steady stream allocates nothing.
pub(super) fn buffer_pool(count: usize, capacity: usize) -> (BufferSource, BufferSink) {
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
pub(super) struct BufferSource(Receiver<Batch>);

impl BufferSource {
    /// An empty batch; `None` once the consuming side is gone.
    pub(super) fn get(&self) -> Option<Batch> {
        let mut b = self.0.recv().ok()?;
        b.len = 0;
        b.last = false;
        b.good = 0;
        b.error = None;
        b.failed = false;
        Some(b)
    }
}

/// Where consumed batch buffers go back to.
pub(super) struct BufferSink(Sender<Batch>);

impl BufferSink {
    pub(super) fn put(&self, b: Batch) {
        if !b.buf.is_empty() {
            let _ = self.0.try_send(b);
        }
    }
}
