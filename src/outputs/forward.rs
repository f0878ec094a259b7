//! `forward`: sends records to a Fluent Forward server (fluentd, Fluent Bit, a logferry
//! aggregator) as PackedForward messages, one per tag per write, optionally gzip-compressed
//! (CompressedPackedForward), over TCP with optional TLS and the `Shared_Key` handshake.
//! `Upstream` names a Fluent Bit upstream file: writes go round robin over its `[NODE]`s and
//! fail over to the next node when one is down.
//!
//! Invariant 1: with `Require_ack_response` (on by default here, off in Fluent Bit) each message
//! carries a random `chunk` id and `write` returns Ok only after the peer acked every message
//! of the write, so records are settled only once the peer has them (a logferry aggregator acks
//! after its own outputs have them durably). A broken connection, a refused handshake or an ack
//! timeout fails the write; the runner retries the whole write, so a peer may receive a message
//! twice when the failure came after it had accepted that message (an ack lost with the
//! connection, or messages of other tags in the same write that were acked before the failure).
//! Without acks, Ok means the bytes were handed to the socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use rand::RngCore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ConfigError, Origin, Property, Props, Section, SectionKind};
use crate::forward::handshake::ClientHandshake;
use crate::forward::protocol::{
    ack_of, encode_packed, next_value, write_entries_timed, PackedOptions,
};
use crate::record::Event;

/// How long connecting (TCP, TLS, handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries per message at most (before compression): a write gathers up to 4 MiB of records,
/// and servers refuse frames over their `Buffer_Max_Size` (Fluent Bit's default: 6,144,000).
const MAX_MESSAGE_BYTES: usize = 2_000_000;
/// How long the peer may take to ack a message: a logferry aggregator acks after its outputs
/// wrote the records, so this covers a slow destination, not just the network.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// One server: from `Host`/`Port` or an upstream file's `[NODE]`.
struct Node {
    name: String,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    shared_key: Option<String>,
    self_hostname: String,
    conn: Option<Connection>,
}

struct Connection {
    stream: Box<dyn Stream>,
    /// Bytes read from the peer and not yet decoded.
    buf: BytesMut,
}

pub struct ForwardOut {
    nodes: Vec<Node>,
    /// The node the next write starts with (round robin).
    next: usize,
    /// `Tag`: sent instead of the records' tag.
    tag: Option<String>,
    require_ack: bool,
    gzip: bool,
    send_options: bool,
    /// `Time_as_Integer`: seconds instead of EventTime.
    time_as_integer: bool,
}

/// The node-level options shared by the output section and upstream `[NODE]`s.
fn node_from_props(p: &Props, name: String, defaults: Option<&Node>) -> Result<Node, ConfigError> {
    p.refuse(
        &["username", "password", "empty_shared_key"],
        crate::forward::NO_USER_AUTH,
    )?;
    let host = p
        .str("host")
        .map(str::to_string)
        .or_else(|| defaults.map(|d| d.host.clone()))
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let port = p.port("port", crate::forward::DEFAULT_PORT)?;
    let tls_on = match p.prop("tls") {
        Some(_) => p.bool("tls", false)?,
        None => defaults.is_some_and(|d| d.tls.is_some()),
    };
    let server_name = |host: &str| {
        let vhost = p.str("tls.vhost").unwrap_or(host).to_string();
        ServerName::try_from(vhost.clone()).map_err(|_| {
            ConfigError::at(
                &p.section.origin,
                format!("'{vhost}' is not a valid TLS server name"),
            )
        })
    };
    let tls = if tls_on && p.prop("tls").is_some() {
        let verify = p.bool("tls.verify", true)?;
        let ca = p.prop("tls.ca_file");
        let config =
            crate::forward::tls::client_config(verify, ca.map(|c| Path::new(c.value.as_str())))
                .map_err(|e| match ca {
                    Some(c) => ConfigError::key(c, e),
                    None => ConfigError::at(&p.section.origin, e),
                })?;
        if !verify {
            tracing::warn!(
                "forward output {name}: tls.verify is off: the server's certificate is not checked"
            );
        }
        Some((
            tokio_rustls::TlsConnector::from(config),
            server_name(&host)?,
        ))
    } else if tls_on {
        // Inherited from the output section: the name to check is this node's.
        match defaults.and_then(|d| d.tls.as_ref()) {
            Some((connector, _)) => Some((connector.clone(), server_name(&host)?)),
            None => None,
        }
    } else {
        None
    };
    // Both change only how metrics and traces are sent (logferry forwards logs), and Forward
    // mode's metadata (logferry sends PackedForward).
    p.accept(&[
        "tls.debug",
        "fluentd_compat",
        "retain_metadata_in_forward_mode",
    ]);
    Ok(Node {
        name,
        port,
        tls,
        shared_key: p
            .str("shared_key")
            .map(str::to_string)
            .or_else(|| defaults.and_then(|d| d.shared_key.clone())),
        self_hostname: p
            .str("self_hostname")
            .map(str::to_string)
            .or_else(|| defaults.map(|d| d.self_hostname.clone()))
            .unwrap_or_else(|| "localhost".to_string()),
        host,
        conn: None,
    })
}

