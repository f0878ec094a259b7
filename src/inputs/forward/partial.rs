//! Rejoining lines that Docker's `fluentd` log driver split at 16 KiB (`Join_Partial_Messages`):
//! pieces carry `partial_message: "true"`, `partial_id`, `partial_ordinal` and `partial_last`.
//! Pieces of one id are joined on `log` into the first piece's record, and the `partial_*` keys
//! are removed (what Fluent Bit's `multiline` filter `mode partial_message` produces).
//!
//! Bounded and lossless: a pending line is flushed as it stands — never dropped — when it
//! reaches `Join_Partial_Max_Size` bytes (the rest of the line then starts a new record), when it
//! waited `Join_Partial_Flush` for its next piece, when more than [`MAX_PENDING`] lines are
//! pending, and when the connection ends or the input stops. A pending piece holds the ack
//! [`Share`]s of the messages it came from, so their acks wait for the joined record.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::ack::{Ack, Share};
use crate::record::{Event, Value};

/// Lines pending at once on one connection (Docker sends one container per connection).
pub const MAX_PENDING: usize = 64;

const PARTIAL_KEYS: [&[u8]; 4] = [
    b"partial_message",
    b"partial_id",
    b"partial_ordinal",
    b"partial_last",
];

struct Pending {
    id: Bytes,
    event: Event,
    log: BytesMut,
    shares: Vec<Share>,
    since: Instant,
}

/// One connection's pending partial lines (all of one tag: the connection's messages are
/// joined per tag by the caller).
pub struct Joiner {
    max_bytes: usize,
    flush_after: Duration,
    pending: Vec<(Bytes, Pending)>,
}

/// Records ready to dispatch, with the ack shares they release.
#[derive(Default)]
pub struct Ready {
    pub events: Vec<Event>,
    pub shares: Vec<Share>,
}

fn text<'a>(e: &'a Event, key: &[u8]) -> Option<&'a [u8]> {
    e.record.get(key).and_then(Value::as_bytes)
}

