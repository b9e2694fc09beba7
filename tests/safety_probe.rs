//! Runs the built-in crisis classifier over `tests/fixtures/safety_probe.jsonl`,
//! a blind probe of 277 labelled lines (same schema as
//! `../shared/safety-corpus`, English and Spanish) written by someone who
//! never saw the rules, the development corpus or the fresh set.
//!
//! Prints confusion tables for the whole file and the summary for its even
//! and odd halves (lines counted from 1). Fails if the whole file falls below
//! the numbers reached when the word-level signal-family layer landed, so a
//! regression shows at once. Run with
//! `cargo test --test safety_probe -- --nocapture`.
//!
//! The halves have different roles. Only the EVEN lines may be read while
//! tuning: `HEARTH_PROBE_MISSES=1` lists the even lines the classifier gets
//! wrong and never prints an odd line. The odd half stays unread, as a
//! semi-blind estimate of held-out performance (its labels still shape the
//! whole-file score, so it is only semi-blind).
//!
//! Scores (recall on high+imminent; share of gold `none` escalated):
//! - Blind, before any rule was changed for it: recall 0.607 (74/122), false
//!   escalations 0.026. That is the honest number for how the phrase rules
//!   generalised. Halves at that point: even 0.639 (39/61), 0.036 (2/56);
//!   odd 0.574 (35/61), 0.017 (1/58).
//! - After the cue layer (word/stem cue families combined by a rule table in
//!   `config/safety/common.toml`; tuned on the corpus, the fresh set and the
//!   even half only): whole file recall 0.811 (99/122), false escalations
//!   0.026 (3/114); even 0.984 (60/61), 0.036 (2/56); odd 0.639 (39/61),
//!   0.017 (1/58). The even half was read, so only the odd half's gain
//!   (+4 lines) says anything about held-out recall, and it is small. Two
//!   odd lines were quoted in the brief that asked for the layer, and the
//!   odd summary was seen once mid-way and the pass/fail of the whole-file
//!   false-escalation assertion while tuning, so the odd half is semi-blind
//!   at best.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hearth::safety::classifier::{Assessment, Category, Classifier, Level, Policy};
use hearth::safety::Verdict;

/// What the whole file reached, rounded down (recall) and up (false
/// escalations), so a regression fails.
const RECALL_FLOOR: f64 = 0.81;
const FALSE_ESCALATION_CEILING: f64 = 0.03;

struct Line {
    n: usize,
    text: String,
    room: String,
    level: Level,
    categories: Vec<Category>,
    policy: Option<Policy>,
    verdict: &'static str,
}

fn load() -> Vec<Line> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("safety_probe.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Value =
            serde_json::from_str(raw).unwrap_or_else(|e| panic!("line {n}: bad JSON: {e}"));
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let level = Level::parse(&s("level")).unwrap_or_else(|| panic!("line {n}: bad level"));
        let categories: Vec<Category> = v["categories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().and_then(Category::parse))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            level == Level::None,
            categories.is_empty(),
            "line {n}: categories must be empty iff the level is none"
        );
        let policy = v["policy"].as_str().and_then(Policy::parse);
        let verdict = match s("verdict").as_str() {
            "deliver" => "deliver",
            "hold" => "hold",
            "block" => "block",
            other => panic!("line {n}: bad verdict {other:?}"),
        };
        out.push(Line {
            n,
            text: s("text"),
            room: s("room"),
            level,
            categories,
            policy,
            verdict,
        });
    }
    out
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Deliver => "deliver",
        Verdict::Hold => "hold",
        Verdict::Block(_) => "block",
    }
}

fn policy_name(p: Option<Policy>) -> &'static str {
    p.map(|p| p.as_str()).unwrap_or("null")
}

#[derive(Default)]
struct Metrics {
    lines: usize,
    gold_high: usize,
    caught_high: usize,
    gold_none: usize,
    escalated_none: usize,
    level_ok: usize,
    policy_ok: usize,
    verdict_ok: usize,
    categories_ok: usize,
    level_conf: BTreeMap<(Level, Level), usize>,
    policy_conf: BTreeMap<(&'static str, &'static str), usize>,
    verdict_conf: BTreeMap<(&'static str, &'static str), usize>,
}

