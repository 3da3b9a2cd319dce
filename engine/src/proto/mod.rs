//! Sans-IO RFC 6455: bytes in, events and bytes out. No sockets, no threads, no clocks.
