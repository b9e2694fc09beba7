//! Per-identity risk memory: a short window of earlier crisis signals, so a
//! message is judged with what the same person said just before it.
//!
//! Owns: a bounded map from an opaque key (the caller's identity id) to the
//! last few *signal marks* of that key — a level, category bits, a small set
//! of signal kinds and a timestamp. It never stores message text, only what
//! `Assessment::signals`, `level` and `categories` already say.
//!
//! Must not touch: the clock, I/O, the hub or the classifier's rules. Time is
//! passed in (`now_ms`), so it is pure and deterministic; the caller decides
//! where to keep it (one per node, behind a short-held mutex) and what the
//! adjusted level means.
//!
//! The rules (each a pattern the corpus README describes across messages
//! rather than within one):
//! - preparation (a note, giving things away, affairs in order, means
//!   gathered) and a farewell or finality statement, in either order, are
//!   `imminent`;
//! - after preparation, a farewell, a plan or a `high`+ message, a sudden
//!   "i'm fine 🙂" (masking) or a goodbye is at least `high`;
//! - after a passive wish or hopelessness, preparation or a farewell is at
//!   least `high`.
//!
//! A raised level never lowers; a message judged on its own at a higher
//! level keeps it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::classifier::{Assessment, Category, Level};

/// Limits of the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiskMemoryConfig {
    /// How long a mark counts, in milliseconds (default 30 min).
    pub window_ms: u64,
    /// Most keys kept; the least recently seen key is evicted first.
    pub max_keys: usize,
    /// Most marks kept per key; the oldest is dropped first.
    pub max_marks: usize,
}

impl Default for RiskMemoryConfig {
    fn default() -> Self {
        RiskMemoryConfig {
            window_ms: 30 * 60 * 1000,
            max_keys: 10_000,
            max_marks: 16,
        }
    }
}

/// The level of a message once earlier marks of the same key are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contextual {
    /// At least the message's own level.
    pub level: Level,
    /// The message's categories, plus those of the earlier marks that
    /// raised it (in `Category` order).
    pub categories: Vec<Category>,
    /// Why the level was raised (a stable rule id), or `None` if it was not.
    pub raised_by: Option<&'static str>,
}

// Signal kinds kept per mark (bits).
const PREP: u8 = 1 << 0;
const FAREWELL: u8 = 1 << 1;
const PLAN: u8 = 1 << 2;
const WISH: u8 = 1 << 3;
const MASK: u8 = 1 << 4;
const ACUTE: u8 = 1 << 5;

/// Maps the classifier's signal names (stable names from the config
/// schema) to the kinds the memory keeps.
fn kinds(a: &Assessment) -> u8 {
    let mut k = 0u8;
    for s in &a.signals {
        k |= match *s {
            "preparation" | "stockpile" | "means_at_hand" => PREP,
            "goodbye" | "finality" => FAREWELL,
            "timeframe" | "opportunity" | "deferral" | "method_act" | "method_research"
            | "lethality" | "location_now" => PLAN,
            "ideation_passive" | "hopelessness" | "indifference" => WISH,
            "reassurance" => MASK,
            _ => 0,
        };
    }
    if a.level >= Level::High {
        k |= ACUTE;
    }
    k
}

fn category_bits(cats: &[Category]) -> u8 {
    cats.iter().fold(0u8, |b, c| b | (1 << (*c as u8)))
}

#[derive(Clone, Copy, Debug)]
struct Mark {
    at_ms: u64,
    level: Level,
    categories: u8,
    kinds: u8,
}

#[derive(Debug)]
struct Slot {
    /// Key into `RiskMemory::order`.
    seen: (u64, u64),
    marks: VecDeque<Mark>,
}

/// The memory. Not thread-safe on its own; wrap it in a mutex held only for
/// one `observe` call (it never blocks or awaits).
#[derive(Debug)]
pub struct RiskMemory {
    cfg: RiskMemoryConfig,
    slots: HashMap<String, Slot>,
    /// (last seen ms, sequence) → key, oldest first, for eviction.
    order: BTreeMap<(u64, u64), String>,
    seq: u64,
}

impl RiskMemory {
    pub fn new(cfg: RiskMemoryConfig) -> RiskMemory {
        RiskMemory {
            cfg: RiskMemoryConfig {
                max_keys: cfg.max_keys.max(1),
                max_marks: cfg.max_marks.max(1),
                ..cfg
            },
            slots: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets everything about `key` (e.g. when staff resolve its
    /// escalation, or the identity is deleted).
    pub fn forget(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.seen);
        }
    }

    /// Drops every key whose newest mark is older than the window.
    pub fn purge_expired(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.cfg.window_ms);
        while let Some((&(seen, seq), _)) = self.order.first_key_value() {
            if seen >= cutoff {
                break;
            }
            if let Some(key) = self.order.remove(&(seen, seq)) {
                self.slots.remove(&key);
            }
        }
    }

