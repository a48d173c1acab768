//! vpiv-card: a virtual PIV card for pcscd's `vpcd` reader (vsmartcard).
//!
//! Owns: one process = one card. The PIV application is Nitrokey's
//! `piv-authenticator` running on trussed's software platform with RAM
//! storage, so every start is a factory-fresh card (PIN 123456, PUK 12345678,
//! the default management key) and all state dies with the process, unless
//! `--state DIR` keeps its flash in files, so that a stopped card (a YubiKey
//! unplugged) comes back with its keys. The
//! socket side (vpcd framing: big-endian u16 length + payload, 1-byte control
//! codes for power off/on, reset and ATR) is the published `vpicc` crate.
//!
//! Between the two sits [`YubikeyCompat`], a deliberately thin layer with only
//! what the `yubikey` crate (and `yubico-piv-tool`) need from a card that is not
//! a YubiKey; each rule is documented where it is applied. It never interprets
//! PIV semantics beyond those rules: PIN checks, keys and ECDH are all
//! piv-authenticator's.
//!
//! Must never: write anywhere but its `--state` directory, listen on anything but the loopback vpcd
//! connection it opens itself, or be used as a real security device (trussed's
//! virtual platform is for testing only; its RNG and storage are not hardened).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use heapless::Vec as HVec;
use piv_authenticator::{Authenticator, Options};
use trussed::Platform;
use trussed::backend::BackendId;
use trussed::serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl};
use trussed::service::ServiceResources;
use trussed::types::{Context, CoreContext};
use trussed::virt::{self, StorageConfig, StoreConfig};
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::Error;
use trussed_core::api::{Reply, Request, reply, request};
use trussed_core::types::Location;
use trussed_hpke::HpkeExtension;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

const USAGE: &str = "usage: vpiv-card [--port N] [--serial N] [--state DIR]
  Connects to vpcd on 127.0.0.1:N (default 35963) and acts as a PIV card until
  vpcd closes the connection. --serial sets what GET SERIAL reports. --state
  keeps the card's flash in DIR (internal.bin, external.bin) so a restarted
  card still has its keys and PIN; without it the card lives in RAM.";

/// The ATR we answer vpcd's GET ATR with: vpicc's default, which announces
/// T=1 only (TD1 = 0x81, TD2 = 0x01), as PIV tokens on USB do.
const ATR: &[u8] = vpicc::DEFAULT_ATR;

/// Version reported to GET VERSION (INS 0xFD). piv-authenticator says 6.6.6,
/// which the `yubikey` crate refuses; 5.7.0 is a current YubiKey 5 firmware,
/// whose PIV application matches what we exercise (P-256, retired slots).
const REPORTED_VERSION: [u8; 3] = [5, 7, 0];

/// The PIV application identifier, full length (NIST SP 800-73-4, 2.2).
const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

/// Largest response data sent in one short-APDU response; the rest is
/// fetched with GET RESPONSE after `61 XX`, as a real card does.
const MAX_SHORT_RESPONSE: usize = 256;

