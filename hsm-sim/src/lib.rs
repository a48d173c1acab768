//! Test fixtures that start real software devices (swtpm, SoftHSM2, a
//! virtual PIV card behind pcscd, a virtual FIDO2 key, an S3 server, an
//! Azure Blob Storage emulator) for coffer's integration tests.
//!
//! Each fixture owns its process and its state directory and tears both down
//! on `Drop`. When a simulator is missing the fixture panics with the command
//! that installs it: a test that needs a device never silently skips.
#![forbid(unsafe_code)]

pub mod swtpm;
pub use swtpm::SwTpm;
pub mod azure;
pub mod fault_proxy;
pub mod fido2;
pub mod pcsc;
pub mod s3;
pub mod softhsm;
pub use azure::AzureServer;
pub use fido2::VirtualKey;
pub use pcsc::VirtualCard;
pub use s3::S3Server;

/// One of this crate's simulator binaries, built once per test process
/// (`cargo build -p coffer-hsm-sim --features FEATURE --bin BIN`), or the
/// one `$OVERRIDE` names. Its path is beside the test's own target folder.
pub(crate) fn built_binary(
    once: &std::sync::Once,
    overrides: &str,
    feature: &str,
    bin: &str,
) -> std::path::PathBuf {
    use std::path::Path;
    if let Some(p) = std::env::var_os(overrides) {
        return p.into();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    once.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "coffer-hsm-sim",
                "--features",
                feature,
                "--bin",
                bin,
            ])
            .current_dir(manifest)
            .status()
            .unwrap_or_else(|e| panic!("run cargo build for {bin}: {e}"));
        assert!(status.success(), "building {bin} failed");
    });
    // target/<profile>/deps/<test exe> → target/debug/<bin>
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join("../target"));
    target.join("debug").join(bin)
}
