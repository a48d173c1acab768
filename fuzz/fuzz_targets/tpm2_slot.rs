//! The tpm2 slot's checks on arbitrary bytes: the input is split into a
//! TPM2B_PUBLIC and a TPM2B_PRIVATE blob (first byte: where), which go
//! through everything done before a TPM is touched (sizes, base64, tss's
//! C unmarshalling, canonical re-marshalling, object type).
#![no_main]

use base64::Engine as _;
use coffer::slot::tpm2::Tpm2Params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (public, private) = rest.split_at(usize::from(split).min(rest.len()));
    let b64 = base64::engine::general_purpose::STANDARD;
    let params = Tpm2Params {
        public: b64.encode(public),
        private: b64.encode(private),
        pcr_bank: None,
        pcrs: Vec::new(),
        pin: false,
        pin_salt: None,
        pin_iterations: None,
        tcti_hint: None,
    };
    let _ = params.validate();
});
