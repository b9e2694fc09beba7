//! A connection's bounded outbound queue.
//!
//! The hub pushes already-encoded frames here without ever awaiting; the
//! connection's task drains it into the socket. Overflow does not block or
//! grow: it marks the queue closed with 4009, and the connection task closes
//! the socket. An idle queue holds no heap allocation (an empty `VecDeque`),
//! which matters at tens of thousands of idle connections.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::close;

/// Why the queue was closed: a WebSocket close code and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub struct Outbox {
    // parking_lot: held only to push or swap a deque, never across `.await`.
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    close: Option<CloseReason>,
}

/// What `push` did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: it is now closed with 4009 (reported once).
    Overflowed,
    /// The queue was already closed; the frame was dropped.
    Closed,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues a frame. A full queue closes the connection with 4009 rather
    /// than slowing the sender.
    pub fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Pushed::Closed;
        }
        if st.frames.len() >= self.capacity {
            st.close = Some(CloseReason {
                code: close::TOO_SLOW,
                reason: "too slow to keep up; reconnect with resume and since",
            });
            st.frames.clear();
            drop(st);
            self.notify.notify_one();
            return Pushed::Overflowed;
        }
        st.frames.push_back(frame);
        drop(st);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Queues a frame that may be lost without harm (typing indicators):
    /// dropped when the queue is more than half full, never closing it.
    pub fn push_lossy(&self, frame: Utf8Bytes) {
        let mut st = self.state.lock();
        if st.close.is_some() || st.frames.len() * 2 >= self.capacity {
            return;
        }
        st.frames.push_back(frame);
        drop(st);
        self.notify.notify_one();
    }

    /// Asks the connection to close with `reason` after what is queued now.
    /// The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(reason);
        }
        drop(st);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Moves every queued frame into `out` and returns the close reason if
    /// one is set. `out` is swapped in so its capacity is reused.
    pub fn drain_into(&self, out: &mut VecDeque<Utf8Bytes>) -> Option<CloseReason> {
        let mut st = self.state.lock();
        std::mem::swap(&mut st.frames, out);
        st.close
    }

    /// Waits until something was pushed or the queue was closed. Cancel-safe.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_with_4009_once() {
        let o = Outbox::new(2);
        assert_eq!(o.push("a".into()), Pushed::Queued);
        assert_eq!(o.push("b".into()), Pushed::Queued);
        assert_eq!(o.push("c".into()), Pushed::Overflowed);
        assert_eq!(o.push("d".into()), Pushed::Closed);
        let mut buf = VecDeque::new();
        let reason = o.drain_into(&mut buf);
        assert_eq!(reason.map(|r| r.code), Some(close::TOO_SLOW));
        assert!(buf.is_empty(), "an overflowed queue drops what it held");
    }

    #[test]
    fn lossy_frames_never_close() {
        let o = Outbox::new(4);
        for _ in 0..10 {
            o.push_lossy("t".into());
        }
        assert!(!o.is_closed());
        let mut buf = VecDeque::new();
        assert_eq!(o.drain_into(&mut buf), None);
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn drain_keeps_order() {
        let o = Outbox::new(8);
        for s in ["1", "2", "3"] {
            o.push(s.into());
        }
        let mut buf = VecDeque::new();
        o.drain_into(&mut buf);
        let got: Vec<&str> = buf.iter().map(|b| b.as_str()).collect();
        assert_eq!(got, ["1", "2", "3"]);
    }

    #[tokio::test]
    async fn ready_wakes_after_push() {
        let o = std::sync::Arc::new(Outbox::new(8));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.ready().await });
        o.push("x".into());
        t.await.expect("task");
    }
}
