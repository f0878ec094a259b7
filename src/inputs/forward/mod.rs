//! `forward`: a Fluent Forward protocol server (what Docker's `fluentd` log driver, ECS FireLens
//! and Fluent Bit/fluentd `forward` outputs send to), on TCP (`Listen`, `Port`) or a unix socket
//! (`Unix_Path`, `Unix_Perm`), optionally with TLS and the `Shared_Key` handshake.
//!
//! Invariants:
//! - No silent loss: a message's `chunk` is acked only after every output its records were
//!   routed to has them durably ([`ack`]); a message without `chunk` is never acked.
//! - Bounded memory, never drop what was read: while the input's budget (`Mem_Buf_Limit`) is
//!   full, connections stop reading; they are never closed for it (Fluent Bit closes them all).
//!   A connection holds at most `Buffer_Max_Size` bytes of an incomplete frame.
//! - Bad input is contained: garbage, an oversized or truncated frame, or an unknown mode
//!   closes that one connection with a logged reason naming the peer and a counter
//!   (`logferry_input_forward_rejected_total`); messages decoded before it are kept.

pub mod ack;
pub mod partial;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::InputContext;
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::MemBudget;
use crate::forward::handshake::ServerHandshake;
use crate::forward::protocol::{decode_message, encode_ack, next_value};
use crate::record::Event;
use ack::{Ack, Share};
use partial::{Joiner, Ready};

/// Where the server listens.
enum Listen {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf, perm: Option<u32> },
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp { host, port } => write!(f, "{host}:{port}"),
            Listen::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `Join_Partial_Messages` settings.
#[derive(Clone, Copy)]
struct JoinPartial {
    max_bytes: usize,
    flush_after: Duration,
}

pub struct Forward {
    pub metrics: Arc<InputMetrics>,
    listen: Listen,
    /// `Tag`: replaces the incoming tag.
    tag: Option<String>,
    /// `Tag_Prefix`: prepended to the (incoming or `Tag`) tag.
    tag_prefix: String,
    /// `Buffer_Chunk_Size`: bytes asked of the socket per read.
    chunk_size: usize,
    /// `Buffer_Max_Size`: the largest frame accepted.
    max_size: usize,
    /// `Shared_Key`: the secure-forward handshake is required.
    shared_key: Option<String>,
    /// `Self_Hostname`: our name in the PONG.
    self_hostname: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    join_partial: Option<JoinPartial>,
}

/// A message's records on their way to the dispatcher (which lives on the input's task).
struct Batch {
    tag: Arc<str>,
    events: Vec<Event>,
    raw_bytes: u64,
    shares: Vec<Share>,
}

/// Records one batch of consecutive same-tag messages holds at most.
const RUN_MAX_EVENTS: usize = 4096;

/// How long a TLS or secure-forward handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// At stop, how long the input waits for its connections to hand over what they decoded.
const STOP_DRAIN_WAIT: Duration = Duration::from_secs(5);

impl Forward {
    pub fn from_props(
        p: &Props,
        tag: Option<String>,
        metrics: Arc<InputMetrics>,
    ) -> Result<Self, ConfigError> {
        let listen = match p.str("unix_path") {
            Some(path) => {
                let perm = match p.prop("unix_perm") {
                    Some(pp) => Some(u32::from_str_radix(pp.value.trim(), 8).map_err(|_| {
                        ConfigError::key(pp, "expected an octal permission such as 0666")
                    })?),
                    None => None,
                };
                p.accept(&["listen", "port"]);
                Listen::Unix {
                    path: PathBuf::from(path),
                    perm,
                }
            }
            None => Listen::Tcp {
                host: p.string_or("listen", "0.0.0.0"),
                port: p.port("port", crate::forward::DEFAULT_PORT)?,
            },
        };
        let chunk_size = p.size("buffer_chunk_size", 1_024_000)?.max(1024) as usize;
        let max_size = p.size("buffer_max_size", 6_144_000)?.max(chunk_size as u64) as usize;
        p.refuse(
            &["security.users", "empty_shared_key"],
            crate::forward::NO_USER_AUTH,
        )?;
        let shared_key = p.str("shared_key").map(str::to_string);
        let self_hostname = p.string_or("self_hostname", "localhost");
        let tls = if p.bool("tls", false)? {
            if matches!(listen, Listen::Unix { .. }) {
                return Err(ConfigError::key(
                    p.prop("tls").expect("set"),
                    "tls applies to a TCP listener (Listen/Port), not to unix_path",
                ));
            }
            let crt = p.required("tls.crt_file")?;
            let key = p.required("tls.key_file")?;
            let config = crate::forward::tls::server_config(
                std::path::Path::new(&crt.value),
                std::path::Path::new(&key.value),
            )
            .map_err(|e| ConfigError::key(crt, e))?;
            Some(tokio_rustls::TlsAcceptor::from(config))
        } else {
            None
        };
        p.accept(&["tls.verify", "tls.debug", "tls.vhost", "workers"]);
        let join_partial = if p.bool("join_partial_messages", false)? {
            Some(JoinPartial {
                max_bytes: p.size("join_partial_max_size", 1_000_000)?.max(1) as usize,
                flush_after: p.duration("join_partial_flush", Duration::from_secs(2))?,
            })
        } else {
            None
        };
        Ok(Forward {
            metrics,
            listen,
            tag,
            tag_prefix: p.string_or("tag_prefix", ""),
            chunk_size,
            max_size,
            shared_key,
            self_hostname,
            tls,
            join_partial,
        })
    }

