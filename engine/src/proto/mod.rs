//! Sans-IO RFC 6455: bytes in, events and bytes out. No sockets, no threads, no clocks.
//!
//! - [`parse_request`] / [`accept_response`]: the server side of the opening handshake;
//!   [`client_request`] / [`parse_response`]: the client side.
//! - [`Decoder`]: frames in, messages and control frames out, in place and zero copy.
//! - [`encode_frame`] / [`FrameHeader`]: frames out.
//! - [`CloseState`], [`parse_close_payload`], [`close_payload`]: the closing handshake.
//!
//! Every protocol violation is a [`ProtocolError`] carrying the close code RFC 6455 asks for.

mod close;
mod codec;
mod error;
mod frame;
mod handshake;

#[cfg(test)]
mod tests;

pub use close::{
    close_payload, parse_close_payload, CloseCode, CloseFrame, ClosePhase, CloseState,
    MAX_CLOSE_REASON_LEN,
};
pub use codec::{Decoder, Event, Limits, Role};
pub use error::ProtocolError;
pub use frame::{encode_frame, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD_LEN, MAX_HEADER_LEN};
pub use handshake::{
    accept_key, accept_response, client_request, generate_key, generate_mask, parse_request,
    parse_response, reject_response, HandshakeError, Request, Response, DEFAULT_MAX_HEADER_BYTES,
    MAX_HEADERS,
};
