//! Sans-IO RFC 6455: bytes in, events and bytes out. No sockets, no threads, no clocks.
//!
//! - [`parse_request`] / [`accept_response`]: the server side of the opening handshake (and of
//!   plain HTTP requests on the same port, answered with [`response_head`]);
//!   [`client_request`] / [`parse_response`]: the client side.
//! - [`Decoder`]: frames in, messages and control frames out, in place and zero copy.
//! - [`encode_frame`] / [`FrameHeader`]: frames out.
//! - [`CloseState`], [`parse_close_payload`], [`close_payload`]: the closing handshake.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, compressor, decompressor.
//! - [`Connection`]: one connection's whole protocol state (handshake, frames, close, deadlines),
//!   driven with bytes and a time; [`Endpoint`] holds what a shard's connections share.
//!
//! Every protocol violation is a [`ProtocolError`] carrying the close code RFC 6455 asks for.

mod close;
mod close_code;
mod codec;
mod connection;
pub mod deflate;
mod endpoint;
mod error;
mod frame;
mod handshake;
mod message;
mod output;
mod pool;
mod rng;

#[cfg(test)]
mod tests;

pub use close::{
    close_payload, parse_close_payload, CloseFrame, ClosePhase, CloseState, SharedClose,
    MAX_CLOSE_REASON_LEN,
};
pub use close_code::CloseCode;
pub use codec::{Decoder, Event, Limits};
pub use connection::{
    AfterFlush, AppEvent, Connection, Deadline, Link, Received, RecvHalf, SendHalf, Timeout,
};
pub use deflate::{Compression, DeflateSettings};
pub use endpoint::{Endpoint, Settings};
pub use error::ProtocolError;
pub use frame::{encode_frame, FrameHeader, OpCode, Role, MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN};
pub use handshake::{
    accept_key, accept_response, client_request, generate_key, parse_request, parse_response,
    parse_response_with, reject_response, response_head, HandshakeError, Request, Response,
    HEADER_BYTES_MAX_DEFAULT, MAX_HEADERS,
};
pub use message::Message;
pub use output::Output;
pub use pool::BufPool;
pub use rng::MaskRng;
