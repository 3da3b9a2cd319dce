//! The resume protocol's messages as bytes: client commands, server notices and the envelope
//! of a topic message (docs/resume-protocol-v1.md is the specification).

use std::fmt;
use std::sync::Arc;

use crate::history::Position;
use crate::proto::{FrameHeader, Message, OpCode, MAX_HEADER_LEN};

/// A command a client sends (one text message each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `sub TOPIC`: subscribe from now on.
    Sub(&'a str),
    /// `resume EPOCH SEQ TOPIC`: subscribe after this position.
    Resume(&'a str, Position),
    /// `unsub TOPIC`
    Unsub(&'a str),
    /// `ack EPOCH SEQ TOPIC`: the client has everything up to this position.
    Ack(&'a str, Position),
    /// `ping TOKEN`: answered `pong TOKEN` (a heartbeat browsers can send).
    Ping(&'a str),
    /// `msg PAYLOAD`: an application message (the handler's `on_message` gets `PAYLOAD`).
    Msg(&'a str),
}

/// Why a client command was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// Not one of the protocol's commands.
    Unknown,
    /// A command with a missing or malformed argument.
    Malformed,
    /// A topic that is empty or has a line break.
    BadTopic,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandError::Unknown => "unknown command",
            CommandError::Malformed => "malformed command",
            CommandError::BadTopic => "bad topic",
        })
    }
}

impl std::error::Error for CommandError {}

fn topic(t: &str) -> Result<&str, CommandError> {
    if t.is_empty() || t.contains(['\n', '\r']) {
        return Err(CommandError::BadTopic);
    }
    Ok(t)
}

/// `EPOCH SEQ TOPIC`
fn positioned(rest: &str) -> Result<(&str, Position), CommandError> {
    let mut it = rest.splitn(3, ' ');
    let epoch = it.next().and_then(|e| e.parse().ok());
    let seq = it.next().and_then(|s| s.parse().ok());
    match (epoch, seq, it.next()) {
        (Some(epoch), Some(seq), Some(t)) => Ok((topic(t)?, Position { epoch, seq })),
        _ => Err(CommandError::Malformed),
    }
}

impl<'a> Command<'a> {
    /// Parse one client text message.
    pub fn parse(text: &'a str) -> Result<Self, CommandError> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        Ok(match word {
            "msg" => Command::Msg(rest),
            "sub" => Command::Sub(topic(rest)?),
            "unsub" => Command::Unsub(topic(rest)?),
            "resume" => {
                let (t, p) = positioned(rest)?;
                Command::Resume(t, p)
            }
            "ack" => {
                let (t, p) = positioned(rest)?;
                Command::Ack(t, p)
            }
            "ping" => Command::Ping(rest),
            _ => return Err(CommandError::Unknown),
        })
    }
}

impl fmt::Display for Command<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Sub(t) => write!(f, "sub {t}"),
            Command::Resume(t, p) => write!(f, "resume {} {} {t}", p.epoch, p.seq),
            Command::Unsub(t) => write!(f, "unsub {t}"),
            Command::Ack(t, p) => write!(f, "ack {} {} {t}", p.epoch, p.seq),
            Command::Ping(x) => write!(f, "ping {x}"),
            Command::Msg(m) => write!(f, "msg {m}"),
        }
    }
}

/// What the server tells a client about a subscription (one text message each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice<'a> {
    /// `ok EPOCH SEQ TOPIC`: subscribed; the topic's messages follow from `SEQ + 1` with
    /// nothing missing (the replay of what the client missed, then live).
    Ok(&'a str, Position),
    /// `gap EPOCH FIRST LAST TOPIC`: messages `FIRST..=LAST` are no longer held; the rest
    /// follows from `LAST + 1`.
    Gap(&'a str, u64, Position),
    /// `reset EPOCH SEQ TOPIC`: the history started over (a new epoch; the client's position
    /// means nothing here); messages follow from `SEQ + 1` of the new epoch.
    Reset(&'a str, Position),
    /// `pong TOKEN`
    Pong(&'a str),
    /// `err TEXT`: a command was refused; the connection goes on.
    Err(&'a str),
}

impl<'a> Notice<'a> {
    /// Parse a server text message that is not a topic message (see [`Envelope::parse`]).
    pub fn parse(text: &'a str) -> Option<Self> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        Some(match word {
            "ok" => {
                let (t, p) = positioned(rest).ok()?;
                Notice::Ok(t, p)
            }
            "reset" => {
                let (t, p) = positioned(rest).ok()?;
                Notice::Reset(t, p)
            }
            "gap" => {
                let (epoch, rest) = rest.split_once(' ')?;
                let (t, p) = positioned(rest).ok()?;
                let first = p.epoch;
                let last = Position {
                    epoch: epoch.parse().ok()?,
                    seq: p.seq,
                };
                Notice::Gap(t, first, last)
            }
            "pong" => Notice::Pong(rest),
            "err" => Notice::Err(rest),
            _ => return None,
        })
    }
}

impl fmt::Display for Notice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Ok(t, p) => write!(f, "ok {} {} {t}", p.epoch, p.seq),
            Notice::Gap(t, first, last) => {
                write!(f, "gap {} {first} {} {t}", last.epoch, last.seq)
            }
            Notice::Reset(t, p) => write!(f, "reset {} {} {t}", p.epoch, p.seq),
            Notice::Pong(x) => write!(f, "pong {x}"),
            Notice::Err(x) => write!(f, "err {x}"),
        }
    }
}

