//! CTAPHID (FIDO CTAP 2.1 §11.2): a channel on a key, and one message
//! exchange at a time, split into 64-byte packets and put back together,
//! with the key's KEEPALIVE packets while it works or waits for a touch.
//!
//! Bounded against a wedged or hostile device: answers at most
//! [`MAX_MESSAGE`] bytes in at most 128 continuation packets, and every
//! exchange ends within [`EXCHANGE_LIMIT`] however many keep-alives come
//! (then CANCEL is sent and the exchange fails).

use super::Error;
use super::transport::{ANSWER_TIMEOUT, PACKET, Transport};
use std::time::{Duration, Instant};

const CMD_INIT: u8 = 0x06;
/// CTAP2 over CTAPHID.
pub const CMD_CBOR: u8 = 0x10;
const CMD_CANCEL: u8 = 0x11;
const CMD_KEEPALIVE: u8 = 0x3b;
const CMD_ERROR: u8 = 0x3f;
const BROADCAST: u32 = 0xffff_ffff;
const KEEPALIVE_UPNEEDED: u8 = 0x02;
const ERR_CHANNEL_BUSY: u8 = 0x06;
/// INIT capability: the key speaks CTAP2 (CBOR).
const CAPABILITY_CBOR: u8 = 0x04;
/// Largest message: 64 - 7 + 128 × (64 - 5).
pub const MAX_MESSAGE: usize = 7609;
/// The longest one exchange may take, keep-alives or not: keys give up
/// waiting for a touch after about 30 s.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(90);
/// How long to wait between tries while another program uses the key.
const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// A channel on one key.
pub struct Channel {
    transport: Box<dyn Transport>,
    cid: u32,
}

impl Channel {
    /// Ask the key for a channel of our own (CTAPHID_INIT on the broadcast
    /// channel, matched by a random nonce); refuse a key without CTAP2.
    pub fn open(transport: Box<dyn Transport>) -> Result<Self, Error> {
        let mut ch = Self {
            transport,
            cid: BROADCAST,
        };
        let mut nonce = [0u8; 8];
        crate::key::random_bytes(&mut nonce);
        let answer = ch.exchange_matching(CMD_INIT, &nonce, &mut || {}, &|a| {
            a.len() >= 17 && a[..8] == nonce
        })?;
        if answer[16] & CAPABILITY_CBOR == 0 {
            return Err(Error::Protocol(
                "the key speaks only U2F (CTAP1), not FIDO2: it has no hmac-secret".into(),
            ));
        }
        ch.cid = u32::from_be_bytes([answer[8], answer[9], answer[10], answer[11]]);
        if ch.cid == BROADCAST || ch.cid == 0 {
            return Err(Error::Protocol("the key gave a reserved channel".into()));
        }
        Ok(ch)
    }

    /// Send `cmd` with `data` and return the key's answer. `touch` is
    /// called once, the first time the key says it waits for a touch.
    pub fn exchange(
        &mut self,
        cmd: u8,
        data: &[u8],
        touch: &mut dyn FnMut(),
    ) -> Result<Vec<u8>, Error> {
        self.exchange_matching(cmd, data, touch, &|_| true)
    }

