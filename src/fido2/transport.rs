//! Where CTAPHID packets go: a Linux hidraw node (a real key), or a Unix
//! socket carrying the same 64-byte packets (the virtual key of
//! `hsm-sim/`, since a test machine cannot create hidraw nodes).
//! Everything above this module is the same for both.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CTAPHID packet (a HID report without its report id).
pub const PACKET: usize = 64;

/// The FIDO Alliance's HID usage page.
const FIDO_USAGE_PAGE: u32 = 0xf1d0;
/// The CTAPHID usage on it.
const FIDO_USAGE_CTAPHID: u32 = 0x01;

/// Where a key is: `/dev/hidrawN`, or `unix:PATH` for a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A hidraw node.
    Hidraw(PathBuf),
    /// A Unix stream socket carrying 64-byte packets both ways.
    Unix(PathBuf),
}

impl Device {
    /// `unix:PATH`, or a hidraw node's path.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("unix:") {
            Some(p) => Device::Unix(PathBuf::from(p)),
            None => Device::Hidraw(PathBuf::from(s)),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Hidraw(p) => write!(f, "{}", p.display()),
            Device::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Sends and receives whole packets.
pub trait Transport {
    /// Send one packet.
    fn send(&mut self, packet: &[u8; PACKET]) -> io::Result<()>;
    /// The next packet, or `None` if none came by `deadline`.
    fn recv(&mut self, deadline: Instant) -> io::Result<Option<[u8; PACKET]>>;
}

/// Wait until `fd` is readable or the deadline passes.
fn readable(fd: &impl AsFd, deadline: Instant) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let t = Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&t)) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A hidraw node: reports written with a leading report id 0.
pub struct Hidraw(File);

impl Transport for Hidraw {
    fn send(&mut self, packet: &[u8; PACKET]) -> io::Result<()> {
        let mut report = [0u8; PACKET + 1];
        report[1..].copy_from_slice(packet);
        self.0.write_all(&report)
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<[u8; PACKET]>> {
        if !readable(&self.0, deadline)? {
            return Ok(None);
        }
        let mut buf = [0u8; PACKET + 1];
        let n = self.0.read(&mut buf)?;
        if n < PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a {n}-byte HID report, not {PACKET}"),
            ));
        }
        let mut p = [0u8; PACKET];
        p.copy_from_slice(&buf[..PACKET]);
        Ok(Some(p))
    }
}

/// A Unix socket carrying 64-byte packets.
pub struct Socket(UnixStream);

impl Transport for Socket {
    fn send(&mut self, packet: &[u8; PACKET]) -> io::Result<()> {
        self.0.write_all(packet)
    }

    fn recv(&mut self, deadline: Instant) -> io::Result<Option<[u8; PACKET]>> {
        let mut p = [0u8; PACKET];
        let mut n = 0;
        while n < PACKET {
            if !readable(&self.0, deadline)? {
                return Ok(None);
            }
            match self.0.read(&mut p[n..])? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                k => n += k,
            }
        }
        Ok(Some(p))
    }
}

/// Open `device`. A hidraw node whose report descriptor (in sysfs) is not
/// a FIDO key's is refused: CTAPHID packets are not written to a keyboard.
pub fn open(device: &Device) -> io::Result<Box<dyn Transport>> {
    Ok(match device {
        Device::Hidraw(p) => {
            let descriptor = p
                .file_name()
                .map(|n| {
                    Path::new("/sys/class/hidraw")
                        .join(n)
                        .join("device/report_descriptor")
                })
                .and_then(|d| std::fs::read(d).ok());
            if descriptor.is_some_and(|d| !is_fido(&d)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a FIDO security key (its HID report descriptor has no FIDO usage page)",
                ));
            }
            Box::new(Hidraw(File::options().read(true).write(true).open(p)?))
        }
        Device::Unix(p) => Box::new(Socket(UnixStream::connect(p)?)),
    })
}

/// The hidraw nodes whose HID report descriptor declares the FIDO usage
/// page and CTAPHID usage, in number order.
pub fn list() -> Vec<Device> {
    let Ok(entries) = std::fs::read_dir("/sys/class/hidraw") else {
        return Vec::new();
    };
    let mut out: Vec<Device> = entries
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("device/report_descriptor")).is_ok_and(|d| is_fido(&d))
        })
        .map(|e| Device::Hidraw(Path::new("/dev").join(e.file_name())))
        .collect();
    // hidraw2 before hidraw10.
    out.sort_by_key(|d| {
        let name = d.to_string();
        let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
        (digits.parse::<u64>().unwrap_or(u64::MAX), name)
    });
    out
}

/// Whether a HID report descriptor has a collection of usage page 0xF1D0,
/// usage 0x01 (short items only, as keys use; a long item ends the walk).
pub fn is_fido(descriptor: &[u8]) -> bool {
    let mut page = 0u32;
    let mut i = 0;
    while i < descriptor.len() {
        let prefix = descriptor[i];
        if prefix == 0xfe {
            return false;
        }
        let size = match prefix & 0x03 {
            3 => 4,
            n => n as usize,
        };
        let Some(data) = descriptor.get(i + 1..i + 1 + size) else {
            return false;
        };
        let value = data
            .iter()
            .rev()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        match prefix & 0xfc {
            0x04 => page = value,
            0x08 if page == FIDO_USAGE_PAGE && value == FIDO_USAGE_CTAPHID => return true,
            _ => {}
        }
        i += 1 + size;
    }
    false
}

/// How long a command may take before the key answers or asks for a
/// touch (KEEPALIVE), beyond which it is taken as gone.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fido_descriptors_are_told_apart() {
        // A YubiKey's FIDO interface, as Linux shows it.
        let yubikey = [
            0x06, 0xd0, 0xf1, 0x09, 0x01, 0xa1, 0x01, 0x09, 0x20, 0x15, 0x00, 0x26, 0xff, 0x00,
            0x75, 0x08, 0x95, 0x40, 0x81, 0x02, 0x09, 0x21, 0x15, 0x00, 0x26, 0xff, 0x00, 0x75,
            0x08, 0x95, 0x40, 0x91, 0x02, 0xc0,
        ];
        assert!(is_fido(&yubikey));
        // A keyboard: usage page 1, usage 6.
        let keyboard = [0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0xc0];
        assert!(!is_fido(&keyboard));
        assert!(!is_fido(&[0x06, 0xd0]));
        assert!(!is_fido(&[]));
    }

    #[test]
    fn devices_parse() {
        assert_eq!(
            Device::parse("unix:/tmp/k.sock"),
            Device::Unix("/tmp/k.sock".into())
        );
        assert_eq!(
            Device::parse("/dev/hidraw3"),
            Device::Hidraw("/dev/hidraw3".into())
        );
        assert_eq!(Device::parse("unix:/a").to_string(), "unix:/a");
    }
}
