//! `tcp`: newline-separated JSON objects (`Format json`) or raw lines (`Format none`, key `log`)
//! from TCP clients. Bad JSON is reported with the peer and skipped; the connection stays open.
//! While the byte budget is full the input stops reading sockets — it never closes them.
//!
//! Memory per connection is bounded by `Buffer_Size` (Fluent Bit's meaning: the largest record,
//! in KiB when written as a plain number; default `Chunk_Size`, 32 KiB; the buffer grows by
//! `Chunk_Size`). A record that does not fit is dropped up to its separator, counted in
//! `fluentbit_input_long_line_skipped_total` and logged with the peer and its size; the
//! connection and the records after it are kept (Fluent Bit closes the connection instead, losing
//! whatever else it had buffered). Each byte is searched for a separator once.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::InputContext;
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::{Dispatcher, MemBudget};
use crate::record::{Event, EventTime, Map, Value};

/// A connection's bytes cut into records at the separator, holding at most `max` bytes.
struct Framer<'a> {
    buf: BytesMut,
    /// Bytes at the start of `buf` already searched for a separator.
    scanned: usize,
    /// While a record longer than `max` is being skipped: its bytes dropped so far.
    dropping: Option<u64>,
    max: usize,
    chunk: usize,
    sep: &'a [u8],
}

/// What [`Framer::split`] did with an over-long record.
#[derive(Debug, PartialEq)]
enum Oversize {
    /// The buffer filled without a separator: the record is being dropped.
    Started,
    /// Its end was reached (separator or end of stream): this many bytes were dropped.
    Ended(u64),
}

impl<'a> Framer<'a> {
    fn new(max: usize, chunk: usize, sep: &'a [u8]) -> Self {
        Framer {
            buf: BytesMut::new(),
            scanned: 0,
            dropping: None,
            max: max.max(sep.len() + 1),
            chunk: chunk.max(1),
            sep,
        }
    }

    /// How many bytes the next read may add; never 0 (a full buffer is dropped by `split`).
    fn room(&self) -> usize {
        self.max - self.buf.len()
    }

    /// The buffer to read into, with up to `Chunk_Size` (never more than [`Framer::room`]) free.
    fn spare(&mut self) -> &mut BytesMut {
        let want = self.chunk.min(self.room());
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// Moves complete records to `out`; at the end of the stream (`eof`) the rest is the last
    /// record. Over-long records are dropped and reported in `oversize`.
    fn split(&mut self, eof: bool, out: &mut Vec<Bytes>, oversize: &mut Vec<Oversize>) {
        loop {
            let from = self.scanned.saturating_sub(self.sep.len() - 1);
            let Some(i) = memchr::memmem::find(&self.buf[from..], self.sep) else {
                break;
            };
            let line = self.buf.split_to(from + i).freeze();
            self.buf.advance(self.sep.len());
            self.scanned = 0;
            match self.dropping.take() {
                Some(dropped) => oversize.push(Oversize::Ended(dropped + line.len() as u64)),
                None => out.push(line),
            }
        }
        self.scanned = self.buf.len();
        if eof {
            let rest = self.buf.split().freeze();
            self.scanned = 0;
            match self.dropping.take() {
                Some(dropped) => oversize.push(Oversize::Ended(dropped + rest.len() as u64)),
                None if !rest.is_empty() => out.push(rest),
                None => {}
            }
        } else if self.buf.len() >= self.max {
            // Keep a possible partial separator at the end; drop the rest of the record.
            let drop = self.buf.len() - (self.sep.len() - 1);
            self.buf.advance(drop);
            self.scanned = self.buf.len();
            match &mut self.dropping {
                Some(dropped) => *dropped += drop as u64,
                None => {
                    self.dropping = Some(drop as u64);
                    oversize.push(Oversize::Started);
                }
            }
        }
    }
}

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
    chunk_size: usize,
}