    /// [`Channel::exchange`], skipping answers `mine` does not accept (an
    /// INIT answer to another program's nonce on the broadcast channel).
    fn exchange_matching(
        &mut self,
        cmd: u8,
        data: &[u8],
        touch: &mut dyn FnMut(),
        mine: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, Error> {
        if data.len() > MAX_MESSAGE {
            return Err(Error::Protocol(format!(
                "a message of {} bytes (at most {MAX_MESSAGE})",
                data.len()
            )));
        }
        let limit = Instant::now() + EXCHANGE_LIMIT;
        loop {
            self.send(cmd, data)?;
            match self.receive(cmd, touch, mine, limit) {
                // Another program is talking to the key: wait our turn.
                Err(Error::Busy) if Instant::now() + BUSY_PAUSE < limit => {
                    std::thread::sleep(BUSY_PAUSE);
                }
                Err(Error::Busy) => return Err(Error::Timeout),
                Err(Error::Timeout) => {
                    self.cancel();
                    return Err(Error::Timeout);
                }
                other => return other,
            }
        }
    }

    fn send(&mut self, cmd: u8, data: &[u8]) -> Result<(), Error> {
        let cid = self.cid.to_be_bytes();
        let mut pkt = [0u8; PACKET];
        pkt[..4].copy_from_slice(&cid);
        pkt[4] = 0x80 | cmd;
        pkt[5..7].copy_from_slice(&(data.len() as u16).to_be_bytes());
        let first = data.len().min(PACKET - 7);
        pkt[7..7 + first].copy_from_slice(&data[..first]);
        self.transport.send(&pkt).map_err(Error::Io)?;
        for (seq, chunk) in data[first..].chunks(PACKET - 5).enumerate() {
            let mut pkt = [0u8; PACKET];
            pkt[..4].copy_from_slice(&cid);
            pkt[4] = seq as u8;
            pkt[5..5 + chunk.len()].copy_from_slice(chunk);
            self.transport.send(&pkt).map_err(Error::Io)?;
        }
        Ok(())
    }

    /// Tell the key to stop waiting (for a touch) on our channel.
    fn cancel(&mut self) {
        let mut pkt = [0u8; PACKET];
        pkt[..4].copy_from_slice(&self.cid.to_be_bytes());
        pkt[4] = 0x80 | CMD_CANCEL;
        let _ = self.transport.send(&pkt);
    }

    fn receive(
        &mut self,
        cmd: u8,
        touch: &mut dyn FnMut(),
        mine: &dyn Fn(&[u8]) -> bool,
        limit: Instant,
    ) -> Result<Vec<u8>, Error> {
        let cid = self.cid.to_be_bytes();
        let mut deadline = (Instant::now() + ANSWER_TIMEOUT).min(limit);
        let mut asked_touch = false;
        loop {
            let pkt = self.next(deadline)?;
            if pkt[..4] != cid || pkt[4] & 0x80 == 0 {
                continue; // another channel's, or a stray continuation
            }
            let len = u16::from_be_bytes([pkt[5], pkt[6]]) as usize;
            if len > MAX_MESSAGE {
                return Err(Error::Protocol(format!(
                    "the key announced a {len}-byte answer (at most {MAX_MESSAGE})"
                )));
            }
            let mut msg = Vec::with_capacity(len);
            msg.extend_from_slice(&pkt[7..7 + len.min(PACKET - 7)]);
            let mut seq = 0u8;
            while msg.len() < len {
                let c = self.next(deadline)?;
                if c[..4] != cid {
                    continue;
                }
                if c[4] != seq || seq > 0x7f {
                    return Err(Error::Protocol("a continuation packet out of order".into()));
                }
                let take = (len - msg.len()).min(PACKET - 5);
                msg.extend_from_slice(&c[5..5 + take]);
                seq += 1;
            }
            match pkt[4] & 0x7f {
                CMD_KEEPALIVE => {
                    // Still working, or waiting for a touch: say so once,
                    // and wait on, never past the exchange's limit.
                    if msg.first() == Some(&KEEPALIVE_UPNEEDED) && !asked_touch {
                        asked_touch = true;
                        touch();
                    }
                    deadline = (Instant::now() + Duration::from_secs(35)).min(limit);
                }
                CMD_ERROR if msg.first() == Some(&ERR_CHANNEL_BUSY) => return Err(Error::Busy),
                CMD_ERROR => {
                    return Err(Error::Protocol(format!(
                        "the key answered CTAPHID error {:#04x}",
                        msg.first().copied().unwrap_or(0)
                    )));
                }
                c if c == cmd && mine(&msg) => return Ok(msg),
                c if c == cmd => continue,
                c => {
                    return Err(Error::Protocol(format!(
                        "the key answered command {c:#04x} to {cmd:#04x}"
                    )));
                }
            }
        }
    }

    fn next(&mut self, deadline: Instant) -> Result<[u8; PACKET], Error> {
        self.transport
            .recv(deadline)
            .map_err(Error::Io)?
            .ok_or(Error::Timeout)
    }
}
