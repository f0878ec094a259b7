//! Forward `chunk` acks, sent only after delivery (invariant 1).
//!
//! A message with `option.chunk` gets one [`Ack`]. Every batch that carries records of
//! that message holds a [`Share`] of it; a share is marked delivered when its batch's
//! `on_settled` runs. The ack `{"ack": chunk}` goes to the connection's writer when the last share
//! is gone — and only if every share was delivered: a share dropped without delivery (shutdown,
//! Grace expiry) abandons the ack, and the client sends the message again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

pub struct PendingAck {
    frame: Vec<u8>,
    writer: UnboundedSender<Vec<u8>>,
    abandoned: AtomicBool,
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        if !self.abandoned.load(Ordering::Acquire) {
            // A closed writer means the client went away: nothing to answer.
            let _ = self.writer.send(std::mem::take(&mut self.frame));
        }
    }
}

/// A message's ack while its records are on their way; hands out [`Share`]s.
pub struct Ack(Arc<PendingAck>);

impl Ack {
    /// `frame` is the encoded `{"ack": chunk}`, sent to `writer` when every share delivered.
    pub fn new(frame: Vec<u8>, writer: UnboundedSender<Vec<u8>>) -> Ack {
        Ack(Arc::new(PendingAck {
            frame,
            writer,
            abandoned: AtomicBool::new(false),
        }))
    }

    /// A hold for one batch carrying records of this message.
    pub fn share(&self) -> Share {
        Share(Some(self.0.clone()))
    }
}

/// One batch's hold on a message's ack; released by [`on_settled`], abandoned by a drop.
pub struct Share(Option<Arc<PendingAck>>);

impl Share {
    fn delivered(mut self) {
        // Letting go of the ack without marking it abandoned.
        self.0.take();
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            ack.abandoned.store(true, Ordering::Release);
        }
    }
}

/// The `on_settled` callback of a batch holding `shares`.
pub fn on_settled(shares: Vec<Share>) -> Box<dyn FnOnce() + Send> {
    if shares.is_empty() {
        return Box::new(|| {});
    }
    Box::new(move || {
        shares.into_iter().for_each(Share::delivered);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_only_after_every_share_is_delivered() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ack = Ack::new(b"ack".to_vec(), tx.clone());
        let (first, second) = (ack.share(), ack.share());
        drop(ack);
        on_settled(vec![first])();
        assert!(rx.try_recv().is_err());
        on_settled(vec![second])();
        assert_eq!(rx.try_recv().unwrap(), b"ack");

        let ack = Ack::new(b"never".to_vec(), tx);
        let (first, second) = (ack.share(), ack.share());
        drop(ack);
        on_settled(vec![first])();
        drop(on_settled(vec![second])); // abandoned: never runs
        assert!(rx.try_recv().is_err());
    }
}