/// `Buffer_Size`/`Chunk_Size`: a plain number is KiB (Fluent Bit reads these with `atoi() * 1024`);
/// a number with a unit (`64k`, `1M`) is that size.
fn kib_size(p: &Props, key: &str, default: usize) -> Result<usize, ConfigError> {
    let Some(prop) = p.prop(key) else {
        return Ok(default);
    };
    let v = prop.value.trim();
    let bytes = match v.parse::<u64>() {
        Ok(kib) => kib.checked_mul(1024),
        Err(_) => crate::config::units::size(v).ok(),
    };
    match bytes {
        Some(b) if (1024..=1 << 30).contains(&b) => Ok(b as usize),
        _ => Err(ConfigError::key(
            prop,
            format!("'{v}' is not a size between 1 KiB and 1 GiB (e.g. 32 for 32 KiB, or 64k)"),
        )),
    }
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
        let port = p.port("port", 5170)?;
        let separator = p
            .string_or("separator", "\\n")
            .replace("\\n", "\n")
            .replace("\\r", "\r")
            .replace("\\t", "\t")
            .into_bytes();
        let chunk_size = kib_size(p, "chunk_size", 32 * 1024)?;
        Ok(Tcp {
            metrics,
            tag: Arc::from(tag),
            listen: p.string_or("listen", "0.0.0.0"),
            port,
            format,
            separator,
            buffer_size: kib_size(p, "buffer_size", chunk_size)?,
            chunk_size,
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
        let mut framer = Framer::new(self.buffer_size, self.chunk_size, &self.separator);
        let mut lines = Vec::new();
        let mut oversize = Vec::new();
        loop {
            while budget.is_full() && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let room = framer.room() as u64;
            // A read error ends the connection like an orderly close.
            let n = (&mut stream)
                .take(room)
                .read_buf(framer.spare())
                .await
                .unwrap_or_default();
            framer.split(n == 0, &mut lines, &mut oversize);
            for o in oversize.drain(..) {
                match o {
                    Oversize::Started => {
                        self.metrics.long_line_skipped.add(1);
                        tracing::warn!(input = %self.metrics.name, %peer, buffer_size = self.buffer_size, "a record is longer than Buffer_Size; dropping it up to its separator");
                    }
                    Oversize::Ended(bytes) => {
                        tracing::warn!(input = %self.metrics.name, %peer, "dropped a {bytes}-byte record longer than Buffer_Size");
                    }
                }
            }
            let mut events = Vec::with_capacity(lines.len());
            let mut bytes = 0u64;
            for line in lines.drain(..) {
                bytes += (line.len() + self.separator.len()) as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut Framer, data: &[u8], eof: bool) -> (Vec<Bytes>, Vec<Oversize>) {
        let (mut out, mut over) = (Vec::new(), Vec::new());
        let mut rest = data;
        while !rest.is_empty() {
            let n = f.room().min(rest.len());
            f.spare().extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            f.split(false, &mut out, &mut over);
        }
        if eof {
            f.split(true, &mut out, &mut over);
        }
        (out, over)
    }

    #[test]
    fn framer_bounds_the_buffer_and_drops_only_the_long_record() {
        let mut f = Framer::new(16, 4, b"\n");
        let (out, over) = feed(&mut f, b"short\n0123456789abcdefghijXYZ\nafter\nta", false);
        assert_eq!(out, vec![Bytes::from("short"), Bytes::from("after")]);
        assert_eq!(over, vec![Oversize::Started, Oversize::Ended(23)]);
        assert!(f.buf.len() <= 16);
        let (out, over) = feed(&mut f, b"il", true);
        assert_eq!(out, vec![Bytes::from("tail")]);
        assert!(over.is_empty());
    }

    #[test]
    fn framer_finds_a_separator_split_across_reads_without_rescanning() {
        let mut f = Framer::new(1024, 8, b"\r\n");
        let (out, _) = feed(&mut f, b"abc\r", false);
        assert!(out.is_empty());
        assert_eq!(f.scanned, 4);
        let (out, _) = feed(&mut f, b"\ndef", false);
        assert_eq!(out, vec![Bytes::from("abc")]);
        // An over-long record still ending in a partial separator keeps it.
        let mut f = Framer::new(4, 4, b"\r\n");
        let (out, over) = feed(&mut f, b"123456\r\nok\r\n", true);
        assert_eq!(out, vec![Bytes::from("ok")]);
        assert_eq!(over, vec![Oversize::Started, Oversize::Ended(6)]);
    }

    #[test]
    fn sizes_are_kib_unless_a_unit_is_given() {
        let doc = crate::config::classic::parse_str(
            "t.conf",
            "[INPUT]\n    Name tcp\n    Buffer_Size 64\n    Chunk_Size 8k\n[INPUT]\n    Name tcp\n    Buffer_Size 0\n",
        )
        .unwrap();
        let p = Props::new(&doc.sections[0]);
        assert_eq!(kib_size(&p, "buffer_size", 0).unwrap(), 65_536);
        assert_eq!(kib_size(&p, "chunk_size", 0).unwrap(), 8_000);
        let p = Props::new(&doc.sections[1]);
        assert!(kib_size(&p, "buffer_size", 0).is_err());
    }
}
