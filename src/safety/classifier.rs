//! The crisis classifier and the tier-0 policy filters (the safety issue).
//!
//! Owns: loading and validating the phrase lexicons in `config/safety/*.toml`,
//! compiling them into one Aho-Corasick automaton, and judging one message:
//! `Classifier::assess(text, room)` → `Assessment` (crisis level, categories,
//! policy hit, help-seeking, the rule families that fired) and
//! `Assessment::verdict()`.
//!
//! Must not touch: the hub, rooms, sessions, storage or the network. It is
//! pure and does no I/O after construction; the caller decides what a level
//! means (support reply, flag, escalation). It never changes the message.
//!
//! How a message is judged:
//! 1. `normalize` folds it (case, accents, leetspeak, spaced letters, masks,
//!    repeats) into tokens with sentence and clause boundaries.
//! 2. One overlapping automaton pass finds every lexicon phrase; each phrase
//!    belongs to a *family* (ideation, means, timeframe, negation, idiom…).
//! 3. Combos from config join two families that occur near each other into
//!    a third (`use_verb` + `alone` → `overdose_risk`).
//! 4. Modifiers remove what does not count: idioms and quotes, laughter next
//!    to hyperbole-prone slang, gaming talk, negation that really scopes the
//!    phrase, past and recovery talk, habitual time words.
//! 5. Ladders per category turn what is left into a level. Severity rises
//!    with means, timeframe, preparation and goodbyes; deferral ("not today.
//!    tomorrow …") counts as intent, not as negation. Risk to someone else is
//!    judged on its own ladder and adds `third_party`.
//!    A second, word-level layer then runs on the same hits (the *cue
//!    layer*, `Ctx::cue_levels`): see below. The higher level wins.
//! 6. Policy filters look for contact details, links, drug sourcing, method
//!    details and urging, judged separately from the level.
//!
//! The cue layer generalises where whole phrases do not. `[cue.<name>]`
//! in config lists the words of one *cue family* (a lethal means, a place
//! to fall from, pills, acquisition, preparation, an act in progress, a
//! symptom, a timeframe, a hidden moment, first-person intent, a farewell,
//! finality, thought for those left behind, burden, unreachable, alone,
//! tolerance lost, a self-injury verb with a body part…), and may say which
//! lexicon families count as it too (`also`). Stems are prefix matches with
//! a trailing `*` (`pastill*`, `despidiendo*`); folding (case, accents,
//! leetspeak, repeated letters) does the rest, so no inflection is listed
//! twice. Cue words go into the same Aho-Corasick pass as the lexicon, as
//! `Fam::Cue` hits carrying their family id, so every suppressor applies to
//! them: idioms, urging and grief overlaps, gaming, negation scope, past and
//! recovery talk, hypothetical help-seeking, and (per family flag) habitual
//! time words and ordinary reasons. A cue takes the subject of its own
//! sentence, else the person of the cue before it, else the writer.
//! `[[cue_rule]]` rows combine families (all / any / unless, in one sentence
//! or the whole message, for the writer or someone else) into a level and
//! categories, reported as `family.<id>` in `signals`. A rule of two or more
//! families needs two separate, non-overlapping hits, so one phrase never
//! counts twice; someone else's rules are silenced while a death is being
//! described (grief).
//!
//! Which words do what lives in config; this file holds only the roles of
//! the families and the ladders, so the rules can grow without code changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::Deserialize;

use super::model::{hash_name, FeatureSink, HashSink, Model, ModelError, NameSink};
use super::normalize::{fold_into, FoldOptions, FoldScratch, Folded, MaskIndex, TokKind};
use super::policy as scan;
use super::Verdict;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Crisis risk shown by a message, for the writer or a named third party.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    #[default]
    None,
    Concern,
    High,
    Imminent,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Concern => "concern",
            Level::High => "high",
            Level::Imminent => "imminent",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "none" => Level::None,
            "concern" => Level::Concern,
            "high" => Level::High,
            "imminent" => Level::Imminent,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kind of risk. Listed in this order; `ThirdParty` never comes alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Suicide,
    SelfHarm,
    Overdose,
    Abuse,
    ThirdParty,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Suicide,
        Category::SelfHarm,
        Category::Overdose,
        Category::Abuse,
        Category::ThirdParty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Suicide => "suicide",
            Category::SelfHarm => "self_harm",
            Category::Overdose => "overdose",
            Category::Abuse => "abuse",
            Category::ThirdParty => "third_party",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// This category's bit in a set of categories (`Category::ALL` order).
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tier-0 policy hit, judged separately from the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Phone numbers, e-mail addresses, handles, "add me on snap".
    Contact,
    /// URLs, shorteners, spelled-out links.
    Link,
    /// Asking for or offering drugs or a dealer.
    Sourcing,
    /// Counts or doses of a drug or means in a harm context, lethality
    /// questions, dosing instructions.
    Method,
    /// Telling someone to hurt or kill themselves.
    Urging,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Contact => "contact",
            Policy::Link => "link",
            Policy::Sourcing => "sourcing",
            Policy::Method => "method",
            Policy::Urging => "urging",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        Some(match s {
            "contact" => Policy::Contact,
            "link" => Policy::Link,
            "sourcing" => Policy::Sourcing,
            "method" => Policy::Method,
            "urging" => Policy::Urging,
            _ => return None,
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The judgement on one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    pub level: Level,
    /// In `Category` order; empty exactly when `level` is `None`.
    pub categories: Vec<Category>,
    pub policy: Option<Policy>,
    /// The writer asks for help or resources (a support reply is due even at
    /// level `None`).
    pub help_seeking: bool,
    /// Rule families and policy rules that decided the result, for staff and
    /// for tests. Stable names from the config schema.
    pub signals: Vec<&'static str>,
}

impl Assessment {
    /// The corpus README's verdict rules, in order: contact, link and
    /// sourcing block; method and urging hold; otherwise imminent holds.
    /// A block never cancels the crisis side: the caller still sends the
    /// support reply and raises the flag for any level above `None`.
    pub fn verdict(&self) -> Verdict {
        match self.policy {
            Some(Policy::Contact) => Verdict::Block(
                "Contact details can't be shared here. Hearth keeps everyone anonymous, \
                 so please keep talking in the room.",
            ),
            Some(Policy::Link) => Verdict::Block(
                "Links can't be posted here (help-line sites are fine). \
                 You can describe what helped instead.",
            ),
            Some(Policy::Sourcing) => {
                Verdict::Block("Messages about getting or selling drugs can't be posted here.")
            }
            Some(Policy::Method) | Some(Policy::Urging) => Verdict::Hold,
            None if self.level == Level::Imminent => Verdict::Hold,
            None => Verdict::Deliver,
        }
    }
}

/// Why the safety config cannot be used. Every variant names the file and
/// the key so a bad edit is found at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{dir}: no *.toml safety config files found")]
    NoFiles { dir: String },
    #[error("{file}: invalid TOML: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: [lexicon.{family}]: unknown family (known: {known})")]
    UnknownFamily {
        file: String,
        family: String,
        known: String,
    },
    #[error("{file}: {key}: unknown family {family:?}")]
    UnknownReference {
        file: String,
        key: String,
        family: String,
    },
    #[error("{file}: {key}: the list is empty")]
    EmptyList { file: String, key: String },
    #[error("{file}: {key}: phrase {phrase:?} is empty after normalisation")]
    EmptyPhrase {
        file: String,
        key: String,
        phrase: String,
    },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("the safety config defines no phrases at all")]
    NoPhrases,
    #[error("cannot build the phrase matcher: {0}")]
    Build(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

// ---------------------------------------------------------------------------
// Families: the fixed vocabulary of roles the config can fill
// ---------------------------------------------------------------------------

macro_rules! families {
    ($($v:ident => $n:literal),* $(,)?) => {
        /// A signal family. Its role is fixed here; its phrases live in config.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        enum Fam { $($v),* }
        const FAMILIES: &[(Fam, &str)] = &[$((Fam::$v, $n)),*];
    };
}

families! {
    // Risk: each has a category and a base level (see `Fam::risk`).
    IdeationActive => "ideation_active",
    IdeationPassive => "ideation_passive",
    Hopelessness => "hopelessness",
    Indifference => "indifference",
    MethodAct => "method_act",
    MethodResearch => "method_research",
    Lethality => "lethality",
    Stockpile => "stockpile",
    AttemptNow => "attempt_now",
    SelfHarmAct => "self_harm_act",
    SelfHarmUrge => "self_harm_urge",
    SelfHarmSevere => "self_harm_severe",
    OverdoseRisk => "overdose_risk",
    Relapse => "relapse",
    OverdoseNow => "overdose_now",
    AbuseAct => "abuse_act",
    AbuseControl => "abuse_control",
    AbuseFear => "abuse_fear",
    AbuseThreat => "abuse_threat",
    // Raisers: no level of their own; they raise a risk that is present.
    MeansAtHand => "means_at_hand",
    MeansEmoji => "means_emoji",
    Timeframe => "timeframe",
    Opportunity => "opportunity",
    Preparation => "preparation",
    Goodbye => "goodbye",
    Finality => "finality",
    Intent => "intent",
    LocationNow => "location_now",
    Isolation => "isolation",
    Unreachable => "unreachable",
    Rumination => "rumination",
    HappeningNow => "happening_now",
    Deferral => "deferral",
    IntentDenial => "intent_denial",
    // "i'm fine 🙂", "estoy bien": masking when it comes with a farewell or
    // preparation; reported as a signal for the risk memory (`context`).
    Reassurance => "reassurance",
    // Modifiers.
    Negation => "negation",
    NegationPseudo => "negation_pseudo",
    ScopeEnd => "scope_end",
    Past => "past",
    Present => "present",
    Recovery => "recovery",
    Idiom => "idiom",
    Levity => "levity",
    Gaming => "gaming",
    Serious => "serious",
    Habitual => "habitual",
    GriefOther => "grief_other",
    HelpSeeking => "help_seeking",
    // An ordinary reason for a preparation-like act or a means ("for my
    // climbing course", "charity shop", "me lo recomendó la psicóloga").
    Ordinary => "ordinary",
    // Someone hypothetical in a help-seeking question ("what do i say to a
    // mate who …", "cómo ayudo a alguien que …").
    Hypothetical => "hypothetical",
    SubjectSelf => "subject_self",
    SubjectOther => "subject_other",
    HarmReduction => "harm_reduction",
    Treatment => "treatment",
    // Helpers: only meaningful through combos and the quantity rule.
    Drug => "drug",
    Alcohol => "alcohol",
    UseVerb => "use_verb",
    Alone => "alone",
    MixVerb => "mix_verb",
    Acquire => "acquire",
    Dealer => "dealer",
    Offer => "offer",
    OutsidePrescription => "outside_prescription",
    ContactVerb => "contact_verb",
    Platform => "platform",
    Means => "means",
    Possession => "possession",
    Ingest => "ingest",
    OdSymptom => "od_symptom",
    Recreational => "recreational",
    DosingHowto => "dosing_howto",
    WhenWord => "when_word",
    Absence => "absence",
    AbuseVerb => "abuse_verb",
    Relative => "relative",
    TimeUnit => "time_unit",
    MinutesUnit => "minutes_unit",
    LongUnit => "long_unit",
    Ago => "ago",
    InWord => "in_word",
    Container => "container",
    DoseUnit => "dose_unit",
    HowMany => "how_many",
    DoseQuestion => "dose_question",
    IdeationVerb => "ideation_verb",
    MethodVerb => "method_verb",
    SuicideWord => "suicide_word",
    AtWord => "at_word",
    Bulk => "bulk",
    IngestBulk => "ingest_bulk",
    InNumber => "in_number",
    Number => "number",
    Year => "year",
    EmailWord => "email_word",
    DotWord => "dot_word",
    Travel => "travel",
    HoardVerb => "hoard_verb",
    Tld => "tld",
    // Policy.
    Urging => "urging",
    Sourcing => "sourcing",
    ContactRequest => "contact_request",
    // A word of a cue family (`[cue.<name>]`); which one is `Hit::cue`.
    Cue => "cue",
}

const _: () = assert!(FAMILIES.len() <= 128);

impl Fam {
    fn name(self) -> &'static str {
        FAMILIES
            .get(self as usize)
            .map(|(_, n)| *n)
            .unwrap_or("unknown")
    }

    fn from_name(name: &str) -> Option<Fam> {
        FAMILIES.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// Families filled by the classifier itself, never by a lexicon list.
    fn is_internal(self) -> bool {
        matches!(self, Fam::Number | Fam::Year | Fam::Cue)
    }

    /// Category and base level of a risk family.
    fn risk(self) -> Option<(Category, Level)> {
        use Category::*;
        Some(match self {
            Fam::IdeationActive | Fam::MethodAct | Fam::MethodResearch | Fam::Lethality => {
                (Suicide, Level::High)
            }
            Fam::Stockpile => (Suicide, Level::High),
            Fam::IdeationPassive | Fam::Hopelessness | Fam::Indifference => {
                (Suicide, Level::Concern)
            }
            Fam::AttemptNow => (Suicide, Level::Imminent),
            Fam::SelfHarmAct => (SelfHarm, Level::High),
            Fam::SelfHarmUrge => (SelfHarm, Level::Concern),
            Fam::SelfHarmSevere => (SelfHarm, Level::Imminent),
            Fam::OverdoseRisk | Fam::Relapse => (Overdose, Level::High),
            Fam::OverdoseNow => (Overdose, Level::Imminent),
            Fam::AbuseAct | Fam::AbuseThreat => (Abuse, Level::High),
            Fam::AbuseControl | Fam::AbuseFear => (Abuse, Level::Concern),
            _ => return None,
        })
    }

    fn is_raiser(self) -> bool {
        matches!(
            self,
            Fam::MeansAtHand
                | Fam::MeansEmoji
                | Fam::Timeframe
                | Fam::Opportunity
                | Fam::Preparation
                | Fam::Goodbye
                | Fam::Finality
                | Fam::Intent
                | Fam::LocationNow
                | Fam::Isolation
                | Fam::Unreachable
                | Fam::Rumination
                | Fam::HappeningNow
        )
    }

    /// Families whose meaning a negation cue in front of them reverses.
    fn negatable(self) -> bool {
        // A farewell is not undone by a "won't" near it ("won't need it
        // where i'm going").
        if matches!(self, Fam::Goodbye | Fam::Finality) {
            return false;
        }
        self.risk().is_some()
            || self.is_raiser()
            || matches!(
                self,
                Fam::HelpSeeking | Fam::Urging | Fam::Sourcing | Fam::ContactRequest
            )
    }

    /// Families that belong to a person (the writer or someone else), as
    /// opposed to time words that apply to the whole message.
    fn has_person(self) -> bool {
        (self.risk().is_some() || self.is_raiser())
            && !matches!(
                self,
                Fam::Timeframe
                    | Fam::Opportunity
                    | Fam::HappeningNow
                    | Fam::MeansAtHand
                    | Fam::MeansEmoji
            )
    }

    fn bit(self) -> u128 {
        1u128 << (self as u32)
    }

    fn is_helper(self) -> bool {
        (Fam::Drug as u8..=Fam::Tld as u8).contains(&(self as u8))
    }

    fn is_abuse(self) -> bool {
        matches!(
            self,
            Fam::AbuseAct | Fam::AbuseControl | Fam::AbuseFear | Fam::AbuseThreat
        )
    }
}

// ---------------------------------------------------------------------------
// Config schema
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Informational (`en`, `es`, `common`).
    #[serde(default)]
    #[allow(dead_code)]
    language: Option<String>,
    #[serde(default)]
    lexicon: BTreeMap<String, FamilyConfig>,
    #[serde(default)]
    combo: Vec<ComboConfig>,
    #[serde(default)]
    allow: Option<AllowConfig>,
    /// Number words and their values, for spelled-out phone numbers and
    /// quantities (`seis` = 6, `treinta` = 30).
    #[serde(default)]
    numbers: BTreeMap<String, u32>,
    /// Word-level cue families of the generalising layer (see `cues`).
    #[serde(default)]
    cue: BTreeMap<String, CueConfig>,
    /// How cue families combine into a level.
    #[serde(default)]
    cue_rule: Vec<CueRuleConfig>,
}

