//! fido2-key: a virtual FIDO2 security key for coffer's tests.
//!
//! Owns: one process = one key. The authenticator is trussed-dev's (Nitrokey,
//! SoloKeys) `fido-authenticator`, an independent CTAP 2.1 implementation,
//! running on trussed's software platform: PIN, PIN/UV auth protocols 1 and
//! 2, hmac-secret and credentials are all its code. This file adds only the
//! USB side a real key has in hardware: CTAPHID framing (64-byte packets,
//! channels, KEEPALIVE while it waits for a touch), carried over a Unix
//! stream socket instead of a hidraw node, since a test machine has neither
//! `/dev/uhid` nor USB/IP. A connection to the socket is the host opening
//! the device; `unplug` removes the socket as a key pulled out removes its
//! node.
//!
//! Controls (lines written to `--control FIFO`, which `hsm-sim/fido2.sh`
//! and the test fixture write to):
//!
//! - `presence auto|require|deny`: touch confirmed at once (the default);
//!   waited for, with KEEPALIVE UPNEEDED packets, until a `touch` line or
//!   the timeout (then CTAP2_ERR_USER_ACTION_TIMEOUT); refused
//!   (CTAP2_ERR_OPERATION_DENIED).
//! - `touch`: one touch, for `require`.
//! - `unplug`, `plug`: remove the device (closing an open connection) and
//!   bring it back, with its state.
//!
//! `--pin PIN` sets the PIN at the first start (a factory-fresh key has
//! none), through the key's own ClientPIN setPIN, as a host tool such as
//! `fido2-token -S` would: that little host code is the simulator's setup,
//! not the client under test. `--state FILE` keeps the key's flash (PIN,
//! retry counter, master keys) so that a restarted key is the same key.
//!
//! Must never: be used as a real security key (trussed's virtual platform
//! is for testing: its RNG is seeded, its storage a plain file), or listen
//! anywhere but the socket path it is given.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ciborium::Value;
use ctaphid_app::{App, Command};
use fido_authenticator::{Authenticator, Config, Conforming, TrussedRequirements, UserPresence};
use heapless_bytes::Bytes;
use trussed::backend::BackendId;
use trussed::platform::{Platform as _, UserInterface};
use trussed::virt::{self, StorageConfig, StoreConfig};
use trussed_core::types::consent::Level;
use trussed_staging::virt::{BackendIds, Dispatcher};

const USAGE: &str = "usage: fido2-key --socket PATH [--state FILE] [--control FIFO]
                 [--presence auto|require|deny] [--pin PIN] [--up-timeout-ms N]
  Serves a virtual FIDO2 key as CTAPHID packets on the Unix socket PATH.";

/// Largest CTAPHID message: 64 - 7 + 128 × (64 - 5).
const MAX_MSG: usize = 7609;
const PACKET: usize = 64;

const AUTO: u8 = 0;
const REQUIRE: u8 = 1;
const DENY: u8 = 2;

/// How touch is answered (`presence` control).
static PRESENCE: AtomicU8 = AtomicU8::new(AUTO);
/// Touches given (`touch` control) and not yet used.
static TOUCHES: AtomicU32 = AtomicU32::new(0);
/// Whether the key is plugged in.
static PLUGGED: AtomicBool = AtomicBool::new(true);
/// The connection and channel being served, for KEEPALIVE packets sent
/// while the authenticator waits for a touch (from trussed's thread).
static LINK: Mutex<Option<(UnixStream, u32)>> = Mutex::new(None);
/// The open connection, closed by `unplug`.
static CONNECTION: Mutex<Option<UnixStream>> = Mutex::new(None);

