//! `percore tune`: reads the host's limits and says what to change for a target connection count.
#![deny(missing_docs)]