    pub fn run(self, ctx: InputContext) -> anyhow::Result<()> {
        let runtime = ctx.runtime.clone();
        runtime.block_on(self.serve(ctx))
    }

    /// The tag records are routed by.
    fn route_tag(&self, incoming: &[u8]) -> Arc<str> {
        let base = match &self.tag {
            Some(t) => t.clone(),
            None => String::from_utf8_lossy(incoming).into_owned(),
        };
        Arc::from(format!("{}{base}", self.tag_prefix))
    }

    async fn serve(self, ctx: InputContext) -> anyhow::Result<()> {
        let name = self.metrics.name.clone();
        let listener = bind(&self.listen).await.map_err(|e| {
            anyhow::anyhow!(
                "forward input {name}: cannot listen on {}: {e}",
                self.listen
            )
        })?;
        tracing::info!(input = %name, "forward input listening on {}", self.listen);
        let (tx, mut rx) = mpsc::channel::<Batch>(16);
        let budget = ctx.dispatcher.budget.clone();
        let stop = ctx.stop.clone();
        let mut dispatcher = ctx.dispatcher;
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let conn = this.clone();
                        let (tx, budget, stop) = (tx.clone(), budget.clone(), stop.clone());
                        tokio::spawn(async move { conn.accept(stream, peer, tx, budget, stop).await });
                    }
                    Err(e) => {
                        tracing::warn!(input = %name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(b) = rx.recv() => dispatcher.dispatch(&b.tag, b.events, b.raw_bytes, ack::on_settled(b.shares)),
                _ = tick.tick() => {
                    dispatcher.metrics.paused.set(budget.is_full() as i64);
                    if stop.load(Ordering::SeqCst) { break; }
                }
            }
        }
        drop(listener);
        drop(tx);
        // Connections stop reading within a tick of `stop`; what they decoded is dispatched.
        let drain = async {
            while let Some(b) = rx.recv().await {
                dispatcher.dispatch(&b.tag, b.events, b.raw_bytes, ack::on_settled(b.shares));
            }
        };
        if tokio::time::timeout(STOP_DRAIN_WAIT, drain).await.is_err() {
            tracing::warn!(input = %name, "a connection did not stop in time: what it had not handed over is not acknowledged (the client sends it again)");
        }
        Ok(())
    }

    async fn accept(
        self: Arc<Self>,
        stream: Stream,
        peer: String,
        tx: mpsc::Sender<Batch>,
        budget: Arc<MemBudget>,
        stop: Arc<AtomicBool>,
    ) {
        match (stream, &self.tls) {
            (Stream::Tcp(s), Some(tls)) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(s)).await {
                    Ok(Ok(s)) => self.connection(s, peer, tx, budget, stop).await,
                    Ok(Err(e)) => self.reject(&peer, &format!("TLS handshake failed: {e}")),
                    Err(_) => self.reject(&peer, "TLS handshake timed out"),
                }
            }
            (Stream::Tcp(s), None) => self.connection(s, peer, tx, budget, stop).await,
            (Stream::Unix(s), _) => self.connection(s, peer, tx, budget, stop).await,
        }
    }

    fn reject(&self, peer: &str, reason: &str) {
        self.metrics.forward_rejected.add(1);
        tracing::warn!(input = %self.metrics.name, %peer, "closing forward connection: {reason}");
    }

    async fn connection<S>(
        &self,
        stream: S,
        peer: String,
        tx: mpsc::Sender<Batch>,
        budget: Arc<MemBudget>,
        stop: Arc<AtomicBool>,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read, mut write) = tokio::io::split(stream);
        // The writer outlives the reader: acks of delivered messages still reach the client
        // after we stopped reading.
        let (writer, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let mut conn = Connection {
            server: self,
            read,
            buf: BytesMut::new(),
            peer,
            writer,
            stop,
            budget,
            tx,
            joiner: self
                .join_partial
                .map(|j| Joiner::new(j.max_bytes, j.flush_after)),
            failed_at: 0,
        };
        if let Some(key) = &self.shared_key {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake(key.as_bytes())).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return,
                Ok(Err(reason)) => return self.reject(&conn.peer, &reason),
                Err(_) => return self.reject(&conn.peer, "Shared_Key handshake timed out"),
            }
        }
        if let Err(reason) = conn.serve().await {
            self.reject(&conn.peer, &reason);
        }
        conn.flush_partials(true).await;
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let peer = match s.peer_cred() {
                    Ok(c) => format!("unix socket peer pid {}", c.pid().unwrap_or_default()),
                    Err(_) => "unix socket peer".to_string(),
                };
                Ok((Stream::Unix(s), peer))
            }
        }
    }
}