/// One cue family: words and stems (`pastill*`), and the lexicon families
/// that count as it too. A family may be spread over several files (its
/// words per language); each flag may be set in one file only, or to the
/// same value everywhere.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CueConfig {
    /// Person taken from context, like lexicon `phrases`.
    words: Option<Vec<String>>,
    #[serde(rename = "self")]
    me: Option<Vec<String>>,
    other: Option<Vec<String>>,
    /// Lexicon families whose live hits count as this cue.
    also: Option<Vec<String>>,
    /// Belongs to a person (default true); false for message-wide cues
    /// (time words, means that may be someone else's).
    person: Option<bool>,
    /// Negation and past talk in scope cancel it (default true).
    negatable: Option<bool>,
    /// Habitual time words in the sentence cancel it (default false).
    habitual: Option<bool>,
    /// An ordinary reason in the sentence cancels it (default false).
    ordinary: Option<bool>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CueScope {
    Sentence,
    #[default]
    Message,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CuePerson {
    #[default]
    Any,
    #[serde(rename = "self")]
    Me,
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CueRuleConfig {
    /// Reported as `family.<id>` in `Assessment::signals`.
    id: String,
    /// Every one of these cue families; `name:2` asks for two separate hits.
    all: Vec<String>,
    /// ...and at least one of these, if given.
    #[serde(default)]
    any: Vec<String>,
    /// ...and none of these anywhere in the message.
    #[serde(default)]
    unless: Vec<String>,
    #[serde(default)]
    scope: CueScope,
    #[serde(default)]
    person: CuePerson,
    level: String,
    categories: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FamilyConfig {
    /// Person taken from context (the nearest subject before the phrase).
    phrases: Option<Vec<String>>,
    /// First-person forms: always about the writer.
    #[serde(rename = "self")]
    me: Option<Vec<String>>,
    /// Third-person forms: always about someone else.
    other: Option<Vec<String>>,
    /// First-person forms that are often hyperbole ("kms", "me quiero
    /// morir"): dropped next to laughter, and not escalated alone.
    loose: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowConfig {
    /// Help and emergency lines shared as a resource, never "contact".
    numbers: Option<Vec<String>>,
    /// Help-line sites, never "link". Subdomains are allowed too.
    domains: Option<Vec<String>>,
    /// Top-level domains that make a bare `word.tld` a link.
    tlds: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    Clause,
    #[default]
    Sentence,
    Message,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PersonRule {
    #[default]
    Inherit,
    #[serde(rename = "self")]
    Me,
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComboConfig {
    id: String,
    first: String,
    then: String,
    /// Most tokens allowed between the two.
    within: u32,
    /// `then` must follow `first`.
    #[serde(default)]
    ordered: bool,
    #[serde(default)]
    scope: Scope,
    yields: String,
    #[serde(default)]
    person: PersonRule,
    /// The combo fires only if one of these families is also present...
    #[serde(default)]
    needs_any: Vec<String>,
    /// ...unless the message was sent in this room.
    #[serde(default)]
    room: Option<String>,
}

// ---------------------------------------------------------------------------
// Compiled classifier
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Person {
    Neutral,
    Me,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    fam: Fam,
    person: Person,
    loose: bool,
    prefix: bool,
    value: u32,
    /// The cue family, when `fam` is `Fam::Cue`.
    cue: u8,
}

/// A compiled cue family.
#[derive(Debug)]
struct CueFamily {
    name: String,
    person: bool,
    negatable: bool,
    habitual: bool,
    ordinary: bool,
}

/// A compiled cue rule: bit masks over cue families.
#[derive(Debug)]
struct CueRule {
    id: &'static str,
    all: u64,
    /// Cue families that need two separate hits (message scope only).
    twice: u64,
    any: u64,
    unless: u64,
    sentence: bool,
    person: CuePerson,
    level: Level,
    cats: u8,
}

/// Most cue families (one bit each in a `u64`).
const MAX_CUES: usize = 64;

#[derive(Debug)]
struct Combo {
    first: Fam,
    then: Fam,
    within: u32,
    ordered: bool,
    scope: Scope,
    yields: Fam,
    person: PersonRule,
    needs_any: Vec<Fam>,
    room: Option<String>,
}

/// The compiled lexicons, combos and allow-lists. Cheap to share behind an
/// `Arc`; `assess` takes `&self` and is safe to call from many threads.
#[derive(Debug)]
pub struct Classifier {
    ac: AhoCorasick,
    entries: Vec<Vec<Entry>>,
    combos: Vec<Combo>,
    mask: MaskIndex,
    allow_numbers: Vec<String>,
    allow_domains: Vec<String>,
    tlds: Vec<String>,
    cues: Vec<CueFamily>,
    cue_rules: Vec<CueRule>,
    /// Per lexicon family (by `Fam as usize`), the cue families its hits
    /// count as (`also`).
    cue_also: Vec<u64>,
    /// The learned layer (`model.json`), asked when the rules stay below
    /// `high`; `None` = rules only.
    model: Option<Model>,
}

/// The config shipped in the binary, in load order.
const BUILTIN: &[(&str, &str)] = &[
    (
        "config/safety/common.toml",
        include_str!("../../config/safety/common.toml"),
    ),
    (
        "config/safety/en.toml",
        include_str!("../../config/safety/en.toml"),
    ),
    (
        "config/safety/es.toml",
        include_str!("../../config/safety/es.toml"),
    ),
];

/// The model shipped in the binary (`examples/train_classifier.rs` writes it).
const BUILTIN_MODEL: (&str, &str) = (
    "config/safety/model.json",
    include_str!("../../config/safety/model.json"),
);

/// The model's file in a safety config directory.
pub const MODEL_FILE: &str = "model.json";

impl Classifier {
    /// The classifier compiled from the config embedded at build time, so
    /// the binary works without its source tree.
    pub fn builtin() -> Result<Classifier, ConfigError> {
        let rules = Classifier::from_sources(BUILTIN.iter().map(|(n, s)| (*n, *s)))?;
        Ok(rules.with_model(Some(Model::from_json(BUILTIN_MODEL.0, BUILTIN_MODEL.1)?)))
    }

    /// The same rules with another learned layer (`None`: rules only, as
    /// the trainer needs them).
    pub fn with_model(mut self, model: Option<Model>) -> Classifier {
        self.model = model;
        self
    }

    /// Loads every `*.toml` in `dir` (in name order) and compiles them,
    /// with the learned layer from `model.json` there when it exists.
    pub fn from_dir(dir: &Path) -> Result<Classifier, ConfigError> {
        let rules = Classifier::rules_from_dir(dir)?;
        let path = dir.join(MODEL_FILE);
        if !path.exists() {
            return Ok(rules);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let model = Model::from_json(&path.display().to_string(), &text)?;
        Ok(rules.with_model(Some(model)))
    }

    fn rules_from_dir(dir: &Path) -> Result<Classifier, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(ConfigError::NoFiles {
                dir: dir.display().to_string(),
            });
        }
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                file: p.display().to_string(),
                source,
            })?;
            files.push((p.display().to_string(), text));
        }
        Classifier::from_sources(files.iter().map(|(n, s)| (n.as_str(), s.as_str())))
    }

    /// Compiles config given as `(file name, TOML text)` pairs.
    pub fn from_sources<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Classifier, ConfigError> {
        let mut b = Builder::default();
        for (name, text) in files {
            let cfg: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
                file: name.to_string(),
                message: e.to_string(),
            })?;
            b.add_file(name, cfg)?;
        }
        b.finish()
    }

    /// A human-readable trace of how `text` was judged: the folded text and
    /// every phrase hit (dead ones marked), for tuning the config. Slow;
    /// never call it on the send path.
    pub fn explain(&self, text: &str, room: &str) -> String {
        use fmt::Write as _;
        let mut s = Scratch::default();
        let a = self.assess_with(&mut s, text, room);
        let mut out = String::new();
        let _ = writeln!(out, "folded: {}", s.folded.text);
        for h in &s.hits {
            let words: Vec<&str> = (h.s..h.e).map(|i| s.folded.tok_text(i as usize)).collect();
            let _ = writeln!(
                out,
                "  {}{:<20} {:?}{} {:?}",
                if h.dead { "x " } else { "  " },
                if h.fam == Fam::Cue {
                    self.cues
                        .get(usize::from(h.cue))
                        .map(|c| c.name.as_str())
                        .unwrap_or("cue")
                } else {
                    h.fam.name()
                },
                h.person,
                if h.loose { " loose" } else { "" },
                words.join(" ")
            );
        }
        if let Some(m) = &self.model {
            let (rules, names) = self.model_features(text, room);
            let mut hashes: Vec<u64> = names.iter().map(|n| hash_name(n)).collect();
            let sc = m.score(&mut hashes);
            let _ = writeln!(
                out,
                "rules: {rules}; model: escalate {:.3}, imminent {:.3}, categories {:.2?}",
                sc.escalate, sc.imminent, sc.categories
            );
            for (name, w) in m.contributions(&names).iter().take(12) {
                let _ = writeln!(out, "  {w:+.3} {name}");
            }
        }
        let _ = writeln!(out, "=> {a:?}");
        out
    }

    /// Judges one prepared message sent in `room`.
    pub fn assess(&self, text: &str, room: &str) -> Assessment {
        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.assess_with(&mut s, text, room),
            // Re-entered on this thread (cannot happen today): use fresh
            // buffers rather than fail.
            Err(_) => self.assess_with(&mut Scratch::default(), text, room),
        })
    }

    /// What the learned layer sees of a message: the rules' own level and
    /// the model's feature names. For the trainer and for `explain`; slow.
    pub fn model_features(&self, text: &str, room: &str) -> (Level, Vec<String>) {
        let mut s = Scratch::default();
        let rules = self.rules_level(&mut s, text, room);
        let mut names = NameSink::default();
        let cx = Ctx {
            c: self,
            f: &s.folded,
            hits: &mut s.hits,
            room,
        };
        cx.model_features(rules, &mut names);
        (rules, names.names)
    }

    /// Steps 1–5 without the model: the level the rules alone give. Leaves
    /// the folded text and the hits in `s`.
    fn rules_level(&self, s: &mut Scratch, text: &str, room: &str) -> Level {
        self.fold(s, text);
        let mut cx = Ctx {
            c: self,
            f: &s.folded,
            hits: &mut s.hits,
            room,
        };
        cx.prepare_hits();
        cx.ladders(&mut s.signals).0
    }
}

#[derive(Default)]
struct Builder {
    patterns: Vec<String>,
    index: HashMap<String, usize>,
    entries: Vec<Vec<Entry>>,
    combos: Vec<Combo>,
    mask: MaskIndex,
    allow_numbers: Vec<String>,
    allow_domains: Vec<String>,
    tlds: Vec<String>,
    fold: FoldScratch,
    folded: Folded,
    cues: Vec<CueBuild>,
    cue_rules: Vec<(String, CueRuleConfig)>,
}

/// A cue family while the files are read: flags stay unset until a file
/// sets them, so one file may hold the flags and others the words.
#[derive(Default)]
struct CueBuild {
    name: String,
    flags: [Option<bool>; 4],
    also: Vec<Fam>,
    words: usize,
}

/// Rule ids live as long as the process: `Assessment::signals` holds
/// `&'static str`. Each distinct id is leaked once, however often a
/// classifier is built (tests build several).
fn intern(id: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static IDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut ids = IDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = ids.get(id.as_str()) {
        return s;
    }
    let s: &'static str = Box::leak(id.into_boxed_str());
    ids.insert(s);
    s
}

impl Builder {
    fn fold(&mut self, phrase: &str, collapse: bool) -> String {
        let opts = FoldOptions {
            collapse,
            mask: None,
        };
        fold_into(phrase, opts, &mut self.fold, &mut self.folded);
        self.folded.text.clone()
    }

