//! Frame header codec (RFC 6455 §5.2): a checked parse and a minimal-form encode.

use super::error::ProtocolError;

/// Which end of the connection this is: decides which frames must be masked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::exhaustive_enums)] // a connection has two ends, no more
pub enum Role {
    /// Accepts connections: received frames must be masked, sent frames are not.
    Server,
    /// Opens connections: received frames must not be masked, sent frames are.
    Client,
}

/// A frame opcode. Reserved opcodes (3-7, 0xB-0xF) never get this far: they are 1002.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(clippy::exhaustive_enums)] // RFC 6455's opcodes; an extension's new opcode would be a new major version anyway
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0,
    /// 0x1: text (UTF-8) message.
    Text = 1,
    /// 0x2: binary message.
    Binary = 2,
    /// 0x8: close.
    Close = 8,
    /// 0x9: ping.
    Ping = 9,
    /// 0xA: pong.
    Pong = 10,
}

impl OpCode {
    /// Close, Ping and Pong are control frames (at most 125 bytes, never fragmented).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }

    /// The opcode for the 4-bit value `v`, or `None` if it is reserved.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }
}

/// Longest frame header: 2 bytes + 8 bytes of extended length + 4 bytes of masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest control frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD_LEN: usize = 125;

/// A parsed frame header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The 3 RSV bits, 0..=7 (RSV1 is 4).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A header without RSV bits (no extension).
    pub const fn new(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload_len: u64) -> Self {
        Self {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    /// Ok(None): need more bytes. Ok(Some((h, n))): the header is buf[..n]. Checks: reserved
    /// opcode, RSV bits set (no extension negotiated), control frame > 125 bytes or not FIN,
    /// 64-bit length with MSB set -> ProtocolError 1002. Each check fires as soon as the byte
    /// it needs is present, even if the header is not complete yet.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let mut h = FrameHeader::new(false, OpCode::Continuation, None, 0);
        match Self::parse_into(buf, &mut h, 0)? {
            0 => Ok(None),
            n => Ok(Some((h, n))),
        }
    }

    /// [`FrameHeader::parse`] for the decoder's hot path: writes the header into `h` and
    /// returns its length, 0 while incomplete (a header is never empty). The decoder keeps `h`
    /// in registers this way; a nested `Result<Option<(..)>>` got packed and unpacked.
    /// `rsv_allowed`: the RSV bits a negotiated extension defines (4 = RSV1, permessage-deflate).
    #[inline(always)]
    pub(crate) fn parse_into(
        buf: &[u8],
        h: &mut FrameHeader,
        rsv_allowed: u8,
    ) -> Result<usize, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(0);
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode =
            OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::protocol("reserved opcode"))?;
        if rsv != 0 && rsv & !rsv_allowed != 0 {
            return Err(ProtocolError::protocol("RSV bits set without an extension"));
        }
        if opcode.is_control() && !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(0);
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD_LEN {
            return Err(ProtocolError::protocol(
                "control frame longer than 125 bytes",
            ));
        }
        let (payload_len, mut n) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(0),
            },
            127 => {
                if let Some(&hi) = buf.get(2) {
                    if hi & 0x80 != 0 {
                        return Err(ProtocolError::protocol("64-bit length with MSB set"));
                    }
                }
                match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                    Some(b) => (u64::from_be_bytes(b), 10),
                    None => return Ok(0),
                }
            }
            l => (u64::from(l), 2),
        };
        let mask = if masked {
            match buf.get(n..n + 4).and_then(|s| <[u8; 4]>::try_from(s).ok()) {
                Some(k) => {
                    n += 4;
                    Some(k)
                }
                None => return Ok(0),
            }
        } else {
            None
        };
        *h = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(n)
    }

    /// Write the header (minimal length form) into `out`, return its length.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut n = match self.payload_len {
            l @ 0..=125 => {
                out[1] = mask_bit | l as u8;
                2
            }
            l @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(l as u16).to_be_bytes());
                4
            }
            l => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&l.to_be_bytes());
                10
            }
        };
        if let Some(k) = self.mask {
            out[n..n + 4].copy_from_slice(&k);
            n += 4;
        }
        n
    }
}

/// Append header + payload (masked with `mask` when Some; clients must mask) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let header = FrameHeader::new(fin, opcode, mask, payload.len() as u64);
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        percore_simd::unmask(&mut out[start..], k, 0);
    }
}
