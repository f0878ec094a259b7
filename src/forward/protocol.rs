//! Forward protocol messages: cutting a byte stream into msgpack frames, decoding the four
//! event modes into [`Event`]s, and encoding what either side sends (PackedForward messages,
//! acks).
//!
//! Modes (Forward protocol v1): Message `[tag, time, record(, option)]`, Forward
//! `[tag, [[time, record], ...](, option)]`, PackedForward `[tag, bin|str(, option)]` whose bytes
//! are concatenated `[time, record]` entries, and CompressedPackedForward: PackedForward with
//! `option.compressed` `"gzip"` (one or more gzip members) or `"zstd"`. Times are EventTime
//! (ext type 0: big-endian u32 seconds, u32 nanoseconds), integers or floats; Fluent Bit's
//! `[[time, metadata], record]` entries are accepted (the metadata is not kept).
//!
//! Decoding borrows from the frame: strings become `Bytes` slices of the read buffer (or of the
//! decompressed payload), not copies.

use std::io::Read;

use bytes::Bytes;
use rmpv::ValueRef;

use crate::record::{Event, EventTime, Map, Value};

/// Why a frame was refused. The connection that sent it is closed with this reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// How deeply values may nest. Decoding recurses per level, so the bound keeps a hostile frame
/// from exhausting a worker thread's stack; log records nest a few levels.
pub const MAX_DEPTH: usize = 100;