/// A topic message as the resume protocol carries it: `m EPOCH SEQ TOPIC\n` then the payload,
/// in a frame of the message's own type (text or binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope<'a> {
    /// The topic (as sent: a topic that is not UTF-8 shows with replacement characters).
    pub topic: &'a [u8],
    /// The message's position.
    pub position: Position,
    /// The application's payload.
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parse a server message payload; `None` if it is not a topic message.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let rest = data.strip_prefix(b"m ")?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let (head, payload) = (&rest[..nl], &rest[nl + 1..]);
        let mut it = head.splitn(3, |&b| b == b' ');
        let num = |s: Option<&[u8]>| std::str::from_utf8(s?).ok()?.parse().ok();
        let epoch = num(it.next())?;
        let seq = num(it.next())?;
        let topic = it.next()?;
        Some(Envelope {
            topic,
            position: Position { epoch, seq },
            payload,
        })
    }

    /// `msg` at `position` of `topic`, as one unmasked frame in a shareable buffer (the frame
    /// every resume subscriber gets, and the one history keeps).
    pub fn encode_shared(topic: &[u8], position: Position, msg: Message<'_>) -> Arc<[u8]> {
        let mut head = Vec::with_capacity(topic.len() + 48);
        head.extend_from_slice(format!("m {} {} ", position.epoch, position.seq).as_bytes());
        match (msg, std::str::from_utf8(topic)) {
            (Message::Text(_), Err(_)) => {
                head.extend_from_slice(String::from_utf8_lossy(topic).as_bytes())
            }
            _ => head.extend_from_slice(topic),
        }
        head.push(b'\n');
        let payload = msg.as_bytes();
        let len = head.len() + payload.len();
        let h = FrameHeader::new(true, msg.opcode(), None, len as u64);
        let mut hb = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut hb);
        let mut v = Vec::with_capacity(n + len);
        v.extend_from_slice(&hb[..n]);
        v.extend_from_slice(&head);
        v.extend_from_slice(payload);
        Arc::from(v)
    }

    /// The plain frame of the message an envelope frame carries (for a subscriber that does
    /// not speak the resume protocol; only on the rare catch-up path).
    pub(crate) fn plain_of(frame: &[u8]) -> Option<Arc<[u8]>> {
        let text = frame.first()? & 0x0f == OpCode::Text as u8;
        let start = match frame.get(1)? & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let env = Envelope::parse(frame.get(start..)?)?;
        let msg = if text {
            Message::Text(std::str::from_utf8(env.payload).ok()?)
        } else {
            Message::Binary(env.payload)
        };
        Some(msg.encode_shared())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_commands_parse_and_print_back() {
        let p = Position { epoch: 12, seq: 34 };
        for c in [
            Command::Sub("room 1"),
            Command::Resume("room 1", p),
            Command::Unsub("a"),
            Command::Ack("a b", p),
            Command::Ping("7"),
            Command::Msg("hello there"),
        ] {
            assert_eq!(Command::parse(&c.to_string()), Ok(c));
        }
        assert_eq!(Command::parse("hello"), Err(CommandError::Unknown));
        assert_eq!(Command::parse("resume 1 x t"), Err(CommandError::Malformed));
        assert_eq!(Command::parse("resume 1 2"), Err(CommandError::Malformed));
        assert_eq!(Command::parse("sub "), Err(CommandError::BadTopic));
        assert_eq!(Command::parse("sub a\nb"), Err(CommandError::BadTopic));
        assert_eq!(Command::parse("msg"), Ok(Command::Msg("")));
    }

    #[test]
    fn resume_notices_parse_and_print_back() {
        let p = Position { epoch: 5, seq: 9 };
        for n in [
            Notice::Ok("t x", p),
            Notice::Gap("t", 3, p),
            Notice::Reset("t", p),
            Notice::Pong("1"),
            Notice::Err("bad topic"),
        ] {
            assert_eq!(Notice::parse(&n.to_string()), Some(n));
        }
        assert_eq!(Notice::parse("m 1 2 t\nx"), None);
    }

    #[test]
    fn resume_envelope_round_trips_in_a_frame_of_the_message_type() {
        let p = Position { epoch: 1, seq: 2 };
        let f = Envelope::encode_shared(b"room", p, Message::Text("hi\nthere"));
        assert_eq!(&f[..], b"\x81\x13m 1 2 room\nhi\nthere");
        let e = Envelope::parse(&f[2..]).unwrap();
        assert_eq!(
            (e.topic, e.position, e.payload),
            (&b"room"[..], p, &b"hi\nthere"[..])
        );
        assert_eq!(&Envelope::plain_of(&f).unwrap()[..], b"\x81\x08hi\nthere");
        let big = vec![7u8; 300];
        let f = Envelope::encode_shared(b"b", p, Message::Binary(&big));
        assert_eq!(f[0], 0x82);
        let plain = Envelope::plain_of(&f).unwrap();
        assert_eq!(&plain[..], &Message::Binary(&big).encode_shared()[..]);
        assert_eq!(Envelope::parse(b"x 1 2 t\n"), None);
        assert_eq!(Envelope::parse(b"m 1 t\n"), None);
    }
}
