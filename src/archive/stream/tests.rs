//! Round trips, tampering, truncation and the RustCrypto differential
//! check, through the public constructors.

use super::*;
use std::io::{Read, Write};

const CS: usize = 64;

fn seal(data: &[u8], key: &PayloadKey) -> Vec<u8> {
    let mut w = StreamWriter::new(key.clone(), CS, Vec::new()).unwrap();
    // Write in odd pieces to exercise chunk boundaries.
    for piece in data.chunks(7) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn open(ct: Vec<u8>, key: &PayloadKey) -> io::Result<Vec<u8>> {
    let mut r = StreamReader::new(key.clone(), CS, io::Cursor::new(ct)).unwrap();
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

/// Every byte of every chunk's tag counts: OpenSSL compares as many tag
/// bytes as it was given, so a tag it was not handed would compare none.
#[test]
fn every_tag_byte_of_every_chunk_is_checked() {
    let data: Vec<u8> = (0..3 * CS + 5).map(|i| i as u8).collect();
    let ct = seal(&data, &key());
    let slot = CS + TAG_LEN;
    for chunk in 0..4 {
        let tag_end = ((chunk + 1) * slot).min(ct.len());
        for byte in tag_end - TAG_LEN..tag_end {
            let mut bad = ct.clone();
            bad[byte] ^= 0x80;
            assert_eq!(
                err_of(open(bad, &key())),
                StreamError::Chunk(chunk as u64),
                "tag byte {byte} of chunk {chunk}"
            );
        }
        let mut zeroed = ct.clone();
        zeroed[tag_end - TAG_LEN..tag_end].fill(0);
        assert_eq!(
            err_of(open(zeroed, &key())),
            StreamError::Chunk(chunk as u64)
        );
    }
}

/// Differential check: OpenSSL and the RustCrypto crate agree byte for
/// byte on every chunk (same key, nonce, plaintext), the empty lone chunk
/// included.
#[test]
fn openssl_and_rustcrypto_produce_identical_chunks() {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let raw = [9u8; 32];
    let rc = chacha20poly1305::ChaCha20Poly1305::new(&raw.into());
    let empty = rc.encrypt(&nonce_bytes(0, true).into(), &[][..]).unwrap();
    assert_eq!(seal(&[], &PayloadKey::new(&raw)), empty);

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