impl Joiner {
    pub fn new(max_bytes: usize, flush_after: Duration) -> Self {
        Joiner {
            max_bytes,
            flush_after,
            pending: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn finish(p: Pending, out: &mut Ready) {
        let mut event = p.event;
        for k in PARTIAL_KEYS {
            event.record.remove(k);
        }
        event
            .record
            .set(Bytes::from_static(b"log"), Value::Str(p.log.freeze()));
        out.events.push(event);
        out.shares.extend(p.shares);
    }

    /// Passes whole records through and joins pieces; `ack` is the message's ack, if any.
    /// Returns what is ready for `tag` and, separately, pending lines of other tags that had to
    /// be flushed (keyed by their tag).
    pub fn push(
        &mut self,
        tag: &Bytes,
        events: Vec<Event>,
        ack: Option<&Ack>,
    ) -> (Ready, Vec<(Bytes, Ready)>) {
        let mut ready = Ready::default();
        let mut evicted = Vec::new();
        for e in events {
            let (Some(b"true"), Some(id)) = (text(&e, b"partial_message"), text(&e, b"partial_id"))
            else {
                ready.events.push(e);
                continue;
            };
            let id = Bytes::copy_from_slice(id);
            let last = text(&e, b"partial_last") == Some(b"true");
            let piece = text(&e, b"log").unwrap_or_default().to_vec();
            let at = self
                .pending
                .iter()
                .position(|(t, p)| t == tag && p.id == id);
            let slot = match at {
                Some(i) => i,
                None => {
                    if self.pending.len() >= MAX_PENDING {
                        let (t, oldest) = self.pending.remove(0);
                        let mut r = Ready::default();
                        Self::finish(oldest, &mut r);
                        if t == tag {
                            ready.events.extend(r.events);
                            ready.shares.extend(r.shares);
                        } else {
                            evicted.push((t, r));
                        }
                    }
                    self.pending.push((
                        tag.clone(),
                        Pending {
                            id,
                            event: e,
                            log: BytesMut::new(),
                            shares: Vec::new(),
                            since: Instant::now(),
                        },
                    ));
                    self.pending.len() - 1
                }
            };
            let p = &mut self.pending[slot].1;
            p.log.extend_from_slice(&piece);
            if let Some(a) = ack {
                p.shares.push(a.share());
            }
            if last || p.log.len() >= self.max_bytes {
                let (_, p) = self.pending.remove(slot);
                Self::finish(p, &mut ready);
            }
        }
        // The message's records that were not held go out with `ready` (which may be empty:
        // dispatching nothing settles at once).
        if let Some(a) = ack {
            ready.shares.push(a.share());
        }
        (ready, evicted)
    }

    /// Flushes pending lines that waited too long (or all, with `all`), per tag.
    pub fn flush(&mut self, all: bool) -> Vec<(Bytes, Ready)> {
        let now = Instant::now();
        let mut out: Vec<(Bytes, Ready)> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if all || now.duration_since(self.pending[i].1.since) >= self.flush_after {
                let (tag, p) = self.pending.remove(i);
                match out.iter_mut().find(|(t, _)| *t == tag) {
                    Some((_, r)) => Self::finish(p, r),
                    None => {
                        let mut r = Ready::default();
                        Self::finish(p, &mut r);
                        out.push((tag, r));
                    }
                }
            } else {
                i += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::forward::ack::on_settled;
    use crate::record::{EventTime, Map};

    fn piece(id: &str, n: u32, last: bool, log: &str) -> Event {
        let mut m = Map::default();
        m.push(Bytes::from_static(b"container_id"), Value::str("abc"));
        m.push(Bytes::from_static(b"log"), Value::string(log.into()));
        m.push(Bytes::from_static(b"partial_message"), Value::str("true"));
        m.push(Bytes::from_static(b"partial_id"), Value::string(id.into()));
        m.push(
            Bytes::from_static(b"partial_ordinal"),
            Value::string(n.to_string()),
        );
        m.push(
            Bytes::from_static(b"partial_last"),
            Value::str(if last { "true" } else { "false" }),
        );
        Event {
            time: EventTime { sec: 1, nsec: 0 },
            record: m,
        }
    }

    fn whole(log: &str) -> Event {
        let mut m = Map::default();
        m.push(Bytes::from_static(b"log"), Value::string(log.into()));
        Event {
            time: EventTime { sec: 2, nsec: 0 },
            record: m,
        }
    }

    fn logs(r: &Ready) -> Vec<String> {
        r.events
            .iter()
            .map(|e| String::from_utf8_lossy(text(e, b"log").unwrap()).into_owned())
            .collect()
    }

    #[test]
    fn joins_pieces_across_messages_and_acks_after_the_joined_record() {
        let tag = Bytes::from_static(b"t");
        let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let mut j = Joiner::new(1 << 20, Duration::from_secs(60));
        let first = Ack::new(b"ack1".to_vec(), tx.clone());
        let (r, _) = j.push(
            &tag,
            vec![whole("a"), piece("x", 1, false, "AB")],
            Some(&first),
        );
        drop(first);
        assert_eq!(logs(&r), vec!["a"]);
        on_settled(r.shares)();
        // The first message's ack waits: its piece is still pending.
        assert!(acks.try_recv().is_err());
        let second = Ack::new(b"ack2".to_vec(), tx);
        let (r, _) = j.push(&tag, vec![piece("x", 2, true, "CD")], Some(&second));
        drop(second);
        assert_eq!(logs(&r), vec!["ABCD"]);
        let rec = &r.events[0].record;
        assert!(!rec.contains(b"partial_message") && !rec.contains(b"partial_id"));
        assert!(rec.contains(b"container_id"));
        on_settled(r.shares)();
        let mut got = vec![acks.try_recv().unwrap(), acks.try_recv().unwrap()];
        got.sort();
        assert_eq!(got, vec![b"ack1".to_vec(), b"ack2".to_vec()]);
        assert!(j.is_empty());
    }

    #[test]
    fn a_line_at_the_bound_is_flushed_not_dropped() {
        let tag = Bytes::from_static(b"t");
        let mut j = Joiner::new(4, Duration::from_secs(60));
        let (r, _) = j.push(&tag, vec![piece("x", 1, false, "abc")], None);
        assert!(r.events.is_empty());
        let (r, _) = j.push(&tag, vec![piece("x", 2, false, "def")], None);
        assert_eq!(logs(&r), vec!["abcdef"]);
        let (r, _) = j.push(&tag, vec![piece("x", 3, true, "g")], None);
        assert_eq!(logs(&r), vec!["g"]);
        // End of connection: whatever is pending comes out.
        let (r, _) = j.push(&tag, vec![piece("y", 1, false, "h")], None);
        assert!(r.events.is_empty());
        let flushed = j.flush(true);
        assert_eq!(logs(&flushed[0].1), vec!["h"]);
    }
}
