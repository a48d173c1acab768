//! The virtual PIV card through the real pcscd, driven by third-party tools
//! (yubico-piv-tool, opensc-tool): what the YubiKey slot's tests rely on.

use coffer_hsm_sim::VirtualCard;
use std::process::Command;

#[test]
fn status_change_pin_and_keys_survive_removal() {
    let mut card = VirtualCard::start_with_serial(424242);
    let (ok, status) = card.piv_tool(&["-a", "status"]);
    assert!(ok, "{status}");
    assert!(status.contains("Version:\t5."), "{status}");
    assert!(status.contains("Serial Number:\t424242"), "{status}");
    assert!(status.contains("PIN tries left:\t3"), "{status}");

    let (ok, out) = card.piv_tool(&["-a", "change-pin", "-P", "123456", "-N", "271828"]);
    assert!(ok, "{out}");
    let (ok, out) = card.piv_tool(&["-a", "generate", "-s", "82", "-A", "ECCP256"]);
    assert!(ok, "{out}");
    assert!(out.contains("BEGIN PUBLIC KEY"), "{out}");

    // Unplug and plug back: the PIN and the key are still there, the PIN
    // verification is not.
    card.remove();
    card.insert();
    let (ok, out) = card.piv_tool(&["-a", "verify-pin", "-P", "271828"]);
    assert!(ok, "{out}");
    let (ok, out) = card.piv_tool(&["-a", "verify-pin", "-P", "000000"]);
    assert!(!ok, "{out}");
    let (ok, status) = card.piv_tool(&["-a", "status"]);
    assert!(ok && status.contains("PIN tries left:\t2"), "{status}");
}

#[test]
fn opensc_sees_a_piv_card() {
    let card = VirtualCard::start();
    let out = Command::new("opensc-tool")
        .args(["-r", card.reader(), "-n"])
        .output()
        .expect("opensc-tool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Personal Identity Verification"),
        "{text}"
    );
}