async fn bind(listen: &Listen) -> std::io::Result<Listener> {
    match listen {
        Listen::Tcp { host, port } => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind((host.as_str(), *port)).await?,
        )),
        Listen::Unix { path, perm } => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            match std::fs::symlink_metadata(path) {
                // A socket left by an earlier run: nobody serves it any more.
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the path exists and is not a socket (refusing to remove it)",
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let l = tokio::net::UnixListener::bind(path)?;
            if let Some(mode) = perm {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
            }
            Ok(Listener::Unix(l))
        }
    }
}

/// One client connection's reading side.
struct Connection<'a, R> {
    server: &'a Forward,
    read: R,
    /// Bytes read and not yet decoded: at most one incomplete frame.
    buf: BytesMut,
    peer: String,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    budget: Arc<MemBudget>,
    tx: mpsc::Sender<Batch>,
    joiner: Option<Joiner>,
    /// Buffer length at the last decode attempt that found the frame incomplete.
    failed_at: usize,
}

/// What one read brought.
enum Read {
    /// Bytes were added; `short`: fewer than asked (the socket had no more for now).
    Data {
        short: bool,
    },
    Eof,
    Stopped,
    /// Nothing read, but a pending partial line waited `Join_Partial_Flush`.
    PartialDue,
}