/// One complete msgpack value at the head of a buffer: `Ok(Some((value, length)))`, `Ok(None)`
/// when more bytes are needed, or an error for bytes that are not msgpack (or nest deeper than
/// [`MAX_DEPTH`]).
pub fn next_value(buf: &[u8]) -> Result<Option<(ValueRef<'_>, usize)>, DecodeError> {
    let mut rest = buf;
    match rmpv::decode::read_value_ref_with_max_depth(&mut rest, MAX_DEPTH) {
        Ok(v) => Ok(Some((v, buf.len() - rest.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => err(format!("not msgpack: {e}")),
    }
}

/// A decoded event message.
#[derive(Debug, PartialEq)]
pub struct EventMessage {
    pub tag: Bytes,
    pub events: Vec<Event>,
    /// `option.chunk`: the client waits for `{"ack": chunk}`.
    pub chunk: Option<Bytes>,
    /// The bytes the events were decoded from once decompressed (a CompressedPackedForward
    /// payload inflated; 0 for the other modes, whose size is the frame's): what the records
    /// cost in memory is charged from this, not from the compressed frame.
    pub inflated_bytes: usize,
}

/// Decodes a top-level frame (already cut by [`next_value`]) of any of the four modes.
/// `frame` is the buffer `value` borrows from (strings become slices of it); `inflate_limit`
/// bounds the decompressed size of a CompressedPackedForward payload.
pub fn decode_message(
    value: &ValueRef<'_>,
    frame: &Bytes,
    inflate_limit: usize,
) -> Result<EventMessage, DecodeError> {
    let ValueRef::Array(items) = value else {
        return err(format!("a message must be an array, got {}", kind(value)));
    };
    if !(2..=4).contains(&items.len()) {
        return err(format!(
            "a message must have 2 to 4 elements, got {}",
            items.len()
        ));
    }
    let tag = match &items[0] {
        ValueRef::String(s) => frame.slice_ref(s.as_bytes()),
        other => return err(format!("the tag must be a string, got {}", kind(other))),
    };
    let mut events = Vec::new();
    let mut inflated_bytes = 0;
    let option_at = match &items[1] {
        // Forward mode.
        ValueRef::Array(entries) => {
            events.reserve(entries.len());
            for e in entries {
                events.push(decode_entry(e, frame)?);
            }
            2
        }
        // PackedForward / CompressedPackedForward.
        ValueRef::Binary(b) => {
            inflated_bytes = packed(items.get(2), frame.slice_ref(b), inflate_limit, &mut events)?;
            2
        }
        ValueRef::String(s) => {
            inflated_bytes = packed(
                items.get(2),
                frame.slice_ref(s.as_bytes()),
                inflate_limit,
                &mut events,
            )?;
            2
        }
        // Message mode.
        t @ (ValueRef::Integer(_) | ValueRef::F32(_) | ValueRef::F64(_) | ValueRef::Ext(..)) => {
            let Some(record) = items.get(2) else {
                return err("message mode without a record");
            };
            events.push(Event {
                time: decode_time(t)?,
                record: decode_record(record, frame)?,
            });
            3
        }
        other => {
            return err(format!(
                "unknown mode: the second element is {}",
                kind(other)
            ))
        }
    };
    let chunk = match items.get(option_at) {
        None | Some(ValueRef::Nil) => None,
        Some(ValueRef::Map(option)) => match lookup(option, "chunk") {
            Some(ValueRef::String(s)) => Some(frame.slice_ref(s.as_bytes())),
            Some(ValueRef::Binary(b)) => Some(frame.slice_ref(b)),
            Some(other) => {
                return err(format!(
                    "option.chunk must be a string, got {}",
                    kind(other)
                ))
            }
            None => None,
        },
        Some(other) => return err(format!("the option must be a map, got {}", kind(other))),
    };
    if items.len() > option_at + 1 {
        return err("extra elements after the option");
    }
    Ok(EventMessage {
        tag,
        events,
        chunk,
        inflated_bytes,
    })
}

fn lookup<'v, 'a>(map: &'v [(ValueRef<'a>, ValueRef<'a>)], key: &str) -> Option<&'v ValueRef<'a>> {
    map.iter()
        .find(|(k, _)| matches!(k, ValueRef::String(s) if s.as_bytes() == key.as_bytes()))
        .map(|(_, v)| v)
}

/// Decodes a PackedForward payload, decompressing it first as `option.compressed` says.
fn packed(
    option: Option<&ValueRef<'_>>,
    payload: Bytes,
    inflate_limit: usize,
    out: &mut Vec<Event>,
) -> Result<usize, DecodeError> {
    let compressed = match option {
        Some(ValueRef::Map(m)) => match lookup(m, "compressed") {
            Some(ValueRef::String(s)) => Some(s.as_bytes().to_ascii_lowercase()),
            Some(other) => {
                return err(format!(
                    "option.compressed must be a string, got {}",
                    kind(other)
                ))
            }
            None => None,
        },
        _ => None,
    };
    let payload = match compressed.as_deref() {
        None | Some(b"text") => return entries(payload, out).map(|()| 0),
        Some(b"gzip") => inflate(
            flate2::read::MultiGzDecoder::new(&payload[..]),
            "gzip",
            inflate_limit,
        )?,
        Some(b"zstd") => inflate(
            zstd::stream::read::Decoder::new(&payload[..])
                .map_err(|e| DecodeError(format!("zstd: {e}")))?,
            "zstd",
            inflate_limit,
        )?,
        Some(other) => {
            return err(format!(
                "unsupported option.compressed '{}'",
                String::from_utf8_lossy(other)
            ))
        }
    };
    entries(payload.clone(), out)?;
    Ok(payload.len())
}

/// Decodes the concatenated `[time, record]` entries of a (Compressed)PackedForward payload.
fn entries(payload: Bytes, out: &mut Vec<Event>) -> Result<(), DecodeError> {
    let mut at = 0;
    while at < payload.len() {
        match next_value(&payload[at..])? {
            Some((entry, len)) => {
                out.push(decode_entry(&entry, &payload)?);
                at += len;
            }
            None => return err("a packed entry is truncated"),
        }
    }
    Ok(())
}

fn inflate(mut reader: impl Read, what: &str, limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    (&mut reader)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError(format!("{what} payload: {e}")))?;
    if out.len() > limit {
        return err(format!(
            "{what} payload inflates to more than {limit} bytes"
        ));
    }
    Ok(Bytes::from(out))
}

/// `[time, record]` or Fluent Bit's `[[time, metadata], record]`.
fn decode_entry(entry: &ValueRef<'_>, frame: &Bytes) -> Result<Event, DecodeError> {
    let ValueRef::Array(pair) = entry else {
        return err(format!("an entry must be an array, got {}", kind(entry)));
    };
    let [time, record] = &pair[..] else {
        return err(format!(
            "an entry must be [time, record], got {} elements",
            pair.len()
        ));
    };
    let time = match time {
        ValueRef::Array(header) if !header.is_empty() => &header[0],
        t => t,
    };
    Ok(Event {
        time: decode_time(time)?,
        record: decode_record(record, frame)?,
    })
}

/// EventTime (ext 0), integer seconds or float seconds.
pub fn decode_time(v: &ValueRef<'_>) -> Result<EventTime, DecodeError> {
    match v {
        ValueRef::Ext(0, b) if b.len() == 8 => Ok(EventTime {
            sec: u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
            nsec: u32::from_be_bytes([b[4], b[5], b[6], b[7]]).min(999_999_999),
        }),
        ValueRef::Ext(t, b) => err(format!(
            "a time must be EventTime (ext type 0, 8 bytes), got ext type {t} of {} bytes",
            b.len()
        )),
        ValueRef::Integer(i) => match i.as_i64() {
            Some(s) => Ok(EventTime { sec: s, nsec: 0 }),
            None => err("integer time out of range"),
        },
        ValueRef::F64(f) => Ok(float_time(*f)),
        ValueRef::F32(f) => Ok(float_time(*f as f64)),
        other => err(format!(
            "a time must be a number or EventTime, got {}",
            kind(other)
        )),
    }
}

fn float_time(f: f64) -> EventTime {
    let sec = f.floor();
    EventTime {
        sec: sec as i64,
        nsec: (((f - sec) * 1e9).round() as u32).min(999_999_999),
    }
}

fn decode_record(v: &ValueRef<'_>, frame: &Bytes) -> Result<Map, DecodeError> {
    match v {
        ValueRef::Map(pairs) => Ok(map(pairs, frame)),
        other => err(format!("a record must be a map, got {}", kind(other))),
    }
}

fn map(pairs: &[(ValueRef<'_>, ValueRef<'_>)], frame: &Bytes) -> Map {
    let mut m = Map::with_capacity(pairs.len());
    for (k, v) in pairs {
        let key = match k {
            ValueRef::String(s) => frame.slice_ref(s.as_bytes()),
            ValueRef::Binary(b) => frame.slice_ref(b),
            // Non-string keys are rare; they keep their text form (as Fluent Bit prints them).
            other => Bytes::from(other.to_string()),
        };
        m.push(key, value(v, frame));
    }
    m
}

fn value(v: &ValueRef<'_>, frame: &Bytes) -> Value {
    match v {
        ValueRef::Nil => Value::Null,
        ValueRef::Boolean(b) => Value::Bool(*b),
        ValueRef::Integer(i) => match i.as_i64() {
            Some(n) => Value::Int(n),
            None => Value::UInt(i.as_u64().unwrap_or(u64::MAX)),
        },
        ValueRef::F32(f) => Value::Float(*f as f64),
        ValueRef::F64(f) => Value::Float(*f),
        ValueRef::String(s) => Value::Str(frame.slice_ref(s.as_bytes())),
        ValueRef::Binary(b) => Value::Str(frame.slice_ref(b)),
        ValueRef::Ext(_, b) => Value::Str(frame.slice_ref(b)),
        ValueRef::Array(items) => Value::Array(items.iter().map(|i| value(i, frame)).collect()),
        ValueRef::Map(pairs) => Value::Map(map(pairs, frame)),
    }
}

pub fn kind(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Nil => "nil",
        ValueRef::Boolean(_) => "a boolean",
        ValueRef::Integer(_) => "an integer",
        ValueRef::F32(_) | ValueRef::F64(_) => "a float",
        ValueRef::String(_) => "a string",
        ValueRef::Binary(_) => "binary",
        ValueRef::Array(_) => "an array",
        ValueRef::Map(_) => "a map",
        ValueRef::Ext(..) => "an ext value",
    }
}

// ---- encoding ----
// Writes into a Vec<u8> cannot fail, so rmp's io results are unwrapped with `expect`.

const VEC_WRITE: &str = "writing msgpack into a Vec cannot fail";

pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    rmp::encode::write_str_len(out, s.len() as u32).expect(VEC_WRITE);
    out.extend_from_slice(s);
}

