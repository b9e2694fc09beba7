//! The embedded backend: sequence numbers, history and delivery inside this
//! process.
//!
//! Each room has one log behind a mutex; publishing numbers, stores and
//! delivers under that lock, so deliveries reach the sink in `seq` order.
//! History is bounded by count and age. A restart loses it, and the epoch
//! (random per process) changes with it, so `since` reports an honest gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;

use super::{Draft, Fanout, FanoutError, HistorySlice, Sink};
use crate::protocol::{MessageEvent, Since};

pub struct MemoryFanout {
    rooms: Vec<Mutex<Log>>,
    sink: Arc<dyn Sink>,
    max: usize,
    ttl: Duration,
}

// parking_lot: held for one publish (encode + deliver to local queues) or
// one history copy, never across `.await`.
struct Log {
    epoch: Arc<str>,
    seq: u64,
    entries: VecDeque<Entry>,
    /// This room's own history age limit (care rooms), else the default.
    ttl: Option<Duration>,
}

struct Entry {
    seq: u64,
    at: Instant,
    frame: Utf8Bytes,
}

impl Log {
    fn prune(&mut self, max: usize, ttl: Duration, now: Instant) {
        while self.entries.len() > max {
            self.entries.pop_front();
        }
        while let Some(e) = self.entries.front() {
            if now.duration_since(e.at) > ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

/// How a message's own id appears in its encoded event. Inside the text
/// quotes are escaped, and the sender's id is a `p_` id, so this matches
/// the message itself only.
pub(crate) fn id_needle(message: &str) -> String {
    format!("\"id\":{}", serde_json::Value::from(message))
}

/// A fresh epoch name: 8 random hex digits.
pub fn new_epoch() -> Arc<str> {
    format!("{:08x}", rand::random::<u32>()).into()
}

impl MemoryFanout {
    pub fn new(rooms: usize, max: usize, ttl: Duration, sink: Arc<dyn Sink>) -> MemoryFanout {
        MemoryFanout {
            rooms: (0..rooms)
                .map(|_| {
                    Mutex::new(Log {
                        epoch: new_epoch(),
                        seq: 0,
                        entries: VecDeque::new(),
                        ttl: None,
                    })
                })
                .collect(),
            sink,
            max,
            ttl,
        }
    }

    fn log(&self, room: u32) -> Result<&Mutex<Log>, FanoutError> {
        self.rooms
            .get(room as usize)
            .ok_or(FanoutError::NoRoom(room))
    }

    /// Gives one room its own history age limit.
    pub fn set_ttl(&self, room: u32, ttl: Duration) {
        if let Ok(l) = self.log(room) {
            l.lock().ttl = Some(ttl);
        }
    }

    /// Empties the room's history and starts a new epoch.
    pub fn clear(&self, room: u32) {
        if let Ok(l) = self.log(room) {
            let mut log = l.lock();
            log.entries.clear();
            log.epoch = new_epoch();
        }
    }

    /// Removes the message with id `message` from the room's history
    /// (with `look_only`, only says whether it is there).
    pub fn delete(&self, room: u32, message: &str, look_only: bool) -> Result<bool, FanoutError> {
        let needle = id_needle(message);
        let mut log = self.log(room)?.lock();
        if look_only {
            return Ok(log
                .entries
                .iter()
                .any(|e| e.frame.as_str().contains(&needle)));
        }
        let before = log.entries.len();
        log.entries.retain(|e| !e.frame.as_str().contains(&needle));
        Ok(log.entries.len() != before)
    }

    /// Drops expired history in every room (called periodically so idle
    /// rooms also forget on time).
    pub fn expire(&self) {
        let now = Instant::now();
        for log in &self.rooms {
            {
                let mut l = log.lock();
                let ttl = l.ttl.unwrap_or(self.ttl);
                l.prune(self.max, ttl, now);
            }
        }
    }
}

impl Fanout for MemoryFanout {
    async fn publish(
        &self,
        room: u32,
        room_id: &str,
        draft: Draft<'_>,
    ) -> Result<u64, FanoutError> {
        let mut log = self.log(room)?.lock();
        let seq = log.seq + 1;
        let event = MessageEvent {
            ty: "message",
            room: room_id,
            id: draft.id,
            seq,
            ts: draft.ts,
            from: draft.from,
            text: draft.text,
        };
        let frame: Utf8Bytes = serde_json::to_string(&event)
            .map_err(|e| FanoutError::Unavailable(e.to_string()))?
            .into();
        log.seq = seq;
        let now = Instant::now();
        log.entries.push_back(Entry {
            seq,
            at: now,
            frame: frame.clone(),
        });
        let ttl = log.ttl.unwrap_or(self.ttl);
        log.prune(self.max, ttl, now);
        // Delivered while the log is locked: this is what keeps every
        // recipient's stream in seq order.
        self.sink.deliver(room, seq, &frame);
        Ok(seq)
    }

    async fn history(
        &self,
        room: u32,
        since: Option<&Since>,
        on_join: usize,
    ) -> Result<HistorySlice, FanoutError> {
        let mut log = self.log(room)?.lock();
        let ttl = log.ttl.unwrap_or(self.ttl);
        log.prune(self.max, ttl, Instant::now());
        let latest = |n: usize| -> Vec<Utf8Bytes> {
            let skip = log.entries.len().saturating_sub(n);
            log.entries
                .iter()
                .skip(skip)
                .map(|e| e.frame.clone())
                .collect()
        };
        let (items, gap) = match since {
            None => (latest(on_join), false),
            Some(s) if *s.epoch != *log.epoch || s.seq > log.seq => (latest(on_join), true),
            Some(s) => {
                let items: Vec<Utf8Bytes> = log
                    .entries
                    .iter()
                    .filter(|e| e.seq > s.seq)
                    .map(|e| e.frame.clone())
                    .collect();
                // Messages s.seq+1 ..= log.seq were published; a gap means
                // the oldest of them is no longer retained.
                let first_kept = log.entries.iter().find(|e| e.seq > s.seq).map(|e| e.seq);
                let gap = s.seq < log.seq && first_kept != Some(s.seq + 1);
                (items, gap)
            }
        };
        Ok(HistorySlice {
            epoch: log.epoch.clone(),
            seq: log.seq,
            items,
            gap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Member, Role};

    #[derive(Default)]
    struct Record(Mutex<Vec<u64>>);
    impl Sink for Record {
        fn deliver(&self, _room: u32, seq: u64, _frame: &Utf8Bytes) {
            self.0.lock().push(seq);
        }
        fn reset(&self, _room: u32) {}
        fn event(
            &self,
            _room: u32,
            _except: &str,
            _frame: &Utf8Bytes,
            _kind: crate::fanout::EventKind,
        ) {
        }
    }

    fn member() -> Member {
        Member {
            id: "p_a".into(),
            name: "Quiet Heron".into(),
            role: Role::Peer,
        }
    }

    async fn publish_n(f: &MemoryFanout, n: usize) {
        let m = member();
        for i in 0..n {
            let text = format!("hello {i}");
            let d = Draft {
                id: "m_x",
                ts: 1,
                from: &m,
                text: &text,
            };
            f.publish(0, "anxiety", d).await.expect("publish");
        }
    }

    #[tokio::test]
    async fn seq_starts_at_one_and_delivers_in_order() {
        let rec = Arc::new(Record::default());
        let f = MemoryFanout::new(2, 10, Duration::from_secs(60), rec.clone());
        publish_n(&f, 3).await;
        assert_eq!(*rec.0.lock(), vec![1, 2, 3]);
        let h = f.history(0, None, 2).await.expect("history");
        assert_eq!(h.seq, 3);
        assert_eq!(h.items.len(), 2);
        assert!(h.items[1].as_str().contains("\"seq\":3"));
        assert!(!h.gap);
        assert!(f
            .publish(
                9,
                "x",
                Draft {
                    id: "m",
                    ts: 0,
                    from: &member(),
                    text: "t"
                }
            )
            .await
            .is_err());
    }

    #[tokio::test]
    async fn since_reports_gaps_honestly() {
        let rec = Arc::new(Record::default());
        let f = MemoryFanout::new(1, 5, Duration::from_secs(60), rec);
        publish_n(&f, 8).await; // keeps seq 4..=8
        let epoch = f.history(0, None, 0).await.expect("h").epoch.to_string();
        let since = |seq| Since {
            seq,
            epoch: epoch.clone(),
        };
        let h = f.history(0, Some(&since(5)), 50).await.expect("h");
        assert_eq!((h.items.len(), h.gap), (3, false));
        let h = f.history(0, Some(&since(3)), 50).await.expect("h");
        assert_eq!((h.items.len(), h.gap), (5, false));
        let h = f.history(0, Some(&since(1)), 50).await.expect("h");
        assert_eq!((h.items.len(), h.gap), (5, true));
        let h = f.history(0, Some(&since(8)), 50).await.expect("h");
        assert_eq!((h.items.len(), h.gap), (0, false));
        let other = Since {
            seq: 5,
            epoch: "other".into(),
        };
        let h = f.history(0, Some(&other), 2).await.expect("h");
        assert_eq!((h.items.len(), h.gap), (2, true));
    }

    #[tokio::test]
    async fn history_expires_by_age() {
        let rec = Arc::new(Record::default());
        let f = MemoryFanout::new(1, 5, Duration::from_millis(1), rec);
        publish_n(&f, 2).await;
        std::thread::sleep(Duration::from_millis(5));
        f.expire();
        let h = f.history(0, None, 50).await.expect("h");
        assert!(h.items.is_empty());
        assert_eq!(h.seq, 2);
    }
}
