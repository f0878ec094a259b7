//! The Kubernetes API stand-in (kmock, `tests/peers/k8s_fake.py`) and a raw HTTP request for
//! creating and deleting pods in it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::peers::Peers;
use super::{free_port, http_get, wait_until};

/// A child process killed when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// kmock on a free port, up.
pub fn kmock() -> (Server, u16) {
    let port = free_port();
    let child = Command::new(Peers::get().var("PEERS_PYTHON"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/k8s_fake.py"
        ))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    wait_until(Duration::from_secs(30), "kmock up", || {
        http_get(port, "/api/v1/pods").is_some_and(|(s, _)| s == 200)
    });
    (server, port)
}

/// An HTTP/1.0 request with a JSON body: the status.
pub fn request(port: u16, method: &str, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}
