//! logferry: a Rust-native, Fluent Bit-compatible log shipper that never loses a line.
//!
//! Data flows inputs → filters → router → outputs; acknowledgements flow back so a source
//! position is committed only when every output has the records (see [`engine`]).

pub mod cloud;
pub mod config;
pub mod engine;
pub mod filters;
pub mod forward;
pub mod healthcheck;
pub mod http;
pub mod inputs;
pub mod json;
pub mod outputs;
pub mod parsers;
pub mod pattern;
pub mod record;
