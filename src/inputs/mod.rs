//! Inputs: `tail` (container logs), `forward` (FireLens, Docker's fluentd driver, agents'
//! `forward` outputs), `dummy` and `tcp` (tests, FireLens health checks).
//! Each runs on its own thread with a [`Dispatcher`]; it stops reading while the dispatcher's
//! byte budget is full (invariant 2) and, on stop, emits what it holds, releases the dispatcher
//! so outputs can drain, and commits what outputs acknowledged.

pub mod dummy;
pub mod forward;
pub mod tail;
pub mod tcp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::{Dispatcher, ServiceConfig};
use crate::parsers::ParserRegistry;

/// Default in-flight memory budget for an input without `Mem_Buf_Limit`. Records are handed to
/// outputs as soon as they are read, so a few MB keep the pipeline busy.
pub const DEFAULT_BUDGET: u64 = 8 * 1024 * 1024;

pub struct InputContext {
    pub dispatcher: Dispatcher,
    pub stop: Arc<AtomicBool>,
    pub flush: Duration,
    pub grace: Duration,
    pub runtime: tokio::runtime::Handle,
}

impl InputContext {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub enum Input {
    Tail(Box<tail::Tail>),
    Dummy(dummy::Dummy),
    Tcp(tcp::Tcp),
    Forward(Box<forward::Forward>),
}

impl Input {
    /// Builds an input and its byte budget (`Mem_Buf_Limit`, or [`DEFAULT_BUDGET`]).
    pub fn build(
        name: &str,
        instance: &str,
        p: &Props,
        parsers: &ParserRegistry,
        service: &ServiceConfig,
    ) -> Result<(Self, u64), ConfigError> {
        let metrics = Arc::new(InputMetrics {
            name: instance.to_string(),
            ..Default::default()
        });
        let budget = match p.size("mem_buf_limit", 0)? {
            0 => DEFAULT_BUDGET,
            n => n,
        };
        let tag = p.str("tag").map(str::to_string);
        let input = match name {
            "tail" => Input::Tail(Box::new(tail::Tail::from_props(
                p, tag, metrics, parsers, service,
            )?)),
            "dummy" => Input::Dummy(dummy::Dummy::from_props(
                p,
                tag.unwrap_or_else(|| instance.to_string()),
                metrics,
            )?),
            "tcp" => Input::Tcp(tcp::Tcp::from_props(
                p,
                tag.unwrap_or_else(|| instance.to_string()),
                metrics,
            )?),
            "forward" => Input::Forward(Box::new(forward::Forward::from_props(p, tag, metrics)?)),
            other => {
                let prop = p.prop("name").expect("name checked by the caller");
                return Err(ConfigError::key(
                    prop,
                    format!("unknown input plugin '{other}' (tail, forward, dummy, tcp)"),
                ));
            }
        };
        Ok((input, budget))
    }

    pub fn metrics(&self) -> Arc<InputMetrics> {
        match self {
            Input::Tail(t) => t.metrics.clone(),
            Input::Dummy(d) => d.metrics.clone(),
            Input::Tcp(t) => t.metrics.clone(),
            Input::Forward(f) => f.metrics.clone(),
        }
    }

    pub fn run(self, ctx: InputContext) -> anyhow::Result<()> {
        match self {
            Input::Tail(t) => t.run(ctx),
            Input::Dummy(d) => d.run(ctx),
            Input::Tcp(t) => t.run(ctx),
            Input::Forward(f) => f.run(ctx),
        }
    }
}

/// Sleeps in small steps so a stop request is noticed quickly; false if stopping.
pub fn nap(ctx: &InputContext, total: Duration) -> bool {
    let step = Duration::from_millis(20);
    let mut left = total;
    while !left.is_zero() {
        if ctx.stopping() {
            return false;
        }
        let d = left.min(step);
        std::thread::sleep(d);
        left -= d;
    }
    !ctx.stopping()
}
