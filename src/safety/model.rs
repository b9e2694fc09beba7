//! The learned layer of the crisis classifier: a small linear model that
//! catches what the phrase rules miss.
//!
//! Owns: the model file format (`config/safety/model.json`), hashing of
//! features, scoring one message's features, and training (pure: labelled
//! rows in, a model file out; `examples/train_classifier.rs` is the CLI).
//!
//! Must not touch: text, folding or the rules. The features of a message
//! are produced by `classifier` (which owns the folded tokens and the rule
//! hits) through a [`FeatureSink`]; this module only sees feature names or
//! their hashes. It never lowers a level the rules gave: the classifier
//! asks it only when the rules stayed below `high`.
//!
//! Why a model beside the rules: the rules match the phrasings their
//! authors thought of, and measured on sets written blind they missed a
//! third of the crisis messages (indirect phrasing, euphemism, attempts
//! described by what is happening). A logistic model over word stems, stem
//! pairs and the rule families that fired generalises across phrasing
//! better than another phrase, and its weights are data, not code, so they
//! are retrained as labelled data grows. Each head is explainable: the
//! features with the largest weights are listed by `explain`.
//!
//! Heads, all logistic: `escalate` (level `high` or above, against the
//! rest), `imminent` (among escalations), and one per category.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use super::classifier::{Category, Level};

/// Feature names are joined with this between their parts.
const SEP: u8 = b':';

/// The heads, in the order of `ModelFile::bias` and every weight row.
pub const HEADS: [&str; 7] = [
    "escalate",
    "imminent",
    "suicide",
    "self_harm",
    "overdose",
    "abuse",
    "third_party",
];
const H: usize = HEADS.len();
const ESCALATE: usize = 0;
const IMMINENT: usize = 1;
/// The category heads start here, in `Category::ALL` order.
const CATS: usize = 2;

/// The format version this build reads and writes.
pub const FORMAT: u32 = 1;

/// Where a feature goes: hashed on the send path, spelled out for training.
pub(crate) trait FeatureSink {
    /// One feature, named by its parts (joined with `:`).
    fn add(&mut self, parts: &[&str]);
}

/// FNV-1a over the bytes of the joined name. Stable across builds and
/// platforms, so a model file hashes the same everywhere.
fn fnv_parts(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(SEP);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The hash of a feature name as written in the model file.
pub fn hash_name(name: &str) -> u64 {
    fnv_parts(&[name])
}

/// Collects feature hashes without allocating per feature.
#[derive(Default)]
pub(crate) struct HashSink {
    pub(crate) hashes: Vec<u64>,
}

impl FeatureSink for HashSink {
    fn add(&mut self, parts: &[&str]) {
        self.hashes.push(fnv_parts(parts));
    }
}

/// Collects feature names, for training and for `explain`.
#[derive(Default)]
pub(crate) struct NameSink {
    pub(crate) names: Vec<String>,
}

impl FeatureSink for NameSink {
    fn add(&mut self, parts: &[&str]) {
        self.names.push(parts.join(":"));
    }
}

/// Keys are already FNV hashes; hashing them again would only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The model as stored in `config/safety/model.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: u32,
    /// What it was trained on and how; for people, never read by code.
    pub about: String,
    /// `HEADS`, so a file from another build is refused, not misread.
    pub heads: Vec<String>,
    pub bias: Vec<f32>,
    /// An escalation is raised when P(escalate) reaches this.
    pub escalate_threshold: f32,
    /// A raised escalation is `imminent` when P(imminent) reaches this.
    pub imminent_threshold: f32,
    /// A category is named when its probability reaches this.
    pub category_threshold: f32,
    /// A rules escalation is lowered to `concern` when P(escalate) is
    /// under this; 0 (the default) never lowers. `concern` still sends the
    /// person support and flags the message to staff, so a lowered message
    /// is still seen by a human; what it no longer does is page a clinician.
    #[serde(default)]
    pub veto_threshold: f32,
    /// Feature name → one weight per head.
    pub weights: BTreeMap<String, Vec<f32>>,
}

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: invalid model JSON: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// A compiled model: weights keyed by feature hash.
#[derive(Debug)]
pub struct Model {
    weights: HashMap<u64, [f32; H], BuildHasherDefault<PassThrough>>,
    bias: [f32; H],
    escalate_threshold: f32,
    imminent_threshold: f32,
    category_threshold: f32,
    veto_threshold: f32,
}