/// Reads a Fluent Bit upstream file: an `[UPSTREAM]` section (`name`) and `[NODE]` sections
/// (`name`, `host`, `port`, `tls`, `tls.verify`, `tls.ca_file`, `tls.vhost`, `shared_key`,
/// `self_hostname`), values with `${VAR}` / `${VAR:-default}` expanded from the environment.
/// Nodes inherit TLS, key and hostname from the output section.
fn upstream_nodes(path: &Property, defaults: &Node) -> Result<Vec<Node>, ConfigError> {
    let file = Path::new(&path.value);
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::key(path, format!("cannot read upstream file: {e}")))?;
    let origin_file = Arc::new(PathBuf::from(file));
    let mut sections: Vec<(String, Section)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = Origin {
            file: origin_file.clone(),
            line: i + 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_ascii_lowercase();
            if name != "upstream" && name != "node" {
                return Err(ConfigError::at(
                    &origin,
                    format!("unknown section '[{name}]' in an upstream file (UPSTREAM, NODE)"),
                ));
            }
            // The section kind is not used: the props are read with the output's getters.
            sections.push((
                name,
                Section {
                    kind: SectionKind::Output,
                    origin,
                    props: Vec::new(),
                },
            ));
            continue;
        }
        let Some((_, section)) = sections.last_mut() else {
            return Err(ConfigError::at(&origin, "a key before any section"));
        };
        let (key, value) = crate::filters::key_and_rest(line)
            .ok_or_else(|| ConfigError::at(&origin, "expected 'key value'"))?;
        let (value, unset) = crate::config::env::ConfigEnv::default().expand(value);
        for name in unset {
            tracing::warn!("{origin}: environment variable '{name}' is not set: expanded to ''");
        }
        section.props.push(Property {
            key: key.to_string(),
            value,
            origin,
        });
    }
    let mut nodes = Vec::new();
    for (kind, section) in &sections {
        let p = Props::new(section);
        if kind == "upstream" {
            p.accept(&["name"]);
            p.finish("upstream")?;
            continue;
        }
        let name = p
            .str("name")
            .map(str::to_string)
            .unwrap_or_else(|| format!("node-{}", nodes.len()));
        p.required("host")?;
        nodes.push(node_from_props(&p, name, Some(defaults))?);
        p.finish("upstream node")?;
    }
    if nodes.is_empty() {
        return Err(ConfigError::key(
            path,
            "the upstream file defines no [NODE]",
        ));
    }
    Ok(nodes)
}

impl ForwardOut {
    pub fn from_props(p: &Props, instance: &str) -> Result<Self, ConfigError> {
        let own = node_from_props(p, instance.to_string(), None)?;
        let nodes = match p.prop("upstream") {
            Some(path) => upstream_nodes(path, &own)?,
            None => vec![own],
        };
        let gzip = match p.prop("compress") {
            None => false,
            Some(c) => match c.value.trim().to_ascii_lowercase().as_str() {
                "gzip" => true,
                "" | "off" | "none" => false,
                _ => return Err(ConfigError::key(c, "expected gzip")),
            },
        };
        Ok(ForwardOut {
            nodes,
            next: 0,
            tag: p.str("tag").map(str::to_string),
            require_ack: p.bool("require_ack_response", true)?,
            gzip,
            send_options: p.bool("send_options", false)?,
            time_as_integer: p.bool("time_as_integer", false)?,
        })
    }