impl Metrics {
    fn add(&mut self, l: &Line, a: &Assessment) {
        self.lines += 1;
        if l.level >= Level::High {
            self.gold_high += 1;
            self.caught_high += usize::from(a.level >= Level::High);
        }
        if l.level == Level::None {
            self.gold_none += 1;
            self.escalated_none += usize::from(a.level >= Level::High);
        }
        self.level_ok += usize::from(l.level == a.level);
        self.policy_ok += usize::from(l.policy == a.policy);
        let v = verdict_name(&a.verdict());
        self.verdict_ok += usize::from(l.verdict == v);
        self.categories_ok += usize::from(l.categories == a.categories);
        *self.level_conf.entry((l.level, a.level)).or_default() += 1;
        *self
            .policy_conf
            .entry((policy_name(l.policy), policy_name(a.policy)))
            .or_default() += 1;
        *self.verdict_conf.entry((l.verdict, v)).or_default() += 1;
    }

    fn recall(&self) -> f64 {
        ratio(self.caught_high, self.gold_high)
    }

    fn false_escalation(&self) -> f64 {
        ratio(self.escalated_none, self.gold_none)
    }

    fn summary(&self, name: &str) {
        println!(
            "{name:<11} lines {}  recall(high+imminent) {:.3} ({}/{})  false escalations {:.3} ({}/{})  \
             level acc {:.3}  category acc {:.3}  policy acc {:.3}  verdict acc {:.3}",
            self.lines,
            self.recall(),
            self.caught_high,
            self.gold_high,
            self.false_escalation(),
            self.escalated_none,
            self.gold_none,
            ratio(self.level_ok, self.lines),
            ratio(self.categories_ok, self.lines),
            ratio(self.policy_ok, self.lines),
            ratio(self.verdict_ok, self.lines),
        );
    }

    fn tables(&self) {
        let levels = [Level::None, Level::Concern, Level::High, Level::Imminent];
        let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
        table("level", &names, |g, p| {
            self.level_conf
                .get(&(levels[g], levels[p]))
                .copied()
                .unwrap_or(0)
        });
        let policies = ["null", "contact", "link", "sourcing", "method", "urging"];
        table("policy", &policies, |g, p| {
            self.policy_conf
                .get(&(policies[g], policies[p]))
                .copied()
                .unwrap_or(0)
        });
        let verdicts = ["deliver", "hold", "block"];
        table("verdict", &verdicts, |g, p| {
            self.verdict_conf
                .get(&(verdicts[g], verdicts[p]))
                .copied()
                .unwrap_or(0)
        });
    }
}

/// Prints one confusion table, rows gold and columns predicted.
fn table(name: &str, labels: &[&str], count: impl Fn(usize, usize) -> usize) {
    println!("\n{name} (rows gold, columns predicted)");
    print!("{:>10}", "");
    for l in labels {
        print!("{l:>10}");
    }
    println!();
    for (g, gl) in labels.iter().enumerate() {
        print!("{gl:>10}");
        for p in 0..labels.len() {
            print!("{:>10}", count(g, p));
        }
        println!();
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

#[test]
fn probe_set_holds_the_reached_numbers() {
    let lines = load();
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let show_misses = std::env::var_os("HEARTH_PROBE_MISSES").is_some();
    let (mut all, mut even, mut odd) = (Metrics::default(), Metrics::default(), Metrics::default());
    for l in &lines {
        let a = classifier.assess(&l.text, &l.room);
        all.add(l, &a);
        let is_even = l.n % 2 == 0;
        if is_even {
            even.add(l, &a);
        } else {
            odd.add(l, &a);
        }
        let wrong = a.level != l.level || a.policy != l.policy || a.categories != l.categories;
        // Odd lines are the semi-blind half: never printed.
        if show_misses && wrong && is_even {
            let cats: Vec<_> = a.categories.iter().map(|c| c.as_str()).collect();
            let gold: Vec<_> = l.categories.iter().map(|c| c.as_str()).collect();
            println!(
                "MISS {} [{}] gold {}/{:?}/{} got {}/{:?}/{} {:?}\n     {}",
                l.n,
                l.room,
                l.level,
                gold,
                policy_name(l.policy),
                a.level,
                cats,
                policy_name(a.policy),
                a.signals,
                l.text
            );
        }
    }
    println!();
    all.summary("probe");
    even.summary("probe even");
    odd.summary("probe odd");
    all.tables();
    assert!(
        all.recall() >= RECALL_FLOOR,
        "recall on high+imminent is {:.3}, below {RECALL_FLOOR}",
        all.recall()
    );
    assert!(
        all.false_escalation() <= FALSE_ESCALATION_CEILING,
        "{:.3} of gold-none lines were escalated to high or above (limit {FALSE_ESCALATION_CEILING})",
        all.false_escalation()
    );
}
