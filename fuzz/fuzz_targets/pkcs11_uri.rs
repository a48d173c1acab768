//! `Pkcs11Uri::parse` on arbitrary text: archive headers carry slot URIs,
//! so this parser reads attacker-chosen input. It must refuse or parse,
//! never panic; what parses must write back stably, without a PIN.
#![no_main]

use coffer::pkcs11_uri::Pkcs11Uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(u) = Pkcs11Uri::parse(s) {
        let stored = u.to_stored();
        let back = Pkcs11Uri::parse(&stored).expect("the stored form parses");
        assert_eq!(back.to_stored(), stored);
        assert!(back.attr("pin-value").is_none());
        let bare = u.without_pin();
        assert!(bare.attr("pin-value").is_none() && bare.attr("pin-source").is_none());
        let _ = (u.describe_token(), u.describe_object());
    }
});