    /// Sends every batch (one message per tag); Ok when the peer acked them all (or, without
    /// acks, when they were written). Tries each node once, starting with the next in turn.
    pub async fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<()> {
        let messages = self.encode(batches);
        let start = self.next;
        self.next = (self.next + 1) % self.nodes.len();
        let mut failures = Vec::new();
        let mut sent = 0;
        let count = self.nodes.len();
        'nodes: for attempt in 0..count {
            let node = &mut self.nodes[(start + attempt) % count];
            while sent < messages.len() {
                let (chunk, frame) = &messages[sent];
                match node.send(frame, chunk.as_deref()).await {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        tracing::warn!(node = %node.name, "forward to {}:{} failed: {e}", node.host, node.port);
                        failures.push(format!("{} ({}:{}): {e}", node.name, node.host, node.port));
                        continue 'nodes;
                    }
                }
            }
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "no forward node took the records: {}",
            failures.join("; ")
        )))
    }

    /// (chunk id, PackedForward frame): one message per tag, split so that no message's
    /// entries exceed [`MAX_MESSAGE_BYTES`].
    fn encode(&self, batches: &[(&str, &[Event])]) -> Vec<(Option<String>, Vec<u8>)> {
        // (tag, entries, count); `open` maps a tag to its message still taking entries.
        let mut messages: Vec<(&str, Vec<u8>, usize)> = Vec::new();
        let mut open: Vec<(&str, usize)> = Vec::new();
        for (tag, events) in batches {
            let tag = self.tag.as_deref().unwrap_or(tag);
            for e in events.iter() {
                let slot = match open.iter().find(|(t, _)| *t == tag) {
                    Some(&(_, i)) if messages[i].1.len() < MAX_MESSAGE_BYTES => i,
                    _ => {
                        messages.push((tag, Vec::new(), 0));
                        open.retain(|(t, _)| *t != tag);
                        open.push((tag, messages.len() - 1));
                        messages.len() - 1
                    }
                };
                write_entries_timed(
                    &mut messages[slot].1,
                    std::slice::from_ref(e),
                    self.time_as_integer,
                );
                messages[slot].2 += 1;
            }
        }
        tokio::task::block_in_place(|| {
            messages
                .into_iter()
                .map(|(tag, entries, count)| {
                    let chunk = self.require_ack.then(new_chunk_id);
                    let payload = if self.gzip { gzip(&entries) } else { entries };
                    let options = PackedOptions {
                        chunk: chunk.as_deref(),
                        gzip: self.gzip,
                        always: self.send_options,
                    };
                    let frame = encode_packed(tag, &payload, count, &options);
                    (chunk, frame)
                })
                .collect()
        })
    }
}

/// A random 16-byte id, base64 (what fluentd and Fluent Bit send).
fn new_chunk_id() -> String {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    base64::engine::general_purpose::STANDARD.encode(id)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::default(),
    );
    e.write_all(data).expect("writing into a Vec cannot fail");
    e.finish().expect("writing into a Vec cannot fail")
}

fn broken(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, what.into())
}

impl Node {
    /// Sends one message and waits for its ack; on a reused connection that turns out broken
    /// (the peer restarted since), reconnects once. An ack that did not come in time is not a
    /// broken connection: the message may have been taken, so it is not sent again here.
    async fn send(&mut self, frame: &[u8], chunk: Option<&str>) -> std::io::Result<()> {
        let reused = self.conn.is_some();
        match self.send_once(frame, chunk).await {
            Err(e)
                if reused
                    && e.kind() != std::io::ErrorKind::PermissionDenied
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                tracing::debug!(node = %self.name, "reconnecting after: {e}");
                self.send_once(frame, chunk).await
            }
            r => r,
        }
    }

    async fn send_once(&mut self, frame: &[u8], chunk: Option<&str>) -> std::io::Result<()> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
                .await
                .map_err(|_| broken("connecting timed out"))??;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let result = async {
            conn.stream.write_all(frame).await?;
            conn.stream.flush().await?;
            if let Some(chunk) = chunk {
                tokio::time::timeout(ACK_TIMEOUT, conn.wait_ack(chunk.as_bytes()))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no ack within {}s", ACK_TIMEOUT.as_secs()),
                        )
                    })??;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn connect(&self) -> std::io::Result<Connection> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| broken(format!("TLS: {e}")))?,
            ),
            None => Box::new(tcp),
        };
        let mut conn = Connection {
            stream,
            buf: BytesMut::new(),
        };
        if let Some(key) = &self.shared_key {
            conn.handshake(key.as_bytes(), &self.self_hostname).await?;
        }
        tracing::debug!(node = %self.name, "connected to {}:{}", self.host, self.port);
        Ok(conn)
    }
}

