//! The keyring parser on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = coffer::keyring::Keyring::parse(data, std::path::Path::new("fuzz"));
});