/// What the model says about one message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub escalate: f32,
    pub imminent: f32,
    /// In `Category::ALL` order.
    pub categories: [f32; 5],
}

/// The model's decision, when it raises an escalation the rules did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raise {
    pub level: Level,
    /// Category bits (`Category::bit`), never `third_party` alone.
    pub categories: u8,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    pub fn from_json(file: &str, text: &str) -> Result<Model, ModelError> {
        let m: ModelFile = serde_json::from_str(text).map_err(|e| ModelError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        Model::compile(file, &m)
    }

    pub fn compile(file: &str, m: &ModelFile) -> Result<Model, ModelError> {
        let invalid = |message: String| ModelError::Invalid {
            file: file.to_string(),
            message,
        };
        if m.format != FORMAT {
            return Err(invalid(format!(
                "format {} is not the one this build reads ({FORMAT})",
                m.format
            )));
        }
        if m.heads != HEADS {
            return Err(invalid(format!(
                "heads {:?} differ from this build's {HEADS:?}",
                m.heads
            )));
        }
        let row = |key: &str, v: &[f32]| -> Result<[f32; H], ModelError> {
            if v.iter().any(|x| !x.is_finite()) {
                return Err(invalid(format!("{key}: weights must be finite numbers")));
            }
            v.try_into()
                .map_err(|_| invalid(format!("{key}: needs {H} weights, has {}", v.len())))
        };
        for (key, t) in [
            ("escalate_threshold", m.escalate_threshold),
            ("imminent_threshold", m.imminent_threshold),
            ("category_threshold", m.category_threshold),
        ] {
            if !(t > 0.0 && t < 1.0) {
                return Err(invalid(format!("{key}: must be between 0 and 1, is {t}")));
            }
        }
        if !(0.0..1.0).contains(&m.veto_threshold) {
            return Err(invalid(format!(
                "veto_threshold: must be at least 0 and under 1, is {}",
                m.veto_threshold
            )));
        }
        let bias = row("bias", &m.bias)?;
        let mut weights = HashMap::with_capacity_and_hasher(m.weights.len(), Default::default());
        for (name, w) in &m.weights {
            if weights.insert(hash_name(name), row(name, w)?).is_some() {
                return Err(invalid(format!(
                    "{name}: two feature names share a hash; rename one"
                )));
            }
        }
        Ok(Model {
            weights,
            bias,
            escalate_threshold: m.escalate_threshold,
            imminent_threshold: m.imminent_threshold,
            category_threshold: m.category_threshold,
            veto_threshold: m.veto_threshold,
        })
    }

    /// Scores a message from its feature hashes (each counted once).
    pub fn score(&self, hashes: &mut Vec<u64>) -> Scores {
        hashes.sort_unstable();
        hashes.dedup();
        let mut z = self.bias;
        for h in hashes.iter() {
            if let Some(w) = self.weights.get(h) {
                for (zi, wi) in z.iter_mut().zip(w) {
                    *zi += wi;
                }
            }
        }
        let mut categories = [0.0; 5];
        for (c, zc) in categories.iter_mut().zip(&z[CATS..]) {
            *c = sigmoid(*zc);
        }
        Scores {
            escalate: sigmoid(z[ESCALATE]),
            imminent: sigmoid(z[IMMINENT]),
            categories,
        }
    }

    /// Whether the model overrules an escalation the rules raised: it is
    /// confident the message is not high risk (P(escalate) under
    /// `veto_threshold`). The caller lowers it to `concern`, never further.
    pub fn vetoes(&self, s: &Scores) -> bool {
        s.escalate < self.veto_threshold
    }

    /// The escalation the model raises, if any. `rule_cats` are the
    /// categories the rules found at a lower level; they are kept.
    pub fn decide(&self, s: &Scores, rule_cats: u8) -> Option<Raise> {
        if s.escalate < self.escalate_threshold {
            return None;
        }
        let level = if s.imminent >= self.imminent_threshold {
            Level::Imminent
        } else {
            Level::High
        };
        let mut bits = rule_cats;
        for (c, p) in Category::ALL.into_iter().zip(s.categories) {
            if p >= self.category_threshold {
                bits |= c.bit();
            }
        }
        if bits & !Category::ThirdParty.bit() == 0 {
            // No kind of risk named: the likeliest one (never third party
            // alone).
            let best = Category::ALL
                .into_iter()
                .zip(s.categories)
                .filter(|(c, _)| *c != Category::ThirdParty)
                .fold((Category::Suicide, f32::MIN), |acc, (c, p)| {
                    if p > acc.1 {
                        (c, p)
                    } else {
                        acc
                    }
                });
            bits |= best.0.bit();
        }
        Some(Raise {
            level,
            categories: bits,
        })
    }

    /// The named features' weights on the escalate head, largest first (for
    /// `Classifier::explain`).
    pub fn contributions(&self, names: &[String]) -> Vec<(String, f32)> {
        let mut out: Vec<(String, f32)> = names
            .iter()
            .filter_map(|n| {
                self.weights
                    .get(&hash_name(n))
                    .map(|w| (n.clone(), w[ESCALATE]))
            })
            .collect();
        out.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

// ---------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------

/// One labelled message, as features.
#[derive(Clone, Debug)]
pub struct TrainRow {
    pub features: Vec<String>,
    pub level: Level,
    /// Category bits (`Category::bit`).
    pub categories: u8,
}

/// How to train. The defaults are the ones the shipped model was trained
/// with.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: u32,
    pub learning_rate: f32,
    /// L2 penalty per update.
    pub l2: f32,
    /// A feature seen in fewer rows than this is left out (memorising one
    /// sentence's rare words does not generalise).
    pub min_count: usize,
    /// `concern` rows are negatives for `escalate`, with this weight: the
    /// line between concern and high is fine, and missing a high costs more
    /// than flagging a concern.
    pub concern_weight: f32,
    pub seed: u64,
    /// Weights smaller than this on every head are not written.
    pub prune: f32,
}

impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions {
            epochs: 40,
            learning_rate: 0.05,
            l2: 1e-4,
            min_count: 2,
            concern_weight: 0.5,
            seed: 0x4865_6172_7468,
            prune: 0.002,
        }
    }
}