impl Connection {
    /// Reads until one complete msgpack value is buffered and hands it to `f`.
    async fn next_frame<T>(
        &mut self,
        mut f: impl FnMut(&rmpv::ValueRef<'_>) -> T,
    ) -> std::io::Result<T> {
        loop {
            let found = next_value(&self.buf)
                .map_err(|e| broken(format!("the server sent {e}")))?
                .map(|(v, len)| (f(&v), len));
            if let Some((out, len)) = found {
                let _ = self.buf.split_to(len);
                return Ok(out);
            }
            if self.buf.len() > 1 << 20 {
                return Err(broken("the server sent a reply larger than 1 MiB"));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(broken("the server closed the connection"));
            }
        }
    }

    async fn wait_ack(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let acked = self.next_frame(|v| ack_of(v).map(|a| a == chunk)).await?;
        match acked {
            Some(true) => Ok(()),
            Some(false) => Err(broken("the server acked another chunk")),
            None => Err(broken("the server sent something other than an ack")),
        }
    }

    /// The client's side of the `Shared_Key` handshake. A refusal is `PermissionDenied` (not
    /// retried on the same node at once).
    async fn handshake(&mut self, key: &[u8], self_hostname: &str) -> std::io::Result<()> {
        let hs = self
            .next_frame(ClientHandshake::from_helo)
            .await?
            .map_err(|e| broken(format!("Shared_Key handshake: {e}")))?;
        self.stream.write_all(&hs.ping(self_hostname, key)).await?;
        self.next_frame(|v| hs.check_pong(v, key))
            .await?
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("Shared_Key handshake: {e}"),
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventTime, Map, Value};
    use bytes::Bytes;

    #[test]
    fn time_as_integer_sends_whole_seconds() {
        let doc = crate::config::classic::parse_str(
            "t.conf",
            "[OUTPUT]\n    Name forward\n    Time_as_Integer On\n",
        )
        .unwrap();
        let out = ForwardOut::from_props(&Props::new(&doc.sections[0]), "forward.0").unwrap();
        let event = Event {
            time: EventTime {
                sec: 1_700_000_000,
                nsec: 123,
            },
            record: Map::default(),
        };
        let (_, frame) = out.encode(&[("a", std::slice::from_ref(&event))]).remove(0);
        // The entry `[time, {}]` has a uint32 time (0xce), not EventTime (fixext8 0xd7).
        assert!(
            frame.windows(3).any(|w| w == [0x92, 0xce, 0x65]),
            "{frame:x?}"
        );
        assert!(!frame.windows(2).any(|w| w == [0xd7, 0x00]), "{frame:x?}");
        let frame = Bytes::from(frame);
        let (v, _) = next_value(&frame).unwrap().unwrap();
        let m = crate::forward::protocol::decode_message(&v, &frame, 1 << 20).unwrap();
        assert_eq!(
            m.events[0].time,
            EventTime {
                sec: 1_700_000_000,
                nsec: 0
            }
        );
    }

    #[test]
    fn one_message_per_tag_split_below_the_server_frame_limit() {
        let doc = crate::config::classic::parse_str(
            "t.conf",
            "[OUTPUT]\n    Name forward\n    Compress gzip\n",
        )
        .unwrap();
        let out = ForwardOut::from_props(&Props::new(&doc.sections[0]), "forward.0").unwrap();
        let line = "x".repeat(1000);
        let events: Vec<Event> = (0..5000)
            .map(|n| {
                let mut m = Map::default();
                m.push(
                    Bytes::from_static(b"log"),
                    Value::string(format!("{n} {line}")),
                );
                Event {
                    time: EventTime { sec: n, nsec: 0 },
                    record: m,
                }
            })
            .collect();
        let messages = out.encode(&[
            ("a", &events[..4000]),
            ("b", &events[4000..]),
            ("a", &events[..1]),
        ]);
        let mut per_tag: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        let mut chunks = std::collections::HashSet::new();
        for (chunk, frame) in &messages {
            let frame = Bytes::from(frame.clone());
            let (v, len) = next_value(&frame).unwrap().unwrap();
            assert_eq!(len, frame.len());
            let m = crate::forward::protocol::decode_message(&v, &frame, 1 << 30).unwrap();
            assert_eq!(m.chunk.as_deref(), chunk.as_deref().map(str::as_bytes));
            assert!(
                chunks.insert(chunk.clone().unwrap()),
                "chunk ids are unique"
            );
            *per_tag.entry(m.tag.to_vec()).or_default() += m.events.len();
        }
        assert_eq!(per_tag[&b"a".to_vec()], 4001);
        assert_eq!(per_tag[&b"b".to_vec()], 1000);
        // 4 MB of `a` does not fit one message; `b` does.
        assert_eq!(messages.len(), 4);
    }
}
