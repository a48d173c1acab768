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
//! This module owns the format's primitives: [`TAG_LEN`], the nonce
//! ([`nonce_bytes`]), the [`PayloadKey`] that seals and opens one chunk, and
//! [`StreamError`]. The rest is split by direction:
//!
//! - `batch`: the batch buffers that carry chunks laid out as on the wire,
//!   and the fixed pool they circulate in (what bounds memory);
//! - `writer`: [`StreamWriter`], sealing in parallel;
//! - `reader`: [`StreamReader`], opening in parallel and releasing only
//!   authenticated plaintext.
//!
//! Must never: release plaintext of a chunk that did not authenticate, or
//! report a clean end of stream before the last-flagged chunk.

mod batch;
mod reader;
mod writer;

pub use reader::StreamReader;
pub use writer::StreamWriter;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::io;
use std::sync::Arc;

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod batch_tests;