fn main() -> ExitCode {
    let mut port: u16 = vpicc::DEFAULT_PORT;
    let mut serial: u32 = 5_437_251; // piv-authenticator's own made-up serial
    let mut state: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => match args.next().and_then(|v| v.parse().ok()) {
                Some(p) => port = p,
                None => return usage(),
            },
            "--serial" => match args.next().and_then(|v| v.parse().ok()) {
                Some(s) => serial = s,
                None => return usage(),
            },
            "--state" => match args.next() {
                Some(d) => state = Some(d.into()),
                None => return usage(),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }

    // pcscd may still be starting: retry the connection for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let connection = loop {
        match vpicc::connect_socket(format!("127.0.0.1:{port}")) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                eprintln!(
                    "vpiv-card: cannot connect to vpcd on 127.0.0.1:{port}: {e} (is pcscd with vsmartcard-vpcd running?)"
                );
                return ExitCode::FAILURE;
            }
        }
    };
    eprintln!("vpiv-card: connected to vpcd on 127.0.0.1:{port}, serial {serial}");

    let store = match &state {
        None => StoreConfig::ram(),
        Some(dir) => StoreConfig {
            internal: StorageConfig::filesystem(dir.join("internal.bin")),
            external: StorageConfig::filesystem(dir.join("external.bin")),
            volatile: StorageConfig::ram(),
        },
    };
    let result = virt::with_platform(store, |platform| {
        platform.run_client_with_backends(
            "piv",
            Dispatcher::default(),
            &[
                BackendId::Custom(BackendIds::Auth),
                BackendId::Custom(BackendIds::Staging),
                BackendId::Core,
            ],
            |client| {
                let piv = Authenticator::new(client, Options::default());
                let mut card = YubikeyCompat::new(piv, serial);
                connection.run(&mut card)
            },
        )
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpiv-card: vpcd connection ended: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

// ---------------------------------------------------------------------------
// The compatibility layer.

/// piv-authenticator plus the few rules the `yubikey` crate needs.
struct YubikeyCompat<T: piv_authenticator::Client> {
    piv: Authenticator<T>,
    serial: u32,
    /// Data of a command chain (CLA bit 0x10) received so far.
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// Response data not yet fetched with GET RESPONSE.
    pending: Vec<u8>,
}

impl<T: piv_authenticator::Client> YubikeyCompat<T> {
    fn new(piv: Authenticator<T>, serial: u32) -> Self {
        Self {
            piv,
            serial,
            chain: None,
            pending: Vec::new(),
        }
    }

    /// Power-on and reset end the PIV security status, as on a real card:
    /// piv-authenticator keeps "PIN verified" in RAM until told otherwise,
    /// so we send it VERIFY with P1 = 0xFF (SP 800-73-4 3.2.1: reset the
    /// security status of the key reference) for the PIN.
    fn clear_security_status(&mut self) {
        self.chain = None;
        self.pending.clear();
        let select = apdu(0x00, 0xA4, 0x04, 0x00, &PIV_AID);
        let _ = self.call_piv(&select);
        let _ = self.call_piv(&[0x00, 0x20, 0xFF, 0x80]);
    }

    /// One APDU to piv-authenticator, the whole response data + status word.
    fn call_piv(&mut self, raw: &[u8]) -> Vec<u8> {
        let Ok(command) = iso7816::command::CommandView::try_from(raw) else {
            return sw(0x6700);
        };
        let mut buf: HVec<u8, 8192> = HVec::new();
        match self.piv.respond(command, buf.as_mut_view()) {
            Ok(()) => {
                let mut out = buf.to_vec();
                out.extend_from_slice(&[0x90, 0x00]);
                out
            }
            Err(status) => sw(u16::from(status)),
        }
    }

    fn handle(&mut self, raw: &[u8]) -> Vec<u8> {
        if raw.len() < 4 {
            return sw(0x6700);
        }
        let (cla, ins, p1, p2) = (raw[0], raw[1], raw[2], raw[3]);
        let Some(data) = command_data(raw) else {
            return sw(0x6700);
        };

        // GET RESPONSE: the next part of a long answer.
        if ins == 0xC0 {
            return self.next_part();
        }
        self.pending.clear();

        // Command chaining (ISO 7816-4 5.1.1): the `yubikey` crate and
        // yubico-piv-tool split long commands (certificates, key import) in
        // 255-byte parts with CLA 0x10; piv-authenticator wants one command.
        if cla & 0x10 != 0 {
            let chain = self.chain.get_or_insert_with(|| (ins, p1, p2, Vec::new()));
            if (chain.0, chain.1, chain.2) != (ins, p1, p2) {
                self.chain = None;
                return sw(0x6883); // last command of the chain expected
            }
            chain.3.extend_from_slice(data);
            return sw(0x9000);
        }
        let full_data: Vec<u8> = match self.chain.take() {
            Some(chain) if (chain.0, chain.1, chain.2) == (ins, p1, p2) => {
                let mut d = chain.3;
                d.extend_from_slice(data);
                d
            }
            _ => data.to_vec(),
        };

        let response = match (ins, p1) {
            // SELECT by AID: real PIV cards accept the AID right-truncated to
            // its 5-byte RID, which is what the `yubikey` crate sends;
            // piv-authenticator accepts no fewer than 9 bytes.
            (0xA4, 0x04) if PIV_AID.starts_with(&full_data) && full_data.len() >= 5 => {
                self.call_piv(&apdu(0x00, 0xA4, 0x04, p2, &PIV_AID))
            }
            // GET VERSION (Yubico extension): see REPORTED_VERSION.
            (0xFD, _) => {
                let mut r = REPORTED_VERSION.to_vec();
                r.extend_from_slice(&[0x90, 0x00]);
                r
            }
            // GET SERIAL (Yubico extension): the serial chosen at start, so
            // tests can tell two virtual cards apart and check --serial.
            (0xF8, _) => {
                let mut r = self.serial.to_be_bytes().to_vec();
                r.extend_from_slice(&[0x90, 0x00]);
                r
            }
            // Everything else is piv-authenticator's. We always return the
            // whole answer, whether or not the command carried Le (the
            // `yubikey` crate never sends Le and expects data back).
            _ => self.call_piv(&apdu(cla & !0x10, ins, p1, p2, &full_data)),
        };
        self.split_long(response)
    }

    /// Answers longer than a short APDU allows go out as `61 XX` + GET RESPONSE.
    fn split_long(&mut self, mut response: Vec<u8>) -> Vec<u8> {
        let status = response.split_off(response.len() - 2);
        if status != [0x90, 0x00] || response.len() <= MAX_SHORT_RESPONSE {
            response.extend_from_slice(&status);
            return response;
        }
        self.pending = response.split_off(MAX_SHORT_RESPONSE);
        let left = self.pending.len().min(0xFF) as u8;
        response.extend_from_slice(&[0x61, if self.pending.len() > 0xFF { 0 } else { left }]);
        response
    }

    fn next_part(&mut self) -> Vec<u8> {
        if self.pending.is_empty() {
            return sw(0x6985); // conditions of use not satisfied
        }
        let rest = std::mem::take(&mut self.pending);
        let mut with_status = rest;
        with_status.extend_from_slice(&[0x90, 0x00]);
        self.split_long(with_status)
    }
}

impl<T: piv_authenticator::Client> vpicc::VSmartCard for YubikeyCompat<T> {
    fn atr(&self) -> &[u8] {
        ATR
    }
    fn power_on(&mut self) {
        self.clear_security_status();
    }
    fn power_off(&mut self) {
        self.clear_security_status();
    }
    fn reset(&mut self) {
        self.clear_security_status();
    }
    fn execute(&mut self, msg: &[u8]) -> Vec<u8> {
        self.handle(msg)
    }
}

fn sw(status: u16) -> Vec<u8> {
    status.to_be_bytes().to_vec()
}

/// A short or extended command APDU without Le.
fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![cla, ins, p1, p2];
    if data.is_empty() {
        // case 1
    } else if data.len() <= 255 {
        v.push(data.len() as u8);
        v.extend_from_slice(data);
    } else {
        v.push(0);
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
    }
    v
}

/// The data field of a command APDU (cases 1-4, short or extended).
fn command_data(raw: &[u8]) -> Option<&[u8]> {
    let body = &raw[4..];
    match body.len() {
        0 | 1 => Some(&[]),
        _ if body[0] != 0 => {
            let lc = body[0] as usize;
            body.get(1..1 + lc)
        }
        3 => Some(&[]), // extended Le only
        _ => {
            let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
            body.get(3..3 + lc)
        }
    }
}

// ---------------------------------------------------------------------------
// trussed dispatch: the core backend, trussed-staging (chunked, HPKE,
// wrap-key-to-file) and trussed-auth (PIN retry counters), all that
// piv-authenticator's `Client` bound asks for.

#[derive(Debug)]
enum BackendIds {
    Staging,
    Auth,
}

#[derive(Debug)]
enum ExtensionIds {
    Chunked,
    WrapKeyToFile,
    Hpke,
    Auth,
}

impl From<ExtensionIds> for u8 {
    fn from(id: ExtensionIds) -> u8 {
        match id {
            ExtensionIds::Chunked => 0,
            ExtensionIds::WrapKeyToFile => 1,
            ExtensionIds::Hpke => 2,
            ExtensionIds::Auth => 3,
        }
    }
}

impl TryFrom<u8> for ExtensionIds {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self, Error> {
        Ok(match id {
            0 => Self::Chunked,
            1 => Self::WrapKeyToFile,
            2 => Self::Hpke,
            3 => Self::Auth,
            _ => return Err(Error::FunctionNotSupported),
        })
    }
}

impl ExtensionId<ChunkedExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Chunked;
}
impl ExtensionId<WrapKeyToFileExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::WrapKeyToFile;
}
impl ExtensionId<HpkeExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Hpke;
}
impl ExtensionId<AuthExtension> for Dispatcher {
    type Id = ExtensionIds;
    const ID: ExtensionIds = ExtensionIds::Auth;
}

