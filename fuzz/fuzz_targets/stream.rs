//! The STREAM reader on arbitrary ciphertext under a fixed key: it must
//! fail cleanly (a forgery is astronomically unlikely), never panic or
//! release unauthenticated bytes.
#![no_main]

use coffer::archive::stream::{PayloadKey, StreamReader};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let key = PayloadKey::new(&[7; 32]);
    let mut r = StreamReader::new(key, 4096, std::io::Cursor::new(data.to_vec())).unwrap();
    let mut out = Vec::new();
    assert!(r.read_to_end(&mut out).is_err());
});
