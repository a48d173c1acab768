//! Batches of a few chunks, so that short inputs cross many batch
//! boundaries (the public constructors put up to 64 chunks in one).

use super::*;
use std::io::{Read, Write};

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

/// The reference: chunk by chunk, each sealed by the RustCrypto crate.
fn reference(data: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let rc = chacha20poly1305::ChaCha20Poly1305::new(&[42; 32].into());
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(CS).collect()
    };
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let nonce = nonce_bytes(i as u64, i + 1 == pieces.len());
        out.extend(rc.encrypt(&nonce.into(), *p).unwrap());
    }
    out
}

fn open(ct: &[u8], step: usize) -> io::Result<Vec<u8>> {
    let input = io::Cursor::new(ct.to_vec());
    let mut r = StreamReader::with_batch(key(), CS, PER_BATCH, input).unwrap();
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
            let mut w = StreamWriter::with_batch(key(), CS, PER_BATCH, Vec::new()).unwrap();
            assert_eq!(w.read_from(&mut Trickle(&data, step)).unwrap(), len as u64);
            assert_eq!(
                w.finish().unwrap(),
                expected,
                "read_from len {len} step {step}"
            );
            let mut w = StreamWriter::with_batch(key(), CS, PER_BATCH, Vec::new()).unwrap();
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
    let mut r = StreamReader::with_batch(key(), CS, PER_BATCH, io::Cursor::new(ct)).unwrap();
    let mut out = Vec::new();
    let e = r.copy_to(&mut out, &mut |_| {}).unwrap_err();
    assert_eq!(StreamError::find(&e), Some(&StreamError::Chunk(4)));
    assert_eq!(out, &data[..4 * CS]);
}

/// The writing side of sealing never reports success for a stream with a
/// batch missing or failed: a batch whose worker died leaves the ones
/// after it unwritten, and a batch the cipher failed on stops the writer
/// before anything from it is written.
#[test]
fn a_lost_or_failed_batch_is_an_error_not_a_short_archive() {
    let (buffers, sink) = batch::buffer_pool(4, 2 * (CS + TAG_LEN));
    let batch = |seq: u64, failed: bool| {
        let mut b = buffers.get().unwrap();
        b.seq = seq;
        b.len = 3;
        b.failed = failed;
        b
    };
    // Batch 0 never arrives: batch 1 is not written and the end is an error.
    let (tx, rx) = crossbeam_channel::bounded(4);
    tx.send(batch(1, false)).unwrap();
    drop(tx);
    let e = writer::write_in_order(rx, Vec::new(), &sink).unwrap_err();
    assert!(e.to_string().contains("lost"), "{e}");
    // Batch 1 failed: batch 0 is written, nothing after it, and an error.
    let (tx, rx) = crossbeam_channel::bounded(4);
    tx.send(batch(0, false)).unwrap();
    tx.send(batch(1, true)).unwrap();
    tx.send(batch(2, false)).unwrap();
    drop(tx);
    let mut out = Vec::new();
    let e = writer::write_in_order(rx, &mut out, &sink).unwrap_err();
    assert!(e.to_string().contains("failed to seal"), "{e}");
    assert_eq!(out.len(), 3);
}

/// The empty lone chunk (the only one of an empty stream, sealed and
/// opened without an update call) is checked like any other: every bit
/// flipped, or a zeroed tag, fails.
#[test]
fn the_empty_lone_chunk_is_authenticated() {
    let ct = reference(&[]);
    assert_eq!(ct.len(), TAG_LEN);
    assert_eq!(open(&ct, 0).unwrap(), b"");
    for bit in 0..TAG_LEN * 8 {
        let mut bad = ct.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let e = open(&bad, 0).unwrap_err();
        assert_eq!(
            StreamError::find(&e),
            Some(&StreamError::Chunk(0)),
            "bit {bit}"
        );
    }
    let e = open(&[0; TAG_LEN], 0).unwrap_err();
    assert_eq!(StreamError::find(&e), Some(&StreamError::Chunk(0)));
}