/// Deterministic shuffling, independent of any crate's RNG version.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// For one head and one row: the target and the sample weight (0 = the row
/// does not train this head).
fn target(head: usize, r: &TrainRow, concern_weight: f32) -> (f32, f32) {
    let esc = r.level >= Level::High;
    match head {
        ESCALATE => match r.level {
            Level::Concern => (0.0, concern_weight),
            _ => (if esc { 1.0 } else { 0.0 }, 1.0),
        },
        IMMINENT if esc => (if r.level == Level::Imminent { 1.0 } else { 0.0 }, 1.0),
        IMMINENT => (0.0, 0.0),
        c if r.level > Level::None => {
            let bit = Category::ALL
                .get(c - CATS)
                .map(|cat| cat.bit())
                .unwrap_or(0);
            (if r.categories & bit != 0 { 1.0 } else { 0.0 }, 1.0)
        }
        _ => (0.0, 0.0),
    }
}

/// Trains every head by AdaGrad on the logistic loss with L2, classes
/// balanced per head. Deterministic for the same rows and options.
/// Thresholds are set to 0.5; the caller chooses them (by cross-validation)
/// and writes them into the result.
pub fn train(rows: &[TrainRow], opts: &TrainOptions, about: String) -> ModelFile {
    // The vocabulary: features seen in at least `min_count` rows.
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_row: Vec<Vec<&str>> = Vec::with_capacity(rows.len());
    for r in rows {
        let mut f: Vec<&str> = r.features.iter().map(String::as_str).collect();
        f.sort_unstable();
        f.dedup();
        for n in &f {
            *count.entry(n).or_default() += 1;
        }
        per_row.push(f);
    }
    let vocab: Vec<&str> = count
        .iter()
        .filter(|(_, c)| **c >= opts.min_count)
        .map(|(n, _)| *n)
        .collect();
    let index: HashMap<&str, usize> = vocab.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let xs: Vec<Vec<usize>> = per_row
        .iter()
        .map(|f| f.iter().filter_map(|n| index.get(n).copied()).collect())
        .collect();

    let mut w = vec![[0f32; H]; vocab.len()];
    let mut g2 = vec![[1e-6f32; H]; vocab.len()];
    let mut bias = [0f32; H];
    let mut bias_g2 = [1e-6f32; H];
    // Class balance per head: positives and negatives weigh the same in
    // total, so a rare category is learnt too.
    let mut scale = [[1f32; 2]; H];
    for (head, s) in scale.iter_mut().enumerate() {
        let (mut pos, mut neg) = (0f32, 0f32);
        for r in rows {
            let (y, sw) = target(head, r, opts.concern_weight);
            if y > 0.5 {
                pos += sw;
            } else {
                neg += sw;
            }
        }
        if pos > 0.0 && neg > 0.0 {
            let total = pos + neg;
            *s = [total / (2.0 * neg), total / (2.0 * pos)];
        }
    }

    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = XorShift(opts.seed | 1);
    for _ in 0..opts.epochs {
        for i in (1..order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &i in &order {
            let (r, x) = (&rows[i], &xs[i]);
            for head in 0..H {
                let (y, sw) = target(head, r, opts.concern_weight);
                if sw == 0.0 {
                    continue;
                }
                let sw = sw * scale[head][usize::from(y > 0.5)];
                let z = bias[head] + x.iter().map(|&f| w[f][head]).sum::<f32>();
                let g = (sigmoid(z) - y) * sw;
                bias_g2[head] += g * g;
                bias[head] -= opts.learning_rate * g / bias_g2[head].sqrt();
                for &f in x {
                    let gf = g + opts.l2 * w[f][head];
                    g2[f][head] += gf * gf;
                    w[f][head] -= opts.learning_rate * gf / g2[f][head].sqrt();
                }
            }
        }
    }

    let round = |v: f32| (v * 10_000.0).round() / 10_000.0;
    let weights = vocab
        .iter()
        .zip(&w)
        .filter(|(_, wr)| wr.iter().any(|v| v.abs() >= opts.prune))
        .map(|(n, wr)| (n.to_string(), wr.iter().map(|v| round(*v)).collect()))
        .collect();
    ModelFile {
        format: FORMAT,
        about,
        heads: HEADS.iter().map(|h| h.to_string()).collect(),
        bias: bias.iter().map(|v| round(*v)).collect(),
        escalate_threshold: 0.5,
        imminent_threshold: 0.5,
        category_threshold: 0.5,
        veto_threshold: 0.0,
        weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(words: &[&str], level: Level, cats: &[Category]) -> TrainRow {
        TrainRow {
            features: words.iter().map(|w| format!("s:{w}")).collect(),
            level,
            categories: cats.iter().fold(0, |b, c| b | c.bit()),
        }
    }

    fn toy() -> Vec<TrainRow> {
        use Category::*;
        let mut rows = Vec::new();
        for _ in 0..5 {
            rows.push(row(
                &["pills", "tonight", "bye"],
                Level::Imminent,
                &[Suicide],
            ));
            rows.push(row(&["pills", "want", "die"], Level::High, &[Suicide]));
            rows.push(row(&["cut", "arm", "again"], Level::High, &[SelfHarm]));
            rows.push(row(&["coffee", "exam", "tired"], Level::None, &[]));
            rows.push(row(&["exam", "killing", "lol"], Level::None, &[]));
            rows.push(row(&["tired", "want", "sleep"], Level::Concern, &[Suicide]));
        }
        rows
    }

    fn hashes(names: &[&str]) -> Vec<u64> {
        names.iter().map(|n| hash_name(n)).collect()
    }

    #[test]
    fn parts_hash_like_the_joined_name() {
        let mut h = HashSink::default();
        let mut n = NameSink::default();
        for parts in [
            &["b", "pills", "tonig"][..],
            &["room", "anxiety"],
            &["s", ""],
        ] {
            h.add(parts);
            n.add(parts);
        }
        let from_names: Vec<u64> = n.names.iter().map(|s| hash_name(s)).collect();
        assert_eq!(h.hashes, from_names);
        assert_ne!(hash_name("s:ab"), hash_name("s:ba"));
    }

    #[test]
    fn training_separates_and_is_deterministic() {
        let rows = toy();
        let a = train(&rows, &TrainOptions::default(), String::new());
        let b = train(&rows, &TrainOptions::default(), String::new());
        assert_eq!(a.weights, b.weights, "same rows and seed, same model");
        let m = Model::compile("toy", &a).expect("a trained model compiles");
        let risky = m.score(&mut hashes(&["s:pills", "s:tonight", "s:bye"]));
        let calm = m.score(&mut hashes(&["s:coffee", "s:exam", "s:tired"]));
        assert!(risky.escalate > 0.8, "{risky:?}");
        assert!(calm.escalate < 0.2, "{calm:?}");
        assert!(risky.imminent > 0.5, "{risky:?}");
        let cut = m.score(&mut hashes(&["s:cut", "s:arm"]));
        let raise = m.decide(&cut, 0).expect("self-harm act escalates");
        assert_eq!(raise.level, Level::High);
        assert_eq!(raise.categories, Category::SelfHarm.bit());
    }

    #[test]
    fn unknown_features_score_the_bias_and_repeats_count_once() {
        let m = Model::compile(
            "toy",
            &train(&toy(), &TrainOptions::default(), String::new()),
        )
        .expect("compiles");
        let none = m.score(&mut Vec::new());
        let unknown = m.score(&mut hashes(&["s:zzz", "w:qqq"]));
        assert_eq!(none, unknown);
        let once = m.score(&mut hashes(&["s:pills"]));
        let thrice = m.score(&mut hashes(&["s:pills", "s:pills", "s:pills"]));
        assert_eq!(once, thrice);
    }

    #[test]
    fn rare_features_are_left_out() {
        let mut rows = toy();
        rows.push(row(&["hapax"], Level::High, &[Category::Suicide]));
        let m = train(&rows, &TrainOptions::default(), String::new());
        assert!(!m.weights.contains_key("s:hapax"));
        assert!(m.weights.contains_key("s:pills"));
    }

    #[test]
    fn decide_names_a_kind_of_risk_and_never_third_party_alone() {
        let m = Model::compile(
            "toy",
            &train(&toy(), &TrainOptions::default(), String::new()),
        )
        .expect("compiles");
        let s = Scores {
            escalate: 0.9,
            imminent: 0.1,
            categories: [0.1, 0.2, 0.3, 0.1, 0.9],
        };
        let r = m.decide(&s, 0).expect("raises");
        assert_eq!(
            r.categories,
            Category::Overdose.bit() | Category::ThirdParty.bit()
        );
        let low = Scores { escalate: 0.1, ..s };
        assert_eq!(m.decide(&low, 0), None);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let mut f = train(&toy(), &TrainOptions::default(), String::new());
        f.escalate_threshold = 1.5;
        let e = Model::compile("m.json", &f).expect_err("threshold out of range");
        assert!(e.to_string().contains("escalate_threshold"), "{e}");
        let mut f = train(&toy(), &TrainOptions::default(), String::new());
        f.heads.pop();
        assert!(Model::compile("m.json", &f).is_err());
        let mut f = train(&toy(), &TrainOptions::default(), String::new());
        f.weights.insert("s:x".into(), vec![1.0]);
        let e = Model::compile("m.json", &f).expect_err("short row");
        assert!(e.to_string().contains("s:x"), "{e}");
        let e = Model::from_json("m.json", "{").expect_err("not JSON");
        assert!(
            e.to_string().starts_with("m.json: invalid model JSON"),
            "{e}"
        );
    }
}