/// EventTime as ext type 0.
pub fn write_time(out: &mut Vec<u8>, t: EventTime) {
    rmp::encode::write_ext_meta(out, 8, 0).expect(VEC_WRITE);
    out.extend_from_slice(&(t.sec.clamp(0, u32::MAX as i64) as u32).to_be_bytes());
    out.extend_from_slice(&t.nsec.to_be_bytes());
}

pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => rmp::encode::write_nil(out).expect(VEC_WRITE),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).expect(VEC_WRITE),
        Value::Int(i) => {
            rmp::encode::write_sint(out, *i).expect(VEC_WRITE);
        }
        Value::UInt(u) => {
            rmp::encode::write_uint(out, *u).expect(VEC_WRITE);
        }
        Value::Float(f) => rmp::encode::write_f64(out, *f).expect(VEC_WRITE),
        Value::Str(s) => write_str(out, s),
        Value::Array(items) => {
            rmp::encode::write_array_len(out, items.len() as u32).expect(VEC_WRITE);
            items.iter().for_each(|i| write_value(out, i));
        }
        Value::Map(m) => write_map(out, m),
    }
}

pub fn write_map(out: &mut Vec<u8>, m: &Map) {
    rmp::encode::write_map_len(out, m.len() as u32).expect(VEC_WRITE);
    for (k, v) in &m.0 {
        write_str(out, k);
        write_value(out, v);
    }
}

