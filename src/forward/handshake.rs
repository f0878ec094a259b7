//! The `Shared_Key` handshake of Forward protocol v1 (secure forward), both sides:
//!
//! ```text
//! server → ["HELO", {"nonce": 16 bytes, "auth": 16-byte salt, "keepalive": true}]
//! client → ["PING", client_hostname, shared_key_salt, hex(sha512(salt ‖ client_hostname ‖ nonce ‖ key)), "", ""]
//! server → ["PONG", true, "", server_hostname, hex(sha512(salt ‖ server_hostname ‖ nonce ‖ key))]
//!       or ["PONG", false, reason, "", ""]
//! ```
//!
//! Each side proves it knows the key without sending it. The key never appears in a log line
//! or an error message. User/password authentication (`Security.Users`) is not implemented.

use rand::RngCore;
use rmpv::ValueRef;
use sha2::{Digest, Sha512};

use super::protocol::{kind, write_str};

/// `hex(sha512(salt ‖ hostname ‖ nonce ‖ shared_key))`, lowercase.
pub fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], shared_key: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(shared_key);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b
}

/// `[name, ...]`: the elements of a handshake message named `name`.
fn elements<'v, 'a>(
    v: &'v ValueRef<'a>,
    name: &str,
    len: usize,
) -> Result<&'v [ValueRef<'a>], String> {
    match v {
        ValueRef::Array(items)
            if items.len() >= len
                && matches!(&items[0], ValueRef::String(s) if s.as_bytes() == name.as_bytes()) =>
        {
            Ok(&items[..])
        }
        ValueRef::Array(items) if !items.is_empty() => Err(format!(
            "expected a {name} message of {len} elements, got {} elements starting with {}",
            items.len(),
            match &items[0] {
                ValueRef::String(s) => format!("'{}'", String::from_utf8_lossy(s.as_bytes())),
                other => kind(other).to_string(),
            }
        )),
        other => Err(format!("expected a {name} message, got {}", kind(other))),
    }
}

fn bytes<'v>(v: &'v ValueRef<'_>) -> Option<&'v [u8]> {
    match v {
        ValueRef::String(s) => Some(s.as_bytes()),
        ValueRef::Binary(b) => Some(b),
        _ => None,
    }
}

/// The server's side of one connection's handshake.
pub struct ServerHandshake {
    nonce: [u8; 16],
    auth_salt: [u8; 16],
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    pub fn new() -> Self {
        ServerHandshake {
            nonce: random16(),
            auth_salt: random16(),
        }
    }

    pub fn helo(&self) -> Vec<u8> {
        let mut out = Vec::new();
        rmp::encode::write_array_len(&mut out, 2).expect("vec");
        write_str(&mut out, b"HELO");
        rmp::encode::write_map_len(&mut out, 3).expect("vec");
        write_str(&mut out, b"nonce");
        write_str(&mut out, &self.nonce);
        write_str(&mut out, b"auth");
        write_str(&mut out, &self.auth_salt);
        write_str(&mut out, b"keepalive");
        rmp::encode::write_bool(&mut out, true).expect("vec");
        out
    }

    /// Checks the client's PING and returns the PONG to send, with `Err(reason)` when the
    /// client is refused (the PONG then carries the reason; the connection is closed after it).
    pub fn answer_ping(
        &self,
        ping: &ValueRef<'_>,
        shared_key: &[u8],
        self_hostname: &str,
    ) -> (Vec<u8>, Result<String, String>) {
        let result = self.check_ping(ping, shared_key);
        let mut out = Vec::new();
        rmp::encode::write_array_len(&mut out, 5).expect("vec");
        write_str(&mut out, b"PONG");
        match &result {
            Ok((salt, _)) => {
                rmp::encode::write_bool(&mut out, true).expect("vec");
                write_str(&mut out, b"");
                write_str(&mut out, self_hostname.as_bytes());
                let d = digest(salt, self_hostname.as_bytes(), &self.nonce, shared_key);
                write_str(&mut out, d.as_bytes());
            }
            Err(reason) => {
                rmp::encode::write_bool(&mut out, false).expect("vec");
                write_str(&mut out, reason.as_bytes());
                write_str(&mut out, b"");
                write_str(&mut out, b"");
            }
        }
        (out, result.map(|(_, host)| host))
    }

    /// (client's salt, client's hostname) of a PING whose digest matches the key.
    fn check_ping(
        &self,
        ping: &ValueRef<'_>,
        shared_key: &[u8],
    ) -> Result<(Vec<u8>, String), String> {
        let items = elements(ping, "PING", 4)?;
        let host = bytes(&items[1]).ok_or("PING hostname is not a string")?;
        let salt = bytes(&items[2]).ok_or("PING shared_key_salt is not a string")?;
        let got = bytes(&items[3]).ok_or("PING digest is not a string")?;
        let want = digest(salt, host, &self.nonce, shared_key);
        if !same_digest(got, want.as_bytes()) {
            return Err("shared_key mismatch".to_string());
        }
        Ok((salt.to_vec(), String::from_utf8_lossy(host).into_owned()))
    }
}