    /// Judges `a` (the message `key` just sent at `now_ms`) with the key's
    /// earlier marks, then remembers this message's marks.
    pub fn observe(&mut self, key: &str, now_ms: u64, a: &Assessment) -> Contextual {
        self.purge_expired(now_ms);
        let cutoff = now_ms.saturating_sub(self.cfg.window_ms);
        let now_kinds = kinds(a);
        let mut level = a.level;
        let mut cats = category_bits(&a.categories);
        let mut raised_by = None;

        let (before, before_cats) = match self.slots.get(key) {
            Some(slot) => slot
                .marks
                .iter()
                .filter(|m| m.at_ms >= cutoff && m.at_ms <= now_ms)
                .fold((0u8, 0u8), |(k, c), m| {
                    let k = k | m.kinds | if m.level >= Level::High { ACUTE } else { 0 };
                    (k, c | m.categories)
                }),
            None => (0, 0),
        };
        let mut raise = |to: Level, rule: &'static str| {
            if to > level {
                level = to;
                raised_by = Some(rule);
            }
        };
        let now_farewell = now_kinds & FAREWELL != 0;
        let now_prep = now_kinds & PREP != 0;
        let now_mask = now_kinds & MASK != 0;
        if (before & PREP != 0 && now_farewell) || (before & FAREWELL != 0 && now_prep) {
            raise(Level::Imminent, "context.preparation_then_farewell");
        }
        if before & (PREP | FAREWELL | PLAN | ACUTE) != 0 && (now_mask || now_farewell) {
            raise(Level::High, "context.masking_after_risk");
        }
        if before & WISH != 0 && (now_prep || now_farewell) {
            raise(Level::High, "context.preparation_after_wish");
        }
        if raised_by.is_some() {
            cats |= before_cats;
            if cats == 0 {
                cats = 1 << (Category::Suicide as u8);
            }
        }
        let categories = Category::ALL
            .into_iter()
            .filter(|c| cats & (1 << (*c as u8)) != 0)
            .collect();