const CTAPHID_PING: u8 = 0x01;
const CTAPHID_MSG: u8 = 0x03;
const CTAPHID_INIT: u8 = 0x06;
const CTAPHID_WINK: u8 = 0x08;
const CTAPHID_CBOR: u8 = 0x10;
const CTAPHID_CANCEL: u8 = 0x11;
const CTAPHID_KEEPALIVE: u8 = 0x3b;
const CTAPHID_ERROR: u8 = 0x3f;
const ERR_INVALID_CMD: u8 = 0x01;
const ERR_INVALID_LEN: u8 = 0x03;
const ERR_INVALID_SEQ: u8 = 0x04;
const ERR_INVALID_CHANNEL: u8 = 0x0b;
const KEEPALIVE_UPNEEDED: u8 = 0x02;
const BROADCAST: u32 = 0xffff_ffff;

/// The authenticator's presence check: `deny` refuses here; `auto` and
/// `require` go through trussed's own wait ([`Ui`]).
#[derive(Clone, Copy)]
struct Presence;

impl UserPresence for Presence {
    fn user_present<T: TrussedRequirements>(
        self,
        trussed: &mut T,
        timeout_milliseconds: u32,
    ) -> fido_authenticator::Result<()> {
        if PRESENCE.load(Ordering::SeqCst) == DENY {
            return Err(fido_authenticator::Error::OperationDenied);
        }
        Conforming {}.user_present(trussed, timeout_milliseconds)
    }
}

/// trussed's user interface: polled while the authenticator waits.
struct Ui {
    last_keepalive: Option<Instant>,
}

impl UserInterface for Ui {
    fn check_user_presence(&mut self) -> Level {
        if PRESENCE.load(Ordering::SeqCst) == AUTO && PLUGGED.load(Ordering::SeqCst) {
            return Level::Strong;
        }
        if PLUGGED.load(Ordering::SeqCst)
            && TOUCHES
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Level::Strong;
        }
        if self
            .last_keepalive
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            self.last_keepalive = Some(Instant::now());
            if let Some((stream, cid)) = LINK.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = write_message(stream, *cid, CTAPHID_KEEPALIVE, &[KEEPALIVE_UPNEEDED]);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        Level::None
    }
}

struct Args {
    socket: PathBuf,
    state: Option<PathBuf>,
    control: Option<PathBuf>,
    pin: Option<String>,
    up_timeout_ms: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut socket = None;
    let mut state = None;
    let mut control = None;
    let mut pin = None;
    let mut up_timeout_ms = 10_000;
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--state" => state = Some(PathBuf::from(value()?)),
            "--control" => control = Some(PathBuf::from(value()?)),
            "--pin" => pin = Some(value()?),
            "--presence" => set_presence(&value()?)?,
            "--up-timeout-ms" => {
                up_timeout_ms = value()?.parse().map_err(|_| "--up-timeout-ms: a number")?
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        state,
        control,
        pin,
        up_timeout_ms,
    })
}

fn set_presence(mode: &str) -> Result<(), String> {
    let m = match mode {
        "auto" => AUTO,
        "require" => REQUIRE,
        "deny" => DENY,
        _ => return Err(format!("presence: auto, require or deny, not {mode}")),
    };
    PRESENCE.store(m, Ordering::SeqCst);
    Ok(())
}

/// Apply one control line.
fn control(line: &str) {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("touch"), None) => {
            TOUCHES.fetch_add(1, Ordering::SeqCst);
        }
        (Some("presence"), Some(mode)) => {
            if let Err(e) = set_presence(mode) {
                eprintln!("fido2-key: {e}");
            }
        }
        (Some("unplug"), None) => {
            PLUGGED.store(false, Ordering::SeqCst);
            if let Some(stream) = CONNECTION.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        (Some("plug"), None) => PLUGGED.store(true, Ordering::SeqCst),
        _ => eprintln!("fido2-key: unknown control {line:?}"),
    }
}

