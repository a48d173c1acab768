//! The archive header parser on arbitrary bytes: it must return an error,
//! never panic, hang or allocate beyond its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coffer::archive::Header::read(&mut &data[..]);
});