    #[allow(clippy::too_many_arguments)]
    fn add_phrase(
        &mut self,
        file: &str,
        key: &str,
        phrase: &str,
        fam: Fam,
        person: Person,
        loose: bool,
        value: u32,
        cue: u8,
    ) -> Result<(), ConfigError> {
        let trimmed = phrase.trim();
        let (body, prefix) = match trimmed.strip_suffix('*') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        if body.contains('*') {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                key: key.to_string(),
                message: format!(
                    "phrase {phrase:?}: `*` is allowed only at the end (prefix match)"
                ),
            });
        }
        let raw_words = self.fold(body, false);
        for w in raw_words.split(' ') {
            self.mask.insert(w);
        }
        let pattern = self.fold(body, true);
        if pattern.is_empty() {
            return Err(ConfigError::EmptyPhrase {
                file: file.to_string(),
                key: key.to_string(),
                phrase: phrase.to_string(),
            });
        }
        let id = match self.index.get(&pattern) {
            Some(id) => *id,
            None => {
                let id = self.patterns.len();
                self.index.insert(pattern.clone(), id);
                self.patterns.push(pattern);
                self.entries.push(Vec::new());
                id
            }
        };
        let entry = Entry {
            fam,
            person,
            loose,
            prefix,
            value,
            cue,
        };
        let list = &mut self.entries[id];
        if !list.iter().any(|e| {
            e.fam == fam
                && e.person == person
                && e.prefix == prefix
                && e.loose == loose
                && e.cue == cue
        }) {
            list.push(entry);
        }
        Ok(())
    }

    fn add_file(&mut self, file: &str, cfg: FileConfig) -> Result<(), ConfigError> {
        for (family, lists) in &cfg.lexicon {
            let fam = Fam::from_name(family).ok_or_else(|| ConfigError::UnknownFamily {
                file: file.to_string(),
                family: family.clone(),
                known: FAMILIES
                    .iter()
                    .filter(|(f, _)| !f.is_internal())
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if fam.is_internal() {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("lexicon.{family}"),
                    message: "this family is filled by the classifier, not by phrases".into(),
                });
            }
            let groups = [
                ("phrases", &lists.phrases, Person::Neutral, false),
                ("self", &lists.me, Person::Me, false),
                ("other", &lists.other, Person::Other, false),
                ("loose", &lists.loose, Person::Me, true),
            ];
            if groups.iter().all(|(_, l, _, _)| l.is_none()) {
                return Err(ConfigError::EmptyList {
                    file: file.to_string(),
                    key: format!("lexicon.{family}"),
                });
            }
            for (name, list, person, loose) in groups {
                let Some(list) = list else { continue };
                let key = format!("lexicon.{family}.{name}");
                if list.is_empty() {
                    return Err(ConfigError::EmptyList {
                        file: file.to_string(),
                        key,
                    });
                }
                for phrase in list {
                    self.add_phrase(file, &key, phrase, fam, person, loose, 0, 0)?;
                }
            }
        }
        for (word, value) in &cfg.numbers {
            let key = format!("numbers.{word}");
            let folded = self.fold(word, true);
            if folded.is_empty() || folded.contains(' ') {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key,
                    message: "a number word must be one word".into(),
                });
            }
            if *value > 1000 {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key,
                    message: "values above 1000 are not supported".into(),
                });
            }
            self.add_phrase(
                file,
                &key,
                word,
                Fam::Number,
                Person::Neutral,
                false,
                *value,
                0,
            )?;
        }
        if let Some(allow) = &cfg.allow {
            if let Some(numbers) = &allow.numbers {
                if numbers.is_empty() {
                    return Err(ConfigError::EmptyList {
                        file: file.to_string(),
                        key: "allow.numbers".into(),
                    });
                }
                for n in numbers {
                    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
                    if digits.is_empty() {
                        return Err(ConfigError::Invalid {
                            file: file.to_string(),
                            key: "allow.numbers".into(),
                            message: format!("{n:?} has no digits"),
                        });
                    }
                    self.allow_numbers.push(digits);
                }
            }
            for (key, list, out) in [
                ("allow.domains", &allow.domains, &mut self.allow_domains),
                ("allow.tlds", &allow.tlds, &mut self.tlds),
            ] {
                let Some(list) = list else { continue };
                if list.is_empty() {
                    return Err(ConfigError::EmptyList {
                        file: file.to_string(),
                        key: key.into(),
                    });
                }
                for d in list {
                    let d = d.trim().trim_start_matches('.').to_ascii_lowercase();
                    if d.is_empty() || d.contains(char::is_whitespace) {
                        return Err(ConfigError::Invalid {
                            file: file.to_string(),
                            key: key.into(),
                            message: format!("{d:?} is not a domain"),
                        });
                    }
                    out.push(d);
                }
            }
        }
        for (i, c) in cfg.combo.iter().enumerate() {
            let fam = |key: &str, name: &str| {
                Fam::from_name(name).ok_or_else(|| ConfigError::UnknownReference {
                    file: file.to_string(),
                    key: format!("combo[{i}] ({}).{key}", c.id),
                    family: name.to_string(),
                })
            };
            if c.within > 64 {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("combo[{i}] ({}).within", c.id),
                    message: "at most 64 tokens".into(),
                });
            }
            let needs_any = c
                .needs_any
                .iter()
                .map(|n| fam("needs_any", n))
                .collect::<Result<Vec<_>, _>>()?;
            self.combos.push(Combo {
                first: fam("first", &c.first)?,
                then: fam("then", &c.then)?,
                within: c.within,
                ordered: c.ordered,
                scope: c.scope,
                yields: fam("yields", &c.yields)?,
                person: c.person,
                needs_any,
                room: c.room.clone(),
            });
        }
        self.add_cues(file, cfg.cue)?;
        self.cue_rules
            .extend(cfg.cue_rule.into_iter().map(|r| (file.to_string(), r)));
        Ok(())
    }

    fn cue_id(&mut self, name: &str) -> Option<u8> {
        if let Some(i) = self.cues.iter().position(|c| c.name == name) {
            return u8::try_from(i).ok();
        }
        if self.cues.len() >= MAX_CUES {
            return None;
        }
        self.cues.push(CueBuild {
            name: name.to_string(),
            ..CueBuild::default()
        });
        u8::try_from(self.cues.len() - 1).ok()
    }

    fn add_cues(
        &mut self,
        file: &str,
        cues: BTreeMap<String, CueConfig>,
    ) -> Result<(), ConfigError> {
        for (name, cfg) in cues {
            let key = format!("cue.{name}");
            let invalid = |message: String| ConfigError::Invalid {
                file: file.to_string(),
                key: key.clone(),
                message,
            };
            let id = self
                .cue_id(&name)
                .ok_or_else(|| invalid(format!("at most {MAX_CUES} cue families")))?;
            let flags = [cfg.person, cfg.negatable, cfg.habitual, cfg.ordinary];
            for (slot, (new, flag)) in flags
                .into_iter()
                .zip(["person", "negatable", "habitual", "ordinary"])
                .enumerate()
            {
                let Some(new) = new else { continue };
                let old = &mut self.cues[usize::from(id)].flags[slot];
                if old.is_some_and(|o| o != new) {
                    return Err(invalid(format!("{flag} is set to both values")));
                }
                *old = Some(new);
            }
            for name in cfg.also.iter().flatten() {
                let fam = Fam::from_name(name)
                    .filter(|f| !f.is_internal())
                    .ok_or_else(|| ConfigError::UnknownReference {
                        file: file.to_string(),
                        key: format!("{key}.also"),
                        family: name.clone(),
                    })?;
                self.cues[usize::from(id)].also.push(fam);
            }
            let groups = [
                ("words", &cfg.words, Person::Neutral),
                ("self", &cfg.me, Person::Me),
                ("other", &cfg.other, Person::Other),
            ];
            for (group, list, person) in groups {
                let Some(list) = list else { continue };
                let key = format!("{key}.{group}");
                if list.is_empty() {
                    return Err(ConfigError::EmptyList {
                        file: file.to_string(),
                        key,
                    });
                }
                for phrase in list {
                    self.add_phrase(file, &key, phrase, Fam::Cue, person, false, 0, id)?;
                }
                self.cues[usize::from(id)].words += list.len();
            }
        }
        Ok(())
    }

    /// Compiles the cue families and rules once every file is read, so a
    /// rule may name a family whose words come from a later file.
    #[allow(clippy::type_complexity)]
    fn finish_cues(&mut self) -> Result<(Vec<CueFamily>, Vec<CueRule>, Vec<u64>), ConfigError> {
        let mut also = vec![0u64; FAMILIES.len()];
        let mut families = Vec::with_capacity(self.cues.len());
        for (i, c) in self.cues.iter().enumerate() {
            if c.words == 0 && c.also.is_empty() {
                return Err(ConfigError::EmptyList {
                    file: "config/safety".into(),
                    key: format!("cue.{} (no words and no `also`)", c.name),
                });
            }
            for f in &c.also {
                also[*f as usize] |= 1u64 << i;
            }
            let [person, negatable, habitual, ordinary] = c.flags;
            families.push(CueFamily {
                name: c.name.clone(),
                person: person.unwrap_or(true),
                negatable: negatable.unwrap_or(true),
                habitual: habitual.unwrap_or(false),
                ordinary: ordinary.unwrap_or(false),
            });
        }
        let mut rules = Vec::with_capacity(self.cue_rules.len());
        for (i, (file, r)) in self.cue_rules.iter().enumerate() {
            let key = format!("cue_rule[{i}] ({})", r.id);
            let invalid = |message: String| ConfigError::Invalid {
                file: file.clone(),
                key: key.clone(),
                message,
            };
            let bit = |name: &str, what: &str| -> Result<u64, ConfigError> {
                families
                    .iter()
                    .position(|c| c.name == name)
                    .map(|p| 1u64 << p)
                    .ok_or_else(|| ConfigError::UnknownReference {
                        file: file.clone(),
                        key: format!("{key}.{what}"),
                        family: name.to_string(),
                    })
            };
            if r.all.is_empty() {
                return Err(ConfigError::EmptyList {
                    file: file.clone(),
                    key: format!("{key}.all"),
                });
            }
            let (mut all, mut twice, mut any, mut unless) = (0u64, 0u64, 0u64, 0u64);
            for name in &r.all {
                match name.split_once(':') {
                    Some((n, "2")) => {
                        let b = bit(n, "all")?;
                        all |= b;
                        twice |= b;
                    }
                    Some(_) => return Err(invalid(format!("{name:?}: only `:2` is supported"))),
                    None => all |= bit(name, "all")?,
                }
            }
            if twice != 0 && r.scope == CueScope::Sentence {
                return Err(invalid("`:2` needs message scope".into()));
            }
            for name in &r.any {
                any |= bit(name, "any")?;
            }
            for name in &r.unless {
                unless |= bit(name, "unless")?;
            }
            let level = Level::parse(&r.level)
                .filter(|l| *l > Level::None)
                .ok_or_else(|| {
                    invalid(format!("level {:?}: concern, high or imminent", r.level))
                })?;
            let mut cats = 0u8;
            for c in &r.categories {
                let c = Category::parse(c)
                    .filter(|c| *c != Category::ThirdParty)
                    .ok_or_else(|| {
                        invalid(format!(
                            "category {c:?} (third_party is added for person = other)"
                        ))
                    })?;
                cats |= c.bit();
            }
            if cats == 0 {
                return Err(invalid("categories: name at least one".into()));
            }
            rules.push(CueRule {
                id: intern(format!("family.{}", r.id)),
                all,
                twice,
                any,
                unless,
                sentence: r.scope == CueScope::Sentence,
                person: r.person,
                level,
                cats,
            });
        }
        Ok((families, rules, also))
    }

    fn finish(mut self) -> Result<Classifier, ConfigError> {
        if self.patterns.is_empty() {
            return Err(ConfigError::NoPhrases);
        }
        self.mask.finish();
        let (cues, cue_rules, cue_also) = self.finish_cues()?;
        // A contiguous NFA is as fast here as a DFA (a few hundred
        // nanoseconds per message) at a twentieth of the memory (~0.5 MiB).
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&self.patterns)
            .or_else(|_| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(&self.patterns)
            })
            .map_err(|e| ConfigError::Build(e.to_string()))?;
        Ok(Classifier {
            ac,
            entries: self.entries,
            combos: self.combos,
            mask: self.mask,
            allow_numbers: self.allow_numbers,
            allow_domains: self.allow_domains,
            tlds: self.tlds,
            cues,
            cue_rules,
            cue_also,
            model: None,
        })
    }
}

// ---------------------------------------------------------------------------
// Judging one message
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Hit {
    fam: Fam,
    /// Token range `[s, e)`.
    s: u32,
    e: u32,
    person: Person,
    loose: bool,
    dead: bool,
    /// The hit involves a drug (adds `overdose` to suicide-ladder signals).
    drug: bool,
    value: u32,
    /// The cue family, when `fam` is `Fam::Cue`.
    cue: u8,
}

impl Hit {
    fn new(fam: Fam, s: u32, e: u32, person: Person) -> Hit {
        Hit {
            fam,
            s,
            e,
            person,
            loose: false,
            dead: false,
            drug: false,
            value: 0,
            cue: 0,
        }
    }

    fn overlaps(&self, o: &Hit) -> bool {
        self.s < o.e && o.s < self.e
    }
}

#[derive(Default)]
struct Scratch {
    fold: FoldScratch,
    folded: Folded,
    hits: Vec<Hit>,
    signals: Vec<&'static str>,
    features: HashSink,
}

/// Stems for the model: the first few letters, so inflections ("pastillas",
/// "pastillero"; "overdosed", "overdosing") share a weight.
const STEM_CHARS: usize = 5;

fn stem(word: &str) -> &str {
    match word.char_indices().nth(STEM_CHARS) {
        Some((i, _)) => &word[..i],
        None => word,
    }
}

/// A number as the model sees it: its size, not its digits.
fn number_bucket(value: Option<u32>) -> &'static str {
    match value {
        Some(0..=9) => "small",
        Some(10..=99) => "tens",
        Some(100..=1999) => "hundreds",
        Some(_) => "large",
        None => "other",
    }
}

/// Word tokens allowed between a negation cue and the phrase it negates.
const NEGATION_WINDOW: u32 = 4;
/// Tokens around a drug word searched for its count or dose.
const QUANTITY_WINDOW: u32 = 6;
/// A count of tablets at or above this is a lethal-quantity signal.
const LETHAL_COUNT: u32 = 10;

struct Ctx<'a> {
    c: &'a Classifier,
    f: &'a Folded,
    hits: &'a mut Vec<Hit>,
    room: &'a str,
}

impl Classifier {
    /// Step 1, into fresh scratch state.
    fn fold(&self, s: &mut Scratch, text: &str) {
        let opts = FoldOptions {
            collapse: true,
            mask: Some(&self.mask),
        };
        fold_into(text, opts, &mut s.fold, &mut s.folded);
        s.hits.clear();
        s.signals.clear();
    }

    fn assess_with(&self, s: &mut Scratch, text: &str, room: &str) -> Assessment {
        self.fold(s, text);
        let mut cx = Ctx {
            c: self,
            f: &s.folded,
            hits: &mut s.hits,
            room,
        };
        let quantity = cx.prepare_hits();
        let (mut level, mut categories) = cx.ladders(&mut s.signals);
        if let Some(model) = &self.model {
            s.features.hashes.clear();
            cx.model_features(level, &mut s.features);
            let scores = model.score(&mut s.features.hashes);
            if level >= Level::High {
                // The rules' combinations misfire on long posts that are
                // full of risk words about someone else (an inquest, a
                // funeral); the model, trained on such posts, can say so.
                // Lowered only to `concern`: support and a staff flag
                // still follow, a human still reads it.
                if model.vetoes(&scores) {
                    level = Level::Concern;
                    s.signals.push("model.lowered");
                }
            } else {
                let rule_bits = categories.iter().fold(0, |b, c| b | c.bit());
                if let Some(raise) = model.decide(&scores, rule_bits) {
                    level = raise.level;
                    categories = Category::ALL
                        .into_iter()
                        .filter(|c| raise.categories & c.bit() != 0)
                        .collect();
                    s.signals.push("model.escalate");
                }
            }
        }
        let help_seeking = cx.alive(Fam::HelpSeeking);
        let policy = cx.policy(text, level, quantity, &mut s.signals);
        let mut signals = Vec::with_capacity(s.signals.len());
        for sig in s.signals.iter() {
            if !signals.contains(sig) {
                signals.push(*sig);
            }
        }
        Assessment {
            level,
            categories,
            policy,
            help_seeking,
            signals,
        }
    }
}

/// What the quantity rule found: a count or dose next to a drug word.
#[derive(Clone, Copy, Debug, Default)]
struct Quantity {
    /// A count or dose paired with a drug outside a treatment context.
    paired: bool,
    /// A lethal count, or boxes/packs of something.
    lethal: bool,
}