/// Read control lines from the FIFO, reopening it after each writer.
fn read_controls(fifo: PathBuf) {
    loop {
        let Ok(f) = std::fs::File::open(&fifo) else {
            return;
        };
        for line in io::BufReader::new(f).lines() {
            match line {
                Ok(l) => control(&l),
                Err(_) => break,
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fido2-key: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(fifo) = args.control.clone() {
        std::thread::spawn(move || read_controls(fifo));
    }
    let store = StoreConfig {
        internal: match &args.state {
            Some(f) => StorageConfig::filesystem(f.clone()),
            None => StorageConfig::ram(),
        },
        external: StorageConfig::ram(),
        volatile: StorageConfig::ram(),
    };
    virt::with_platform(store, |mut platform| {
        platform.user_interface().set_inner(Box::new(Ui {
            last_keepalive: None,
        }));
        // The virtual platform's RNG starts from a fixed seed: skip a
        // random number of draws, so that two keys differ.
        use rand_core::RngCore as _;
        for _ in 0..rand_core::OsRng.next_u32() % 4096 {
            platform.rng().next_u32();
        }
        platform.run_client_with_backends(
            "fido",
            Dispatcher::default(),
            &[
                BackendId::Custom(BackendIds::StagingBackend),
                BackendId::Core,
            ],
            |client| {
                let mut config = Config::new(MAX_MSG);
                config.fido2_up_timeout = Some(args.up_timeout_ms);
                let mut authenticator = Authenticator::new(client, Presence, config);
                if let Some(pin) = &args.pin
                    && let Err(e) = set_pin_once(&mut authenticator, pin)
                {
                    eprintln!("fido2-key: setting the PIN failed: {e}");
                    std::process::exit(1);
                }
                run(&mut authenticator, &args.socket);
            },
        )
    });
    std::process::ExitCode::SUCCESS
}

/// Serve connections while plugged; remove the socket while unplugged.
fn run(app: &mut dyn App<'static>, socket: &std::path::Path) {
    loop {
        while !PLUGGED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Bound (and listening) beside it, then moved into place: the
        // socket appears only once it takes connections, so a host that
        // waits for it to exist is never refused.
        let fresh = socket.with_extension("new");
        let _ = std::fs::remove_file(&fresh);
        let listener = match UnixListener::bind(&fresh).and_then(|l| {
            std::fs::rename(&fresh, socket)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fido2-key: {}: {e}", socket.display());
                std::process::exit(1);
            }
        };
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        while PLUGGED.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    *CONNECTION.lock().unwrap_or_else(|p| p.into_inner()) = stream.try_clone().ok();
                    if !PLUGGED.load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Err(e) = serve(app, stream) {
                        eprintln!("fido2-key: connection: {e}");
                    }
                    *LINK.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    *CONNECTION.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("fido2-key: accept: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        drop(listener);
        let _ = std::fs::remove_file(socket);
    }
}

/// One CTAPHID message, as an initialization packet and its
/// continuations.
fn write_message(w: &mut impl Write, cid: u32, cmd: u8, data: &[u8]) -> io::Result<()> {
    let mut pkt = [0u8; PACKET];
    pkt[..4].copy_from_slice(&cid.to_be_bytes());
    pkt[4] = 0x80 | cmd;
    pkt[5..7].copy_from_slice(&(data.len() as u16).to_be_bytes());
    let n = data.len().min(PACKET - 7);
    pkt[7..7 + n].copy_from_slice(&data[..n]);
    w.write_all(&pkt)?;
    for (seq, chunk) in data[n..].chunks(PACKET - 5).enumerate() {
        let mut pkt = [0u8; PACKET];
        pkt[..4].copy_from_slice(&cid.to_be_bytes());
        pkt[4] = seq as u8;
        pkt[5..5 + chunk.len()].copy_from_slice(chunk);
        w.write_all(&pkt)?;
    }
    w.flush()
}

/// The authenticator's answer to one CTAPHID CBOR or MSG command.
fn call(app: &mut dyn App<'static>, cmd: u8, msg: &[u8]) -> Result<Vec<u8>, u8> {
    let command = Command::try_from(cmd).map_err(|_| ERR_INVALID_CMD)?;
    if !app.commands().contains(&command) {
        return Err(ERR_INVALID_CMD);
    }
    let mut response: Bytes<MAX_MSG> = Bytes::new();
    match app.call(command, msg, response.as_mut_view()) {
        Ok(()) => Ok(response.to_vec()),
        Err(ctaphid_app::Error::InvalidLength) => Err(ERR_INVALID_LEN),
        Err(_) => Err(ERR_INVALID_CMD),
    }
}

/// Serve one connection until the host closes it (or `unplug`). One
/// request at a time, as a key does; CANCEL is accepted and ignored (the
/// virtual platform cannot interrupt a wait).
fn serve(app: &mut dyn App<'static>, mut s: UnixStream) -> io::Result<()> {
    let mut next_cid: u32 = 0;
    let mut pkt = [0u8; PACKET];
    loop {
        match s.read_exact(&mut pkt) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let cid = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
        if pkt[4] & 0x80 == 0 {
            continue;
        }
        let cmd = pkt[4] & 0x7f;
        let len = u16::from_be_bytes([pkt[5], pkt[6]]) as usize;
        if len > MAX_MSG {
            write_message(&mut s, cid, CTAPHID_ERROR, &[ERR_INVALID_LEN])?;
            continue;
        }
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&pkt[7..7 + len.min(PACKET - 7)]);
        let mut seq = 0u8;
        let mut bad_seq = false;
        while msg.len() < len {
            s.read_exact(&mut pkt)?;
            if pkt[..4] != cid.to_be_bytes() || pkt[4] != seq {
                bad_seq = true;
                break;
            }
            let take = (len - msg.len()).min(PACKET - 5);
            msg.extend_from_slice(&pkt[5..5 + take]);
            seq = seq.wrapping_add(1);
        }
        if bad_seq {
            write_message(&mut s, cid, CTAPHID_ERROR, &[ERR_INVALID_SEQ])?;
            continue;
        }
        match cmd {
            CTAPHID_INIT => {
                if len != 8 {
                    write_message(&mut s, cid, CTAPHID_ERROR, &[ERR_INVALID_LEN])?;
                    continue;
                }
                let channel = if cid == BROADCAST {
                    next_cid += 1;
                    0x0100_0000 | next_cid
                } else {
                    cid
                };
                let mut resp = msg.clone();
                resp.extend_from_slice(&channel.to_be_bytes());
                // CTAPHID protocol 2, device version 0.1.0, capabilities
                // WINK | CBOR (and MSG: no NMSG flag).
                resp.extend_from_slice(&[2, 0, 1, 0, 0x01 | 0x04]);
                write_message(&mut s, cid, CTAPHID_INIT, &resp)?;
            }
            _ if cid == BROADCAST || cid == 0 => {
                write_message(&mut s, cid, CTAPHID_ERROR, &[ERR_INVALID_CHANNEL])?;
            }
            CTAPHID_PING => write_message(&mut s, cid, CTAPHID_PING, &msg)?,
            CTAPHID_WINK => write_message(&mut s, cid, CTAPHID_WINK, &[])?,
            CTAPHID_CANCEL => {}
            CTAPHID_CBOR | CTAPHID_MSG => {
                *LINK.lock().unwrap_or_else(|p| p.into_inner()) = Some((s.try_clone()?, cid));
                let answer = call(app, cmd, &msg);
                LINK.lock().unwrap_or_else(|p| p.into_inner()).take();
                if !PLUGGED.load(Ordering::SeqCst) {
                    return Ok(());
                }
                match answer {
                    Ok(resp) => write_message(&mut s, cid, cmd, &resp)?,
                    Err(e) => write_message(&mut s, cid, CTAPHID_ERROR, &[e])?,
                }
            }
            _ => write_message(&mut s, cid, CTAPHID_ERROR, &[ERR_INVALID_CMD])?,
        }
    }
}

/// Set the PIN through the authenticator's own ClientPIN setPIN (PIN/UV
/// auth protocol 1), unless it has one already (a `--state` key
/// restarted). The host side of it, in brief: ECDH with the key's
/// key-agreement key, SHA-256 of the shared x coordinate as the key,
/// AES-256-CBC (zero IV) of the PIN padded to 64 bytes, HMAC-SHA-256 of
/// that, truncated to 16 bytes, as its authentication.
fn set_pin_once(app: &mut dyn App<'static>, pin: &str) -> Result<(), String> {
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
    use hmac::Mac;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use sha2::Digest;

    let info = cbor(app, 0x04, None)?;
    let client_pin = map_get(&info, 4)
        .and_then(|o| o.as_map())
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("clientPin")))
        .and_then(|(_, v)| v.as_bool());
    if client_pin == Some(true) {
        return Ok(());
    }
    if pin.len() < 4 || pin.len() > 63 {
        return Err("a PIN is 4 to 63 bytes".into());
    }
    let agreement = cbor(app, 0x06, Some(int_map(vec![(1, 1.into()), (2, 2.into())])))?;
    let cose = map_get(&agreement, 1).ok_or("no key agreement key")?;
    let coord = |k| {
        map_get(cose, k)
            .and_then(|v| v.as_bytes())
            .filter(|b| b.len() == 32)
            .cloned()
            .ok_or("a malformed key agreement key")
    };
    let (x, y) = (coord(-2)?, coord(-3)?);
    let point = p256::EncodedPoint::from_affine_coordinates(
        x.as_slice().into(),
        y.as_slice().into(),
        false,
    );
    let peer = p256::PublicKey::from_sec1_bytes(point.as_bytes()).map_err(|e| e.to_string())?;
    let mine = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
    let shared = mine.diffie_hellman(&peer);
    let key: [u8; 32] = sha2::Sha256::digest(shared.raw_secret_bytes()).into();
    let mut padded = [0u8; 64];
    padded[..pin.len()].copy_from_slice(pin.as_bytes());
    let encrypted = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &[0u8; 16].into())
        .encrypt_padded_vec_mut::<NoPadding>(&padded);
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("any key length");
    mac.update(&encrypted);
    let auth = mac.finalize().into_bytes()[..16].to_vec();
    let public = mine.public_key().to_encoded_point(false);
    let platform_key = int_map(vec![
        (1, 2.into()),
        (3, (-25).into()),
        (-1, 1.into()),
        (-2, Value::Bytes(public.x().expect("uncompressed").to_vec())),
        (-3, Value::Bytes(public.y().expect("uncompressed").to_vec())),
    ]);
    cbor(
        app,
        0x06,
        Some(int_map(vec![
            (1, 1.into()),
            (2, 3.into()),
            (3, platform_key),
            (4, Value::Bytes(auth)),
            (5, Value::Bytes(encrypted)),
        ])),
    )?;
    Ok(())
}

fn int_map(entries: Vec<(i64, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn map_get(map: &Value, key: i64) -> Option<&Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_integer() == Some(key.into()))
        .map(|(_, v)| v)
}

/// One CTAP2 command straight to the authenticator (no framing: setup).
fn cbor(app: &mut dyn App<'static>, command: u8, params: Option<Value>) -> Result<Value, String> {
    let mut request = vec![command];
    if let Some(p) = params {
        ciborium::into_writer(&p, &mut request).map_err(|e| e.to_string())?;
    }
    let answer = call(app, CTAPHID_CBOR, &request).map_err(|e| format!("CTAPHID error {e}"))?;
    match answer.split_first() {
        Some((0, [])) => Ok(Value::Map(Vec::new())),
        Some((0, body)) => ciborium::from_reader(body).map_err(|e| e.to_string()),
        Some((status, _)) => Err(format!("CTAP2 status {status:#04x}")),
        None => Err("an empty answer".into()),
    }
}