        // Remember only what can matter later; an ordinary message leaves
        // no mark (but still refreshes nothing: a quiet key expires).
        if now_kinds != 0 || a.level > Level::None {
            self.remember(
                key,
                Mark {
                    at_ms: now_ms,
                    level,
                    categories: category_bits(&a.categories),
                    kinds: now_kinds,
                },
            );
        }
        Contextual {
            level,
            categories,
            raised_by,
        }
    }

    fn remember(&mut self, key: &str, mark: Mark) {
        self.seq = self.seq.wrapping_add(1);
        let seen = (mark.at_ms, self.seq);
        if let Some(slot) = self.slots.get_mut(key) {
            self.order.remove(&slot.seen);
            slot.seen = seen;
            if slot.marks.len() >= self.cfg.max_marks {
                slot.marks.pop_front();
            }
            slot.marks.push_back(mark);
            self.order.insert(seen, key.to_string());
            return;
        }
        while self.slots.len() >= self.cfg.max_keys {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.slots.remove(&oldest);
        }
        let mut marks = VecDeque::with_capacity(4);
        marks.push_back(mark);
        self.slots.insert(key.to_string(), Slot { seen, marks });
        self.order.insert(seen, key.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safety::classifier::Classifier;
    use std::sync::OnceLock;

    fn c() -> &'static Classifier {
        static C: OnceLock<Classifier> = OnceLock::new();
        C.get_or_init(|| match Classifier::builtin() {
            Ok(c) => c,
            Err(e) => panic!("builtin config: {e}"),
        })
    }

    const MIN: u64 = 60 * 1000;

    fn mark(level: Level, signals: &[&'static str]) -> Assessment {
        Assessment {
            level,
            categories: if level > Level::None {
                vec![Category::Suicide]
            } else {
                Vec::new()
            },
            signals: signals.to_vec(),
            ..Assessment::default()
        }
    }

    #[test]
    fn preparation_then_masking_is_high() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        let t0 = 1_000_000;
        let first = m.observe("p_1", t0, &mark(Level::Concern, &["preparation"]));
        assert_eq!(first.level, Level::Concern);
        assert_eq!(first.raised_by, None);
        let later = m.observe("p_1", t0 + 5 * MIN, &mark(Level::None, &["reassurance"]));
        assert_eq!(later.level, Level::High);
        assert_eq!(later.categories, vec![Category::Suicide]);
        assert_eq!(later.raised_by, Some("context.masking_after_risk"));
    }

    #[test]
    fn preparation_then_goodbye_is_imminent() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        m.observe("p_1", 0, &mark(Level::Concern, &["preparation"]));
        let bye = m.observe("p_1", MIN, &mark(Level::None, &["goodbye"]));
        assert_eq!(bye.level, Level::Imminent);
        assert_eq!(bye.raised_by, Some("context.preparation_then_farewell"));
    }

    #[test]
    fn a_wish_then_preparation_is_high() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        m.observe("p_1", 0, &mark(Level::Concern, &["ideation_passive"]));
        let r = m.observe("p_1", MIN, &mark(Level::Concern, &["preparation"]));
        assert_eq!(r.level, Level::High);
    }

    #[test]
    fn keys_do_not_mix_and_plain_talk_is_untouched() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        m.observe("p_1", 0, &mark(Level::Concern, &["preparation"]));
        let other = m.observe("p_2", MIN, &mark(Level::None, &["reassurance"]));
        assert_eq!(other.level, Level::None);
        assert!(other.categories.is_empty());
        // An ordinary message after the risk is not raised; only masking or
        // a farewell is.
        let plain = m.observe("p_1", 2 * MIN, &mark(Level::None, &[]));
        assert_eq!(plain.level, Level::None);
        // Masking with no earlier risk is just "i'm fine".
        let mut fresh = RiskMemory::new(RiskMemoryConfig::default());
        let r = fresh.observe("p_3", 0, &mark(Level::None, &["reassurance"]));
        assert_eq!(r.level, Level::None);
    }

    #[test]
    fn marks_expire_after_the_window() {
        let cfg = RiskMemoryConfig {
            window_ms: 30 * MIN,
            ..RiskMemoryConfig::default()
        };
        let mut m = RiskMemory::new(cfg);
        m.observe("p_1", 0, &mark(Level::Concern, &["preparation"]));
        let late = m.observe("p_1", 31 * MIN, &mark(Level::None, &["goodbye"]));
        assert_eq!(late.level, Level::None);
        // The expired key was purged; the goodbye itself left a mark.
        assert_eq!(m.len(), 1);
        m.purge_expired(120 * MIN);
        assert!(m.is_empty());
    }

    #[test]
    fn never_lowers_a_level() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        m.observe("p_1", 0, &mark(Level::Concern, &["preparation"]));
        let r = m.observe(
            "p_1",
            MIN,
            &mark(Level::Imminent, &["goodbye", "timeframe"]),
        );
        assert_eq!(r.level, Level::Imminent);
        assert_eq!(r.raised_by, None);
    }

    #[test]
    fn bounded_in_keys_and_marks() {
        let cfg = RiskMemoryConfig {
            max_keys: 3,
            max_marks: 2,
            ..RiskMemoryConfig::default()
        };
        let mut m = RiskMemory::new(cfg);
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            m.observe(key, i as u64, &mark(Level::Concern, &["preparation"]));
        }
        assert_eq!(m.len(), 3);
        // "a" was the least recently seen and is gone.
        let r = m.observe("a", 10, &mark(Level::None, &["reassurance"]));
        assert_eq!(r.level, Level::None);
        // Only the newest marks of a key are kept.
        let mut m = RiskMemory::new(cfg);
        m.observe("k", 0, &mark(Level::Concern, &["preparation"]));
        m.observe("k", 1, &mark(Level::Concern, &["ideation_passive"]));
        m.observe("k", 2, &mark(Level::Concern, &["ideation_passive"]));
        let r = m.observe("k", 3, &mark(Level::None, &["goodbye"]));
        // The preparation mark fell out; the wish + goodbye rule remains.
        assert_eq!(r.level, Level::High);
        assert_eq!(r.raised_by, Some("context.preparation_after_wish"));
        m.forget("k");
        assert!(!m.slots.contains_key("k"));
    }

    #[test]
    fn works_on_real_assessments() {
        let mut m = RiskMemory::new(RiskMemoryConfig::default());
        let a = c().assess("gave my guitar to my brother and sorted my will", "anxiety");
        m.observe("p_1", 0, &a);
        let b = c().assess("i'm fine now 🙂 don't worry about me", "anxiety");
        assert!(b.level < Level::High, "{b:?}");
        let r = m.observe("p_1", 10 * MIN, &b);
        assert!(r.level >= Level::High, "{r:?} after {a:?}");
    }
}