impl Ctx<'_> {
    fn tok_count(&self) -> u32 {
        u32::try_from(self.f.toks.len()).unwrap_or(u32::MAX)
    }

    fn sentence(&self, tok: u32) -> u32 {
        self.f
            .toks
            .get(tok as usize)
            .map(|t| t.sentence)
            .unwrap_or(0)
    }

    fn clause(&self, tok: u32) -> u32 {
        self.f.toks.get(tok as usize).map(|t| t.clause).unwrap_or(0)
    }

    fn text(&self, tok: u32) -> &str {
        self.f.tok_text(tok as usize)
    }

    fn cue_flag(&self, h: &Hit, flag: fn(&CueFamily) -> bool) -> bool {
        h.fam == Fam::Cue && self.c.cues.get(usize::from(h.cue)).is_some_and(flag)
    }

    /// `Fam::negatable`, with a cue family's own flag.
    fn negatable(&self, h: &Hit) -> bool {
        if h.fam == Fam::Cue {
            self.cue_flag(h, |c| c.negatable)
        } else {
            h.fam.negatable()
        }
    }

    /// `Fam::has_person`, with a cue family's own flag.
    fn has_person(&self, h: &Hit) -> bool {
        if h.fam == Fam::Cue {
            self.cue_flag(h, |c| c.person)
        } else {
            h.fam.has_person()
        }
    }

    /// Steps 2–4: the lexicon pass, combos and modifiers, and whose each
    /// hit is. Returns what the quantity rule found.
    fn prepare_hits(&mut self) -> Quantity {
        self.match_lexicon();
        self.suppress_overlaps();
        self.apply_combos();
        // Again, for what the combos produced ("go jump off a bridge" is
        // urging even though a combo read a method into it).
        self.suppress_overlaps();
        let quantity = self.quantities();
        self.apply_modifiers();
        self.resolve_persons();
        quantity
    }

    /// The learned layer's features (see `model`): the room and the rules'
    /// level; each word and its stem, and pairs of stems within a
    /// sentence; emoji; numbers by size; every family and cue family that
    /// fired, alive (with whose it is) or suppressed by a modifier.
    /// Suppressed hits are features too: "not" + a dead ideation hit is
    /// how the model learns that negation, like the rules do.
    fn model_features(&self, rules: Level, sink: &mut impl FeatureSink) {
        let _ = rules;
        sink.add(&["room", self.room]);
        let f = self.f;
        let mut prev: Option<&str> = None;
        for (i, t) in f.toks.iter().enumerate() {
            match t.kind {
                TokKind::Word => {
                    let w = f.tok_text(i);
                    let st = stem(w);
                    sink.add(&["s", st]);
                    if st.len() < w.len() {
                        sink.add(&["w", w]);
                    }
                    if let Some(p) = prev {
                        sink.add(&["b", p, st]);
                    }
                    prev = Some(st);
                }
                TokKind::Emoji => {
                    sink.add(&["e", f.tok_text(i)]);
                    prev = None;
                }
                TokKind::Number => {
                    sink.add(&["n", number_bucket(t.value)]);
                    prev = None;
                }
                TokKind::Strong => prev = None,
                TokKind::Weak => {}
            }
        }
        for h in self.hits.iter() {
            let name = if h.fam == Fam::Cue {
                self.c
                    .cues
                    .get(usize::from(h.cue))
                    .map(|c| c.name.as_str())
                    .unwrap_or("cue")
            } else {
                h.fam.name()
            };
            if h.dead {
                sink.add(&["x", name]);
                continue;
            }
            sink.add(&["f", name]);
            match h.person {
                Person::Me => sink.add(&["fp", name, "me"]),
                Person::Other => sink.add(&["fp", name, "other"]),
                Person::Neutral => {}
            }
        }
    }

    fn alive(&self, fam: Fam) -> bool {
        self.hits.iter().any(|h| !h.dead && h.fam == fam)
    }

    fn alive_in_sentence(&self, fam: Fam, sentence: u32) -> bool {
        self.hits
            .iter()
            .any(|h| !h.dead && h.fam == fam && self.sentence(h.s) == sentence)
    }

    /// Step 2: every lexicon phrase on word boundaries, plus number tokens.
    fn match_lexicon(&mut self) {
        let text = self.f.text.as_str();
        let bytes = text.as_bytes();
        let toks = &self.f.toks;
        for m in self.c.ac.find_overlapping_iter(text) {
            let (start, end) = (m.start(), m.end());
            if start > 0 && bytes.get(start - 1) != Some(&b' ') {
                continue;
            }
            let right_ok = end == bytes.len() || bytes.get(end) == Some(&b' ');
            let s = toks.partition_point(|t| (t.start as usize) < start);
            let e = toks.partition_point(|t| (t.start as usize) < end);
            let (Ok(s), Ok(e)) = (u32::try_from(s), u32::try_from(e)) else {
                continue;
            };
            let Some(entries) = self.c.entries.get(m.pattern().as_usize()) else {
                continue;
            };
            for entry in entries {
                if !entry.prefix && !right_ok {
                    continue;
                }
                let mut h = Hit::new(entry.fam, s, e, entry.person);
                h.loose = entry.loose;
                h.value = entry.value;
                h.cue = entry.cue;
                self.hits.push(h);
            }
        }
        for (i, t) in self.f.toks.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            // Numbers, and numbers glued to a unit (`50mg`, `3am`).
            let Some(v) = t.value else { continue };
            let mut h = Hit::new(Fam::Number, i, i + 1, Person::Neutral);
            h.value = v;
            self.hits.push(h);
            let digits = self.text(i).len();
            if t.kind == TokKind::Number && digits == 4 && (1950..=2035).contains(&v) {
                self.hits
                    .push(Hit::new(Fam::Year, i, i + 1, Person::Neutral));
            }
        }
    }

    /// Idioms and quotes swallow the risk words inside them; urging is about
    /// the person addressed, so its words are not the sender's risk; a
    /// request without a prescription is not a treatment context.
    fn suppress_overlaps(&mut self) {
        let n = self.hits.len();
        // The longest risk phrase wins: "a bus hit me" is a passive wish,
        // not abuse; "me pego cabezazos" is self-harm, not "me pegó". A
        // hyperbole-prone phrase makes the phrases inside it hyperbole too
        // ("me quiero morir" ⊃ "quiero morir").
        for i in 0..n {
            let a = self.hits[i];
            if a.fam.risk().is_none() {
                continue;
            }
            for j in 0..n {
                let b = self.hits[j];
                if i == j || b.fam.risk().is_none() || !(a.s <= b.s && a.e >= b.e) {
                    continue;
                }
                if a.e - a.s > b.e - b.s && a.fam != b.fam {
                    self.hits[j].dead = true;
                } else if a.fam == b.fam && a.loose && !b.loose {
                    self.hits[j].loose = true;
                    self.hits[j].person = a.person;
                }
            }
        }
        for i in 0..n {
            let h = self.hits[i];
            let kills: fn(Fam) -> bool = match h.fam {
                Fam::Idiom => |f| f != Fam::Idiom && f != Fam::Levity && f != Fam::Gaming,
                Fam::Urging => |f| f.risk().is_some() || f.is_raiser() || f == Fam::Cue,
                Fam::OutsidePrescription => |f| f == Fam::Treatment,
                // A death being described is grief; its words are inert.
                Fam::GriefOther => {
                    |f| f.risk().is_some() || f.is_raiser() || f.is_helper() || f == Fam::Cue
                }
                Fam::NegationPseudo => |f| f == Fam::Negation,
                _ => continue,
            };
            for j in 0..n {
                if i != j && kills(self.hits[j].fam) && self.hits[j].overlaps(&h) {
                    self.hits[j].dead = true;
                }
            }
        }
        // A gaming word inside a longer cue is not gaming talk ("level
        // crossing", "nivel del puente").
        for i in 0..n {
            let g = self.hits[i];
            if g.fam != Fam::Gaming {
                continue;
            }
            let inside = self.hits.iter().any(|c| {
                c.fam == Fam::Cue && !c.dead && c.s <= g.s && c.e >= g.e && c.e - c.s > g.e - g.s
            });
            if inside {
                self.hits[i].dead = true;
            }
        }
        // In a treatment context ("gp started me on …, anyone else feel
        // sick?") side effects are not overdose symptoms.
        for i in 0..n {
            let h = self.hits[i];
            if h.dead || h.fam != Fam::OdSymptom {
                continue;
            }
            let sent = self.sentence(h.s);
            if self.alive_in_sentence(Fam::Treatment, sent) {
                self.hits[i].dead = true;
            }
        }
    }

    /// Step 3: join two families near each other into a third, in config
    /// order, so a combo can build on an earlier one.
    fn apply_combos(&mut self) {
        // Families present, so combos whose parts are absent cost nothing.
        let mut present = 0u128;
        for h in self.hits.iter().filter(|h| !h.dead) {
            present |= h.fam.bit();
        }
        for ci in 0..self.c.combos.len() {
            let combo = &self.c.combos[ci];
            if present & combo.first.bit() == 0 || present & combo.then.bit() == 0 {
                continue;
            }
            let waived = combo.room.as_deref() == Some(self.room);
            if !combo.needs_any.is_empty()
                && !waived
                && !combo.needs_any.iter().any(|f| self.alive(*f))
            {
                continue;
            }
            let n = self.hits.len();
            for a in 0..n {
                let ha = self.hits[a];
                if ha.dead || ha.fam != combo.first {
                    continue;
                }
                for b in 0..n {
                    let hb = self.hits[b];
                    if a == b || hb.dead || hb.fam != combo.then {
                        continue;
                    }
                    let gap = if combo.ordered {
                        if hb.s < ha.e {
                            continue;
                        }
                        hb.s - ha.e
                    } else if hb.s >= ha.e {
                        hb.s - ha.e
                    } else {
                        // Before it, or overlapping (distance 0).
                        ha.s.saturating_sub(hb.e)
                    };
                    if gap > combo.within {
                        continue;
                    }
                    let same = match combo.scope {
                        Scope::Clause => self.clause(ha.s) == self.clause(hb.s),
                        Scope::Sentence => self.sentence(ha.s) == self.sentence(hb.s),
                        Scope::Message => true,
                    };
                    if !same {
                        continue;
                    }
                    let person = match combo.person {
                        PersonRule::Me => Person::Me,
                        PersonRule::Other => Person::Other,
                        PersonRule::Inherit if ha.person != Person::Neutral => ha.person,
                        PersonRule::Inherit => hb.person,
                    };
                    let mut y = Hit::new(combo.yields, ha.s.min(hb.s), ha.e.max(hb.e), person);
                    y.drug = ha.drug
                        || hb.drug
                        || matches!(ha.fam, Fam::Drug)
                        || matches!(hb.fam, Fam::Drug);
                    y.value = ha.value.max(hb.value);
                    self.hits.push(y);
                    present |= combo.yields.bit();
                    break;
                }
            }
        }
    }

    /// A count or dose of a drug: `40 of my sertraline`, `2 boxes of
    /// paracetamol`, `2mg of xanax`, `treinta clonas`. Time quantities
    /// (`20 min`, `3am`, `9 months`) are not counts, and a treatment context
    /// ("gp started me on 50mg") is not a harm context. Adds means at hand
    /// for lethal counts and an attempt when the count was taken.
    fn quantities(&mut self) -> Quantity {
        let mut q = Quantity::default();
        if !self.alive(Fam::Drug) || !self.alive(Fam::Number) {
            return q;
        }
        let n = self.hits.len();
        let last = self.tok_count();
        for di in 0..n {
            let d = self.hits[di];
            if d.dead || d.fam != Fam::Drug {
                continue;
            }
            let lo = d.s.saturating_sub(QUANTITY_WINDOW);
            let hi = (d.e + QUANTITY_WINDOW).min(last);
            for ni in 0..n {
                let num = self.hits[ni];
                if num.dead || num.fam != Fam::Number || num.s < lo || num.s >= hi {
                    continue;
                }
                // Years and phone-sized numbers are not counts of pills.
                let is_year = self.hits.iter().any(|y| y.fam == Fam::Year && y.s == num.s);
                if is_year || num.value >= 1000 {
                    continue;
                }
                if num.s >= d.s && num.s < d.e {
                    continue;
                }
                let next = num.e;
                let unit_after = |f: Fam| {
                    self.hits
                        .iter()
                        .any(|h| !h.dead && h.fam == f && h.s == next)
                };
                if unit_after(Fam::TimeUnit)
                    || unit_after(Fam::MinutesUnit)
                    || unit_after(Fam::LongUnit)
                {
                    continue;
                }
                let tok = self.f.toks.get(num.s as usize);
                // `50mg`, `3am`: a number glued to a unit. Number words
                // (`five`) are words without a leading digit.
                let word_with_suffix =
                    tok.is_some_and(|t| t.kind == TokKind::Word && t.value.is_some());
                let suffix_is_dose = word_with_suffix && {
                    let t = self.text(num.s);
                    let suffix = t.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
                    self.is_dose_unit(suffix)
                };
                if word_with_suffix && !suffix_is_dose {
                    continue;
                }
                let dose = suffix_is_dose || unit_after(Fam::DoseUnit);
                let (a, b) = if num.s < d.s {
                    (num.e, d.s)
                } else {
                    (d.e, num.s)
                };
                let container = self
                    .hits
                    .iter()
                    .any(|h| !h.dead && h.fam == Fam::Container && h.s >= a && h.e <= b);
                let sent_d = self.sentence(d.s);
                let sent_n = self.sentence(num.s);
                let treatment = self.hits.iter().any(|h| {
                    !h.dead
                        && h.fam == Fam::Treatment
                        && (self.sentence(h.s) == sent_d || self.sentence(h.s) == sent_n)
                });
                if treatment {
                    continue;
                }
                q.paired = true;
                let lethal = !dose && (num.value >= LETHAL_COUNT || container);
                let s = d.s.min(num.s);
                let e = d.e.max(num.e);
                let taken = self.hits.iter().any(|h| {
                    !h.dead
                        && h.fam == Fam::Ingest
                        && self.sentence(h.s) == sent_d
                        && h.s.abs_diff(s) <= 8
                });
                // A count matters when someone took, bought or keeps it;
                // "day 30 without pills" is a milestone, not a method.
                let backed = taken
                    || self.alive_in_sentence(Fam::Possession, sent_d)
                    || self.alive_in_sentence(Fam::Possession, sent_n);
                q.lethal |= lethal && backed;
                // A count in a question ("is 20 enough to …") is not means
                // at hand; the question itself is the lethality signal.
                let asked = self.alive_in_sentence(Fam::HowMany, sent_n)
                    || self.alive_in_sentence(Fam::Lethality, sent_n);
                if !dose && !asked && backed && (lethal || taken) {
                    let fam = if taken && lethal {
                        Fam::AttemptNow
                    } else {
                        Fam::MeansAtHand
                    };
                    let mut h = Hit::new(fam, s, e, Person::Neutral);
                    h.drug = true;
                    h.value = num.value;
                    self.hits.push(h);
                }
            }
        }
        q
    }

    fn is_dose_unit(&self, suffix: &str) -> bool {
        if suffix.is_empty() {
            return false;
        }
        // Dose units are lexicon words; look them up through the matcher so
        // the list stays in config.
        self.c.ac.find_overlapping_iter(suffix).any(|m| {
            m.start() == 0
                && m.end() == suffix.len()
                && self
                    .c
                    .entries
                    .get(m.pattern().as_usize())
                    .is_some_and(|es| es.iter().any(|e| e.fam == Fam::DoseUnit))
        })
    }

    /// Step 4: what does not count.
    fn apply_modifiers(&mut self) {
        let n = self.hits.len();
        // Where a past and a present marker overlap, the one that starts
        // first wins: "ago today" is past, "desde hace meses" ("for
        // months") is ongoing.
        for i in 0..n {
            let p = self.hits[i];
            if p.dead || p.fam != Fam::Past {
                continue;
            }
            let ongoing = self
                .hits
                .iter()
                .any(|r| !r.dead && r.fam == Fam::Present && r.overlaps(&p) && r.s < p.s);
            if ongoing {
                self.hits[i].dead = true;
            }
        }
        let levity = self.alive(Fam::Levity);
        let recovery = self.alive(Fam::Recovery);
        let help_seeking = self.alive(Fam::HelpSeeking);
        for i in 0..n {
            let h = self.hits[i];
            if h.dead {
                continue;
            }
            let sent = self.sentence(h.s);
            let dead = match h.fam {
                // Laughter turns hyperbole-prone slang into a joke ("left my
                // phone on the bus, kms 🤦‍♀️"); it does not cancel a passive
                // wish written out in full ("… i'd be relieved lol").
                _ if h.loose && levity => true,
                // "kill myself in game to respawn", "me suicidé en el juego".
                f if (f == Fam::Cue
                    || matches!(f.risk(), Some((Category::Suicide | Category::SelfHarm, _))))
                    && self.alive_in_sentence(Fam::Gaming, sent) =>
                {
                    true
                }
                // Habitual time words describe rumination, not a plan
                // ("every morning on the platform i think about …").
                Fam::Timeframe | Fam::Opportunity | Fam::LocationNow
                    if self.alive_in_sentence(Fam::Habitual, sent) =>
                {
                    true
                }
                // The same suppressors for the cue families that ask for
                // them in config.
                Fam::Cue
                    if self.cue_flag(&h, |c| c.habitual)
                        && self.alive_in_sentence(Fam::Habitual, sent) =>
                {
                    true
                }
                Fam::Cue
                    if self.cue_flag(&h, |c| c.ordinary)
                        && self.alive_in_sentence(Fam::Ordinary, sent) =>
                {
                    true
                }
                // A relapse followed by meetings or a sponsor is recovery.
                Fam::Relapse if recovery => true,
                // "relapsed on s/h" is about self-harm, not drugs.
                Fam::Relapse
                    if self.hits.iter().any(|o| {
                        !o.dead
                            && matches!(o.fam.risk(), Some((Category::SelfHarm, _)))
                            && self.sentence(o.s) == sent
                    }) =>
                {
                    true
                }
                Fam::Sourcing if self.alive_in_sentence(Fam::HarmReduction, sent) => true,
                // An ordinary reason makes a preparation-like act or a means
                // ordinary ("bought a rope for my climbing course saturday",
                // "giving away clothes to the charity shop").
                Fam::Preparation | Fam::MeansAtHand | Fam::Stockpile
                    if self.alive_in_sentence(Fam::Ordinary, sent) =>
                {
                    true
                }
                // "what do i say to a mate who tells me they're suicidal?":
                // the risk words describe someone hypothetical in a request
                // for help, not a disclosure.
                f if help_seeking
                    && (f.risk().is_some() || f.is_raiser() || f == Fam::Cue)
                    && self.hits.iter().any(|q| {
                        !q.dead
                            && q.fam == Fam::Hypothetical
                            && q.e <= h.s
                            && self.sentence(q.s) == sent
                    }) =>
                {
                    true
                }
                _ => false,
            };
            if dead {
                self.hits[i].dead = true;
            }
        }
        // Past talk: a past marker in the same sentence, with no "now",
        // "lately" or "again" between it and the phrase.
        if self.alive(Fam::Past) {
            for i in 0..n {
                let h = self.hits[i];
                if h.dead || !(self.negatable(&h) && h.fam != Fam::HelpSeeking) {
                    continue;
                }
                if self.is_past(&h) {
                    self.hits[i].dead = true;
                }
            }
        }
        // Negation that really scopes the phrase. A cue inside a longer
        // phrase belongs to that phrase ("don't want to wake up", "no one
        // knows where i am") and negates nothing.
        let mut cues: Vec<Hit> = Vec::new();
        for cue in self
            .hits
            .iter()
            .filter(|h| !h.dead && h.fam == Fam::Negation)
        {
            let consumed = self.hits.iter().any(|o| {
                !o.dead
                    && o.fam != Fam::Negation
                    && (o.fam.negatable()
                        || matches!(
                            o.fam,
                            Fam::IntentDenial | Fam::Deferral | Fam::Reassurance | Fam::Cue
                        ))
                    && o.overlaps(cue)
            });
            if !consumed {
                cues.push(*cue);
            }
        }
        if cues.is_empty() {
            return;
        }
        for i in 0..self.hits.len() {
            let h = self.hits[i];
            if h.dead || !self.negatable(&h) {
                continue;
            }
            if self.is_negated(&h, &cues) {
                self.hits[i].dead = true;
            }
        }
    }

    fn is_past(&self, h: &Hit) -> bool {
        let sent = self.sentence(h.s);
        self.hits.iter().any(|p| {
            if p.dead || p.fam != Fam::Past || self.sentence(p.s) != sent || p.overlaps(h) {
                return false;
            }
            let (a, b) = if p.e <= h.s { (p.e, h.s) } else { (h.e, p.s) };
            !self.hits.iter().any(|r| {
                !r.dead
                    && r.fam == Fam::Present
                    && r.s >= a
                    && r.e <= b
                    && !self
                        .hits
                        .iter()
                        .any(|q| q.fam == Fam::Past && q.overlaps(r))
            })
        })
    }

    fn is_negated(&self, h: &Hit, cues: &[Hit]) -> bool {
        let clause = self.clause(h.s);
        cues.iter().any(|cue| {
            if cue.e > h.s || self.clause(cue.s) != clause || h.s - cue.e > NEGATION_WINDOW {
                return false;
            }
            // "i'm not ok and i want to die": the scope ends at a
            // conjunction or "but".
            !self
                .hits
                .iter()
                .any(|t| !t.dead && t.fam == Fam::ScopeEnd && t.s >= cue.e && t.e <= h.s)
        })
    }

    /// Whose risk a phrase shows: its own form if it has one (`kill
    /// himself`), else the nearest subject before it (`she's on the
    /// bridge`), else the writer. Abuse phrases name the victim, who is the
    /// writer unless the phrase says otherwise.
    fn resolve_persons(&mut self) {
        for i in 0..self.hits.len() {
            let h = self.hits[i];
            if h.dead || h.person != Person::Neutral || !self.has_person(&h) {
                continue;
            }
            if h.fam == Fam::Cue {
                continue;
            }
            let person = if h.fam.is_abuse() {
                Person::Me
            } else {
                self.subject_before(&h)
            };
            self.hits[i].person = person;
        }
        self.resolve_cue_persons();
    }

    /// Cue words take the subject of their own sentence; with none there,
    /// they continue the person of the cue before them ("my brother sent a
    /// goodbye. not answering"), else the writer. A possessive in an earlier
    /// sentence ("took all of mum's pills. so sleepy") is not a subject.
    fn resolve_cue_persons(&mut self) {
        let mut order: Vec<usize> = (0..self.hits.len())
            .filter(|&i| {
                let h = &self.hits[i];
                h.fam == Fam::Cue && !h.dead && self.has_person(h)
            })
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_by_key(|&i| (self.hits[i].s, self.hits[i].e));
        let mut last = Person::Me;
        for i in order {
            let h = self.hits[i];
            if h.person != Person::Neutral {
                last = h.person;
                continue;
            }
            let sent = self.sentence(h.s);
            let own = self.hits.iter().any(|m| {
                !m.dead
                    && matches!(m.fam, Fam::SubjectSelf | Fam::SubjectOther)
                    && self.sentence(m.s) == sent
                    && m.s < h.e
            });
            let person = if own { self.subject_before(&h) } else { last };
            self.hits[i].person = person;
            last = person;
        }
    }

    fn subject_before(&self, h: &Hit) -> Person {
        let mut best: Option<(u32, Person)> = None;
        for m in self.hits.iter() {
            if m.dead || !matches!(m.fam, Fam::SubjectSelf | Fam::SubjectOther) {
                continue;
            }
            // A raiser names whom it is addressed to ("sorry mum", "look
            // after my kids"), not who is at risk: only look before it.
            let addressed = matches!(
                h.fam,
                Fam::Goodbye | Fam::Preparation | Fam::Finality | Fam::Cue
            );
            let inside = m.s >= h.s && m.e <= h.e && (!addressed || m.fam == Fam::SubjectSelf);
            if !inside && m.e > h.s {
                continue;
            }
            let p = if m.fam == Fam::SubjectSelf {
                Person::Me
            } else {
                Person::Other
            };
            // Inside the phrase beats anything before it; then nearest.
            let rank = if inside { u32::MAX } else { m.e };
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, p));
            }
        }
        best.map(|(_, p)| p).unwrap_or(Person::Me)
    }

    /// Step 5: levels per person and category.
    fn ladders(&self, signals: &mut Vec<&'static str>) -> (Level, Vec<Category>) {
        // Farewells, preparation and masking are reported even when the
        // message alone is not a crisis: the risk memory (`context`) joins
        // them across messages.
        for h in self.hits.iter().filter(|h| {
            !h.dead
                && matches!(
                    h.fam,
                    Fam::Goodbye | Fam::Finality | Fam::Preparation | Fam::Reassurance
                )
        }) {
            signals.push(h.fam.name());
        }
        let shared = Shared::collect(self);
        let me = Feat::collect(self, Person::Me);
        let other = Feat::collect(self, Person::Other);
        let bereavement = self.room == "bereavement";
        let (mut lv_me, mut cats_me) = me.judge(&shared, Person::Me, bereavement);
        let (mut lv_other, mut cats_other) = other.judge(&shared, Person::Other, false);
        // The word-level layer: cue families combined by the rule table.
        let [(cl_me, cc_me), (cl_other, cc_other)] = self.cue_levels(signals);
        if cl_me > Level::None {
            lv_me = lv_me.max(cl_me);
            cats_me |= cc_me;
        }
        if cl_other > Level::None {
            lv_other = lv_other.max(cl_other);
            cats_other |= cc_other;
        }
        let level = lv_me.max(lv_other);
        if level == Level::None {
            return (Level::None, Vec::new());
        }
        let mut bits = 0u8;
        if lv_me > Level::None {
            bits |= cats_me;
        }
        if lv_other > Level::None {
            bits |= cats_other | Category::ThirdParty.bit();
        }
        if bits & !Category::ThirdParty.bit() == 0 {
            bits |= Category::Suicide.bit();
        }
        for h in self.hits.iter().filter(|h| !h.dead) {
            if h.fam.risk().is_some()
                || h.fam.is_raiser()
                || matches!(h.fam, Fam::Deferral | Fam::IntentDenial | Fam::Serious)
            {
                signals.push(h.fam.name());
            }
        }
        let cats = Category::ALL
            .into_iter()
            .filter(|c| bits & c.bit() != 0)
            .collect();
        (level, cats)
    }

    /// Step 5b: the cue rules. For the writer and for someone else, a rule
    /// fires when every family in `all` (and one in `any`, if given) has a
    /// live hit that is theirs or message-wide, in one sentence or anywhere
    /// in the message, and no family in `unless` is present. Someone
    /// else's rule needs at least one hit that is theirs. Returns the
    /// level and category bits per person (`[writer, other]`) and reports
    /// the rules that fired.
    fn cue_levels(&self, signals: &mut Vec<&'static str>) -> [(Level, u8); 2] {
        let mut out = [(Level::None, 0u8); 2];
        let c = self.c;
        if c.cue_rules.is_empty() {
            return out;
        }
        // Masks of cue families per owner: writer, other, message-wide.
        let mut msg = [0u64; 3];
        let mut twice = [0u64; 3];
        // Per sentence, in order of first sight; messages have few.
        let mut sents: Vec<(u32, [u64; 3])> = Vec::new();
        // Cue-bearing hits (mask, owner, index), so a rule of two or more
        // families is never met by one phrase that counts as both.
        let mut parts: Vec<(u64, usize, usize)> = Vec::new();
        let counted = c.cue_rules.iter().fold(0u64, |m, r| m | r.twice);
        for (i, h) in self.hits.iter().enumerate() {
            if h.dead {
                continue;
            }
            let mask = if h.fam == Fam::Cue {
                1u64 << h.cue
            } else {
                c.cue_also.get(h.fam as usize).copied().unwrap_or(0)
            };
            if mask == 0 {
                continue;
            }
            let owner = if !self.has_person(h) {
                2
            } else if h.person == Person::Other {
                1
            } else {
                0
            };
            // A second, separate hit of a family counted twice.
            let again = mask & counted & msg[owner];
            if again != 0 {
                let overlapping = self.hits[..i].iter().any(|o| {
                    !o.dead && o.overlaps(h) && {
                        let m = if o.fam == Fam::Cue {
                            1u64 << o.cue
                        } else {
                            c.cue_also.get(o.fam as usize).copied().unwrap_or(0)
                        };
                        m & again != 0
                    }
                });
                if !overlapping {
                    twice[owner] |= again;
                }
            }
            msg[owner] |= mask;
            parts.push((mask, owner, i));
            let sent = self.sentence(h.s);
            match sents.iter_mut().find(|(s, _)| *s == sent) {
                Some((_, m)) => m[owner] |= mask,
                None => {
                    let mut m = [0u64; 3];
                    m[owner] = mask;
                    sents.push((sent, m));
                }
            }
        }
        if msg == [0; 3] {
            return out;
        }
        let everywhere = msg[0] | msg[1] | msg[2];
        // A death being described ("that's what the coroner said") makes
        // someone else's cues grief, not a risk to a living person; the
        // writer's own cues still count.
        let grief = self.alive(Fam::GriefOther);
        for r in &c.cue_rules {
            if everywhere & r.all != r.all || everywhere & r.unless != 0 {
                continue;
            }
            for (p, slot) in out.iter_mut().enumerate() {
                let wanted = match r.person {
                    _ if p == 1 && grief => false,
                    CuePerson::Any => true,
                    CuePerson::Me => p == 0,
                    CuePerson::Other => p == 1,
                };
                if !wanted || (slot.0 >= r.level && slot.1 & r.cats == r.cats) {
                    continue;
                }
                let fits = |m: &[u64; 3]| {
                    let have = m[p] | m[2];
                    have & r.all == r.all
                        && (r.any == 0 || have & r.any != 0)
                        && (p == 0 || m[1] & (r.all | r.any) != 0)
                };
                let fired = if r.sentence {
                    sents.iter().any(|(_, m)| fits(m))
                } else {
                    fits(&msg) && (twice[p] | twice[2]) & r.twice == r.twice
                };
                let wide = r.all | r.any;
                let several = wide.count_ones() > 1;
                let fired = fired
                    && (!several
                        || parts.iter().any(|&(ma, oa, a)| {
                            ma & wide != 0
                                && (oa == p || oa == 2)
                                && parts.iter().any(|&(mb, ob, b)| {
                                    mb & wide != 0
                                        && mb != ma
                                        && (ob == p || ob == 2)
                                        && !self.hits[a].overlaps(&self.hits[b])
                                })
                        }));
                if fired {
                    slot.0 = slot.0.max(r.level);
                    slot.1 |= r.cats;
                    signals.push(r.id);
                }
            }
        }
        out
    }

    /// Step 6: the tier-0 filters. Contact, link and sourcing block, so
    /// they win over method and urging, which hold.
    fn policy(
        &self,
        text: &str,
        level: Level,
        q: Quantity,
        signals: &mut Vec<&'static str>,
    ) -> Option<Policy> {
        if let Some(rule) = self.contact(text) {
            signals.push(rule);
            return Some(Policy::Contact);
        }
        if let Some(rule) = self.link(text) {
            signals.push(rule);
            return Some(Policy::Link);
        }
        if self.alive(Fam::Sourcing) {
            signals.push("policy.sourcing");
            return Some(Policy::Sourcing);
        }
        let harm = level > Level::None || self.alive(Fam::Recreational);
        if self.alive(Fam::Lethality)
            || self.alive(Fam::DosingHowto)
            || (q.paired && (q.lethal || harm))
        {
            signals.push("policy.method");
            return Some(Policy::Method);
        }
        if self.alive(Fam::Urging) {
            signals.push("policy.urging");
            return Some(Policy::Urging);
        }
        None
    }

    fn contact(&self, text: &str) -> Option<&'static str> {
        if scan::has_email(text) {
            return Some("policy.contact.email");
        }
        if scan::has_at_handle(text) {
            return Some("policy.contact.handle");
        }
        if self.alive(Fam::ContactRequest) {
            return Some("policy.contact.request");
        }
        // A platform name followed by something shaped like a handle
        // ("snap is quiet.heron22"); a platform alone is not contact.
        for h in self
            .hits
            .iter()
            .filter(|h| !h.dead && h.fam == Fam::Platform)
        {
            let end = self
                .f
                .toks
                .get(h.e.saturating_sub(1) as usize)
                .map(|t| t.src_end as usize)
                .unwrap_or(0);
            if scan::handle_after(text, end) {
                return Some("policy.contact.platform_handle");
            }
        }
        if self.spelled_email() {
            return Some("policy.contact.email");
        }
        if self.phone_number(text) {
            return Some("policy.contact.phone");
        }
        None
    }

    /// "name at gmail dot com", "arroba".
    fn spelled_email(&self) -> bool {
        self.hits.iter().any(|at| {
            !at.dead
                && at.fam == Fam::EmailWord
                && self.hits.iter().any(|dot| {
                    !dot.dead && dot.fam == Fam::DotWord && dot.s > at.e && dot.s <= at.e + 3
                })
        })
    }

    /// Seven or more digits in a row, in figures or words, that are not an
    /// allow-listed help line. Digit groups may be split by spaces, dashes
    /// or commas; words may be joined by "y"/"and" ("setenta y ocho").
    /// Whether token `i` comes from a link or an e-mail address in the
    /// original text (digits in a URL path are not a phone number).
    fn inside_link(&self, text: &str, i: u32) -> bool {
        let Some(t) = self.f.toks.get(i as usize) else {
            return false;
        };
        let at = (t.src_end as usize).min(text.len());
        let start = text
            .get(..at)
            .unwrap_or("")
            .rfind(char::is_whitespace)
            .map(|p| p + 1)
            .unwrap_or(0);
        let end = text
            .get(at..)
            .unwrap_or("")
            .find(char::is_whitespace)
            .map(|p| at + p)
            .unwrap_or(text.len());
        let chunk = text.get(start..end).unwrap_or("");
        chunk.contains('/') || chunk.contains('@') || scan::has_link(chunk, &[], &self.c.tlds)
    }

    fn phone_number(&self, text: &str) -> bool {
        if !self.hits.iter().any(|h| !h.dead && h.fam == Fam::Number) {
            return false;
        }
        let toks = &self.f.toks;
        let mut word_value: Vec<(u32, u32)> = Vec::new();
        for h in self.hits.iter() {
            if !h.dead && h.fam == Fam::Number && h.e == h.s + 1 {
                word_value.push((h.s, h.value));
            }
        }
        let value_at = |i: u32| word_value.iter().find(|(s, _)| *s == i).map(|(_, v)| *v);
        let mut digits = String::new();
        let mut prev_tens = false;
        let mut i = 0u32;
        let n = self.tok_count();
        let flush = |d: &mut String| -> bool {
            let hit = d.len() >= 7 && d.len() <= 15 && !self.number_allowed(d);
            d.clear();
            hit
        };
        while i < n {
            let t = &toks[i as usize];
            let word = self.text(i);
            match t.kind {
                TokKind::Number if self.inside_link(text, i) => {
                    if flush(&mut digits) {
                        return true;
                    }
                    prev_tens = false;
                }
                TokKind::Number => {
                    digits.extend(word.chars().filter(char::is_ascii_digit));
                    prev_tens = false;
                }
                TokKind::Word => {
                    if let Some(v) = value_at(i) {
                        if prev_tens && (1..10).contains(&v) {
                            // "setenta y ocho": the unit joins the tens.
                            digits.pop();
                            digits.push(char::from_digit(v, 10).unwrap_or('0'));
                            prev_tens = false;
                        } else {
                            digits.push_str(&v.to_string());
                            prev_tens = (20..100).contains(&v) && v % 10 == 0;
                        }
                    } else if (word == "y" || word == "and") && prev_tens {
                        // Connector inside a spelled number.
                    } else {
                        if flush(&mut digits) {
                            return true;
                        }
                        prev_tens = false;
                    }
                }
                TokKind::Weak => {}
                TokKind::Strong | TokKind::Emoji => {
                    if flush(&mut digits) {
                        return true;
                    }
                    prev_tens = false;
                }
            }
            i += 1;
        }
        flush(&mut digits)
    }

    fn number_allowed(&self, digits: &str) -> bool {
        self.c.allow_numbers.iter().any(|a| {
            // An allow-listed line, possibly with a country or trunk prefix.
            digits == a || (digits.ends_with(a.as_str()) && digits.len() - a.len() <= 3)
        })
    }

    fn link(&self, text: &str) -> Option<&'static str> {
        if scan::has_link(text, &self.c.allow_domains, &self.c.tlds) {
            return Some("policy.link.url");
        }
        // "youtube dot com slash …": a dot word followed by a top-level
        // domain, unless the spelled domain is allow-listed.
        for dot in self
            .hits
            .iter()
            .filter(|h| !h.dead && h.fam == Fam::DotWord)
        {
            let Some(tld) = self
                .hits
                .iter()
                .find(|t| !t.dead && t.fam == Fam::Tld && t.s == dot.e)
            else {
                continue;
            };
            if self
                .hits
                .iter()
                .any(|h| !h.dead && h.fam == Fam::EmailWord && h.e <= dot.s && dot.s - h.e <= 3)
            {
                continue;
            }
            let name = if dot.s > 0 { self.text(dot.s - 1) } else { "" };
            let domain = format!("{name}.{}", self.text(tld.s));
            if !scan::domain_allowed(&domain, &self.c.allow_domains) {
                return Some("policy.link.spelled");
            }
        }
        None
    }
}