struct Dispatcher {
    staging: StagingBackend,
    auth: AuthBackend,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self {
            staging: StagingBackend::new(),
            auth: AuthBackend::new(Location::Internal, FilesystemLayout::V1),
        }
    }
}

#[derive(Default)]
struct DispatchContext {
    staging: StagingContext,
    auth: AuthContext,
}

impl ExtensionDispatch for Dispatcher {
    type BackendId = BackendIds;
    type Context = DispatchContext;
    type ExtensionId = ExtensionIds;

    fn core_request<P: Platform>(
        &mut self,
        _backend: &BackendIds,
        _ctx: &mut Context<DispatchContext>,
        _request: &Request,
        _resources: &mut ServiceResources<P>,
    ) -> Result<Reply, Error> {
        // Neither backend overrides core requests: let the core answer.
        Err(Error::RequestNotAvailable)
    }

    fn extension_request<P: Platform>(
        &mut self,
        backend: &BackendIds,
        extension: &ExtensionIds,
        ctx: &mut Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core: &mut CoreContext = &mut ctx.core;
        match (backend, extension) {
            (BackendIds::Staging, ExtensionIds::Chunked) => {
                ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::WrapKeyToFile) => {
                ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Staging, ExtensionIds::Hpke) => {
                ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (BackendIds::Auth, ExtensionIds::Auth) => {
                ExtensionImpl::<AuthExtension>::extension_request_serialized(
                    &mut self.auth,
                    core,
                    &mut ctx.backends.auth,
                    request,
                    resources,
                )
            }
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_data_reads_every_apdu_case() {
        assert_eq!(command_data(&[0, 0xA4, 4, 0]), Some(&[][..])); // case 1
        assert_eq!(command_data(&[0, 0xCA, 0, 0, 0x10]), Some(&[][..])); // case 2
        assert_eq!(
            command_data(&[0, 0x20, 0, 0x80, 2, 1, 2]),
            Some(&[1, 2][..])
        ); // case 3
        assert_eq!(
            command_data(&[0, 0x87, 0x11, 0x82, 1, 9, 0]),
            Some(&[9][..])
        ); // case 4
        assert_eq!(command_data(&[0, 0xCB, 0, 0, 0, 1, 0]), Some(&[][..])); // extended Le
        assert_eq!(
            command_data(&[0, 0xDB, 0, 0, 0, 0, 2, 7, 8]),
            Some(&[7, 8][..])
        ); // extended Lc
        assert_eq!(command_data(&[0, 0x20, 0, 0x80, 5, 1]), None); // short of data
    }

    #[test]
    fn apdus_are_built_short_or_extended() {
        assert_eq!(apdu(0, 0xA4, 4, 0, &[]), vec![0, 0xA4, 4, 0]);
        assert_eq!(apdu(0, 0xA4, 4, 0, &[1, 2]), vec![0, 0xA4, 4, 0, 2, 1, 2]);
        let long = vec![0x55; 300];
        let built = apdu(0, 0xDB, 0x3F, 0xFF, &long);
        assert_eq!(&built[4..7], &[0, 0x01, 0x2C]);
        assert_eq!(command_data(&built), Some(&long[..]));
    }
}
