//! Runs the built-in crisis classifier over the development corpus in
//! `../shared/safety-corpus/` (relative to the crate root) and prints
//! confusion tables for level, policy and verdict, plus category accuracy.
//!
//! Fails if recall on `high` + `imminent` (predicted at `high` or above
//! among gold `high`/`imminent`) is below 0.95, or if more than 5 % of gold
//! `none` lines are predicted at `high` or above. Run with
//! `cargo test --test safety_corpus -- --nocapture`.
//!
//! Metrics are also printed for a fixed ~26 % split of the corpus (an FNV-1a
//! hash of the text, so any tool can reproduce it). It was kept out of sight
//! during the first tuning rounds; measured blind it scored recall 0.718
//! (28/39), false escalations 0.000, policy accuracy 0.910 and verdict
//! accuracy 0.820. Its misses were then read to reach the corpus targets, so
//! today's split numbers are no longer a blind measure: the release
//! held-out set is. Set `HEARTH_CORPUS_MISSES=1` to list the misses of the
//! tuning split, `HEARTH_CORPUS_MISSES=all` for every miss.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hearth::safety::classifier::{Assessment, Category, Classifier, Level, Policy};
use hearth::safety::Verdict;

struct Line {
    file: &'static str,
    n: usize,
    text: String,
    room: String,
    level: Level,
    categories: Vec<Category>,
    policy: Option<Policy>,
    verdict: &'static str,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("safety-corpus")
}

fn load() -> Vec<Line> {
    let dir = corpus_dir();
    assert!(
        dir.is_dir(),
        "the safety corpus is expected at {} (shared/safety-corpus next to the repository); \
         it holds en.jsonl and es.jsonl",
        dir.display()
    );
    let mut out = Vec::new();
    for file in ["en.jsonl", "es.jsonl"] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("{file}:{}: bad JSON: {e}", i + 1));
            let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
            let level =
                Level::parse(&s("level")).unwrap_or_else(|| panic!("{file}:{}: bad level", i + 1));
            let categories = v["categories"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().and_then(Category::parse))
                        .collect()
                })
                .unwrap_or_default();
            let policy = v["policy"].as_str().and_then(Policy::parse);
            let verdict = match s("verdict").as_str() {
                "deliver" => "deliver",
                "hold" => "hold",
                "block" => "block",
                other => panic!("{file}:{}: bad verdict {other:?}", i + 1),
            };
            out.push(Line {
                file,
                n: i + 1,
                text: s("text"),
                room: s("room"),
                level,
                categories,
                policy,
                verdict,
            });
        }
    }
    out
}

/// FNV-1a of the text: a fixed, tool-independent split.
fn held_out(text: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 10 < 3
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
            if a.level >= Level::High {
                self.caught_high += 1;
            }
        }
        if l.level == Level::None {
            self.gold_none += 1;
            if a.level >= Level::High {
                self.escalated_none += 1;
            }
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
            "{name:<22} lines {:>3}  recall(high+imminent) {:.3} ({}/{})  false escalations {:.3} ({}/{})  \
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
        println!("\nlevel (rows gold, columns predicted)");
        print!("{:>10}", "");
        for p in levels {
            print!("{:>10}", p.as_str());
        }
        println!();
        for g in levels {
            print!("{:>10}", g.as_str());
            for p in levels {
                print!("{:>10}", self.level_conf.get(&(g, p)).copied().unwrap_or(0));
            }
            println!();
        }
        let policies = ["null", "contact", "link", "sourcing", "method", "urging"];
        println!("\npolicy (rows gold, columns predicted)");
        print!("{:>10}", "");
        for p in policies {
            print!("{p:>10}");
        }
        println!();
        for g in policies {
            print!("{g:>10}");
            for p in policies {
                print!(
                    "{:>10}",
                    self.policy_conf.get(&(g, p)).copied().unwrap_or(0)
                );
            }
            println!();
        }
        let verdicts = ["deliver", "hold", "block"];
        println!("\nverdict (rows gold, columns predicted)");
        print!("{:>10}", "");
        for p in verdicts {
            print!("{p:>10}");
        }
        println!();
        for g in verdicts {
            print!("{g:>10}");
            for p in verdicts {
                print!(
                    "{:>10}",
                    self.verdict_conf.get(&(g, p)).copied().unwrap_or(0)
                );
            }
            println!();
        }
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
fn corpus_meets_the_release_thresholds() {
    let lines = load();
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let show_misses = std::env::var_os("HEARTH_CORPUS_MISSES").is_some();
    let mut all = Metrics::default();
    let mut tuning = Metrics::default();
    let mut held = Metrics::default();
    let mut per_file: BTreeMap<&str, Metrics> = BTreeMap::new();
    for l in &lines {
        let a = classifier.assess(&l.text, &l.room);
        all.add(l, &a);
        per_file.entry(l.file).or_default().add(l, &a);
        let in_held = held_out(&l.text);
        if in_held {
            held.add(l, &a);
        } else {
            tuning.add(l, &a);
        }
        // The held-back split was kept out of sight while tuning; list its
        // misses only when asked for all of them.
        if in_held && std::env::var("HEARTH_CORPUS_MISSES").as_deref() != Ok("all") {
            continue;
        }
        let wrong = a.level != l.level || a.policy != l.policy || a.categories != l.categories;
        if show_misses && wrong {
            let cats: Vec<_> = a.categories.iter().map(|c| c.as_str()).collect();
            let gold: Vec<_> = l.categories.iter().map(|c| c.as_str()).collect();
            println!(
                "MISS {}:{} [{}] gold {}/{:?}/{} got {}/{:?}/{} {:?}\n     {}",
                l.file,
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
    all.summary("full corpus");
    for (file, m) in &per_file {
        m.summary(file);
    }
    tuning.summary("tuning split (~74 %)");
    held.summary("held-back split (~26 %)");
    all.tables();

    assert!(
        all.recall() >= 0.95,
        "recall on high+imminent is {:.3}, below 0.95",
        all.recall()
    );
    assert!(
        all.false_escalation() <= 0.05,
        "{:.3} of gold-none lines were escalated to high or above (limit 0.05)",
        all.false_escalation()
    );
}

/// Prints how the messages in `HEARTH_PROBE` (one per line, optionally
/// `room<TAB>text`) are judged. A tuning aid:
/// `HEARTH_PROBE='…' cargo test --test safety_corpus probe -- --ignored --nocapture`.
#[test]
#[ignore]
fn probe() {
    let classifier = Classifier::builtin().expect("the built-in safety config compiles");
    let input = std::env::var("HEARTH_PROBE").unwrap_or_default();
    for line in input.lines().filter(|l| !l.trim().is_empty()) {
        let (room, text) = line.split_once('\t').unwrap_or(("anxiety", line));
        println!("{text}\n{}", classifier.explain(text, room));
    }
}
