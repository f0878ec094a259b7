//! The Fluent Forward protocol (v1), shared by the `forward` input (server) and the `forward`
//! output (client): msgpack framing and decoding of the four modes ([`protocol`]), encoding of
//! PackedForward messages and acks, the `Shared_Key` handshake HELO/PING/PONG for both sides
//! ([`handshake`]) and TLS configuration from files ([`tls`]).
//!
//! Invariant it keeps for both plugins: a frame is either decoded whole into events or rejected
//! whole with a reason; nothing of a frame that failed is half-delivered, and frames decoded
//! before a bad one on the same connection are unaffected.

pub mod handshake;
pub mod protocol;
pub mod tls;

/// The Forward protocol's well-known port, the default of both plugins.
pub const DEFAULT_PORT: u16 = 24224;

/// Why the user/password options of Fluent Bit's forward plugins are refused.
pub const NO_USER_AUTH: &str =
    "not supported: use Shared_Key (user/password authentication is not implemented)";