/// Signals that belong to the whole message rather than to one person:
/// time words, and means (the means may be someone else's, "my dad's gun",
/// while the risk is the writer's).
#[derive(Default, Debug)]
struct Shared {
    timeframe: bool,
    opportunity: bool,
    deferral: bool,
    denial: bool,
    now: bool,
    serious: bool,
    means: bool,
    means_drug: bool,
    means_lethal: bool,
    /// A non-drug means held right now (a blade, a rope), not an emoji.
    means_in_hand: bool,
    /// A lethal count of a drug that someone has or keeps (the quantity
    /// rule): a stockpile, whatever words were used.
    hoard: bool,
    /// "i'm fine 🙂", "estoy bien, tranquilos".
    reassured: bool,
    use_context: bool,
}

impl Shared {
    fn collect(cx: &Ctx<'_>) -> Shared {
        let alive = |f: Fam| cx.hits.iter().filter(move |h| !h.dead && h.fam == f);
        let later_time = |after: &Hit| {
            cx.hits.iter().any(|t| {
                !t.dead
                    && matches!(t.fam, Fam::Timeframe | Fam::Opportunity)
                    && t.s >= after.e
                    && cx.clause(t.s) != cx.clause(after.s)
            })
        };
        // "not today. tomorrow …", "i won't do anything while the kids are
        // home … they go to their dad's sunday": negation that only defers
        // is intent with a timeframe.
        let deferral =
            alive(Fam::Deferral).any(&later_time) || alive(Fam::IntentDenial).any(&later_time);
        let denial = !deferral && alive(Fam::IntentDenial).next().is_some();
        let means = || {
            cx.hits
                .iter()
                .filter(|h| !h.dead && matches!(h.fam, Fam::MeansAtHand | Fam::MeansEmoji))
        };
        Shared {
            timeframe: alive(Fam::Timeframe).next().is_some(),
            opportunity: alive(Fam::Opportunity).next().is_some(),
            deferral,
            denial,
            now: alive(Fam::HappeningNow).next().is_some(),
            serious: alive(Fam::Serious).next().is_some(),
            means: means().next().is_some(),
            means_drug: means().any(|h| h.drug || cx.overlaps_fam(h, Fam::Drug)),
            means_lethal: means().any(|h| !(h.drug || cx.overlaps_fam(h, Fam::Drug))),
            means_in_hand: alive(Fam::MeansAtHand)
                .any(|h| !(h.drug || cx.overlaps_fam(h, Fam::Drug))),
            hoard: alive(Fam::MeansAtHand).any(|h| h.drug && h.value >= LETHAL_COUNT),
            reassured: alive(Fam::Reassurance).next().is_some(),
            use_context: cx.room == "substance-use"
                || [Fam::UseVerb, Fam::Relapse]
                    .iter()
                    .any(|f| alive(*f).next().is_some()),
        }
    }
}

