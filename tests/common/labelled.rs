//! Labelled message sets for the classifier tests (`tests/fixtures/*.jsonl`,
//! the schema of `../shared/safety-corpus`): loading, scores, confusion
//! tables and miss listings, shared by `safety_fresh` and `safety_probe`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hearth::safety::classifier::{Assessment, Category, Level, Policy};
use hearth::safety::Verdict;

pub struct Line {
    pub n: usize,
    pub text: String,
    pub room: String,
    pub level: Level,
    pub categories: Vec<Category>,
    pub policy: Option<Policy>,
    pub verdict: &'static str,
}

pub fn load(file: &str) -> Vec<Line> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(file);
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

pub fn policy_name(p: Option<Policy>) -> &'static str {
    p.map(|p| p.as_str()).unwrap_or("null")
}

#[derive(Default)]
pub struct Metrics {
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
    pub fn add(&mut self, l: &Line, a: &Assessment) {
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

    pub fn recall(&self) -> f64 {
        ratio(self.caught_high, self.gold_high)
    }

    pub fn false_escalation(&self) -> f64 {
        ratio(self.escalated_none, self.gold_none)
    }

    pub fn summary(&self, name: &str) {
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

    pub fn tables(&self) {
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
pub fn table(name: &str, labels: &[&str], count: impl Fn(usize, usize) -> usize) {
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

pub fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// Prints one line the classifier got wrong.
pub fn print_miss(l: &Line, a: &Assessment) {
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

/// Whether the assessment differs from the gold label anywhere that counts.
pub fn wrong(l: &Line, a: &Assessment) -> bool {
    a.level != l.level || a.policy != l.policy || a.categories != l.categories
}