impl<R: AsyncRead + Unpin> Connection<'_, R> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Reads once (at most `Buffer_Chunk_Size`, never past `Buffer_Max_Size` + 1), after
    /// waiting for budget; gives up when the input stops.
    async fn read_some(&mut self) -> Read {
        while self.budget.is_full() {
            if self.stopping() {
                return Read::Stopped;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let want = self
            .server
            .chunk_size
            .min(self.server.max_size + 1 - self.buf.len());
        self.buf.reserve(want);
        let stop = self.stop.clone();
        let mut limited = (&mut self.read).take(want as u64);
        let read = limited.read_buf(&mut self.buf);
        let stopped = async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let flush_after = match &self.joiner {
            Some(j) if !j.is_empty() => self.server.join_partial.map(|j| j.flush_after),
            _ => None,
        };
        let partial_due = async move {
            match flush_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A read error ends the connection like an orderly close.
            n = read => match n.unwrap_or(0) {
                0 => Read::Eof,
                n => Read::Data { short: n < want },
            },
            _ = stopped => Read::Stopped,
            _ = partial_due => Read::PartialDue,
        }
    }

    /// The server's side of the `Shared_Key` handshake. Ok(false): refused (PONG sent, logged).
    async fn handshake(&mut self, key: &[u8]) -> Result<bool, String> {
        let hs = ServerHandshake::new();
        let _ = self.writer.send(hs.helo());
        loop {
            let answer = next_value(&self.buf)
                .map_err(|e| e.0)?
                .map(|(v, len)| (hs.answer_ping(&v, key, &self.server.self_hostname), len));
            if let Some(((pong, result), len)) = answer {
                let _ = self.writer.send(pong);
                let _ = self.buf.split_to(len);
                return match result {
                    Ok(host) => {
                        tracing::debug!(input = %self.server.metrics.name, peer = %self.peer, client = %host, "Shared_Key handshake done");
                        Ok(true)
                    }
                    Err(reason) => {
                        self.server.reject(
                            &self.peer,
                            &format!("Shared_Key handshake refused: {reason}"),
                        );
                        Ok(false)
                    }
                };
            }
            match self.read_some().await {
                Read::Data { .. } if self.buf.len() > self.server.max_size => {
                    return Err("handshake message larger than Buffer_Max_Size".into())
                }
                Read::Data { .. } | Read::PartialDue => {}
                Read::Eof => return Err("closed during the Shared_Key handshake".into()),
                Read::Stopped => return Ok(false),
            }
        }
    }

    /// Reads and decodes until the client closes, the input stops, or a frame is refused
    /// (`Err(reason)`).
    async fn serve(&mut self) -> Result<(), String> {
        loop {
            let short = match self.read_some().await {
                Read::Data { short } => short,
                Read::PartialDue => {
                    self.flush_partials(false).await;
                    continue;
                }
                Read::Eof => {
                    self.decode_buffer().await?;
                    if self.buf.is_empty() {
                        return Ok(());
                    }
                    return Err(format!(
                        "closed in the middle of a frame ({} bytes of it received)",
                        self.buf.len()
                    ));
                }
                // What was read is handed over; an incomplete frame is the client's to resend.
                Read::Stopped => return self.decode_buffer().await,
            };
            self.flush_partials(false).await;
            // Decoding re-parses an incomplete frame from its start, so try when the socket
            // had nothing more for now, or once the frame doubled: linear-logarithmic work
            // for a large frame arriving in many reads.
            let len = self.buf.len();
            if !(short || len >= 2 * self.failed_at || len > self.server.max_size) {
                continue;
            }
            self.decode_buffer().await?;
            if self.buf.len() > self.server.max_size {
                return Err(format!(
                    "a frame is larger than Buffer_Max_Size ({} bytes)",
                    self.server.max_size
                ));
            }
        }
    }

    /// Hands every complete frame in the buffer to the dispatcher; keeps an incomplete tail.
    /// Consecutive messages with one tag travel as one batch (Docker's driver sends a message
    /// per line: a dispatch per line would cost more than decoding it), each keeping its ack.
    async fn decode_buffer(&mut self) -> Result<(), String> {
        let data = self.buf.split().freeze();
        let mut at = 0;
        // The batch being gathered, with the incoming tag its messages share.
        let mut run: Option<(Bytes, Batch)> = None;
        let mut result = loop {
            let (message, len) = match next_value(&data[at..]) {
                Ok(Some((v, len))) => {
                    let inflate_limit = self.server.max_size.saturating_mul(16);
                    (decode_message(&v, &data, inflate_limit), len)
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("bad frame at byte {at} of the buffer: {e}")),
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => break Err(format!("bad message: {e}")),
            };
            at += len;
            let ack = message
                .chunk
                .as_ref()
                .map(|c| Ack::new(encode_ack(c), self.writer.clone()));
            // Charged to the budget: what the records hold once inflated, not the wire bytes.
            let size = len.max(message.inflated_bytes) as u64;
            if self.joiner.is_some() {
                if let Err(e) = self.emit(message.tag, message.events, size, ack).await {
                    break Err(e);
                }
                continue;
            }
            match &mut run {
                Some((incoming, r))
                    if *incoming == message.tag && r.events.len() < RUN_MAX_EVENTS =>
                {
                    r.events.extend(message.events);
                    r.raw_bytes += size;
                    r.shares.extend(ack.iter().map(Ack::share));
                }
                _ => {
                    let next = Batch {
                        tag: self.server.route_tag(&message.tag),
                        events: message.events,
                        raw_bytes: size,
                        shares: ack.iter().map(Ack::share).collect(),
                    };
                    if let Some((_, done)) = run.replace((message.tag, next)) {
                        if let Err(e) = self.send_batch(done).await {
                            break Err(e);
                        }
                    }
                }
            }
        };
        // Messages decoded before a bad frame are kept.
        if let Some((_, done)) = run {
            result = result.and(self.send_batch(done).await);
        }
        self.failed_at = data.len() - at;
        self.buf.extend_from_slice(&data[at..]);
        result
    }

    async fn emit(
        &mut self,
        tag: Bytes,
        events: Vec<Event>,
        raw_bytes: u64,
        ack: Option<Ack>,
    ) -> Result<(), String> {
        let Some(joiner) = &mut self.joiner else {
            let shares = ack.iter().map(Ack::share).collect();
            return self.send(&tag, events, raw_bytes, shares).await;
        };
        let (ready, evicted) = joiner.push(&tag, events, ack.as_ref());
        for (t, r) in evicted {
            self.send(&t, r.events, 0, r.shares).await?;
        }
        self.send(&tag, ready.events, raw_bytes, ready.shares).await
    }

    async fn flush_partials(&mut self, all: bool) {
        let Some(joiner) = &mut self.joiner else {
            return;
        };
        for (tag, Ready { events, shares }) in joiner.flush(all) {
            // The dispatcher is gone only when the input stopped: then the shares abandon
            // their acks and the client resends.
            let _ = self.send(&tag, events, 0, shares).await;
        }
    }

    async fn send(
        &self,
        tag: &Bytes,
        events: Vec<Event>,
        raw_bytes: u64,
        shares: Vec<Share>,
    ) -> Result<(), String> {
        self.send_batch(Batch {
            tag: self.server.route_tag(tag),
            events,
            raw_bytes,
            shares,
        })
        .await
    }

    async fn send_batch(&self, batch: Batch) -> Result<(), String> {
        self.tx
            .send(batch)
            .await
            .map_err(|_| "the input stopped".to_string())
    }
}
