//! CTAPHID (FIDO CTAP 2.1 §11.2): a channel on a key, and one message
//! exchange at a time, split into 64-byte packets and put back together,
//! with the key's KEEPALIVE packets while it waits for a touch.

use super::Error;
use super::transport::{ANSWER_TIMEOUT, PACKET, Transport};
use std::time::{Duration, Instant};

const CMD_INIT: u8 = 0x06;
/// CTAP2 over CTAPHID.
pub const CMD_CBOR: u8 = 0x10;
const CMD_KEEPALIVE: u8 = 0x3b;
const CMD_ERROR: u8 = 0x3f;
const BROADCAST: u32 = 0xffff_ffff;
const KEEPALIVE_UPNEEDED: u8 = 0x02;
/// Largest message: 64 - 7 + 128 × (64 - 5).
pub const MAX_MESSAGE: usize = 7609;
/// How long the key may wait for a touch: keys give up after about 30 s.
const TOUCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A channel on one key.
pub struct Channel {
    transport: Box<dyn Transport>,
    cid: u32,
}

impl Channel {
    /// Ask the key for a channel of our own (CTAPHID_INIT on the broadcast
    /// channel, matched by a random nonce).
    pub fn open(transport: Box<dyn Transport>) -> Result<Self, Error> {
        let mut ch = Self {
            transport,
            cid: BROADCAST,
        };
        let mut nonce = [0u8; 8];
        crate::key::random_bytes(&mut nonce);
        let answer = ch.exchange(CMD_INIT, &nonce, &mut || {})?;
        if answer.len() < 17 || answer[..8] != nonce {
            return Err(Error::Protocol(
                "the key's INIT answer does not match".into(),
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
        if data.len() > MAX_MESSAGE {
            return Err(Error::Protocol(format!(
                "a message of {} bytes (at most {MAX_MESSAGE})",
                data.len()
            )));
        }
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
        let mut deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut asked_touch = false;
        loop {
            let pkt = self.next(deadline)?;
            if pkt[..4] != cid || pkt[4] & 0x80 == 0 {
                continue; // another channel's, or a stray continuation
            }
            let len = u16::from_be_bytes([pkt[5], pkt[6]]) as usize;
            let mut msg = Vec::with_capacity(len.min(MAX_MESSAGE));
            msg.extend_from_slice(&pkt[7..7 + len.min(PACKET - 7)]);
            let mut seq = 0u8;
            while msg.len() < len {
                let c = self.next(deadline)?;
                if c[..4] != cid {
                    continue;
                }
                if c[4] != seq {
                    return Err(Error::Protocol("a continuation packet out of order".into()));
                }
                let take = (len - msg.len()).min(PACKET - 5);
                msg.extend_from_slice(&c[5..5 + take]);
                seq = seq.wrapping_add(1);
            }
            match pkt[4] & 0x7f {
                CMD_KEEPALIVE => {
                    // Still working: wait on. Waiting for a touch: say so.
                    if msg.first() == Some(&KEEPALIVE_UPNEEDED) {
                        if !asked_touch {
                            asked_touch = true;
                            touch();
                        }
                        deadline = Instant::now() + TOUCH_TIMEOUT;
                    } else {
                        deadline = Instant::now() + ANSWER_TIMEOUT.max(Duration::from_secs(30));
                    }
                }
                CMD_ERROR => {
                    return Err(Error::Protocol(format!(
                        "the key answered CTAPHID error {:#04x}",
                        msg.first().copied().unwrap_or(0)
                    )));
                }
                c if c == cmd => return Ok(msg),
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