impl Ctx<'_> {
    fn overlaps_fam(&self, h: &Hit, fam: Fam) -> bool {
        self.hits
            .iter()
            .any(|o| !o.dead && o.fam == fam && o.overlaps(h))
    }

    fn drug_in_sentence(&self, h: &Hit) -> bool {
        self.alive_in_sentence(Fam::Drug, self.sentence(h.s))
    }
}

/// Signals of one person (the writer or someone else).
#[derive(Default, Debug)]
struct Feat {
    any: bool,
    active: bool,
    active_firm: bool,
    passive: bool,
    indifferent: bool,
    method_act: bool,
    method_research: bool,
    lethality: bool,
    stockpile: bool,
    attempt: bool,
    sh_act: bool,
    sh_urge: bool,
    sh_severe: bool,
    od_risk: bool,
    od_now: bool,
    abuse_act: bool,
    abuse_threat: bool,
    abuse_control: u32,
    abuse_fear: bool,
    prep: bool,
    /// Distinct preparation acts ("deleted my socials, paid what i owe,
    /// letter's on the fridge"): two or more are a plan on their own.
    prep_acts: u32,
    finality: bool,
    goodbye: bool,
    intent: bool,
    location: bool,
    isolation: bool,
    unreachable: bool,
    rumination: bool,
    drug_signal: bool,
}

impl Feat {
    fn collect(cx: &Ctx<'_>, person: Person) -> Feat {
        let mut f = Feat::default();
        for h in cx.hits.iter() {
            if h.dead || h.person != person || !h.fam.has_person() {
                continue;
            }
            f.any = true;
            match h.fam {
                Fam::IdeationActive => {
                    f.active = true;
                    f.active_firm |= !h.loose;
                }
                Fam::IdeationPassive | Fam::Hopelessness => f.passive = true,
                Fam::Indifference => f.indifferent = true,
                Fam::MethodAct => {
                    f.method_act = true;
                    f.drug_signal |= cx.drug_in_sentence(h);
                }
                Fam::MethodResearch => f.method_research = true,
                Fam::Lethality => {
                    f.lethality = true;
                    f.drug_signal = true;
                }
                Fam::Stockpile => {
                    f.stockpile = true;
                    f.drug_signal |= cx.drug_in_sentence(h);
                }
                Fam::AttemptNow => {
                    f.attempt = true;
                    f.drug_signal |= h.drug || cx.drug_in_sentence(h);
                }
                Fam::SelfHarmAct => f.sh_act = true,
                Fam::SelfHarmUrge => f.sh_urge = true,
                Fam::SelfHarmSevere => f.sh_severe = true,
                Fam::OverdoseRisk | Fam::Relapse => f.od_risk = true,
                Fam::OverdoseNow => f.od_now = true,
                Fam::AbuseAct => f.abuse_act = true,
                Fam::AbuseThreat => f.abuse_threat = true,
                Fam::AbuseControl => f.abuse_control += 1,
                Fam::AbuseFear => f.abuse_fear = true,
                Fam::Preparation => {
                    f.prep = true;
                    // Overlapping phrases ("gave away my", "gave away") are
                    // one act.
                    let counted = cx.hits.iter().any(|o| {
                        !o.dead
                            && o.fam == Fam::Preparation
                            && o.person == person
                            && o.overlaps(h)
                            && (o.s, o.e) < (h.s, h.e)
                    });
                    f.prep_acts += u32::from(!counted);
                }
                Fam::Finality => f.finality = true,
                Fam::Goodbye => f.goodbye = true,
                Fam::Intent => f.intent = true,
                Fam::LocationNow => f.location = true,
                Fam::Isolation => f.isolation = true,
                Fam::Unreachable => f.unreachable = true,
                Fam::Rumination => f.rumination = true,
                _ => {}
            }
        }
        f
    }

    /// Level and category bits for this person. Someone else's risk needs a
    /// signal of their own; the writer's may rest on message-wide signals
    /// alone ("not today. tomorrow when everyone's out").
    fn judge(&self, sh: &Shared, person: Person, bereavement: bool) -> (Level, u8) {
        let mut level = Level::None;
        let mut cats = 0u8;
        if person == Person::Other && !self.any {
            return (level, cats);
        }
        let mut raise = |l: Level, c: Category| {
            if l > Level::None {
                cats |= c.bit();
                level = level.max(l);
            }
        };

        // Suicide.
        let hoard = sh.hoard && person == Person::Me;
        let (sl, overdose_too) = self.suicide(sh, bereavement, hoard);
        if sl > Level::None {
            // An attempt by overdose while using is an overdose, not (only)
            // a suicide attempt; with no other sign of suicide, say so.
            let attempt_is_suicide =
                self.attempt && person == Person::Me && (!self.drug_signal || !sh.use_context);
            let suicide_specific = self.active
                || self.passive
                || (self.indifferent && !self.od_risk)
                || self.method_act
                || self.method_research
                || self.lethality
                || self.stockpile
                || hoard
                || self.prep
                || self.finality
                || self.goodbye
                || self.intent
                || self.location
                || sh.means_lethal
                || sh.deferral
                || attempt_is_suicide;
            if suicide_specific || !overdose_too {
                raise(sl, Category::Suicide);
            }
            if overdose_too {
                raise(sl, Category::Overdose);
            }
        }

        // Self-harm.
        // An urge with the blade already in hand is an act about to happen.
        let shl = if self.sh_severe || (self.sh_urge && sh.means_in_hand) {
            Level::Imminent
        } else if self.sh_act || (self.sh_urge && (sh.means || sh.timeframe)) {
            Level::High
        } else if self.sh_urge {
            Level::Concern
        } else {
            Level::None
        };
        raise(shl, Category::SelfHarm);

        // Overdose.
        let odl = if self.od_now {
            Level::Imminent
        } else if self.od_risk {
            Level::High
        } else {
            Level::None
        };
        raise(odl, Category::Overdose);

        // Abuse.
        let severe = self.abuse_act || self.abuse_threat;
        // A threat to life from someone who has already been violent is a
        // threat to life now (the lethality questions of DV risk checklists).
        let abl = if severe
            && (sh.now
                || sh.means_lethal
                || (self.abuse_threat && (sh.timeframe || self.abuse_act)))
        {
            Level::Imminent
        } else if severe || self.abuse_control >= 2 || (self.abuse_control >= 1 && self.abuse_fear)
        {
            Level::High
        } else if self.abuse_control >= 1 || self.abuse_fear {
            Level::Concern
        } else {
            Level::None
        };
        raise(abl, Category::Abuse);

        (level, cats)
    }

    /// The suicide ladder (C-SSRS): a passive wish is concern; active
    /// ideation, a method or a lethality question is high; with means,
    /// timeframe, preparation or a goodbye it is imminent. Also returns
    /// whether drugs are the means.
    fn suicide(&self, sh: &Shared, bereavement: bool, hoard: bool) -> (Level, bool) {
        let drug = self.drug_signal || sh.means_drug;
        let stockpile = self.stockpile || hoard;
        if self.attempt {
            return (Level::Imminent, drug);
        }
        // Strong raisers show a plan on their own; weak ones only count next
        // to something else; a bare timeframe only raises a core.
        let strong = [
            self.prep,
            self.finality,
            self.location,
            self.isolation,
            self.unreachable,
            sh.deferral,
            // Several distinct preparation acts are a plan by themselves.
            self.prep_acts >= 2,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        // "i'm fine 🙂" next to a farewell or preparation is masking.
        let masking = sh.reassured && (self.prep || self.finality || self.goodbye);
        let weak = [sh.means, self.goodbye, self.intent, masking]
            .iter()
            .filter(|b| **b)
            .count();
        let time = usize::from(sh.timeframe) + usize::from(sh.opportunity);
        // Being at a lethal place weighs double: with anything else it is
        // imminent ("on the roof. can't do this anymore", "on the bridge
        // right now").
        let place = usize::from(self.location);
        let place_now = usize::from(self.location && sh.now);
        // Indifference to living is part of the overdose picture when the
        // person is using; otherwise it is a passive wish.
        let passive = self.passive || (self.indifferent && !self.od_risk);
        // A wish to die or a stated intent next to a method is active.
        let intent = self.intent || sh.deferral;
        let method_active = self.method_act && (intent || passive);

        // Slang such as "kms" escalates only when confirmed ("fr", "like
        // actually") or backed by a plan; alone it is a worrying sign.
        let plan = strong + usize::from(sh.means) + time + usize::from(self.goodbye);
        let active = (self.active && (self.active_firm || sh.serious || plan + weak > 0))
            || method_active
            || self.lethality;
        let loose_only = self.active && !active;

        // Each way in gives a level; the highest wins.
        let mut level = Level::None;
        if active {
            level = level.max(if plan >= 1 {
                Level::Imminent
            } else {
                Level::High
            });
        }
        if self.method_act || self.method_research {
            // A method with a time ("taking all of them tonight") is a plan.
            // Thinking about a method (research) needs more than a time.
            let plan = (strong >= 1 && strong + place + weak + time >= 2)
                || (time >= 1 && (self.method_act || intent || sh.means));
            level = level.max(if plan { Level::Imminent } else { Level::High });
        }
        if passive || loose_only {
            level = level.max(
                if strong + usize::from(sh.means) >= 1 && strong + place + weak + time >= 2 {
                    Level::Imminent
                } else if !bereavement && (strong >= 1 || sh.means) {
                    Level::High
                } else {
                    Level::Concern
                },
            );
        }
        if stockpile {
            let more = strong + usize::from(self.goodbye) + usize::from(self.intent) + time;
            level = level.max(if more >= 1 {
                Level::Imminent
            } else {
                Level::High
            });
        }
        if (strong >= 1 && strong + place_now + weak + time >= 2)
            || (sh.means && (self.goodbye || self.intent))
        {
            level = Level::Imminent;
        } else if sh.means && self.rumination {
            level = level.max(Level::High);
        } else if self.prep || self.finality {
            level = level.max(Level::Concern);
        }
        // "i wouldn't, but the thought's there": intent denied with no later
        // timeframe leaves the thought, never more.
        if sh.denial && level > Level::Concern && !sh.means && strong == 0 {
            level = Level::Concern;
        }
        (level, drug && level > Level::None)
    }
}

#[cfg(test)]
mod tests {
    //! One group per rule family. The sentences are written for these tests
    //! (not taken from the corpus) so they check the principle, not a line.

    use super::*;
    use std::sync::OnceLock;

    /// The rules alone: most tests here pin what one rule does. The model
    /// is trained on top of them and tested below (`shipped`).
    fn c() -> &'static Classifier {
        static C: OnceLock<Classifier> = OnceLock::new();
        C.get_or_init(
            || match Classifier::from_sources(BUILTIN.iter().map(|(n, s)| (*n, *s))) {
                Ok(c) => c,
                Err(e) => panic!("builtin config: {e}"),
            },
        )
    }