/// Concatenated `[EventTime, record]` entries: a PackedForward payload.
pub fn write_entries(out: &mut Vec<u8>, events: &[Event]) {
    write_entries_timed(out, events, false);
}

/// [`write_entries`], with the time as integer seconds when `integer_time` (`Time_as_Integer`,
/// for fluentd older than 0.14 which cannot read EventTime).
pub fn write_entries_timed(out: &mut Vec<u8>, events: &[Event], integer_time: bool) {
    for e in events {
        rmp::encode::write_array_len(out, 2).expect(VEC_WRITE);
        if integer_time {
            rmp::encode::write_sint(out, e.time.sec).expect(VEC_WRITE);
        } else {
            write_time(out, e.time);
        }
        write_map(out, &e.record);
    }
}

/// What a PackedForward message carries besides its entries.
pub struct PackedOptions<'a> {
    /// `chunk` id the peer acks; `None` sends no ack request.
    pub chunk: Option<&'a str>,
    /// The payload is a gzip member (CompressedPackedForward).
    pub gzip: bool,
    /// Send the option map even without `chunk` or compression (`size` is always in it).
    pub always: bool,
}

/// `[tag, bin(payload), option?]` with `option = {size, chunk?, compressed?}`.
pub fn encode_packed(tag: &str, payload: &[u8], entries: usize, opt: &PackedOptions) -> Vec<u8> {
    let with_option = opt.always || opt.chunk.is_some() || opt.gzip;
    let mut out = Vec::with_capacity(payload.len() + tag.len() + 64);
    rmp::encode::write_array_len(&mut out, if with_option { 3 } else { 2 }).expect(VEC_WRITE);
    write_str(&mut out, tag.as_bytes());
    rmp::encode::write_bin_len(&mut out, payload.len() as u32).expect(VEC_WRITE);
    out.extend_from_slice(payload);
    if with_option {
        let n = 1 + opt.chunk.is_some() as u32 + opt.gzip as u32;
        rmp::encode::write_map_len(&mut out, n).expect(VEC_WRITE);
        write_str(&mut out, b"size");
        rmp::encode::write_uint(&mut out, entries as u64).expect(VEC_WRITE);
        if let Some(c) = opt.chunk {
            write_str(&mut out, b"chunk");
            write_str(&mut out, c.as_bytes());
        }
        if opt.gzip {
            write_str(&mut out, b"compressed");
            write_str(&mut out, b"gzip");
        }
    }
    out
}

/// `{"ack": chunk}`.
pub fn encode_ack(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 8);
    rmp::encode::write_map_len(&mut out, 1).expect(VEC_WRITE);
    write_str(&mut out, b"ack");
    write_str(&mut out, chunk);
    out
}

