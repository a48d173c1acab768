//! The agent's wire format (described in the parent module), and frame
//! I/O with one deadline for the whole frame: a peer that trickles bytes
//! gains nothing by it.

use crate::error::Category;
use std::io::{self, Read, Write};

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The protocol version every request starts with. An agent of another
/// version declines (`NoUsableSlot`), and the client unlocks without it.
pub const PROTOCOL: u8 = 1;
/// Largest request, bytes: an archive header (its slot list at most 1 MiB)
/// with room to spare.
pub const MAX_REQUEST: usize = 2 << 20;
/// Largest answer, bytes.
pub const MAX_ANSWER: usize = 64 << 10;
/// How long either side waits for a whole frame to be sent or taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) const OPEN: u8 = 1;
pub(super) const PASSPHRASE: u8 = 2;
pub(super) const STATUS: u8 = 3;
pub(super) const STOP: u8 = 4;
pub(super) const OK: u8 = 0;

/// An answer's bytes: a status, then its body. Wiped on drop.
pub(super) type Answer = Zeroizing<Vec<u8>>;

/// The wire code of a failure's category (1 to 6).
pub fn category_code(c: Category) -> u8 {
    match c {
        Category::Other => 1,
        Category::Usage => 2,
        Category::WrongFactor => 3,
        Category::Corrupt => 4,
        Category::NoUsableSlot => 5,
        Category::Incomplete => 6,
    }
}

/// The category of a wire code; `None` for a code no build sends.
pub fn code_category(code: u8) -> Option<Category> {
    Some(match code {
        1 => Category::Other,
        2 => Category::Usage,
        3 => Category::WrongFactor,
        4 => Category::Corrupt,
        5 => Category::NoUsableSlot,
        6 => Category::Incomplete,
        _ => return None,
    })
}

pub(super) fn success(body: &[u8]) -> Answer {
    let mut v = Zeroizing::new(Vec::with_capacity(1 + body.len()));
    v.push(OK);
    v.extend_from_slice(body);
    v
}

pub(super) fn failure(category: Category, message: &str) -> Answer {
    let mut v = Zeroizing::new(Vec::with_capacity(1 + message.len()));
    v.push(category_code(category));
    v.extend_from_slice(message.as_bytes());
    v
}

/// Wait until `stream` is ready for `flags`, or the deadline passes
/// (`TimedOut`).
fn wait(stream: &UnixStream, flags: rustix::event::PollFlags, deadline: Instant) -> io::Result<()> {
    use rustix::event::{PollFd, Timespec, poll};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let timeout = Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(stream, flags)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Fill `buf` from the (non-blocking) `stream` by the deadline.
pub(super) fn read_exact_by(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<()> {
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(stream, rustix::event::PollFlags::IN, deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_all_by(stream: &mut UnixStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => buf = &buf[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(stream, rustix::event::PollFlags::OUT, deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One frame: its length, then its bytes (1 to `max`), read into a buffer
/// sized once (no reallocation leaves an unwiped copy), by the deadline.
pub(super) fn read_frame(
    stream: &mut UnixStream,
    max: usize,
    deadline: Instant,
) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    read_exact_by(stream, &mut len, deadline)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (1 to {max} allowed)"),
        ));
    }
    let mut buf = Zeroizing::new(vec![0u8; len]);
    read_exact_by(stream, &mut buf, deadline)?;
    Ok(buf)
}

/// One frame, its length first, written whole by the deadline.
pub(super) fn write_frame(
    stream: &mut UnixStream,
    body: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut frame = Zeroizing::new(Vec::with_capacity(4 + body.len()));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    write_all_by(stream, &frame, deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(300)
    }

    #[test]
    fn frames_round_trip() {
        let (mut a, mut b) = pair();
        write_frame(&mut a, b"hello", soon()).unwrap();
        assert_eq!(&read_frame(&mut b, 16, soon()).unwrap()[..], b"hello");
    }

    #[test]
    fn lengths_out_of_bounds_are_refused_before_reading_more() {
        for len in [0u32, (MAX_REQUEST + 1) as u32] {
            let (mut a, mut b) = pair();
            a.write_all(&len.to_be_bytes()).unwrap();
            let e = read_frame(&mut b, MAX_REQUEST, soon()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}");
        }
    }

    #[test]
    fn a_trickling_peer_meets_one_deadline_for_the_whole_frame() {
        let (mut a, mut b) = pair();
        a.write_all(&100u32.to_be_bytes()).unwrap();
        let writer = std::thread::spawn(move || {
            for _ in 0..20 {
                if a.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let e = read_frame(&mut b, 1000, start + Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_millis(900));
        drop(b);
        writer.join().unwrap();
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let (mut a, mut b) = pair();
        a.write_all(&[0, 0, 0, 2, 1]).unwrap();
        drop(a);
        let e = read_frame(&mut b, 16, soon()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn codes_round_trip() {
        for c in [
            Category::Other,
            Category::Usage,
            Category::WrongFactor,
            Category::Corrupt,
            Category::NoUsableSlot,
            Category::Incomplete,
        ] {
            assert_eq!(code_category(category_code(c)), Some(c));
        }
        assert_eq!(code_category(0), None);
    }
}