    /// What ships: the rules and the trained model.
    fn shipped() -> &'static Classifier {
        static C: OnceLock<Classifier> = OnceLock::new();
        C.get_or_init(|| match Classifier::builtin() {
            Ok(c) => c,
            Err(e) => panic!("builtin config: {e}"),
        })
    }

    fn level(text: &str) -> Level {
        c().assess(text, "anxiety").level
    }

    fn in_room(text: &str, room: &str) -> Assessment {
        c().assess(text, room)
    }

    fn policy(text: &str) -> Option<Policy> {
        c().assess(text, "anxiety").policy
    }

    #[test]
    fn obfuscation_does_not_lower_the_level() {
        for t in [
            "i want to k1ll mys3lf",
            "i want to k i l l myself",
            "i want to K.I.L.L MYSELF",
            "i want to kiiiiill myself",
            "i want to k-i-l-l myself",
            "i want to kіll mysеlf", // Cyrillic і and е
            "feeling su1c1dal again",
            "quiero m a t a r m e",
            "ya no aguanto, quiero m4t4rme",
            "pienso mucho en el s*icidio",
        ] {
            assert_eq!(level(t), Level::High, "{t}");
        }
    }

    #[test]
    fn slang_is_a_lexicon_entry() {
        assert_eq!(level("thinking about unaliving myself"), Level::High);
        assert_eq!(level("me voy a desvivir"), Level::High);
        assert_eq!(level("relapsed on s/h yesterday"), Level::High);
        // "kms" alone is flagged but not escalated; confirmed it is high.
        assert_eq!(level("kms"), Level::Concern);
        assert_eq!(level("kms. i mean it"), Level::High);
    }

    #[test]
    fn active_and_passive_ideation() {
        assert_eq!(level("i keep thinking about ending my life"), Level::High);
        assert_eq!(
            level("i just want to sleep and never wake up"),
            Level::Concern
        );
        assert_eq!(
            level("everyone would be better off without me"),
            Level::Concern
        );
        assert_eq!(level("quiero desaparecer para siempre"), Level::Concern);
    }

    #[test]
    fn plan_means_timeframe_and_preparation_raise_severity() {
        assert_eq!(level("i'm going to kill myself tonight"), Level::Imminent);
        assert_eq!(
            level("i want to die and the pills are in my drawer"),
            Level::High
        );
        assert_eq!(
            level("i want to die. the pills are counted out and it's tonight"),
            Level::Imminent
        );
        assert_eq!(
            level("wrote a note for my sister. friday then"),
            Level::Imminent
        );
        assert_eq!(
            level("gave away my cat. won't need her where i'm going"),
            Level::Imminent
        );
        assert_eq!(
            level("esta noche me tomo todas las pastillas"),
            Level::Imminent
        );
    }

    #[test]
    fn negation_lowers_only_what_it_scopes() {
        assert_eq!(level("i'm not suicidal at all, just stressed"), Level::None);
        assert_eq!(
            level("i don't want to die, i want the panic to stop"),
            Level::None
        );
        assert_eq!(level("no me quiero matar, solo estoy cansada"), Level::None);
        // The scope ends at "and": the second clause stands.
        assert_eq!(level("i'm not ok and i want to kill myself"), Level::High);
        // A negation that covers only help leaves the means standing.
        assert_eq!(
            level("no i won't call anyone. the rope is in the garage"),
            Level::Imminent
        );
    }

    #[test]
    fn deferral_is_not_negation() {
        assert_eq!(
            level("not tonight. saturday when everyone's asleep"),
            Level::Imminent
        );
        assert_eq!(level("hoy no. el domingo cuando se vayan"), Level::Imminent);
        // Intent denied with no later time leaves the thought only.
        assert_eq!(
            level("i think about stepping in front of a bus but i won't do anything"),
            Level::Concern
        );
        // "not today" as recovery talk is nothing.
        assert_eq!(level("not today satan, day 40 sober"), Level::None);
    }

    #[test]
    fn idioms_hyperbole_and_gaming_are_not_crisis() {
        for t in [
            "the commute is killing me",
            "i'd kill for a coffee",
            "killed myself laughing at that meme",
            "forgot my keys again kms lol",
            "i'm dead 💀 that video",
            "this deadline will be the death of me",
            "had to kill myself in game to reset the level",
            "me muero de ganas de verte",
            "qué vergüenza, me quiero morir jajaja",
            "mi jefe me está matando con tanto trabajo",
            "trying to cut down on sugar",
            "hanging out with friends tonight",
        ] {
            assert_eq!(level(t), Level::None, "{t}");
        }
    }

    #[test]
    fn past_and_recovery_talk_is_not_crisis() {
        assert_eq!(
            level("i tried to kill myself years ago, now i run a support group"),
            Level::None
        );
        assert_eq!(
            level("used to cut myself, the scars are fading"),
            Level::None
        );
        assert_eq!(
            level("hace cinco años intenté matarme y hoy estoy bien"),
            Level::None
        );
        let a = in_room(
            "relapsed in june but back at meetings and doing well",
            "substance-use",
        );
        assert_eq!(a.level, Level::None);
        // "desde hace meses" is ongoing, not past.
        assert_eq!(
            level("mi padrastro abusa de mí desde hace meses"),
            Level::High
        );
    }

    #[test]
    fn bereavement_context() {
        let a = in_room("my uncle took his own life last spring", "bereavement");
        assert_eq!(a.level, Level::None);
        // The writer's passive wish in grief is at most concern...
        let a = in_room(
            "since my mum died i just want to be where she is",
            "bereavement",
        );
        assert_eq!(a.level, Level::Concern);
        // ...but the room never lowers active risk or a plan.
        let a = in_room("since dad died i want to kill myself", "bereavement");
        assert_eq!(a.level, Level::High);
        let a = in_room(
            "i have her pills and tonight i'll be with her",
            "bereavement",
        );
        assert_eq!(a.level, Level::Imminent);
    }

    #[test]
    fn help_seeking_is_none_with_the_flag() {
        let a = in_room("what's the number for the crisis line?", "anxiety");
        assert_eq!(a.level, Level::None);
        assert!(a.help_seeking);
        let a = in_room("no, i'm not going to call a helpline", "anxiety");
        assert!(!a.help_seeking);
    }

    #[test]
    fn third_party_risk() {
        let a = in_room(
            "my brother says he's going to kill himself tonight",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent);
        assert_eq!(a.categories, vec![Category::Suicide, Category::ThirdParty]);
        let a = in_room(
            "my friend's lips are blue and he isn't breathing",
            "substance-use",
        );
        assert_eq!(a.level, Level::Imminent);
        assert_eq!(a.categories, vec![Category::Overdose, Category::ThirdParty]);
        let a = in_room("mi amiga dice que se quiere morir, qué hago", "anxiety");
        assert_eq!(a.level, Level::Concern);
        assert!(a.categories.contains(&Category::ThirdParty));
    }

    #[test]
    fn overdose_and_relapse() {
        let a = in_room("using alone again since i got out", "substance-use");
        assert_eq!(
            (a.level, a.categories.clone()),
            (Level::High, vec![Category::Overdose])
        );
        let a = in_room("me pincho sola en el baño", "substance-use");
        assert_eq!(a.level, Level::High);
        let a = in_room("did way too much and now i can't breathe", "substance-use");
        assert_eq!(a.level, Level::Imminent);
        let a = in_room("craving hard but i rang my sponsor", "substance-use");
        assert_eq!(a.level, Level::None);
    }

    #[test]
    fn self_harm() {
        assert_eq!(level("burned myself with a lighter again"), Level::High);
        assert_eq!(level("the urge to cut is bad today"), Level::Concern);
        assert_eq!(
            level("cut myself and it won't stop bleeding"),
            Level::Imminent
        );
        let a = c().assess("me sigo cortando los brazos", "anxiety");
        assert_eq!(a.categories, vec![Category::SelfHarm]);
    }

    #[test]
    fn abuse() {
        assert_eq!(level("my boyfriend slapped me last night"), Level::High);
        assert_eq!(
            level("he's hitting me right now, i'm hiding"),
            Level::Imminent
        );
        assert_eq!(level("i'm scared to go home"), Level::Concern);
        assert_eq!(
            level("mi pareja me empuja y me revisa el celular"),
            Level::High
        );
        // A longer phrase wins: a bus is not an abuser.
        assert_eq!(level("wish a bus hit me"), Level::Concern);
    }

    #[test]
    fn contact_filter() {
        assert_eq!(policy("text me on 07700 900123"), Some(Policy::Contact));
        assert_eq!(
            policy("email me: fern.lake@example.com"),
            Some(Policy::Contact)
        );
        assert_eq!(policy("add me on snap, same name"), Some(Policy::Contact));
        assert_eq!(policy("my snap is blue.fox99"), Some(Policy::Contact));
        assert_eq!(policy("dm me @quiet_fern"), Some(Policy::Contact));
        assert_eq!(
            policy("mi número es seis uno dos, tres cuatro cinco, sesenta y siete, ocho"),
            Some(Policy::Contact)
        );
        // Not hits: help lines, plain numbers, a platform with no handle.
        for t in [
            "call samaritans on 116 123 any time",
            "in the US you can call or text 988",
            "text SHOUT to 85258",
            "teléfono de la esperanza 717 003 717",
            "línea de la vida 800 911 2000",
            "it's been 116 days since he passed",
            "ring 999 if you're in danger",
            "my insta is mostly cat pictures",
            "you can message me in here any time",
            "call your doctor tomorrow",
        ] {
            assert_eq!(policy(t), None, "{t}");
        }
    }

    #[test]
    fn link_filter() {
        assert_eq!(policy("this helped me: bit.ly/3xYz12"), Some(Policy::Link));
        assert_eq!(policy("see https://example.org/page"), Some(Policy::Link));
        assert_eq!(
            policy("it's on youtube dot com slash calmvids"),
            Some(Policy::Link)
        );
        assert_eq!(
            policy("findahelpline.com has lines for every country"),
            None
        );
        assert_eq!(policy("www.samaritans.org is good"), None);
        assert_eq!(policy("samaritans dot org has a chat"), None);
    }

    #[test]
    fn sourcing_filter() {
        assert_eq!(
            policy("anyone know who sells xanax near me?"),
            Some(Policy::Sourcing)
        );
        assert_eq!(
            policy("where can i get codeine without a prescription"),
            Some(Policy::Sourcing)
        );
        assert_eq!(policy("quién vende pepas por acá"), Some(Policy::Sourcing));
        assert_eq!(policy("where can i get naloxone?"), None);
        assert_eq!(policy("my old dealer messaged me, i ignored him"), None);
    }

    #[test]
    fn method_filter() {
        assert_eq!(
            policy("took 30 of my tablets an hour ago"),
            Some(Policy::Method)
        );
        assert_eq!(
            policy("how many sleeping pills would kill me"),
            Some(Policy::Method)
        );
        assert_eq!(
            policy("3mg of xanax when i'm coming down, works every time"),
            Some(Policy::Method)
        );
        // A prescribed dose in a treatment context is not method.
        assert_eq!(
            policy("my gp upped me to 100mg sertraline, side effects?"),
            None
        );
        assert_eq!(policy("day 45 without pills!"), None);
    }

    #[test]
    fn urging_filter() {
        let a = in_room("just kys already", "anxiety");
        assert_eq!((a.policy, a.level), (Some(Policy::Urging), Level::None));
        assert_eq!(policy("please don't kill yourself, stay with us"), None);
        assert_eq!(policy("mátate y deja de molestar"), Some(Policy::Urging));
    }

    #[test]
    fn verdicts_follow_the_readme_rules() {
        let v = |t: &str, room: &str| c().assess(t, room).verdict();
        assert!(matches!(
            v("text me on 07700 900123", "anxiety"),
            Verdict::Block(_)
        ));
        // A block never hides the crisis side.
        let a = in_room("i want to kill myself, text me on 07700 900123", "anxiety");
        assert_eq!(a.level, Level::High);
        assert!(matches!(a.verdict(), Verdict::Block(_)));
        assert_eq!(v("just kys", "anxiety"), Verdict::Hold);
        assert_eq!(
            v("i'm going to hang myself tonight", "anxiety"),
            Verdict::Hold
        );
        assert_eq!(v("i want to kill myself", "anxiety"), Verdict::Deliver);
        assert_eq!(v("had a good day today", "anxiety"), Verdict::Deliver);
    }

    #[test]
    fn emoji_count_only_with_a_goodbye_or_act() {
        assert_eq!(level("🪢 tomorrow morning. love you all"), Level::Imminent);
        assert_eq!(level("💊💊💊 bye everyone"), Level::Imminent);
        assert_eq!(level("💊 don't forget your meds"), Level::None);
        assert_eq!(level("chopping veg 🔪🥕"), Level::None);
    }

    #[test]
    fn signals_explain_the_result() {
        let a = c().assess("not tonight. saturday when everyone's asleep", "anxiety");
        assert!(a.signals.contains(&"deferral"), "{:?}", a.signals);
        let a = c().assess("text me on 07700 900123", "anxiety");
        assert!(
            a.signals.iter().any(|s| s.starts_with("policy.contact")),
            "{:?}",
            a.signals
        );
    }

    #[test]
    fn empty_and_odd_input_is_safe() {
        for t in [
            "",
            " ",
            "…",
            "****",
            "@@@",
            "💀💀💀",
            "k",
            "9999999999999999999999",
            "\u{200D}",
        ] {
            let _ = c().assess(t, "anxiety");
        }
        let long = "i am fine. ".repeat(500);
        assert_eq!(level(&long), Level::None);
    }

    #[test]
    fn config_errors_name_the_file_and_key() {
        let err = |toml: &str| match Classifier::from_sources([("x.toml", toml)]) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        };
        let e = err("[lexicon.no_such_family]\nphrases = [\"a\"]\n");
        assert!(e.contains("x.toml") && e.contains("no_such_family"), "{e}");
        let e = err("[lexicon.timeframe]\nphrases = []\n");
        assert!(
            e.contains("lexicon.timeframe.phrases") && e.contains("empty"),
            "{e}"
        );
        let e = err("[lexicon.timeframe]\n");
        assert!(e.contains("lexicon.timeframe"), "{e}");
        let e = err("[lexicon.timeframe]\nphrases = [\"...\"]\n");
        assert!(e.contains("empty after normalisation"), "{e}");
        let e = err("[lexicon.timeframe]\nphrases = [\"a*b\"]\n");
        assert!(e.contains("only at the end"), "{e}");
        let e = err(
            "[lexicon.timeframe]\nphrases = [\"a\"]\n[[combo]]\nid = \"c\"\nfirst = \"timeframe\"\n\
             then = \"nope\"\nwithin = 1\nyields = \"intent\"\n",
        );
        assert!(e.contains("combo[0]") && e.contains("nope"), "{e}");
        let e = err("[lexicon.timeframe]\nphrase = [\"a\"]\n");
        assert!(e.contains("invalid TOML"), "{e}");
        assert!(err("").contains("no phrases"));
        let missing = Classifier::from_dir(Path::new("/nonexistent/safety"));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }

    #[test]
    fn from_dir_matches_builtin() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/safety");
        let from_dir = match Classifier::from_dir(&dir) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        for t in [
            "i'm going to kill myself tonight",
            "bit.ly/x1",
            "hello",
            "everything is sorted now, the cat goes to my sister",
        ] {
            assert_eq!(
                from_dir.assess(t, "anxiety"),
                shipped().assess(t, "anxiety")
            );
        }
    }

    #[test]
    fn the_shipped_model_raises_indirect_phrasing_the_rules_leave_low() {
        // Written for this test, not taken from any labelled set.
        for (text, cat) in [
            (
                "everything is sorted now, the cat goes to my sister and the passwords are in the envelope",
                Category::Suicide,
            ),
            (
                "he said if i tell anyone he will finish me, he has the knife in the kitchen",
                Category::Abuse,
            ),
        ] {
            assert!(c().assess(text, "anxiety").level < Level::High, "{text}");
            let a = shipped().assess(text, "anxiety");
            assert!(a.level >= Level::High, "{text}: {a:?}");
            assert!(a.categories.contains(&cat), "{text}: {a:?}");
            assert!(a.signals.contains(&"model.escalate"), "{a:?}");
        }
        for text in [
            "the exam tomorrow is going to kill me lol",
            "my grandad died last spring, still miss him every day",
            "had a rough day but the breathing exercise helped a bit",
            "i'm not suicidal, just really tired of this job",
        ] {
            assert_eq!(
                shipped().assess(text, "anxiety").level,
                Level::None,
                "{text}"
            );
        }
    }

    /// The shipped rules with a hand-written model that knows one word, so
    /// these tests do not depend on trained weights.
    fn with_toy_model(word: &str, weight: f32, imminent: f32) -> Classifier {
        with_toy_veto(word, weight, imminent, 0.0)
    }

    fn with_toy_veto(word: &str, weight: f32, imminent: f32, veto: f32) -> Classifier {
        let json = format!(
            r#"{{"format":1,"about":"test","heads":["escalate","imminent","suicide","self_harm","overdose","abuse","third_party"],
            "bias":[-5,-5,-5,-5,-5,-5,-5],"escalate_threshold":0.5,"imminent_threshold":0.5,"category_threshold":0.5,
            "veto_threshold":{veto},"weights":{{"s:{word}":[{weight},{imminent},0,0,10,0,0]}}}}"#
        );
        let model = Model::from_json("toy.json", &json).expect("toy model compiles");
        let rules = Classifier::from_sources(BUILTIN.iter().map(|(n, s)| (*n, *s)))
            .expect("builtin rules compile");
        rules.with_model(Some(model))
    }

    #[test]
    fn the_model_raises_what_the_rules_miss_and_says_so() {
        let c = with_toy_model("zorb", 10.0, 0.0);
        let a = c.assess("so much zorb tonight", "anxiety");
        assert_eq!(a.level, Level::High);
        assert_eq!(a.categories, vec![Category::Overdose]);
        assert!(a.signals.contains(&"model.escalate"), "{:?}", a.signals);
        // Folding reaches the model too: case, accents, repeated letters.
        assert_eq!(c.assess("ZÖRRB", "anxiety").level, Level::High);
        // The imminent head decides between high and imminent (and so hold).
        let c = with_toy_model("zorb", 10.0, 10.0);
        let a = c.assess("zorb", "anxiety");
        assert_eq!(a.level, Level::Imminent);
        assert_eq!(a.verdict(), Verdict::Hold);
        // Without the word nothing changes.
        assert_eq!(c.assess("a quiet evening", "anxiety").level, Level::None);
    }

    #[test]
    fn the_model_never_lowers_what_the_rules_found_without_a_veto_threshold() {
        // A model that pushes everything down.
        let c = with_toy_model("tonight", -50.0, -50.0);
        let a = c.assess("i'm going to kill myself tonight", "anxiety");
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(!a.signals.contains(&"model.escalate"));
        assert!(!a.signals.contains(&"model.lowered"));
        // Rules-only still works with no model at all.
        let rules = c.with_model(None);
        assert_eq!(
            rules
                .assess("i'm going to kill myself tonight", "anxiety")
                .level,
            Level::Imminent
        );
    }

    #[test]
    fn a_veto_lowers_a_rules_escalation_to_concern_and_no_further() {
        // Every message scores P(escalate) = sigmoid(-5) < 0.2 unless it
        // says "zorb", which lifts it over the veto threshold.
        let c = with_toy_veto("zorb", 10.0, 0.0, 0.2);
        let text = "i'm going to kill myself tonight";
        let a = c.assess(text, "anxiety");
        assert_eq!(a.level, Level::Concern, "{a:?}");
        assert!(a.signals.contains(&"model.lowered"), "{a:?}");
        // The rules' reasons and kinds of risk stay, so staff see why.
        assert!(a.categories.contains(&Category::Suicide), "{a:?}");
        assert!(
            a.signals
                .iter()
                .any(|s| s.starts_with("intent") || s.starts_with("ideation")),
            "{a:?}"
        );
        // Above the threshold the rules' level stands.
        let b = c.assess("i'm going to kill myself tonight zorb", "anxiety");
        assert_eq!(b.level, Level::Imminent, "{b:?}");
        assert!(!b.signals.contains(&"model.lowered"), "{b:?}");
        // Below `high` there is nothing to lower.
        let n = c.assess("had a nice walk today", "anxiety");
        assert_eq!(n.level, Level::None, "{n:?}");
        assert!(!n.signals.contains(&"model.lowered"), "{n:?}");
    }

    #[test]
    fn a_veto_threshold_out_of_range_is_refused() {
        let json = r#"{"format":1,"about":"t","heads":["escalate","imminent","suicide","self_harm","overdose","abuse","third_party"],
            "bias":[0,0,0,0,0,0,0],"escalate_threshold":0.5,"imminent_threshold":0.5,"category_threshold":0.5,
            "veto_threshold":1.0,"weights":{}}"#;
        let e = Model::from_json("m.json", json).expect_err("veto 1.0 refused");
        assert!(e.to_string().contains("veto_threshold"), "{e}");
    }

    #[test]
    fn model_features_name_words_stems_pairs_and_families() {
        let text = "I have the pills. Tonight.";
        let (rules, f) = c().model_features(text, "substance-use");
        let rules_only = with_toy_model("zorb", 10.0, 0.0).with_model(None);
        assert_eq!(rules, rules_only.assess(text, "substance-use").level);
        for want in [
            "room:substance-use",
            "s:pils",
            "s:tonig",
            "w:tonight",
            "b:the:pils",
        ] {
            assert!(f.iter().any(|n| n == want), "{want} missing from {f:?}");
        }
        // No pair across a sentence end.
        assert!(!f.iter().any(|n| n == "b:pils:tonig"), "{f:?}");
        assert!(f.iter().any(|n| n.starts_with("f:")), "family hits: {f:?}");
        // What the model sees of a negated phrase: the dead hit is kept.
        let (_, f) = c().model_features("i'm not suicidal", "anxiety");
        assert!(f.iter().any(|n| n.starts_with("x:")), "{f:?}");
    }

    #[test]
    fn explain_shows_the_model() {
        let c = with_toy_model("zorb", 10.0, 0.0);
        let e = c.explain("zorb", "anxiety");
        assert!(e.contains("model: escalate"), "{e}");
        assert!(e.contains("+10.000 s:zorb"), "{e}");
    }

    #[test]
    fn a_bad_model_file_in_a_config_dir_is_refused() {
        let dir = std::env::temp_dir().join(format!("hearth-model-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/safety");
        for f in ["common.toml", "en.toml", "es.toml"] {
            std::fs::copy(src.join(f), dir.join(f)).expect("copy rules");
        }
        std::fs::write(dir.join(MODEL_FILE), "{\"format\": 9}").expect("write");
        let e = Classifier::from_dir(&dir).expect_err("bad model");
        assert!(e.to_string().contains("model.json"), "{e}");
        std::fs::remove_file(dir.join(MODEL_FILE)).expect("rm");
        // Without a model file the rules still load.
        assert!(Classifier::from_dir(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_ordinary_reason_disarms_preparation_and_means() {
        assert_eq!(
            level("bought a rope for the climbing wall on saturday, so nervous"),
            Level::None
        );
        assert_eq!(
            level("giving away my old books to the charity shop"),
            Level::None
        );
        assert_eq!(
            level("estoy regalando mis muebles porque me mudo"),
            Level::None
        );
        // Without the reason the same acts still count.
        assert!(level("bought a rope. doing it saturday") >= Level::High);
    }

    #[test]
    fn a_hypothetical_person_in_a_help_question_is_not_a_disclosure() {
        let a = c().assess(
            "how do i help someone who says they want to kill themselves?",
            "anxiety",
        );
        assert!(a.level < Level::High, "{a:?}");
        let a = c().assess(
            "qué le digo a una amiga que dice que se quiere matar?",
            "anxiety",
        );
        assert!(a.level < Level::High, "{a:?}");
        // A named friend at risk is still a third party at risk.
        assert_eq!(
            level("my friend says she'll jump off the bridge tonight, what do i do"),
            Level::Imminent
        );
    }

    #[test]
    fn masking_next_to_a_farewell_is_imminent() {
        assert_eq!(
            level("i'm fine now 🙂 said my goodbyes, everything's sorted"),
            Level::Imminent
        );
        assert_eq!(
            level("ya me despedí de todos, estoy bien 🙂"),
            Level::Imminent
        );
        // "i'm fine" alone is nothing, and is reported for the risk memory.
        let a = c().assess("i'm fine, don't worry about me", "anxiety");
        assert_eq!(a.level, Level::None);
        assert!(a.signals.contains(&"reassurance"), "{:?}", a.signals);
    }

    #[test]
    fn several_preparation_acts_are_a_plan() {
        assert_eq!(
            level("deleted all my socials, paid off what i owe, letter's on the fridge"),
            Level::Imminent
        );
        assert_eq!(
            level("dejé todo ordenado, pagué mis deudas y cerré mis cuentas"),
            Level::Imminent
        );
        // One act alone is a worrying sign, not a plan.
        assert_eq!(level("paid off what i owe this month"), Level::Concern);
    }

    #[test]
    fn a_lethal_count_held_is_a_stockpile() {
        assert_eq!(level("got 45 tablets lined up in my drawer"), Level::High);
        assert_eq!(
            level("got 45 tablets lined up. waiting for everyone to go to sleep"),
            Level::Imminent
        );
        assert_eq!(
            level("he estado guardando mis pastillas para dormir"),
            Level::High
        );
    }

    #[test]
    fn urge_with_the_means_in_hand_is_imminent() {
        assert_eq!(
            level("the blade is in my hand and i can't stop myself this time"),
            Level::Imminent
        );
        assert_eq!(
            level("tengo la cuchilla en la mano y no puedo parar"),
            Level::Imminent
        );
        assert_eq!(
            level("part of me wants to go back to the blade"),
            Level::Concern
        );
    }

    #[test]
    fn threat_after_violence_is_a_threat_to_life() {
        assert_eq!(
            level("he says he'll kill me if i leave and he's broken my arm before"),
            Level::Imminent
        );
        assert_eq!(level("my ex threatens me all the time"), Level::High);
    }

    #[test]
    fn travelling_to_a_lethal_place_is_being_there() {
        assert_eq!(
            level("driving to the cliffs now. i've decided"),
            Level::Imminent
        );
        assert_eq!(level("voy camino al puente. ya lo decidí"), Level::Imminent);
        assert_eq!(
            level("driving to the bridge club tonight for cards"),
            Level::None
        );
    }

    #[test]
    fn height_questions_and_research_are_lethality() {
        assert!(level("how high does a building need to be to make sure") >= Level::High);
        assert!(level("qué altura necesita un puente para no sobrevivir") >= Level::High);
        assert!(level("been researching which meds are the deadliest") >= Level::High);
        assert_eq!(
            level("how high is the clifton suspension bridge?"),
            Level::None
        );
    }

    #[test]
    fn finality_and_burden_together_are_high() {
        assert!(level("won't be a problem for anyone much longer") >= Level::High);
        assert!(level("ya no voy a ser un problema para nadie por mucho tiempo") >= Level::High);
    }

    #[test]
    fn spanish_help_line_questions_are_help_seeking() {
        let a = c().assess("cuál era el teléfono de ayuda para crisis?", "anxiety");
        assert_eq!(a.level, Level::None);
        assert!(a.help_seeking, "{a:?}");
    }

    #[test]
    fn the_word_first_then_the_thought() {
        assert_eq!(
            level("s u i c i d e is all i think about lately"),
            Level::High
        );
        assert_eq!(
            in_room("his suicide is all i think about", "bereavement").level,
            Level::None
        );
    }

    // --- the cue layer (word-level families and the rule table) ----------

    #[test]
    fn cue_rules_combine_families_and_name_the_rule() {
        let a = in_room(
            "tengo la soga en el ropero. esta noche cuando se duerman",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(
            a.signals.iter().any(|s| s.starts_with("family.means+")),
            "{:?}",
            a.signals
        );
        let a = in_room("ya compré el carbón. el sábado lo hago", "anxiety");
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        // One family alone is nothing.
        assert_eq!(level("compré carbón"), Level::None);
        assert_eq!(
            level("the sleeping tablets are in the cupboard"),
            Level::None
        );
    }

    #[test]
    fn cue_stems_match_inflections() {
        // `pastill*`, `despidiendo*`: a stem covers the forms.
        let a = in_room(
            "me tomo las pastillitas una por una mientras te escribo",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(a.categories.contains(&Category::Overdose), "{a:?}");
        let a = in_room(
            "mi primo mandó un mensaje despidiéndose y no contesta",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(a.categories.contains(&Category::ThirdParty), "{a:?}");
    }

    #[test]
    fn cue_layer_keeps_the_suppressors() {
        // Negation scope.
        assert_eq!(level("no tengo ninguna soga y no compré nada"), Level::None);
        // Past talk.
        assert_eq!(
            level("two years ago i took all my sleeping pills and got really sleepy"),
            Level::None
        );
        // An ordinary reason.
        assert_eq!(level("compré carbón para el asado del sábado"), Level::None);
        assert_eq!(
            level("bought a rope for the tire swing tomorrow"),
            Level::None
        );
        // Gaming: no cue rule fires (the lexicon ladders judge the rest).
        let a = in_room("bought a rope in game, tonight i'll do it 🎮", "anxiety");
        assert!(!a.signals.iter().any(|s| s.starts_with("family.")), "{a:?}");
        // Grief about someone else in the bereavement room.
        assert!(
            in_room(
                "he took all of his sleeping pills and got sleepy, that's what the coroner said",
                "bereavement"
            )
            .level
                < Level::High
        );
    }

    #[test]
    fn one_phrase_never_counts_as_two_families() {
        // "no es culpa de nadie" is a farewell and an aftermath; alone with a
        // time it is not a plan.
        assert!(level("no es culpa de nadie, mañana lo arreglamos") < Level::Imminent);
        let a = in_room(
            "bueno gente, fue un gusto. no es culpa de nadie. mañana temprano lo hago",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
    }

    #[test]
    fn cue_persons_follow_their_own_sentence() {
        // A possessive in an earlier sentence is not the subject.
        let a = in_room(
            "took all of dad's sleeping pills. getting really sleepy now",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(!a.categories.contains(&Category::ThirdParty), "{a:?}");
        // Someone else's farewell and silence is theirs.
        let a = in_room(
            "my brother sent a goodbye message. not answering since",
            "anxiety",
        );
        assert_eq!(a.level, Level::Imminent, "{a:?}");
        assert!(a.categories.contains(&Category::ThirdParty), "{a:?}");
    }

    #[test]
    fn overdose_and_self_harm_cues() {
        let a = in_room(
            "picked up again last week. did it alone in my room, my tolerance is gone",
            "substance-use",
        );
        assert!(a.level >= Level::High, "{a:?}");
        assert!(a.categories.contains(&Category::Overdose), "{a:?}");
        assert!(level("pressed the lighter on my thigh on purpose") >= Level::High);
        assert!(level("me volví a cortar otra vez") >= Level::High);
        assert!(level("i think about hurting myself again") < Level::High);
    }

    #[test]
    fn cue_config_is_validated() {
        let base = "[lexicon.timeframe]\nphrases = [\"tonight\"]\n[lexicon.negation]\nphrases = [\"no\"]\n";
        let bad_ref = format!(
            "{base}[cue.a]\nwords = [\"x\"]\n[[cue_rule]]\nid = \"r\"\nall = [\"a\", \"nope\"]\nlevel = \"high\"\ncategories = [\"suicide\"]\n"
        );
        assert!(matches!(
            Classifier::from_sources([("t.toml", bad_ref.as_str())]),
            Err(ConfigError::UnknownReference { .. })
        ));
        let bad_level = format!(
            "{base}[cue.a]\nwords = [\"x\"]\n[[cue_rule]]\nid = \"r\"\nall = [\"a\"]\nlevel = \"none\"\ncategories = [\"suicide\"]\n"
        );
        assert!(matches!(
            Classifier::from_sources([("t.toml", bad_level.as_str())]),
            Err(ConfigError::Invalid { .. })
        ));
        let clash = format!(
            "{base}[cue.a]\nwords = [\"x\"]\nperson = true\n[cue.b]\nalso = [\"timeframe\"]\n"
        );
        let clash2 = "[cue.a]\nperson = false\n";
        assert!(matches!(
            Classifier::from_sources([("t.toml", clash.as_str()), ("u.toml", clash2)]),
            Err(ConfigError::Invalid { .. })
        ));
        // A working table from config alone: `x` + a lexicon time word.
        let ok = format!(
            "{base}[cue.a]\nwords = [\"xyl*\"]\n[cue.t]\nperson = false\nalso = [\"timeframe\"]\n\
             [[cue_rule]]\nid = \"a+t\"\nall = [\"a\", \"t\"]\nlevel = \"high\"\ncategories = [\"self_harm\"]\n"
        );
        let c = match Classifier::from_sources([("t.toml", ok.as_str())]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let a = c.assess("xylophones tonight", "anxiety");
        assert_eq!(a.level, Level::High, "{a:?}");
        assert_eq!(a.categories, vec![Category::SelfHarm]);
        assert!(a.signals.contains(&"family.a+t"), "{:?}", a.signals);
        assert_eq!(c.assess("xylophones", "anxiety").level, Level::None);
        assert_eq!(
            c.assess("no xylophones tonight", "anxiety").level,
            Level::None
        );
    }

    /// Prints the mean cost per message. Timing belongs in `cargo bench`;
    /// this only reports it and never fails on it.
    #[test]
    fn reports_mean_cost_per_message() {
        let msgs = [
            "had a rough day but the breathing exercise helped a bit",
            "not today. tomorrow when everyone's out",
            "my friend just texted me she's on the bridge, what do i do",
            "anyone got a plug for bars round here, need some for the weekend",
            "me tomé como 30 pastillas hace media hora y ya no siento las piernas",
            "lol this exam is killing me, kms 🤦",
        ];
        let n = 10_000;
        // Build (and warm) the classifier outside the timed loop.
        let c = c();
        let _ = c.assess(msgs[0], "anxiety");
        let start = std::time::Instant::now();
        let mut high = 0usize;
        for i in 0..n {
            let a = c.assess(msgs[i % msgs.len()], "anxiety");
            high += usize::from(a.level >= Level::High);
        }
        let per = start.elapsed() / n as u32;
        println!("classifier: {per:?} per message (mean of {n}; {high} at high or above)");
    }
}