/// The chunk id of an ack frame `{"ack": chunk}`, if `v` is one.
pub fn ack_of<'a>(v: &'a ValueRef<'_>) -> Option<&'a [u8]> {
    match v {
        ValueRef::Map(m) => match lookup(m, "ack") {
            Some(ValueRef::String(s)) => Some(s.as_bytes()),
            Some(ValueRef::Binary(b)) => Some(b),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(log: &str) -> Map {
        let mut m = Map::default();
        m.push(Bytes::from_static(b"log"), Value::string(log.to_string()));
        m
    }

    fn ev(sec: i64, nsec: u32, log: &str) -> Event {
        Event {
            time: EventTime { sec, nsec },
            record: record(log),
        }
    }

    fn decode(bytes: Vec<u8>) -> Result<EventMessage, DecodeError> {
        let frame = Bytes::from(bytes);
        let (v, len) = next_value(&frame)?.expect("complete frame");
        assert_eq!(len, frame.len());
        decode_message(&v, &frame, 1 << 20)
    }

    fn header(out: &mut Vec<u8>, n: u32, tag: &str) {
        rmp::encode::write_array_len(out, n).unwrap();
        write_str(out, tag.as_bytes());
    }

    fn chunk_option(out: &mut Vec<u8>, chunk: &str, compressed: Option<&str>) {
        rmp::encode::write_map_len(out, 1 + compressed.is_some() as u32).unwrap();
        write_str(out, b"chunk");
        write_str(out, chunk.as_bytes());
        if let Some(c) = compressed {
            write_str(out, b"compressed");
            write_str(out, c.as_bytes());
        }
    }

    #[test]
    fn message_mode_with_event_time_integer_and_float() {
        let mut b = Vec::new();
        header(&mut b, 4, "app");
        write_time(
            &mut b,
            EventTime {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
        );
        write_map(&mut b, &record("a"));
        chunk_option(&mut b, "c1", None);
        let m = decode(b).unwrap();
        assert_eq!(&m.tag[..], b"app");
        assert_eq!(m.events, vec![ev(1_700_000_000, 123_456_789, "a")]);
        assert_eq!(m.chunk.as_deref(), Some(&b"c1"[..]));

        let mut b = Vec::new();
        header(&mut b, 3, "app");
        rmp::encode::write_uint(&mut b, 1_700_000_001).unwrap();
        write_map(&mut b, &record("b"));
        let m = decode(b).unwrap();
        assert_eq!(m.events, vec![ev(1_700_000_001, 0, "b")]);
        assert_eq!(m.chunk, None);

        let mut b = Vec::new();
        header(&mut b, 3, "app");
        rmp::encode::write_f64(&mut b, 1_700_000_002.25).unwrap();
        write_map(&mut b, &record("c"));
        assert_eq!(
            decode(b).unwrap().events,
            vec![ev(1_700_000_002, 250_000_000, "c")]
        );
    }

    #[test]
    fn forward_mode_and_fluent_bit_metadata_entries() {
        let mut b = Vec::new();
        header(&mut b, 3, "fw");
        rmp::encode::write_array_len(&mut b, 2).unwrap();
        rmp::encode::write_array_len(&mut b, 2).unwrap();
        rmp::encode::write_uint(&mut b, 10).unwrap();
        write_map(&mut b, &record("one"));
        // [[time, metadata], record]
        rmp::encode::write_array_len(&mut b, 2).unwrap();
        rmp::encode::write_array_len(&mut b, 2).unwrap();
        write_time(&mut b, EventTime { sec: 11, nsec: 5 });
        rmp::encode::write_map_len(&mut b, 0).unwrap();
        write_map(&mut b, &record("two"));
        chunk_option(&mut b, "c2", None);
        let m = decode(b).unwrap();
        assert_eq!(m.events, vec![ev(10, 0, "one"), ev(11, 5, "two")]);
        assert_eq!(m.chunk.as_deref(), Some(&b"c2"[..]));
    }

    #[test]
    fn packed_forward_plain_gzip_members_and_zstd() {
        let events = vec![ev(1, 1, "x"), ev(2, 2, "y"), ev(3, 3, "z")];
        let mut payload = Vec::new();
        write_entries(&mut payload, &events);

        let m = decode(encode_packed(
            "p",
            &payload,
            3,
            &PackedOptions {
                chunk: Some("k"),
                gzip: false,
                always: false,
            },
        ))
        .unwrap();
        assert_eq!(m.events, events);
        assert_eq!(m.chunk.as_deref(), Some(&b"k"[..]));

        // Two concatenated gzip members, split between entries.
        let mut first = Vec::new();
        write_entries(&mut first, &events[..1]);
        let mut second = Vec::new();
        write_entries(&mut second, &events[1..]);
        let mut gz = Vec::new();
        for part in [&first, &second] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let m = decode(encode_packed(
            "p",
            &gz,
            3,
            &PackedOptions {
                chunk: None,
                gzip: true,
                always: true,
            },
        ))
        .unwrap();
        assert_eq!(m.events, events);

        let z = zstd::encode_all(&payload[..], 3).unwrap();
        let mut b = Vec::new();
        header(&mut b, 3, "p");
        rmp::encode::write_bin_len(&mut b, z.len() as u32).unwrap();
        b.extend(&z);
        chunk_option(&mut b, "z", Some("zstd"));
        assert_eq!(decode(b).unwrap().events, events);

        // The payload may also be sent as a str (older clients).
        let mut b = Vec::new();
        header(&mut b, 2, "p");
        rmp::encode::write_str_len(&mut b, payload.len() as u32).unwrap();
        b.extend(&payload);
        assert_eq!(decode(b).unwrap().events, events);
    }

    #[test]
    fn truncated_input_asks_for_more_and_garbage_is_refused() {
        let mut b = Vec::new();
        header(&mut b, 3, "t");
        rmp::encode::write_uint(&mut b, 5).unwrap();
        write_map(&mut b, &record("hello"));
        for cut in 0..b.len() {
            assert!(next_value(&b[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(next_value(&b).unwrap().is_some());
        // Text is msgpack of another shape (here: the integer 'G'): refused as a message.
        let text = Bytes::from_static(b"GET / HTTP/1.1\r\n");
        let (v, _) = next_value(&text).unwrap().unwrap();
        assert!(decode_message(&v, &text, 1 << 20)
            .unwrap_err()
            .0
            .contains("must be an array"));
        // A truncated packed entry is an error, not a short read: the frame is complete.
        let mut payload = Vec::new();
        write_entries(&mut payload, &[ev(1, 0, "x")]);
        payload.pop();
        let e = decode(encode_packed(
            "p",
            &payload,
            1,
            &PackedOptions {
                chunk: None,
                gzip: false,
                always: false,
            },
        ))
        .unwrap_err();
        assert!(e.0.contains("truncated"), "{e}");
    }

    #[test]
    fn bad_shapes_are_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut b = Vec::new();
                    rmp::encode::write_map_len(&mut b, 0).unwrap();
                    b
                },
                "must be an array",
            ),
            (
                {
                    let mut b = Vec::new();
                    header(&mut b, 3, "t");
                    rmp::encode::write_bool(&mut b, true).unwrap();
                    rmp::encode::write_nil(&mut b).unwrap();
                    b
                },
                "unknown mode",
            ),
            (
                {
                    let mut b = Vec::new();
                    header(&mut b, 3, "t");
                    rmp::encode::write_uint(&mut b, 1).unwrap();
                    write_str(&mut b, b"not a map");
                    b
                },
                "record must be a map",
            ),
            (
                {
                    let mut b = Vec::new();
                    rmp::encode::write_array_len(&mut b, 3).unwrap();
                    rmp::encode::write_uint(&mut b, 1).unwrap();
                    rmp::encode::write_uint(&mut b, 1).unwrap();
                    rmp::encode::write_map_len(&mut b, 0).unwrap();
                    b
                },
                "tag must be a string",
            ),
        ];
        for (bytes, want) in cases {
            let e = decode(bytes).unwrap_err();
            assert!(e.0.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = vec![0x91u8; 100_000];
        assert!(next_value(&deep).unwrap_err().0.contains("depth"));
    }

    #[test]
    fn compressed_payload_is_bounded() {
        let payload = vec![0u8; 4096];
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&payload).unwrap();
        let gz = e.finish().unwrap();
        let frame = Bytes::from(encode_packed(
            "p",
            &gz,
            1,
            &PackedOptions {
                chunk: None,
                gzip: true,
                always: false,
            },
        ));
        let (v, _) = next_value(&frame).unwrap().unwrap();
        let e = decode_message(&v, &frame, 1000).unwrap_err();
        assert!(e.0.contains("more than 1000 bytes"), "{e}");
    }

    #[test]
    fn ack_round_trip() {
        let a = encode_ack(b"abc");
        let (v, _) = next_value(&a).unwrap().unwrap();
        assert_eq!(ack_of(&v), Some(&b"abc"[..]));
    }
}
