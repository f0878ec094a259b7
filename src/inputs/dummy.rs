//! `dummy`: emits `Dummy` (a JSON record) `Rate` times a second, `Samples` times in all (0 = no
//! end), `Copies` records per emission.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{nap, InputContext};
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::record::{Event, EventTime, Map, Value};

pub struct Dummy {
    pub metrics: Arc<InputMetrics>,
    tag: Arc<str>,
    record: Map,
    raw_len: u64,
    rate: u64,
    samples: u64,
    copies: u64,
}

impl Dummy {
    pub fn from_props(
        p: &Props,
        tag: String,
        metrics: Arc<InputMetrics>,
    ) -> Result<Self, ConfigError> {
        let text = p.string_or("dummy", "{\"message\":\"dummy\"}");
        let record = match crate::json::parse(text.as_bytes()) {
            Ok(Value::Map(m)) => m,
            Ok(_) => {
                return Err(ConfigError::key(
                    p.prop("dummy").expect("set"),
                    "must be a JSON object",
                ))
            }
            Err(e) => {
                let prop = p
                    .prop("dummy")
                    .expect("only an explicit value can be invalid");
                return Err(ConfigError::key(prop, format!("invalid JSON: {e}")));
            }
        };
        let rate = p.int("rate", 1)?;
        if rate < 1 {
            return Err(ConfigError::key(
                p.prop("rate").expect("set"),
                "must be at least 1",
            ));
        }
        Ok(Dummy {
            metrics,
            tag: Arc::from(tag),
            raw_len: text.len() as u64,
            record,
            rate: rate as u64,
            samples: p.int("samples", 0)?.max(0) as u64,
            copies: p.int("copies", 1)?.max(1) as u64,
        })
    }

    pub fn run(self, mut ctx: InputContext) -> anyhow::Result<()> {
        let interval = Duration::from_secs_f64(1.0 / self.rate as f64);
        let mut emitted = 0u64;
        let mut next = Instant::now();
        while !ctx.stopping() && (self.samples == 0 || emitted < self.samples) {
            if ctx.dispatcher.is_full() {
                nap(&ctx, Duration::from_millis(10));
                continue;
            }
            let events: Vec<Event> = (0..self.copies)
                .map(|_| Event {
                    time: EventTime::now(),
                    record: self.record.clone(),
                })
                .collect();
            let bytes = self.raw_len * self.copies;
            ctx.dispatcher
                .dispatch(&self.tag, events, bytes, Box::new(|| {}));
            emitted += 1;
            next += interval;
            let now = Instant::now();
            if next > now && !nap(&ctx, next - now) {
                break;
            }
        }
        // Samples done: stay alive (as Fluent Bit does) until asked to stop.
        while !ctx.stopping() {
            nap(&ctx, Duration::from_millis(100));
        }
        drop(ctx.dispatcher);
        Ok(())
    }
}
