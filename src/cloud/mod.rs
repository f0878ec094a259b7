//! Cloud identities. Owns credential resolution; invariant: secrets never reach logs or errors
//! (only the source, role and what the service said).

pub mod aws;
pub mod azure;
pub mod ecs;
pub mod gcp;
pub mod local_http;
