//! PutLogEvents batches within the service limits: at most 1,048,576 bytes counting 26 bytes per
//! event, at most 10,000 events, spanning less than 24 hours, sorted by timestamp (stable, so
//! events of the same millisecond keep their order). An event over 262,144 bytes (with its 26)
//! is truncated, never split, and the caller counts it.

pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
pub const MAX_EVENT_BYTES: usize = 262_144;
/// Appended to a truncated message (the Go plugin's marker).
pub const TRUNCATED_SUFFIX: &str = "[Truncated...]";

/// One log event ready to send; `origin` is the index of the input batch it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub ts_ms: i64,
    pub message: String,
    pub origin: u32,
}

impl Prepared {
    pub fn cost(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// Cuts `message` so that it fits one event (with the suffix), at a character boundary.
/// Returns whether it was cut.
pub fn truncate(message: &mut String) -> bool {
    if message.len() + EVENT_OVERHEAD <= MAX_EVENT_BYTES {
        return false;
    }
    let mut keep = MAX_EVENT_BYTES - EVENT_OVERHEAD - TRUNCATED_SUFFIX.len();
    while !message.is_char_boundary(keep) {
        keep -= 1;
    }
    message.truncate(keep);
    message.push_str(TRUNCATED_SUFFIX);
    true
}

/// Sorts one stream's events by time (stable) and cuts them into requests.
pub fn split(mut events: Vec<Prepared>) -> Vec<Vec<Prepared>> {
    events.sort_by_key(|e| e.ts_ms);
    let mut batches = Vec::new();
    let mut current: Vec<Prepared> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let full = current.len() == MAX_BATCH_EVENTS
            || bytes + e.cost() > MAX_BATCH_BYTES
            || current
                .first()
                .is_some_and(|first| e.ts_ms - first.ts_ms >= MAX_SPAN_MS);
        if full {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += e.cost();
        current.push(e);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ms: i64, len: usize, origin: u32) -> Prepared {
        Prepared {
            ts_ms,
            message: "x".repeat(len),
            origin,
        }
    }

    fn check_limits(batches: &[Vec<Prepared>]) {
        for b in batches {
            assert!(!b.is_empty() && b.len() <= MAX_BATCH_EVENTS);
            assert!(b.iter().map(Prepared::cost).sum::<usize>() <= MAX_BATCH_BYTES);
            assert!(b.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
            assert!(b.last().unwrap().ts_ms - b[0].ts_ms < MAX_SPAN_MS);
        }
    }

    #[test]
    fn ten_thousand_and_one_events_make_two_requests() {
        let batches = split((0..10_001).map(|i| ev(1000, 10, i)).collect());
        check_limits(&batches);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10_000, 1]
        );
        // Same timestamp: the original order is kept across the cut.
        let origins: Vec<u32> = batches.concat().iter().map(|e| e.origin).collect();
        assert_eq!(origins, (0..10_001).collect::<Vec<_>>());
    }

    #[test]
    fn bytes_count_26_per_event() {
        // 4 events of exactly a quarter of the limit fit; the 26 bytes are part of the quarter.
        let quarter = MAX_BATCH_BYTES / 4 - EVENT_OVERHEAD;
        let batches = split((0..4).map(|i| ev(1, quarter, i)).collect());
        assert_eq!(batches.len(), 1);
        // One byte more per event and the fourth goes to the next request.
        let batches = split((0..4).map(|i| ev(1, quarter + 1, i)).collect());
        check_limits(&batches);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1]);
        // Many 1 KB events: every request stays within 1 MiB, and nothing is lost.
        let batches = split((0..5000).map(|i| ev(i as i64, 1000, i)).collect());
        check_limits(&batches);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5000);
        assert_eq!(batches[0].len(), MAX_BATCH_BYTES / 1026);
    }

    #[test]
    fn a_day_apart_goes_to_separate_requests_in_time_order() {
        let day = MAX_SPAN_MS;
        let events = vec![
            ev(day + 5, 1, 0),
            ev(10, 1, 1),
            ev(day + 10, 1, 2),
            ev(day + 9, 1, 3),
            ev(3 * day, 1, 4),
        ];
        let batches = split(events);
        check_limits(&batches);
        let ts: Vec<Vec<i64>> = batches
            .iter()
            .map(|b| b.iter().map(|e| e.ts_ms).collect())
            .collect();
        // day + 10 is exactly 24 h after 10: it starts the next request.
        assert_eq!(
            ts,
            vec![vec![10, day + 5, day + 9], vec![day + 10], vec![3 * day]]
        );
    }

    #[test]
    fn oversize_events_are_truncated_at_a_character_boundary() {
        let mut small = "é".repeat(1000);
        assert!(!truncate(&mut small));
        let mut exact = "x".repeat(MAX_EVENT_BYTES - EVENT_OVERHEAD);
        assert!(!truncate(&mut exact));
        let mut big = "é".repeat(200_000);
        assert!(truncate(&mut big));
        assert!(big.len() + EVENT_OVERHEAD <= MAX_EVENT_BYTES);
        assert!(big.len() + EVENT_OVERHEAD > MAX_EVENT_BYTES - 2);
        assert!(big.ends_with(TRUNCATED_SUFFIX));
    }
}
