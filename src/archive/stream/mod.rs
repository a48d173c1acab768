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
//! The cipher is the system OpenSSL's ChaCha20-Poly1305 (its AVX-512 code
//! runs at about 1.8 times the speed of ring's AVX2 code on the machines
//! we measure, `benches/compare-age.sh`); the RustCrypto crate is the
//! differential check in the tests. Each worker thread keys one OpenSSL
//! context once (`ChunkCipher`) and sets only the nonce per chunk.
//!
//! This module owns the format's primitives: [`TAG_LEN`], the nonce
//! ([`nonce_bytes`]), the [`PayloadKey`] (and the per-thread context that
//! seals or opens one chunk under it), and [`StreamError`]. The rest is
//! split by direction:
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

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use std::io;
use std::sync::Arc;
use zeroize::Zeroizing;

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

/// The payload key, shared read-only by the worker threads; each seals or
/// opens through its own `ChunkCipher`.
#[derive(Clone)]
pub struct PayloadKey(Arc<Zeroizing<[u8; 32]>>);

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
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(key);
        Self(Arc::new(k))
    }

    /// Whether this system can seal with the key: checked before an
    /// archive's header is written, so that an output written in place
    /// (standard output, a pipe) gets nothing when it cannot.
    pub fn check_sealing(&self) -> io::Result<()> {
        self.sealer().map(drop)
    }

    /// A context that seals chunks under this key, for one thread.
    fn sealer(&self) -> io::Result<ChunkCipher> {
        ChunkCipher::new(&self.0, true)
    }

    /// A context that opens chunks under this key, for one thread.
    fn opener(&self) -> io::Result<ChunkCipher> {
        ChunkCipher::new(&self.0, false)
    }
}

/// One thread's OpenSSL ChaCha20-Poly1305 context, keyed once for one
/// direction; each chunk only sets its nonce (which also resets the
/// Poly1305 state). OpenSSL clears the key when the context is freed.
struct ChunkCipher {
    ctx: CipherCtx,
}

impl ChunkCipher {
    fn new(key: &[u8; 32], seal: bool) -> io::Result<Self> {
        let unavailable = |e: openssl::error::ErrorStack| {
            io::Error::other(format!(
                "cannot use ChaCha20-Poly1305 (an OpenSSL limited to FIPS algorithms has none): {e}"
            ))
        };
        // OpenSSL's own implementation, whatever other providers or engines
        // its configuration loads.
        let cipher = Cipher::fetch(None, "ChaCha20-Poly1305", Some("provider=default"))
            .map_err(unavailable)?;
        let mut ctx = CipherCtx::new().map_err(unavailable)?;
        if seal {
            ctx.encrypt_init(Some(&cipher), Some(key), None)
        } else {
            ctx.decrypt_init(Some(&cipher), Some(key), None)
        }
        .map_err(unavailable)?;
        Ok(Self { ctx })
    }

    /// Seal chunk `counter` in place in `slot`: all but its last
    /// [`TAG_LEN`] bytes are the plaintext, the tag goes into those.
    /// `false`: OpenSSL failed, and the slot holds nothing to write.
    #[must_use]
    fn seal_slot(&mut self, counter: u64, last: bool, slot: &mut [u8]) -> bool {
        let nonce = nonce_bytes(counter, last);
        let (data, tag) = slot.split_at_mut(slot.len() - TAG_LEN);
        let len = data.len();
        let sealed = self
            .ctx
            .encrypt_init(None, None, Some(&nonce))
            .and_then(|()| self.run(data))
            .and_then(|n| self.ctx.tag(tag).map(|()| n));
        sealed.ok() == Some(len)
    }

    /// Encrypt or decrypt `data` in place under the nonce just set, and
    /// finish (sealing: the tag is ready; opening: the tag set was
    /// compared). Returns the bytes processed.
    fn run(&mut self, data: &mut [u8]) -> Result<usize, openssl::error::ErrorStack> {
        let len = data.len();
        let n = match len {
            0 => 0,
            _ => self.ctx.cipher_update_inplace(data, len)?,
        };
        Ok(n + self.ctx.cipher_final(&mut [])?)
    }

    /// Open chunk `counter` (ciphertext and tag, all of `slot`) in place;
    /// returns the plaintext length (the plaintext is at the start, and
    /// is not to be used unless this returns `Ok`).
    fn open_slot(
        &mut self,
        counter: u64,
        last: bool,
        slot: &mut [u8],
    ) -> Result<usize, StreamError> {
        if slot.len() < TAG_LEN {
            return Err(StreamError::Chunk(counter));
        }
        let nonce = nonce_bytes(counter, last);
        let (data, tag) = slot.split_at_mut(slot.len() - TAG_LEN);
        let len = data.len();
        // The tag is compared (in constant time) by the final call: any
        // failure on the way is the chunk not authenticating.
        let opened = self
            .ctx
            .decrypt_init(None, None, Some(&nonce))
            .and_then(|()| self.ctx.set_tag(tag))
            .and_then(|()| self.run(data));
        // The whole tag was compared: OpenSSL compares as many bytes as
        // the context's tag length says.
        let whole_tag = self.ctx.tag_length() == TAG_LEN;
        match opened {
            Ok(n) if n == len && whole_tag => {}
            _ => {
                // Decrypted but not authentic: not left in the buffer.
                data.fill(0);
                return Err(StreamError::Chunk(counter));
            }
        }
        if len == 0 && counter > 0 {
            return Err(StreamError::EmptyChunk(counter));
        }
        Ok(len)
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
