//! The client's side: ask the agent at a socket, and check it runs as the
//! caller's own user first.

use super::Status;
use super::wire::{
    IO_TIMEOUT, MAX_ANSWER, OK, OPEN, PASSPHRASE, PROTOCOL, STATUS, STOP, code_category,
    read_frame, write_frame,
};
use crate::archive::Header;
use crate::archive::stream::PayloadKey;
use crate::error::{Category, Error, Result};
use crate::passphrase::PassphraseName;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;
use zeroize::Zeroizing;

fn agent_error(socket: &Path, message: String) -> Error {
    Error::Agent {
        category: Category::Other,
        message: format!("{}: {message}", socket.display()),
    }
}

/// Connect without waiting: `Ok(None)` when no agent listens there; an
/// agent whose queue is full is an error (the caller goes on without it).
fn connect(socket: &Path) -> Result<Option<UnixStream>> {
    let io = |e: rustix::io::Errno| Error::io(socket, e.into());
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(io)?;
    let addr = SocketAddrUnix::new(socket).map_err(io)?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Ok(Some(UnixStream::from(fd))),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::CONNREFUSED) => Ok(None),
        Err(rustix::io::Errno::AGAIN) => Err(agent_error(
            socket,
            "busy (its queue of callers is full)".into(),
        )),
        Err(e) => Err(io(e)),
    }
}

/// Ask the agent at `socket`: `op` and `body`. `Ok(None)`: no agent
/// listens there.
fn ask(socket: &Path, op: u8, body: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(mut stream) = connect(socket)? else {
        return Ok(None);
    };
    let me = rustix::process::geteuid();
    let uid = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| Error::io(socket, e.into()))?
        .uid;
    if uid != me {
        return Err(agent_error(
            socket,
            format!(
                "served by uid {}, not by you (uid {}): not used",
                uid.as_raw(),
                me.as_raw()
            ),
        ));
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut request = Zeroizing::new(Vec::with_capacity(2 + body.len()));
    request.extend_from_slice(&[PROTOCOL, op]);
    request.extend_from_slice(body);
    let talk = write_frame(&mut stream, &request, deadline)
        .and_then(|()| read_frame(&mut stream, MAX_ANSWER, deadline));
    let answer = talk.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => agent_error(
            socket,
            format!("did not answer within {} s", IO_TIMEOUT.as_secs()),
        ),
        _ => agent_error(socket, format!("the exchange failed: {e}")),
    })?;
    let (&status, body) = answer.split_first().expect("frames are not empty");
    if status == OK {
        return Ok(Some(Zeroizing::new(body.to_vec())));
    }
    Err(Error::Agent {
        category: code_category(status).unwrap_or(Category::Other),
        message: crate::ui::escaped(&String::from_utf8_lossy(body)),
    })
}

/// [`ask`] for a key or passphrase: an agent that declines (its time or
/// uses ran out, another protocol version, a header it cannot read) counts
/// as none.
fn ask_secret(socket: &Path, op: u8, body: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
    match ask(socket, op, body) {
        Err(Error::Agent {
            category: Category::NoUsableSlot,
            ..
        }) => Ok(None),
        other => other,
    }
}

/// `header`'s payload key from the agent at `socket`, which authenticates
/// the header under its key first. `Ok(None)`: no agent serves there. An
/// error of category `Corrupt` means the header did not authenticate under
/// the key its key id names: final, as the slots would reach the same.
pub fn payload_key(socket: &Path, header: &Header) -> Result<Option<PayloadKey>> {
    let Some(key) = ask_secret(socket, OPEN, &header.to_bytes())? else {
        return Ok(None);
    };
    let key: &[u8; 32] = key[..].try_into().map_err(|_| {
        agent_error(
            socket,
            format!("answered {} bytes for a 32-byte payload key", key.len()),
        )
    })?;
    Ok(Some(PayloadKey::new(key)))
}

/// The passphrase for `name` from the agent at `socket`; with `header`,
/// only if that header authenticates under the agent's key. `Ok(None)`: no
/// agent serves there.
pub fn passphrase(
    socket: &Path,
    name: &PassphraseName,
    header: Option<&Header>,
) -> Result<Option<Zeroizing<String>>> {
    let name = name.as_str().as_bytes();
    let header = header.map(Header::to_bytes).unwrap_or_default();
    let mut body = Vec::with_capacity(2 + name.len() + header.len());
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&header);
    let Some(secret) = ask_secret(socket, PASSPHRASE, &body)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&secret)
        .map_err(|_| agent_error(socket, "answered a passphrase that is not text".into()))?;
    Ok(Some(Zeroizing::new(text.to_owned())))
}

/// The status of the agent at `socket`; `Ok(None)`: none runs there.
pub fn status(socket: &Path) -> Result<Option<Status>> {
    let Some(body) = ask(socket, STATUS, &[])? else {
        return Ok(None);
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        agent_error(
            socket,
            format!("answered a status that does not parse: {e}"),
        )
    })
}

/// Tell the agent at `socket` to forget its key and exit. Returns whether
/// one was running.
pub fn stop(socket: &Path) -> Result<bool> {
    Ok(ask(socket, STOP, &[])?.is_some())
}
