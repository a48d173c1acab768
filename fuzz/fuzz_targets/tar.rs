//! The tar layer on arbitrary bytes (as a buggy or hostile writer with the
//! key could seal them): validation and unpacking into a temp folder must
//! return an error or succeed, never panic, and unpack must never write
//! outside its folder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let valid = coffer::archive::unpack::validate(data).is_ok();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    std::fs::create_dir(&target).unwrap();
    let mut notices = Vec::new();
    let unpacked =
        coffer::archive::unpack::unpack(data, &target, Default::default(), &mut notices).is_ok();
    // What verify accepts, open accepts (devices aside: the fuzzer runs as
    // whoever runs it).
    if valid && !unpacked {
        assert!(rustix::process::geteuid().as_raw() != 0);
    }
    // Nothing beside the target folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
});