/// The client's side: built from the server's HELO, it writes the PING and checks the PONG.
pub struct ClientHandshake {
    nonce: Vec<u8>,
    salt: [u8; 16],
}

impl ClientHandshake {
    pub fn from_helo(helo: &ValueRef<'_>) -> Result<Self, String> {
        let items = elements(helo, "HELO", 2)?;
        let ValueRef::Map(options) = &items[1] else {
            return Err(format!("HELO options are {}, not a map", kind(&items[1])));
        };
        let nonce = options
            .iter()
            .find(|(k, _)| bytes(k) == Some(b"nonce"))
            .and_then(|(_, v)| bytes(v))
            .ok_or("HELO carries no nonce")?;
        // A printable salt: the server treats it as a string.
        let mut salt = [0u8; 16];
        for (i, b) in random16().iter().take(8).enumerate() {
            let hex = format!("{b:02x}");
            salt[2 * i..2 * i + 2].copy_from_slice(hex.as_bytes());
        }
        Ok(ClientHandshake {
            nonce: nonce.to_vec(),
            salt,
        })
    }

    pub fn ping(&self, self_hostname: &str, shared_key: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        rmp::encode::write_array_len(&mut out, 6).expect("vec");
        write_str(&mut out, b"PING");
        write_str(&mut out, self_hostname.as_bytes());
        write_str(&mut out, &self.salt);
        let d = digest(
            &self.salt,
            self_hostname.as_bytes(),
            &self.nonce,
            shared_key,
        );
        write_str(&mut out, d.as_bytes());
        write_str(&mut out, b"");
        write_str(&mut out, b"");
        out
    }

    /// Ok(server hostname) when the server accepted us and proved it knows the key too.
    pub fn check_pong(&self, pong: &ValueRef<'_>, shared_key: &[u8]) -> Result<String, String> {
        let items = elements(pong, "PONG", 5)?;
        match &items[1] {
            ValueRef::Boolean(true) => {}
            ValueRef::Boolean(false) => {
                let reason = bytes(&items[2])
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return Err(format!("the server refused the handshake: {reason}"));
            }
            other => return Err(format!("PONG auth result is {}", kind(other))),
        }
        let host = bytes(&items[3]).ok_or("PONG hostname is not a string")?;
        let got = bytes(&items[4]).ok_or("PONG digest is not a string")?;
        if !same_digest(
            got,
            digest(&self.salt, host, &self.nonce, shared_key).as_bytes(),
        ) {
            return Err("the server's PONG digest does not match our shared_key".to_string());
        }
        Ok(String::from_utf8_lossy(host).into_owned())
    }
}

/// Compares two digests in time independent of where they differ (a peer probing the key
/// learns nothing from how fast a wrong digest is refused).
fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::protocol::next_value;

    #[test]
    fn digest_is_sha512_hex_of_the_concatenation() {
        // sha512("") is a published constant; the digest of four empty parts must equal it.
        assert_eq!(
            digest(b"", b"", b"", b""),
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
        );
        // sha512("abc"), split across the parts.
        assert_eq!(
            digest(b"a", b"", b"b", b"c"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn handshake_round_trip_and_wrong_key() {
        let server = ServerHandshake::new();
        let helo = server.helo();
        let (h, _) = next_value(&helo).unwrap().unwrap();
        let client = ClientHandshake::from_helo(&h).unwrap();

        let ping = client.ping("node-a", b"secret");
        let (p, _) = next_value(&ping).unwrap().unwrap();
        let (pong, result) = server.answer_ping(&p, b"secret", "aggregator");
        assert_eq!(result, Ok("node-a".to_string()));
        let (p, _) = next_value(&pong).unwrap().unwrap();
        assert_eq!(
            client.check_pong(&p, b"secret"),
            Ok("aggregator".to_string())
        );
        // A PONG made with another key than the client's is refused by the client.
        let (pong, _) = ServerHandshake {
            nonce: server.nonce,
            auth_salt: [0; 16],
        }
        .answer_ping(
            &next_value(&ping).unwrap().unwrap().0,
            b"secret",
            "aggregator",
        );
        assert!(client
            .check_pong(&next_value(&pong).unwrap().unwrap().0, b"other")
            .unwrap_err()
            .contains("does not match"));

        let ping = client.ping("node-a", b"wrong");
        let (p, _) = next_value(&ping).unwrap().unwrap();
        let (pong, result) = server.answer_ping(&p, b"secret", "aggregator");
        assert_eq!(result, Err("shared_key mismatch".to_string()));
        let (p, _) = next_value(&pong).unwrap().unwrap();
        let e = client.check_pong(&p, b"wrong").unwrap_err();
        assert!(
            e.contains("refused") && e.contains("shared_key mismatch"),
            "{e}"
        );
        assert!(!e.contains("wrong"));
    }
}
