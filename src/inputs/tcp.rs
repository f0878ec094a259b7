//! `tcp`: newline-separated JSON objects (`Format json`) or raw lines (`Format none`, key `log`)
//! from TCP clients. Bad JSON is reported with the peer and skipped; the connection stays open.
//! While the byte budget is full the input stops reading sockets — it never closes them.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::InputContext;
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::{Dispatcher, MemBudget};
use crate::record::{Event, EventTime, Map, Value};

#[derive(Clone, Copy, PartialEq)]
enum TcpFormat {
    Json,
    None,
}

pub struct Tcp {
    pub metrics: Arc<InputMetrics>,
    tag: Arc<str>,
    listen: String,
    port: u16,
    format: TcpFormat,
    separator: Vec<u8>,
    buffer_size: usize,
}

impl Tcp {
    pub fn from_props(
        p: &Props,
        tag: String,
        metrics: Arc<InputMetrics>,
    ) -> Result<Self, ConfigError> {
        let format = match p.prop("format") {
            None => TcpFormat::Json,
            Some(f) => match f.value.to_ascii_lowercase().as_str() {
                "json" => TcpFormat::Json,
                "none" => TcpFormat::None,
                _ => return Err(ConfigError::key(f, "expected json or none")),
            },
        };
        let port = match p.prop("port") {
            Some(pp) => pp
                .value
                .trim()
                .parse()
                .map_err(|_| ConfigError::key(pp, "not a port number"))?,
            None => 5170,
        };
        let separator = p
            .string_or("separator", "\\n")
            .replace("\\n", "\n")
            .replace("\\r", "\r")
            .replace("\\t", "\t")
            .into_bytes();
        Ok(Tcp {
            metrics,
            tag: Arc::from(tag),
            listen: p.string_or("listen", "0.0.0.0"),
            port,
            format,
            separator,
            buffer_size: p.size("buffer_size", 32_768)?.max(1024) as usize,
        })
    }

    pub fn run(self, ctx: InputContext) -> anyhow::Result<()> {
        let runtime = ctx.runtime.clone();
        runtime.block_on(self.serve(ctx))
    }

    async fn serve(self, ctx: InputContext) -> anyhow::Result<()> {
        let listener = TcpListener::bind((self.listen.as_str(), self.port))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "tcp input {}: cannot listen on {}:{}: {e}",
                    self.metrics.name,
                    self.listen,
                    self.port
                )
            })?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<Event>, u64)>(64);
        let budget: Arc<MemBudget> = ctx.dispatcher.budget.clone();
        let this = Arc::new(self);
        let stop = ctx.stop.clone();
        let mut dispatcher: Dispatcher = ctx.dispatcher;
        let tag = this.tag.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, peer)) = accepted {
                        let conn = this.clone();
                        let tx = tx.clone();
                        let budget = budget.clone();
                        let stop = stop.clone();
                        tokio::spawn(async move { conn.connection(stream, peer.to_string(), tx, budget, stop).await });
                    }
                }
                Some((events, bytes)) = rx.recv() => dispatcher.dispatch(&tag, events, bytes, Box::new(|| {})),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) { break; }
                }
            }
        }
        drop(listener);
        while let Ok((events, bytes)) = rx.try_recv() {
            dispatcher.dispatch(&tag, events, bytes, Box::new(|| {}));
        }
        Ok(())
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: String,
        tx: tokio::sync::mpsc::Sender<(Vec<Event>, u64)>,
        budget: Arc<MemBudget>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut buf = BytesMut::with_capacity(self.buffer_size);
        loop {
            while budget.is_full() && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(self.buffer_size);
            }
            let n = match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let mut events = Vec::new();
            let mut bytes = 0u64;
            let sep = &self.separator;
            while let Some(pos) = memchr::memmem::find(&buf, sep) {
                let line = buf.split_to(pos).freeze();
                let _ = buf.split_to(sep.len());
                bytes += (line.len() + sep.len()) as u64;
                if let Some(e) = self.record(line, &peer) {
                    events.push(e);
                }
            }
            if n == 0 && !buf.is_empty() {
                let line = buf.split().freeze();
                bytes += line.len() as u64;
                if let Some(e) = self.record(line, &peer) {
                    events.push(e);
                }
            }
            if !events.is_empty() && tx.send((events, bytes)).await.is_err() {
                return;
            }
            if n == 0 {
                return;
            }
        }
    }

    fn record(&self, line: Bytes, peer: &str) -> Option<Event> {
        let line = if line.last() == Some(&b'\r') {
            line.slice(..line.len() - 1)
        } else {
            line
        };
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        match self.format {
            TcpFormat::None => {
                let mut m = Map::with_capacity(1);
                m.push(Bytes::from_static(b"log"), Value::Str(line));
                Some(Event {
                    time: EventTime::now(),
                    record: m,
                })
            }
            TcpFormat::Json => match crate::json::parse(&line) {
                Ok(Value::Map(m)) => Some(Event {
                    time: EventTime::now(),
                    record: m,
                }),
                Ok(_) => {
                    tracing::warn!(input = %self.metrics.name, %peer, "skipping a message that is JSON but not an object");
                    None
                }
                Err(e) => {
                    tracing::warn!(input = %self.metrics.name, %peer, "skipping invalid JSON message ({} bytes): {e}", line.len());
                    None
                }
            },
        }
    }
}
